"""A real nginx (Debian's) in front of several upstream ports, configured as SEED.md's
deployment: an `ip_hash` upstream (or `least_conn`), `/webrtc/` proxied with the
WebSocket Upgrade headers, long read timeouts and `proxy_next_upstream error timeout
http_503` (a draining instance's 503 sends a new handshake elsewhere), everything else
(health, metrics) proxied as plain HTTP. It runs with `-p DIR`, its logs and pid file
inside DIR, on a free 127.0.0.1 port.

`ip_hash` hashes the first three octets of a client's IPv4 address, so every client on
127.0.0.1 lands on one upstream. `connect_from`, `joined_from` and `http_from` bind a
client to a chosen loopback source address (`source_address(n)` is 127.0.n.1), and
`source_for_upstream(i, count)` names one that ip_hash sends to upstream i. Browsers
cannot choose a source address: with `pinned_listeners=True` nginx also listens on one
more port per upstream (`pinned_url(i)`), proxying only to upstream i, with the same
locations, so each browser reaches the instance its listener names. With
`pinned_backup=True` the other upstreams back each pinned listener up (`backup`): its page
stays on instance i while i serves, and fails over when i drains (503) or dies.
"""

from __future__ import annotations

import contextlib
import os
import signal
import time
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import Any, Literal

import httpx

from tests.support.client import Client, connect
from tests.support.process import Component, Daemon, port_open, require_program, unused_port

HOST = "127.0.0.1"
Balance = Literal["ip_hash", "least_conn", "round_robin"]
READY_DEADLINE_SECONDS = 10.0
STOP_DEADLINE_SECONDS = 10.0
UPSTREAM_READ_TIMEOUT_SECONDS = 3600  # signaling sockets stay open for a whole call
_POLL_SECONDS = 0.02
_IP_HASH_SEED, _IP_HASH_FACTOR, _IP_HASH_MODULUS = 89, 113, 6271  # ngx_http_upstream_ip_hash


class Nginx(Component):
    """nginx proxying to `upstream_ports` on 127.0.0.1, in the order given (`ip_hash`
    picks among them by that order). Use as `with` or `async with`."""

    def __init__(
        self,
        directory: Path,
        upstream_ports: Sequence[int],
        *,
        balance: Balance = "ip_hash",
        pinned_listeners: bool = False,
        pinned_backup: bool = False,
    ) -> None:
        assert upstream_ports, "nginx needs at least one upstream"
        self.directory = directory
        self.upstream_ports = list(upstream_ports)
        self.balance: Balance = balance
        self.port = unused_port()
        # pinned_ports[i] proxies to upstream_ports[i] alone.
        self.pinned_ports = [unused_port() for _ in upstream_ports] if pinned_listeners else []
        self.pinned_backup = pinned_backup
        self.config_path = directory / "nginx.conf"
        self.error_log_path = directory / "error.log"
        self.access_log_path = directory / "access.log"
        self._daemon = Daemon(
            [
                require_program("nginx", package="nginx"),
                "-p",
                str(directory),
                "-c",
                str(self.config_path),
                "-e",  # also where nginx reports before it has read the config
                str(self.error_log_path),
            ],
            log_path=directory / "output.log",
            cwd=directory,
        )

    def __repr__(self) -> str:
        return f"Nginx(port={self.port}, {self.balance}, upstreams={self.upstream_ports})"

    @property
    def url(self) -> str:
        return f"http://{HOST}:{self.port}"

    def ws_url(self, room: str, token: str | None = None) -> str:
        query = f"?token={token}" if token is not None else ""
        return f"ws://{HOST}:{self.port}/webrtc/ws/{room}{query}"

    def pinned_url(self, index: int) -> str:
        """The base URL of the listener that proxies to upstream `index` alone."""
        assert self.pinned_ports, "started without pinned_listeners=True"
        return f"http://{HOST}:{self.pinned_ports[index]}"

    @property
    def running(self) -> bool:
        return self._daemon.running

    @property
    def pid(self) -> int:
        return self._daemon.pid

    def upstream_for(self, source_ip: str) -> int:
        """The index of the upstream `ip_hash` sends `source_ip` to (all upstreams up)."""
        assert self.balance == "ip_hash", "only ip_hash decides by the source address"
        return ip_hash_index(source_ip, len(self.upstream_ports))

    def access_log(self) -> list[str]:
        """One line per finished request (a WebSocket's when it closes):
        `REMOTE_ADDR STATUS "REQUEST" upstream=ADDR[, ADDR] upstream_status=S[, S]`."""
        if not self.access_log_path.exists():
            return []
        return self.access_log_path.read_text(errors="replace").splitlines()

    def error_log(self) -> str:
        if not self.error_log_path.exists():
            return ""
        return self.error_log_path.read_text(errors="replace")

    def config(self) -> str:
        user = "user root;\n" if os.geteuid() == 0 else ""  # temp paths are root's 0700 dirs
        upstreams = "".join(f"        server {HOST}:{port};\n" for port in self.upstream_ports)
        method = "" if self.balance == "round_robin" else f"        {self.balance};\n"
        d = self.directory
        pinned = self._pinned_config()
        return f"""{user}worker_processes 1;
daemon off;
pid {d}/nginx.pid;
error_log {d}/error.log warn;
events {{
    worker_connections 1024;
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
{method}{upstreams}    }}

{self._server(self.port, "rendezvous")}{pinned}}}
"""

    def _pinned_config(self) -> str:
        """One single-server upstream and one listener per pinned port (none without)."""
        if not self.pinned_ports:
            return ""
        blocks = []
        for index, (listen, upstream) in enumerate(
            zip(self.pinned_ports, self.upstream_ports, strict=True)
        ):
            name = f"rendezvous_{index}"
            backups = "".join(
                f"        server {HOST}:{port} backup;\n"
                for port in self.upstream_ports
                if self.pinned_backup and port != upstream
            )
            blocks.append(f"""
    upstream {name} {{
        server {HOST}:{upstream};
{backups}    }}
{self._server(listen, name)}""")
        return "".join(blocks)

    def _server(self, listen: int, upstream: str) -> str:
        timeout = f"{UPSTREAM_READ_TIMEOUT_SECONDS}s"
        return f"""
    server {{
        listen {HOST}:{listen};

        location /webrtc/ {{
            proxy_pass http://{upstream};
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
            proxy_pass http://{upstream};
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_set_header Host $host;
            proxy_connect_timeout 5s;
        }}
    }}
"""

    def stop(self) -> None:
        """Stop at once: every proxied WebSocket drops without a close frame, as in a
        proxy crash or a network cut. `start` brings it back on the same ports."""
        self._down()

    def start(self) -> None:
        """Start again (after `stop`) on the same ports."""
        self._up()

    def _up(self) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        self.config_path.write_text(self.config())
        self._daemon.start()
        deadline = time.monotonic() + READY_DEADLINE_SECONDS
        while not all(port_open(port) for port in (self.port, *self.pinned_ports)):
            if not self._daemon.running or time.monotonic() > deadline:
                self._down()
                raise AssertionError(
                    f"nginx did not start listening on {self.port} {self.pinned_ports}:\n"
                    f"{self._daemon.log()}{self.error_log()}"
                )
            time.sleep(_POLL_SECONDS)

    def _down(self) -> None:
        if self._daemon.process is not None:
            # SIGTERM is nginx's fast shutdown; SIGQUIT would wait for every WebSocket.
            self._daemon.stop(signal.SIGTERM, timeout=STOP_DEADLINE_SECONDS)


def source_address(n: int) -> str:
    """The n-th client source address, 127.0.n.1 (n in 1..254): each in its own /24, so
    each is hashed on its own by ip_hash. All of 127/8 is loopback on Linux."""
    assert 1 <= n <= 254, n
    return f"127.0.{n}.1"


def ip_hash_index(source_ip: str, upstream_count: int) -> int:
    """The upstream index nginx's `ip_hash` picks for an IPv4 client when every upstream
    is up and weighs 1 (ngx_http_upstream_get_ip_hash_peer's first try)."""
    octets = [int(part) for part in source_ip.split(".")]
    assert len(octets) == 4, source_ip
    hashed = _IP_HASH_SEED
    for octet in octets[:3]:
        hashed = (hashed * _IP_HASH_FACTOR + octet) % _IP_HASH_MODULUS
    return hashed % upstream_count


def source_for_upstream(index: int, upstream_count: int, *, skip: int = 0) -> str:
    """A source address `ip_hash` sends to upstream `index` of `upstream_count`; `skip`
    gives further ones (two clients on one upstream from different addresses)."""
    matches = (
        source_address(n)
        for n in range(1, 255)
        if ip_hash_index(source_address(n), upstream_count) == index
    )
    for _ in range(skip):
        next(matches)
    return next(matches)


@contextlib.asynccontextmanager
async def connect_from(source_ip: str, url: str, **kwargs: Any) -> AsyncIterator[Client]:
    """`tests.support.client.connect`, from `source_ip` (websockets passes `local_addr`
    through to loop.create_connection)."""
    async with connect(url, local_addr=(source_ip, 0), **kwargs) as client:
        yield client


@contextlib.asynccontextmanager
async def joined_from(
    source_ip: str, url: str, **kwargs: Any
) -> AsyncIterator[tuple[Client, dict[str, Any]]]:
    """Connect from `source_ip` and read the `room_state` that must come first."""
    async with connect_from(source_ip, url, **kwargs) as client:
        state = await client.expect("room_state")
        yield client, state


def http_from(source_ip: str, base_url: str = "", **kwargs: Any) -> httpx.AsyncClient:
    """An httpx client whose connections leave from `source_ip` (never via a proxy)."""
    kwargs.setdefault("timeout", 5)
    return httpx.AsyncClient(
        base_url=base_url,
        transport=httpx.AsyncHTTPTransport(local_address=source_ip),
        trust_env=False,
        **kwargs,
    )
