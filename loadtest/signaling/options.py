"""The suite's tunables, parsed and checked once (locust's command line and environment
hand them over as text), and the service endpoints the rooms' members connect to."""

from __future__ import annotations

import random
from dataclasses import dataclass
from urllib.parse import urlsplit


class OptionError(ValueError):
    """A tunable that cannot be used; the message names it."""


@dataclass(frozen=True)
class Span:
    """A range to draw from uniformly, written `A-B` (or one number, `A`)."""

    low: float
    high: float

    @classmethod
    def parse(cls, name: str, text: str) -> Span:
        low, _, high = text.strip().partition("-")
        try:
            span = cls(float(low), float(high or low))
        except ValueError:
            raise OptionError(f"{name}: expected A-B or A (numbers), got {text!r}") from None
        if not 0 <= span.low <= span.high:
            raise OptionError(f"{name}: expected 0 <= A <= B, got {text!r}")
        return span

    def draw(self, rng: random.Random) -> float:
        return rng.uniform(self.low, self.high)

    def draw_int(self, rng: random.Random) -> int:
        return rng.randint(int(self.low), int(self.high))


@dataclass(frozen=True)
class Endpoint:
    """One instance (or the load balancer): where members fetch /webrtc/config and open
    their WebSocket."""

    secure: bool
    host: str
    port: int
    base_path: str  # without a trailing slash

    @classmethod
    def parse(cls, url: str) -> Endpoint:
        parts = urlsplit(url.strip())
        if parts.scheme not in ("http", "https", "ws", "wss") or not parts.hostname:
            raise OptionError(f"not an http(s):// or ws(s):// URL with a host: {url!r}")
        secure = parts.scheme in ("https", "wss")
        port = parts.port or (443 if secure else 80)
        return cls(secure, parts.hostname, port, parts.path.rstrip("/"))

    @property
    def authority(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}"

    def ws_url(self, room: str) -> str:
        return (
            f"{'wss' if self.secure else 'ws'}://{self.authority}{self.base_path}/webrtc/ws/{room}"
        )

    @property
    def config_path(self) -> str:
        return f"{self.base_path}/webrtc/config"


@dataclass(frozen=True)
class SuiteOptions:
    """Everything a room needs to know besides its own random draws."""

    secret: str
    ws_urls: tuple[Endpoint, ...]  # empty: locust's --host, known only once a run starts
    source_addresses: tuple[str, ...]
    room_sizes: tuple[tuple[int, float], ...]  # (members, weight)
    think_seconds: Span
    hold_seconds: Span
    churn_probability: float
    rejoin_pause_seconds: Span
    sdp_bytes: Span
    candidates: Span
    trickle_gap_ms: Span
    deadline_seconds: float

    def draw_room_size(self, rng: random.Random) -> int:
        sizes = [size for size, _ in self.room_sizes]
        return rng.choices(sizes, [weight for _, weight in self.room_sizes])[0]

    def endpoints(self, host: str | None) -> tuple[Endpoint, ...]:
        """The instances of `--ws-urls`, else locust's `--host` (a worker learns it from
        the master when the run starts)."""
        if self.ws_urls:
            return self.ws_urls
        if not host:
            raise OptionError("no service to load: give --host or --ws-urls")
        return (Endpoint.parse(host),)


def parse_room_sizes(text: str) -> tuple[tuple[int, float], ...]:
    """`2:3,4:1` = rooms of 2 three times as often as rooms of 4 (a bare `N` weighs 1)."""
    mix: list[tuple[int, float]] = []
    for item in text.split(","):
        size, _, weight = item.strip().partition(":")
        try:
            entry = (int(size), float(weight or 1))
        except ValueError:
            raise OptionError(f"room sizes: expected N:WEIGHT,..., got {text!r}") from None
        if entry[0] < 2 or entry[1] < 0:
            raise OptionError(f"room sizes: a room has at least 2 members, got {item!r}")
        mix.append(entry)
    if not mix or sum(weight for _, weight in mix) <= 0:
        raise OptionError(f"room sizes: no room size with a positive weight in {text!r}")
    return tuple(mix)


def parse_list(text: str) -> tuple[str, ...]:
    return tuple(item.strip() for item in text.split(",") if item.strip())


def parse_probability(name: str, text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise OptionError(f"{name}: expected a number in 0..1, got {text!r}") from None
    if not 0 <= value <= 1:
        raise OptionError(f"{name}: expected a number in 0..1, got {text!r}")
    return value


def parse_positive(name: str, text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise OptionError(f"{name}: expected a positive number, got {text!r}") from None
    if value <= 0:
        raise OptionError(f"{name}: expected a positive number, got {text!r}")
    return value
