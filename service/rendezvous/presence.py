"""Keeping presence: every TTL/3, refresh this instance's live members in one batch, drop
sockets that stopped proving alive, and reap members whose instance went away. After a
backend outage it re-asserts its members at once, since the store may have lost them."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable

from rendezvous.backends.base import Backend, BackendUnavailableError, Member
from rendezvous.hub import Hub

log = logging.getLogger(__name__)

MAX_BACKOFF_FACTOR = 8


class PresenceKeeper:
    def __init__(
        self,
        hub: Hub,
        backend: Backend,
        *,
        ttl_seconds: float,
        clock: Callable[[], float] | None = None,
    ) -> None:
        self._hub = hub
        self._backend = backend
        self._ttl = ttl_seconds
        self._clock = clock or asyncio.get_running_loop().time
        self.interval_seconds = ttl_seconds / 3
        self._reassert = False
        self._wake = asyncio.Event()

    def backend_recovered(self) -> None:
        """The backend is back after an outage: re-assert presence now, not next tick."""
        self._reassert = True
        self._wake.set()

    async def run(self) -> None:
        """Tick forever; a failed tick is logged and retried with capped backoff."""
        failures = 0
        while True:
            delay = self.interval_seconds * min(2**failures, MAX_BACKOFF_FACTOR)
            # Not wait_for: on 3.11 it can lose a cancel that arrives as the event is set.
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(min(delay, self._ttl)):
                    await self._wake.wait()
            self._wake.clear()
            try:
                await self.tick()
                if failures:
                    log.info("presence upkeep recovered after %d failed attempts", failures)
                failures = 0
            except BackendUnavailableError as exc:
                failures += 1
                log.warning("presence upkeep failed (attempt %d): %s", failures, exc)
            except Exception:
                failures += 1
                log.exception("presence upkeep failed (attempt %d)", failures)

    async def tick(self) -> None:
        now = self._clock()
        alive: list[tuple[str, Member]] = []
        for room_id, peer in list(self._hub.local_members()):
            if now - peer.last_seen <= self._ttl:
                alive.append((room_id, peer.member))
            else:
                log.info(
                    "dropping a connection silent for longer than the presence TTL",
                    extra={"room_id": room_id, "user_id": peer.member.user_id},
                )
                peer.time_out()
        if self._reassert:
            await self._backend.reassert(alive)
            self._reassert = False
            log.info("re-asserted %d participants after a backend outage", len(alive))
        elif alive:
            await self._backend.refresh(alive)
        for room_id, member in await self._backend.reap_expired():
            log.info(
                "reaped an expired participant",
                extra={"room_id": room_id, "user_id": member.user_id},
            )
            self._hub.expired(room_id, member)
