"""Where Redis lives: one URL form per deployment mode, parsed and validated at start-up."""

from __future__ import annotations

import enum
from dataclasses import dataclass
from urllib.parse import unquote, urlsplit

DEFAULT_REDIS_PORT = 6379
DEFAULT_SENTINEL_PORT = 26379


class RedisMode(enum.Enum):
    STANDALONE = "standalone"
    CLUSTER = "cluster"
    SENTINEL = "sentinel"


_SCHEMES: dict[str, tuple[RedisMode, bool]] = {
    "redis": (RedisMode.STANDALONE, False),
    "rediss": (RedisMode.STANDALONE, True),
    "redis+cluster": (RedisMode.CLUSTER, False),
    "rediss+cluster": (RedisMode.CLUSTER, True),
    "redis+sentinel": (RedisMode.SENTINEL, False),
    "rediss+sentinel": (RedisMode.SENTINEL, True),
}


@dataclass(frozen=True, slots=True)
class RedisTarget:
    """A parsed Redis location: mode, seed nodes, credentials, database and TLS."""

    mode: RedisMode
    nodes: tuple[tuple[str, int], ...]
    tls: bool = False
    username: str | None = None
    password: str | None = None
    db: int = 0
    service_name: str | None = None  # Sentinel only: the monitored primary's name

    def masked(self) -> str:
        """The URL with any password replaced, safe to print."""
        scheme = next(s for s, (m, t) in _SCHEMES.items() if m is self.mode and t is self.tls)
        auth = ""
        if self.username or self.password:
            auth = f"{self.username or ''}{':***' if self.password else ''}@"
        hosts = ",".join(f"{_format_host(h)}:{p}" for h, p in self.nodes)
        path = f"/{self.service_name}" if self.service_name else ""
        return f"{scheme}://{auth}{hosts}{path}/{self.db}"


def _format_host(host: str) -> str:
    return f"[{host}]" if ":" in host else host


def parse_redis_url(url: str) -> RedisTarget:
    """Parse `redis://`, `rediss://`, `redis+cluster://h:p,h:p` or
    `redis+sentinel://h:p,h:p/service[/db]`; raise ValueError with a readable reason."""
    scheme, sep, rest = url.partition("://")
    if not sep or scheme.lower() not in _SCHEMES:
        raise ValueError(f"scheme must be one of {', '.join(_SCHEMES)} (got {scheme!r})")
    mode, tls = _SCHEMES[scheme.lower()]
    # Credentials end at the last "@", even when an unencoded "/" hides in the password:
    # splitting at the first "/" would put part of the password in a host error message.
    userinfo, at, location = rest.rpartition("@")
    if not at:
        userinfo, location = "", rest
    hostlist, _, path = location.partition("/")
    path, _, _query = path.partition("?")
    username, password = _parse_userinfo(userinfo)
    default_port = DEFAULT_SENTINEL_PORT if mode is RedisMode.SENTINEL else DEFAULT_REDIS_PORT
    nodes = tuple(_parse_node(n, default_port) for n in hostlist.split(","))
    if mode is RedisMode.STANDALONE and len(nodes) != 1:
        raise ValueError("a standalone redis:// URL names exactly one host")
    segments = [s for s in path.split("/") if s]
    service_name = None
    if mode is RedisMode.SENTINEL:
        if not segments:
            raise ValueError("a sentinel URL needs the primary's name: redis+sentinel://h:p/NAME")
        service_name, segments = segments[0], segments[1:]
    db = _parse_db(segments)
    if mode is RedisMode.CLUSTER and db != 0:
        raise ValueError("Redis Cluster has only database 0")
    return RedisTarget(
        mode=mode,
        nodes=nodes,
        tls=tls,
        username=username,
        password=password,
        db=db,
        service_name=service_name,
    )


def _parse_userinfo(userinfo: str) -> tuple[str | None, str | None]:
    if not userinfo:
        return None, None
    user, colon, password = userinfo.partition(":")
    return (unquote(user) or None), (unquote(password) if colon else None)


def _parse_node(node: str, default_port: int) -> tuple[str, int]:
    if not node:
        raise ValueError("the URL names no host")
    split = urlsplit(f"//{node}")
    try:
        port = split.port
    except ValueError as exc:
        raise ValueError(f"bad port in {node!r}") from exc
    if not split.hostname:
        raise ValueError(f"bad host in {node!r}")
    if port == 0:
        raise ValueError(f"bad port in {node!r}")
    return split.hostname, default_port if port is None else port


def _parse_db(segments: list[str]) -> int:
    if not segments:
        return 0
    if len(segments) > 1 or not segments[0].isdigit():
        raise ValueError(f"the database must be a number (got {'/'.join(segments)!r})")
    return int(segments[0])
