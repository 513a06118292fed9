"""The servers under test, started on free 127.0.0.1 ports and always stopped: Rendezvous
alone (memory backend), two Rendezvous instances sharing a Redis of their own, and the
PeerJS server, installed from npm into a cache directory outside the repository."""

from __future__ import annotations

import contextlib
import functools
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path

import orjson

from loadtest.bench.dialects import Dialect
from loadtest.bench_relay import (
    HOST,
    LOG_TAIL_CHARACTERS,
    SERVER_START_TIMEOUT_SECONDS,
    Child,
    free_port,
    http_ok,
    redis_ready,
    server_environment,
    start_redis,
    start_server,
    stop,
)

# The PeerJS server compared with: pinned, so that runs compare the same code.
PEERJS_PACKAGE = "peer"
PEERJS_VERSION = "1.0.2"
PEERJS_CACHE = Path.home() / ".cache" / "rendezvous-bench" / "peerjs"
NPM_INSTALL_TIMEOUT_SECONDS = 300.0
# PeerJS drops a client that sent no HEARTBEAT for this long (its bin's default is 60 s; a
# browser sends one every 5 s). The benchmark's clients stay idle like Rendezvous's, which
# answer the server's pings, so the check is pushed out of every run's way.
PEERJS_ALIVE_TIMEOUT_MS = 3_600_000
# Room for the probes and handshakes in flight on top of the connections a run holds.
CONNECTION_MARGIN = 1000


class TargetKind(StrEnum):
    """(a), (b) and (c) of the issue."""

    RENDEZVOUS = "rendezvous"
    RENDEZVOUS_REDIS = "rendezvous-redis"
    PEERJS = "peerjs"

    @property
    def label(self) -> str:
        return {
            TargetKind.RENDEZVOUS: "(a) Rendezvous, memory",
            TargetKind.RENDEZVOUS_REDIS: "(b) Rendezvous via Redis",
            TargetKind.PEERJS: "(c) PeerJS server",
        }[self]

    @property
    def dialect(self) -> Dialect:
        return Dialect.PEERJS if self is TargetKind.PEERJS else Dialect.RENDEZVOUS


@dataclass(frozen=True)
class PeerJS:
    """The installed PeerJS server: its package directory and the versions that run it."""

    directory: Path
    version: str
    ws_version: str
    node_version: str

    @property
    def script(self) -> Path:
        package = orjson.loads((self.directory / "package.json").read_bytes())
        script: str = package["bin"]["peerjs"]
        return self.directory / script


def install_peerjs(cache: Path = PEERJS_CACHE, version: str = PEERJS_VERSION) -> PeerJS:
    """`npm install peer@<version>` into `cache` (once: kept while the version matches)."""
    node, npm = shutil.which("node"), shutil.which("npm")
    if node is None or npm is None:
        raise RuntimeError("the PeerJS comparison needs node and npm on PATH")
    package_dir = cache / "node_modules" / PEERJS_PACKAGE
    if _package_version(package_dir) != version:
        cache.mkdir(parents=True, exist_ok=True)
        manifest = {"private": True, "dependencies": {PEERJS_PACKAGE: version}}
        (cache / "package.json").write_bytes(orjson.dumps(manifest, option=orjson.OPT_INDENT_2))
        print(f"installing {PEERJS_PACKAGE}@{version} from npm into {cache} ...", flush=True)
        try:
            subprocess.run(
                [npm, "install", "--no-audit", "--no-fund", "--omit=dev"],
                cwd=cache,
                check=True,
                timeout=NPM_INSTALL_TIMEOUT_SECONDS,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
            )
        except subprocess.SubprocessError as exc:  # its own output is above
            raise RuntimeError(f"npm install {PEERJS_PACKAGE}@{version} failed: {exc}") from exc
        if _package_version(package_dir) != version:
            raise RuntimeError(f"npm did not install {PEERJS_PACKAGE}@{version} into {cache}")
    node_version = subprocess.run(
        [node, "--version"], check=True, capture_output=True, text=True, timeout=30
    ).stdout.strip()
    return PeerJS(
        directory=package_dir,
        version=version,
        ws_version=_package_version(cache / "node_modules" / "ws") or "?",
        node_version=node_version,
    )


def _package_version(directory: Path) -> str | None:
    try:
        version: str = orjson.loads((directory / "package.json").read_bytes())["version"]
    except (OSError, orjson.JSONDecodeError, KeyError):
        return None
    return version


@dataclass
class Target:
    """A running target: the processes that relay (one, or the two instances), where the
    first and the second member of a pair connect, and Redis for (b)."""

    kind: TargetKind
    servers: list[Child] = field(default_factory=list)
    redis: Child | None = None
    description: list[str] = field(default_factory=list)  # one line per process, printed

    @property
    def ports(self) -> tuple[int, int]:
        return self.servers[0].port, self.servers[-1].port

    @property
    def children(self) -> list[Child]:
        return [*self.servers, *([] if self.redis is None else [self.redis])]

    @property
    def server(self) -> Child:
        """The one server of (a) or (c)."""
        (server,) = self.servers
        return server


@contextlib.contextmanager
def running(
    kind: TargetKind,
    *,
    directory: Path,
    secret: str,
    peerjs: PeerJS | None,
    connections: int = 0,
) -> Iterator[Target]:
    """Start `kind`, ready for `connections` at once, wait until it takes joins, and stop it
    (servers first, then Redis) however the block ends; on failure, print its logs."""
    target = Target(kind)
    try:
        if kind is TargetKind.PEERJS:
            if peerjs is None:
                raise RuntimeError("PeerJS is not installed")
            _start_peerjs(target, peerjs, directory, connections)
        else:
            _start_rendezvous(target, directory, secret, connections)
        yield target
    except Exception:  # not on Ctrl-C or SIGTERM: the logs are for failures
        for child in target.children:
            print(
                f"--- {child.name} log (last {LOG_TAIL_CHARACTERS} characters) ---\n"
                f"{child.log_tail()}",
                file=sys.stderr,
            )
        raise
    finally:
        stop(target.servers)  # before Redis: they would reconnect to it
        stop([] if target.redis is None else [target.redis])


def _start_rendezvous(target: Target, directory: Path, secret: str, connections: int) -> None:
    env = server_environment(secret)
    env["WEBRTC_MAX_CONNECTIONS"] = str(max(connections + CONNECTION_MARGIN, 10000))
    probe = "/healthz"
    if target.kind is TargetKind.RENDEZVOUS:
        target.servers.append(start_server("rendezvous", free_port(), env, directory))
    else:
        redis = target.redis = start_redis(directory)
        version = redis_ready(redis)
        env["REDIS_URL"] = f"redis://{HOST}:{redis.port}/0"
        for number in (1, 2):
            target.servers.append(start_server(f"instance {number}", free_port(), env, directory))
        target.description.append(
            f"redis-server {version}, pid {redis.pid}, {HOST}:{redis.port}, no persistence"
        )
        probe = "/readyz"  # joins are refused until the backend is connected
    backend = "memory backend" if target.redis is None else "redis backend"
    for server in target.servers:
        server.wait_until(
            "ready", functools.partial(http_ok, server.port, probe), SERVER_START_TIMEOUT_SECONDS
        )
    target.description[:0] = [
        f"{server.name}: rendezvous serve, pid {server.pid}, {HOST}:{server.port}, {backend}"
        for server in target.servers
    ]


def _start_peerjs(target: Target, peerjs: PeerJS, directory: Path, connections: int) -> None:
    port = free_port()
    limit = max(connections + CONNECTION_MARGIN, 5000)  # 5000: its own default
    argv = [
        shutil.which("node") or "node",
        str(peerjs.script),
        *("--port", str(port), "--host", HOST),
        *("--concurrent_limit", str(limit), "--alive_timeout", str(PEERJS_ALIVE_TIMEOUT_MS)),
    ]
    env: Mapping[str, str] = {k: v for k, v in os.environ.items() if k != "PORT"}
    server = Child.start("peerjs", argv, port=port, directory=directory, env=dict(env))
    target.servers.append(server)
    server.wait_until(
        "answering", functools.partial(http_ok, port, "/"), SERVER_START_TIMEOUT_SECONDS
    )
    target.description.append(
        f"peerjs: node {peerjs.node_version} "
        f"{PEERJS_PACKAGE}@{peerjs.version} (ws {peerjs.ws_version}), pid {server.pid}, "
        f"{HOST}:{port}, --concurrent_limit {limit} --alive_timeout {PEERJS_ALIVE_TIMEOUT_MS}"
    )
