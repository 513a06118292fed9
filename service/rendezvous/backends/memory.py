"""In-process backend: the default with no Redis, and a faithful model of the contract.

Several MemoryBackends may share one MemoryBroker, as instances share one Redis; the
contract tests use that to prove cross-instance behaviour without a network. Each
operation below runs without an await, so under asyncio it is atomic by construction:
that is this backend's lock.

`publish_latency` runs from `publish` to the moment the loop has handed the message to
every listener, which is what Redis's acknowledgement stands for. Every publish is
observed, with listeners or without (Redis acknowledges a PUBLISH nobody hears too), so
a single instance in development shows the metric moving.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from rendezvous.backends.base import (
    Backend,
    BackendUnavailableError,
    BusHandler,
    JoinResult,
    Member,
    ResumeRecord,
    ResumeRefusedError,
    RoomFullError,
    RoomPage,
    page_of,
)
from rendezvous.telemetry.histogram import PUBLISH_LATENCY_BUCKETS_SECONDS, LatencyHistogram

Clock = Callable[[], float]


@dataclass
class MemoryBroker:
    """What instances share: presence with expiry times, and who listens to which room."""

    clock: Clock = time.monotonic
    presence: dict[str, dict[str, tuple[Member, float]]] = field(default_factory=dict)
    listeners: dict[str, set[MemoryBackend]] = field(default_factory=dict)
    # room_id -> resume hash -> (record, expiry time), as Redis's `rdv:{room}:resume:<hash>`.
    resumes: dict[str, dict[str, tuple[ResumeRecord, float]]] = field(default_factory=dict)
    # (room_id, session_id) -> (entries, expiry time), as Redis's `rdv:{room}:held:<session>`.
    held: dict[tuple[str, str], tuple[deque[tuple[int, bytes]], float]] = field(
        default_factory=dict
    )

    def live(self, room_id: str) -> dict[str, tuple[Member, float]]:
        now = self.clock()
        entries = self.presence.get(room_id, {})
        return {uid: entry for uid, entry in entries.items() if entry[1] > now}


class MemoryBackend(Backend):
    def __init__(self, *, presence_ttl_seconds: float, broker: MemoryBroker | None = None) -> None:
        self.instance_id = uuid.uuid4().hex
        self._ttl = presence_ttl_seconds
        # Resume records outlive an expired member until it is reaped, as Redis's do.
        self._record_ttl = 3 * presence_ttl_seconds
        self._broker = broker if broker is not None else MemoryBroker()
        self._on_message: BusHandler | None = None
        self._rooms: set[str] = set()
        self.publish_latency = LatencyHistogram(PUBLISH_LATENCY_BUCKETS_SECONDS)

    async def start(
        self, on_message: BusHandler, on_recovered: Callable[[], None] | None = None
    ) -> None:
        self._on_message = on_message  # an in-process store never has an outage

    async def stop(self) -> None:
        for room_id in list(self._rooms):
            await self.unsubscribe(room_id)
        self._on_message = None

    @property
    def ready(self) -> bool:
        return self._on_message is not None

    async def subscribe(self, room_id: str) -> None:
        self._require_started()
        self._rooms.add(room_id)
        self._broker.listeners.setdefault(room_id, set()).add(self)

    async def unsubscribe(self, room_id: str) -> None:
        self._rooms.discard(room_id)
        listeners = self._broker.listeners.get(room_id)
        if listeners is not None:
            listeners.discard(self)
            if not listeners:
                del self._broker.listeners[room_id]

    def publish(self, room_id: str, data: bytes) -> None:
        self._require_started()
        loop = asyncio.get_running_loop()
        for listener in self._broker.listeners.get(room_id, ()):
            if listener is not self:
                # call_soon keeps publish order and, like a real bus, delivers later.
                loop.call_soon(listener._deliver, room_id, data)
        # Scheduled last, so it runs once the deliveries above have.
        loop.call_soon(self._handed_over, time.perf_counter())

    def publish_to_all(self, room_id: str, data: bytes) -> None:
        self._require_started()
        loop = asyncio.get_running_loop()
        for listener in self._broker.listeners.get(room_id, ()):
            loop.call_soon(listener._deliver, room_id, data)

    async def keep_held(
        self,
        room_id: str,
        session_id: str,
        entries: Sequence[tuple[int, bytes]],
        *,
        max_entries: int,
        ttl_seconds: float,
    ) -> None:
        self._require_started()
        key = (room_id, session_id)
        found = self._broker.held.get(key)
        kept = found[0] if found is not None and found[1] > self._broker.clock() else None
        if kept is None:
            kept = deque(maxlen=max(max_entries, 1))
        kept.extend(entries)
        self._broker.held[key] = (kept, self._broker.clock() + ttl_seconds)

    async def take_held(self, room_id: str, session_id: str) -> list[tuple[int, bytes]]:
        self._require_started()
        found = self._broker.held.pop((room_id, session_id), None)
        return list(found[0]) if found is not None and found[1] > self._broker.clock() else []

    def _handed_over(self, queued_at: float) -> None:
        self.publish_latency.observe(time.perf_counter() - queued_at)

    def _deliver(self, room_id: str, data: bytes) -> None:
        if self._on_message is not None and room_id in self._rooms:
            self._on_message(room_id, data)

    async def join(self, room_id: str, member: Member, *, capacity: int) -> JoinResult:
        self._require_started()
        live = self._broker.live(room_id)
        previous = live.get(member.user_id)
        if previous is None and len(live) >= capacity:
            raise RoomFullError(room_id)
        live[member.user_id] = (member, self._broker.clock() + self._ttl)
        self._broker.presence[room_id] = {**self._broker.presence.get(room_id, {}), **live}
        if member.resume_hash:
            record = ResumeRecord(
                member.user_id, member.username, member.session_id, self.instance_id, False
            )
            kept = (record, self._broker.clock() + self._record_ttl)
            self._broker.resumes.setdefault(room_id, {})[member.resume_hash] = kept
        members = tuple(m for m, _ in live.values())
        return JoinResult(members=members, replaced=previous[0] if previous else None)

    async def leave(self, room_id: str, member: Member) -> bool:
        self._require_started()
        self._forget_resume(room_id, member.resume_hash)
        entries = self._broker.presence.get(room_id, {})
        current = entries.get(member.user_id)
        if current is None or current[0].session_id != member.session_id:
            return False
        del entries[member.user_id]
        if not entries:
            self._broker.presence.pop(room_id, None)
        return True

    async def refresh(self, entries: Sequence[tuple[str, Member]]) -> None:
        self._require_started()
        expires = self._broker.clock() + self._ttl
        for room_id, member in entries:
            current = self._broker.presence.get(room_id, {}).get(member.user_id)
            # Only a live entry of this very session: an expired one is the reaper's.
            live = current is not None and current[1] > self._broker.clock()
            if live and current[0].session_id == member.session_id:  # type: ignore[index]
                self._broker.presence[room_id][member.user_id] = (member, expires)
                self._extend_resume(room_id, member.resume_hash)

    def _extend_resume(self, room_id: str, resume_hash: str) -> None:
        found = self._broker.resumes.get(room_id, {}).get(resume_hash)
        if found is not None and not found[0].held and found[1] > self._broker.clock():
            expires = self._broker.clock() + self._record_ttl
            self._broker.resumes[room_id][resume_hash] = (found[0], expires)

    def _forget_resume(self, room_id: str, resume_hash: str) -> None:
        records = self._broker.resumes.get(room_id)
        if records is not None and resume_hash in records:
            del records[resume_hash]
            if not records:
                del self._broker.resumes[room_id]

    async def resume_record(self, room_id: str, resume_hash: str) -> ResumeRecord | None:
        self._require_started()
        return self._live_record(room_id, resume_hash)

    def _live_record(self, room_id: str, resume_hash: str) -> ResumeRecord | None:
        found = self._broker.resumes.get(room_id, {}).get(resume_hash)
        return found[0] if found is not None and found[1] > self._broker.clock() else None

    async def hold(self, room_id: str, member: Member, *, grace_seconds: float) -> None:
        self._require_started()
        record = self._live_record(room_id, member.resume_hash)
        if record is not None and record.session_id == member.session_id:
            held = ResumeRecord(
                record.user_id, record.username, record.session_id, record.instance_id, True
            )
            expires = self._broker.clock() + grace_seconds
            self._broker.resumes[room_id][member.resume_hash] = (held, expires)

    async def claim_resume(self, room_id: str, resume_hash: str, member: Member) -> ResumeRecord:
        self._require_started()
        record = self._live_record(room_id, resume_hash)
        if record is None:
            raise ResumeRefusedError("unknown or expired resume token")
        if record.user_id != member.user_id:
            raise ResumeRefusedError("resume token belongs to another user or room", foreign=True)
        self._forget_resume(room_id, resume_hash)  # spent, whatever follows
        entries = self._broker.presence.get(room_id, {})
        present = entries.get(record.user_id)
        if present is None or present[0].session_id != record.session_id:
            raise ResumeRefusedError("unknown or expired resume token")  # gone: reaped, left
        entries[record.user_id] = (present[0], self._broker.clock() + self._ttl)
        renewed = ResumeRecord(
            record.user_id, record.username, record.session_id, self.instance_id, False
        )
        kept = (renewed, self._broker.clock() + self._record_ttl)
        self._broker.resumes.setdefault(room_id, {})[member.resume_hash] = kept
        return record

    async def release_held(self, room_id: str, member: Member) -> bool:
        self._require_started()
        record = self._broker.resumes.get(room_id, {}).get(member.resume_hash)
        if record is None or record[0].session_id != member.session_id:
            return False  # claimed by a resume meanwhile
        self._forget_resume(room_id, member.resume_hash)
        return await self.leave(room_id, member)

    async def members(self, room_id: str) -> tuple[Member, ...]:
        self._require_started()
        return tuple(m for m, _ in self._broker.live(room_id).values())

    async def reassert(self, entries: Sequence[tuple[str, Member]]) -> None:
        self._require_started()
        expires = self._broker.clock() + self._ttl
        for room_id, member in entries:
            room = self._broker.presence.setdefault(room_id, {})
            current = room.get(member.user_id)
            if current is None or current[0] == member:
                room[member.user_id] = (member, expires)

    async def reap_expired(self) -> list[tuple[str, Member]]:
        self._require_started()
        now = self._broker.clock()
        reaped: list[tuple[str, Member]] = []
        for room_id in sorted(self._rooms):
            entries = self._broker.presence.get(room_id, {})
            for user_id, (member, expires) in list(entries.items()):
                if expires <= now:
                    del entries[user_id]
                    reaped.append((room_id, member))
            if not entries:
                self._broker.presence.pop(room_id, None)
        self._purge_resumes(now)
        return reaped

    def _purge_resumes(self, now: float) -> None:
        """Drop expired resume records and held buffers, as their TTL does in Redis."""
        for key, (_, expires) in list(self._broker.held.items()):
            if expires <= now:
                del self._broker.held[key]
        for room_id, records in list(self._broker.resumes.items()):
            for resume_hash, (_, expires) in list(records.items()):
                if expires <= now:
                    del records[resume_hash]
            if not records:
                del self._broker.resumes[room_id]

    async def evict(self, room_id: str, user_id: str) -> Member | None:
        self._require_started()
        if user_id not in self._broker.live(room_id):
            return None  # absent, or expired: the reaper's
        member, _ = self._broker.presence[room_id].pop(user_id)
        self._forget_if_empty(room_id)
        return member

    async def evict_all(self, room_id: str) -> tuple[Member, ...]:
        self._require_started()
        live = self._broker.live(room_id)
        for user_id in live:
            del self._broker.presence[room_id][user_id]
        self._forget_if_empty(room_id)
        return tuple(member for member, _ in live.values())

    async def active_rooms(self, *, after: str | None, limit: int) -> RoomPage:
        self._require_started()

        async def count(room_ids: Sequence[str]) -> list[int]:
            return [len(self._broker.live(room_id)) for room_id in room_ids]

        # `count` never yields to the loop: here a page is one atomic snapshot.
        return await page_of(list(self._broker.presence), after=after, limit=limit, count=count)

    def _forget_if_empty(self, room_id: str) -> None:
        if room_id in self._broker.presence and not self._broker.presence[room_id]:
            del self._broker.presence[room_id]

    def _require_started(self) -> None:
        if self._on_message is None:
            raise BackendUnavailableError("memory backend is not started")
