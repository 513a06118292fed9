"""Per-connection limits (from the policy in force) and the token bucket that enforces
the rate."""

from __future__ import annotations

from dataclasses import dataclass

# More dropped frames than this within the window is abuse, not a burst: close 1008.
ABUSE_DROPPED_FRAMES = 1000
ABUSE_WINDOW_SECONDS = 10.0


@dataclass(frozen=True, slots=True)
class SessionLimits:
    max_message_bytes: int
    rate_per_second: float
    burst: int
    queue_max_messages: int
    queue_max_bytes: int


class TokenBucket:
    """`rate` tokens a second up to `burst`; also counts what it refused, to spot abuse."""

    __slots__ = ("_burst", "_drops", "_last", "_rate", "_tokens", "_window_start")

    def __init__(self, *, rate: float, burst: int, now: float) -> None:
        self._rate = rate
        self._burst = float(burst)
        self._tokens = float(burst)
        self._last = now
        self._drops = 0
        self._window_start = now

    def take(self, cost: int, now: float) -> bool:
        tokens = min(self._burst, self._tokens + (now - self._last) * self._rate)
        self._last = now
        cost_f = min(float(cost), self._burst)  # a broadcast to a huge room stays possible
        if tokens >= cost_f:
            self._tokens = tokens - cost_f
            return True
        self._tokens = tokens
        if now - self._window_start > ABUSE_WINDOW_SECONDS:
            self._window_start, self._drops = now, 0
        self._drops += 1
        return False

    def retune(self, *, rate: float, burst: int) -> None:
        """A new policy's rate: the tokens saved so far stay, up to the new burst."""
        self._rate, self._burst = rate, float(burst)
        self._tokens = min(self._tokens, self._burst)

    @property
    def abusive(self) -> bool:
        return self._drops > ABUSE_DROPPED_FRAMES
