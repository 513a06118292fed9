"""Where the TURN sidecar reads coturn's shared secret from: what a source reports, and
the one contract both sources (a mounted Secret directory, the Kubernetes API) keep."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

# Capped exponential backoff for a failing source: first retry after 0.5 s, then at most
# every 30 s, so a long outage costs the API server two requests a minute.
BACKOFF_SECONDS = (0.5, 30.0)


@dataclass(frozen=True, slots=True)
class SecretReading:
    """What a source last saw: the shared secret, or why it has none. `problem` goes to
    logs and probes, so it names keys and paths, never the secret itself."""

    secret: str | None
    problem: str = ""

    def __repr__(self) -> str:  # a reading is logged and compared; keep the secret out
        return f"SecretReading(secret={'***' if self.secret else None}, problem={self.problem!r})"


Report = Callable[[SecretReading], None]


class SecretSource(Protocol):
    """Watches one secret for as long as it runs, calling `report` with a reading at start
    and after every change (a failure is a change too). It never returns on its own:
    failures are reported and retried with capped backoff."""

    description: str  # for logs and probes: "directory /etc/turn-secret, key ..."

    async def run(self, report: Report) -> None: ...


def backoff_seconds(attempt: int) -> float:
    """The delay before retry `attempt` (1, 2, ...) of a failing source."""
    first, cap = BACKOFF_SECONDS
    return float(min(first * 2 ** max(attempt - 1, 0), cap))


def secret_from_bytes(raw: bytes, *, where: str) -> SecretReading:
    """A reading from a Secret value as stored. One trailing newline is dropped, since
    `kubectl create secret --from-file` keeps the file's and coturn's
    `static-auth-secret=` line never has one."""
    try:
        text = raw.decode()
    except UnicodeDecodeError:
        return SecretReading(None, f"{where} is not UTF-8 text")
    text = text.removesuffix("\n").removesuffix("\r")
    if not text:
        return SecretReading(None, f"{where} is empty")
    return SecretReading(text)
