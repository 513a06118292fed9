"""The deployment one phase loads: a redis-server of its own (free port, no persistence),
N `rendezvous serve` instances sharing it, and nginx in front, all on 127.0.0.1, started
into a `Deployment` that the caller stops in every case (also when a start fails).

The processes are bench_relay.py's: the same environment for the servers (a fresh
signing key, no STUN, the rate limit out of the way, none of the shell's Rendezvous
settings), the same start, readiness and stop."""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from loadtest.bench_relay import (
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
from loadtest.scaleout.balancer import start_nginx

NGINX_START_TIMEOUT_SECONDS = 10.0


@dataclass
class Deployment:
    """What one phase started; `stop()` stops whatever of it is running."""

    directory: Path
    instances: list[Child] = field(default_factory=list)
    redis: Child | None = None
    nginx: Child | None = None
    redis_version: str = "?"

    @property
    def children(self) -> list[Child]:
        others = [c for c in (self.redis, self.nginx) if c is not None]
        return [*self.instances, *others]

    @property
    def url(self) -> str:
        """Where the clients go: nginx."""
        assert self.nginx is not None, "nginx was not started"
        return f"http://127.0.0.1:{self.nginx.port}"

    def stop(self) -> None:
        # nginx first (the clients' sockets close), then the instances, which would
        # otherwise reconnect to a vanished Redis, then Redis.
        stop([c for c in (self.nginx,) if c is not None])
        stop(self.instances)
        stop([c for c in (self.redis,) if c is not None])


def start(
    deployment: Deployment,
    *,
    instances: int,
    secret: str,
    announce: Callable[[Child], None],
) -> None:
    """Start Redis, `instances` servers and nginx into `deployment` (which the caller
    stops in any case) and wait until nginx answers and every instance takes joins."""
    directory = deployment.directory
    directory.mkdir(parents=True, exist_ok=True)
    redis = deployment.redis = start_redis(directory)
    announce(redis)
    deployment.redis_version = redis_ready(redis)
    env = server_environment(secret)
    env["REDIS_URL"] = f"redis://127.0.0.1:{redis.port}/0"
    for number in range(1, instances + 1):
        server = start_server(f"instance {number}", free_port(), env, directory)
        deployment.instances.append(server)
        announce(server)
    for server in deployment.instances:
        # /readyz: joins are refused until the instance's Redis link is up.
        server.wait_until(
            "ready",
            functools.partial(http_ok, server.port, "/readyz"),
            SERVER_START_TIMEOUT_SECONDS,
        )
    ports = [server.port for server in deployment.instances]
    nginx = deployment.nginx = start_nginx(directory / "nginx", free_port(), ports)
    announce(nginx)
    # Through nginx to an instance: the proxy path works, not only nginx's listener.
    nginx.wait_until(
        "proxying /healthz",
        functools.partial(http_ok, nginx.port, "/healthz"),
        NGINX_START_TIMEOUT_SECONDS,
    )
