"""The sidecar's one job: keep a valid TURN credential for the pod in the shared file.
It mints from the latest secret its source reported, at once when that secret changes
and again after `rotate_after_seconds`; while the source is failing it mints nothing
new, and the last good file keeps serving until it expires."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from prometheus_client import CollectorRegistry, Counter, Gauge

from rendezvous.turn.credentials import mint
from rendezvous.turn.credentials_file import TurnCredentials, write_credentials
from rendezvous.turn.secrets import SecretReading, backoff_seconds

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class RotatorStatus:
    """What the probes report. Ready once a credential was written; it stays ready
    after that (an unready sidecar would take the pod's signaling out of service too),
    and `credentials` says whether the file is still good."""

    ready: bool
    credentials: str  # "ok", "expired" or "none"
    source: str  # "ok", "waiting" or the source's problem
    expires_at: int | None
    rotated_at: int | None


class RotatorMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.rotations = Counter(
            "rendezvous_turn_rotations",
            "Credentials written, by why",
            ["reason"],
            registry=registry,
        )
        self.source_failures = Counter(
            "rendezvous_turn_source_failures",
            "Times the secret source started failing",
            registry=registry,
        )
        self.source_up = Gauge(
            "rendezvous_turn_source_up", "1 while the secret source reads", registry=registry
        )
        self.write_failures = Counter(
            "rendezvous_turn_write_failures",
            "Failed writes of the credentials file",
            registry=registry,
        )
        self.expiry = Gauge(
            "rendezvous_turn_credentials_expiry_timestamp_seconds",
            "When the credential in the file expires (unix seconds)",
            registry=registry,
        )


class Rotator:
    def __init__(
        self,
        *,
        path: Path,
        urls: tuple[str, ...],
        user: str,
        ttl_seconds: int,
        rotate_after_seconds: float,
        metrics: RotatorMetrics,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._path = path
        self._urls = list(urls)
        self._user = user
        self._ttl = ttl_seconds
        self._rotate_after = rotate_after_seconds
        self._metrics = metrics
        self._clock = clock
        self._reading: SecretReading | None = None
        self._wake = asyncio.Event()
        self._written: TurnCredentials | None = None
        self._written_at = 0.0  # exact, where the file's rotated_at is whole seconds
        self._minted_from: str | None = None
        self._write_failures = 0

    def on_reading(self, reading: SecretReading) -> None:
        """A source's report; the loop acts on it at once."""
        previous, self._reading = self._reading, reading
        if reading.secret is None:
            self._metrics.source_up.set(0)
            if previous is None or previous.secret is not None:
                self._metrics.source_failures.inc()
            log.warning("TURN secret unavailable: %s; the last credential stays", reading.problem)
        else:
            self._metrics.source_up.set(1)
            if previous is not None and previous.secret is None:
                log.info("TURN secret readable again")
        self._wake.set()

    @property
    def status(self) -> RotatorStatus:
        written, reading = self._written, self._reading
        if written is None:
            credentials = "none"
        else:
            credentials = "expired" if written.expired(self._clock()) else "ok"
        if reading is None:
            source = "waiting"
        else:
            source = "ok" if reading.secret is not None else reading.problem
        return RotatorStatus(
            ready=written is not None,
            credentials=credentials,
            source=source,
            expires_at=written.expires_at if written else None,
            rotated_at=written.rotated_at if written else None,
        )

    async def run(self) -> None:
        while True:
            self._wake.clear()
            delay = self._step()
            # Not wait_for: on 3.11 it loses a cancel that arrives as a reading sets the
            # event, and shutdown would then wait for this loop forever.
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(delay):
                    await self._wake.wait()

    def _step(self) -> float | None:
        """Write if due; the seconds until the next step is due (None: the next reading)."""
        reading = self._reading
        if reading is None or reading.secret is None:
            return None
        now = self._clock()
        if reading.secret != self._minted_from:
            reason = "first" if self._minted_from is None else "secret_changed"
        elif self._written is None or now >= self._rotate_at:
            reason = "schedule"
        else:
            return self._rotate_at - now
        try:
            self._write(reading.secret, now, reason)
        except OSError as exc:
            self._write_failures += 1
            self._metrics.write_failures.inc()
            delay = backoff_seconds(self._write_failures)
            log.error(
                "cannot write %s (attempt %d, again in %.1fs): %s",
                self._path,
                self._write_failures,
                delay,
                exc,
            )
            return delay
        self._write_failures = 0
        return self._rotate_after

    @property
    def _rotate_at(self) -> float:
        return self._written_at + self._rotate_after

    def _write(self, secret: str, now: float, reason: str) -> None:
        username, credential = mint(secret, self._user, ttl_seconds=self._ttl, now=now)
        credentials = TurnCredentials(
            urls=self._urls,
            username=username,
            credential=credential,
            expires_at=int(now) + self._ttl,
            rotated_at=int(now),
        )
        write_credentials(self._path, credentials)
        self._written, self._written_at, self._minted_from = credentials, now, secret
        self._metrics.rotations.labels(reason).inc()
        self._metrics.expiry.set(credentials.expires_at)
        log.info(
            "TURN credential written (%s), valid until %d",
            reason.replace("_", " "),
            credentials.expires_at,
            extra={"turn_username": username},
        )
