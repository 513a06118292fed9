"""The backend contract: what instances share (presence, capacity, the room bus).

Every backend passes `tests/backends/test_contract.py`. The hub relies on exactly this:
- `subscribe` returns only once the room channel is live, so nothing published after it
  is missed; `publish` is ordered per instance and never blocks the caller;
- `join` checks capacity and adds the member in one atomic step, replacing the same
  user's earlier session instead of counting it twice;
- presence expires unless refreshed; reads never count an expired member; each expired
  member is returned by `reap_expired` to exactly one caller across all instances, or
  claimed by a `leave`, never both (so its departure is announced once);
- `evict` and `evict_all` (the admin's kick and close) remove live members atomically,
  each returned to exactly one caller, as `leave` does; an expired member stays the
  reaper's;
- `active_rooms` lists rooms with a live member across all instances, by room id, a page
  at a time: each page is a snapshot of its own, not a transaction across pages;
- a member with a `resume_hash` gets a resume record at `join` (expiring with its
  presence), extended by `refresh` while not held, and deleted by its `leave`; a record
  is claimed (`claim_resume`) or released (`release_held`) atomically, never both, and a
  reaped member's record can no longer be claimed;
- after `stop`, every operation but `unsubscribe` raises BackendUnavailableError; stopping
  leaves presence alone (a stopped instance is a dead process, not a leave).
"""

from __future__ import annotations

import abc
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field

from rendezvous.protocol import CloseCode, ErrorCode, SignalingError
from rendezvous.telemetry.histogram import LatencyHistogram

BusHandler = Callable[[str, bytes], None]
"""Called with (room_id, data) for every bus message another instance published."""


@dataclass(frozen=True, slots=True)
class Member:
    """One participant of a room; `session_id` tells a rejoin from the connection it replaces."""

    user_id: str
    username: str
    session_id: str
    # SHA-256 of the session's live resume token, where its resume record lives; '' when it
    # has none or it is not known here (members read back from the store). Not identity.
    resume_hash: str = field(default="", compare=False, repr=False)


@dataclass(frozen=True, slots=True)
class ResumeRecord:
    """What a resume token stands for, stored under the token's hash (never the token)."""

    user_id: str
    username: str
    session_id: str
    instance_id: str  # the instance that serves (or holds) the participant
    held: bool  # its socket dropped; it is held for the grace window


@dataclass(frozen=True, slots=True)
class JoinResult:
    members: tuple[Member, ...]  # the room after the join, joiner included
    replaced: Member | None  # the same user's previous session, now gone


@dataclass(frozen=True, slots=True)
class RoomSummary:
    room_id: str
    participant_count: int  # live members, on every instance


@dataclass(frozen=True, slots=True)
class RoomPage:
    rooms: tuple[RoomSummary, ...]  # sorted by room id
    next_cursor: str | None  # pass as `after` for the next page; None: this was the last


class BackendError(Exception):
    """Base of the errors a backend raises; third-party errors are chained, never leaked."""


class BackendUnavailableError(BackendError):
    def to_signaling(self, *, refuses_join: bool = False) -> SignalingError:
        """A refused join closes 1013 (try again later); a dropped frame keeps the socket."""
        return SignalingError(
            ErrorCode.BACKEND_UNAVAILABLE,
            "signaling backend unavailable",
            close_code=CloseCode.TRY_AGAIN_LATER if refuses_join else None,
        )


class RoomFullError(BackendError):
    pass


class ResumeRefusedError(BackendError):
    """A resume token the store does not honour: unknown, spent or expired, its session
    gone (left, replaced, kicked, reaped), or, `foreign`, another user's."""

    def __init__(self, message: str, *, foreign: bool = False) -> None:
        super().__init__(message)
        self.foreign = foreign


class Backend(abc.ABC):
    """Shared state between instances. One per process; `instance_id` names it on the bus."""

    instance_id: str
    publish_latency: LatencyHistogram
    """Seconds from `publish` to the store taking the message, once per message that
    reached it (never one in `dropped_publishes`); the backend creates it, /metrics reads it."""

    @abc.abstractmethod
    async def start(
        self, on_message: BusHandler, on_recovered: Callable[[], None] | None = None
    ) -> None:
        """Connect; from now on, bus messages of subscribed rooms go to `on_message`.

        `on_recovered` is called each time the backend comes back after an outage, when
        the shared store may have lost presence that `reassert` should put back."""

    @abc.abstractmethod
    async def stop(self) -> None:
        """Disconnect; idempotent. Presence stays until it expires."""

    @property
    def reconnects(self) -> int:
        """Connection attempts to the shared store after the first one, since start."""
        return 0

    @property
    def dropped_publishes(self) -> int:
        """Messages accepted by `publish` that never reached the store (its link broke)."""
        return 0

    @property
    @abc.abstractmethod
    def ready(self) -> bool:
        """Whether the backend is reachable right now (readiness)."""

    @abc.abstractmethod
    async def subscribe(self, room_id: str) -> None:
        """Listen to the room's channel; return once the subscription is confirmed. If it
        raises (or is cancelled), nothing of it remains: no later delivery, no reaping."""

    @abc.abstractmethod
    async def unsubscribe(self, room_id: str) -> None: ...

    @abc.abstractmethod
    def publish(self, room_id: str, data: bytes) -> None:
        """Queue `data` for the room's channel, in call order; raise
        BackendUnavailableError at once when it cannot be sent."""

    @abc.abstractmethod
    async def join(self, room_id: str, member: Member, *, capacity: int) -> JoinResult:
        """Add `member` (atomically with the capacity check); raise RoomFullError.

        Expired members hold no seat, yet stay for `reap_expired` to announce; a live
        session of the same user is replaced (returned as `replaced`), taking no seat."""

    @abc.abstractmethod
    async def leave(self, room_id: str, member: Member) -> bool:
        """Remove this session of the member (and its resume record); False if it was
        already gone or replaced."""

    @abc.abstractmethod
    async def resume_record(self, room_id: str, resume_hash: str) -> ResumeRecord | None:
        """The live resume record stored under `resume_hash` in this room, if any."""

    @abc.abstractmethod
    async def hold(self, room_id: str, member: Member, *, grace_seconds: float) -> None:
        """The member's socket dropped: mark its resume record held, expiring after the
        grace (presence stays, kept by the holder's refresh)."""

    @abc.abstractmethod
    async def claim_resume(self, room_id: str, resume_hash: str, member: Member) -> ResumeRecord:
        """Atomically spend the record under `resume_hash` for `member.user_id` and give
        the session a new one under `member.resume_hash` (served by this instance), its
        presence extended even if it had expired unreaped. Return the spent record; raise
        ResumeRefusedError if it is unknown or expired, its session no longer present (a
        reaped member's departure was announced: it never comes back), or another user's."""

    @abc.abstractmethod
    async def release_held(self, room_id: str, member: Member) -> bool:
        """A held member's grace ran out: remove it unless its record was claimed
        meanwhile (atomically, so a racing resume and the timeout never both win). True
        if it was removed (its departure is to be announced)."""

    @abc.abstractmethod
    def publish_to_all(self, room_id: str, data: bytes) -> None:
        """As `publish`, but this instance is handed it too: where its own message falls
        in the channel's order among the others' (a resume's TAKE)."""

    @abc.abstractmethod
    async def keep_held(
        self,
        room_id: str,
        session_id: str,
        entries: Sequence[tuple[int, bytes]],
        *,
        max_entries: int,
        ttl_seconds: float,
    ) -> None:
        """Append (seq, frame) entries to a held session's buffer in the store (a Redis
        Stream), keeping about the newest `max_entries`, all gone `ttl_seconds` later."""

    @abc.abstractmethod
    async def take_held(self, room_id: str, session_id: str) -> list[tuple[int, bytes]]:
        """Read and delete a held session's stored buffer, oldest first."""

    @abc.abstractmethod
    async def refresh(self, entries: Sequence[tuple[str, Member]]) -> None:
        """Extend the presence of these (room_id, member) pairs, in one batched call,
        and the resume record of each member not held.

        Only a live entry of the very same session is extended: refreshing a replaced,
        departed or expired session changes nothing."""

    @abc.abstractmethod
    async def reassert(self, entries: Sequence[tuple[str, Member]]) -> None:
        """After an outage: put back these members if the store lost them, extend them if
        it kept them, in one batched call; never overwrite another session of the user."""

    @abc.abstractmethod
    async def members(self, room_id: str) -> tuple[Member, ...]:
        """Live members of a room, never counting an expired one."""

    @abc.abstractmethod
    async def reap_expired(self) -> list[tuple[str, Member]]:
        """Remove the expired members of the rooms this instance subscribes to; each is
        returned to exactly one caller, ever. (A room no instance listens to has nobody
        to tell; its keys expire by themselves.)"""

    @abc.abstractmethod
    async def evict(self, room_id: str, user_id: str) -> Member | None:
        """Remove the user's live session from the room; return it, or None if the user
        has none (an expired one is left to `reap_expired`)."""

    @abc.abstractmethod
    async def evict_all(self, room_id: str) -> tuple[Member, ...]:
        """Remove every live member of the room in one atomic step; return them."""

    @abc.abstractmethod
    async def active_rooms(self, *, after: str | None, limit: int) -> RoomPage:
        """Up to `limit` rooms with a live member, whose ids sort after `after`, by id."""


async def page_of(
    room_ids: Sequence[str],
    *,
    after: str | None,
    limit: int,
    count: Callable[[Sequence[str]], Awaitable[Sequence[int]]],
) -> RoomPage:
    """The `active_rooms` page of `room_ids` (candidates, in any order): counted `limit`
    at a time with `count` (live members of each), skipping rooms with nobody live."""
    later = sorted({r for r in room_ids if after is None or r > after})
    found: list[RoomSummary] = []
    for start in range(0, len(later), limit):
        chunk = later[start : start + limit]
        for offset, (room_id, members) in enumerate(zip(chunk, await count(chunk), strict=True)):
            if members:
                found.append(RoomSummary(room_id, members))
            if len(found) == limit:
                more = start + offset + 1 < len(later)
                return RoomPage(tuple(found), room_id if more else None)
    return RoomPage(tuple(found), None)
