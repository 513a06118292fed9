"""nginx in front of the instances, as SEED.md deploys it: an `ip_hash` upstream, `/webrtc/`
proxied with the WebSocket `Upgrade`/`Connection` headers and `proxy_next_upstream`, the
rest (health, config) as plain HTTP. The same shape as tests/support/nginx.py, which
loadtest/ does not import.

`ip_hash` hashes the first three octets of a client's IPv4 address, so every client on
127.0.0.1 lands on one instance: the locust clients connect from addresses in distinct
loopback /24s (127.0.n.1), chosen so that each instance gets as many of them.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Sequence
from pathlib import Path

from loadtest.bench_relay import HOST, Child

UPSTREAM_READ_TIMEOUT_SECONDS = 3600  # a signaling socket stays open for a whole call
# ngx_http_upstream_ip_hash: hash = (hash * 113 + octet) % 6271 over three octets, from 89.
_IP_HASH_SEED, _IP_HASH_FACTOR, _IP_HASH_MODULUS = 89, 113, 6271
_SOURCE_OCTETS = range(1, 255)  # 127.0.n.1: every one of them is loopback on Linux


def nginx_program() -> str:
    """nginx from PATH, or Debian's /usr/sbin/nginx (not on PATH for every user)."""
    program = shutil.which("nginx") or shutil.which("nginx", path="/usr/sbin")
    if program is None:
        raise RuntimeError("the runner needs nginx (apt-get install nginx)")
    return program


def nginx_config(directory: Path, port: int, upstream_ports: Sequence[int]) -> str:
    """The whole nginx.conf: logs, pid and temp files inside `directory`."""
    user = "user root;\n" if os.geteuid() == 0 else ""  # else workers can't read root's tmp
    upstreams = "".join(f"        server {HOST}:{p};\n" for p in upstream_ports)
    d = directory
    timeout = f"{UPSTREAM_READ_TIMEOUT_SECONDS}s"
    return f"""{user}worker_processes 1;
daemon off;
pid {d}/nginx.pid;
error_log {d}/error.log warn;
events {{
    worker_connections 4096;
}}
http {{
    log_format rendezvous '$remote_addr $status "$request" '
                          'upstream=$upstream_addr upstream_status=$upstream_status';
    access_log {d}/access.log rendezvous;
    client_body_temp_path {d}/client_body;
    proxy_temp_path {d}/proxy;
    fastcgi_temp_path {d}/fastcgi;
    uwsgi_temp_path {d}/uwsgi;
    scgi_temp_path {d}/scgi;

    map $http_upgrade $connection_upgrade {{
        default upgrade;
        ''      close;
    }}

    upstream rendezvous {{
        ip_hash;
{upstreams}    }}

    server {{
        listen {HOST}:{port};

        location /webrtc/ {{
            proxy_pass http://rendezvous;
            proxy_http_version 1.1;
            proxy_set_header Upgrade $http_upgrade;
            proxy_set_header Connection $connection_upgrade;
            proxy_set_header Host $host;
            proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;
            proxy_set_header X-Forwarded-Proto $scheme;
            proxy_connect_timeout 5s;
            proxy_read_timeout {timeout};
            proxy_send_timeout {timeout};
            proxy_next_upstream error timeout http_503;
        }}

        location / {{
            proxy_pass http://rendezvous;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_set_header Host $host;
            proxy_connect_timeout 5s;
        }}
    }}
}}
"""


def start_nginx(directory: Path, port: int, upstream_ports: Sequence[int]) -> Child:
    """nginx in the foreground (`daemon off`) with its prefix, config and logs in
    `directory`; SIGTERM is its fast shutdown."""
    directory.mkdir(parents=True, exist_ok=True)
    config = directory / "nginx.conf"
    config.write_text(nginx_config(directory, port, upstream_ports))
    argv = [nginx_program(), "-p", str(directory), "-c", str(config)]
    argv += ["-e", str(directory / "error.log")]  # also before it has read the config
    return Child.start("nginx", argv, port=port, directory=directory, env=dict(os.environ))


def ip_hash_index(source_ip: str, upstream_count: int) -> int:
    """The upstream nginx's `ip_hash` picks for an IPv4 client, all upstreams up."""
    hashed = _IP_HASH_SEED
    for octet in source_ip.split(".")[:3]:
        hashed = (hashed * _IP_HASH_FACTOR + int(octet)) % _IP_HASH_MODULUS
    return hashed % upstream_count


def source_addresses(per_instance: int, instances: int) -> tuple[str, ...]:
    """`per_instance` client addresses for each of `instances` upstreams (127.0.n.1, in
    increasing n, so members of a call land where the hash puts them, not in turn)."""
    taken = [0] * instances
    chosen: list[str] = []
    for n in _SOURCE_OCTETS:
        address = f"127.0.{n}.1"
        index = ip_hash_index(address, instances)
        if taken[index] < per_instance:
            taken[index] += 1
            chosen.append(address)
    if min(taken) < per_instance:
        raise ValueError(
            f"only {min(taken)} loopback /24s hash to some instance of {instances}: "
            f"ask for fewer than {per_instance} source addresses per instance"
        )
    return tuple(chosen)


def upstream_counts(access_log: Path, upstream_ports: Sequence[int]) -> list[int]:
    """WebSocket handshakes (status 101) nginx passed to each upstream, from its access
    log (a WebSocket's line is written when it closes)."""
    counts = [0] * len(upstream_ports)
    index = {f"{HOST}:{port}": i for i, port in enumerate(upstream_ports)}
    if not access_log.exists():
        return counts
    for line in access_log.read_text(errors="replace").splitlines():
        if line.split(" ", 2)[1:2] != ["101"]:
            continue
        upstream = line.rsplit("upstream=", 1)[-1].split(" upstream_status=", 1)[0]
        # After a retry nginx lists every upstream tried: the last one took it.
        last = upstream.split(",")[-1].strip()
        if last in index:
            counts[index[last]] += 1
    return counts
