"""The hub: this instance's sessions by room, and delivery to them and through the bus.

A message for a member on this instance is delivered directly; for members elsewhere it
is published once on the room channel. Each room keeps a roster of every member on every
instance (from the join snapshot and the join/leave events), which decides
`target_not_found` and whether a message needs the bus at all, without a backend read.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import replace
from typing import Any, Protocol

from opentelemetry.trace import Span

from rendezvous.backends.base import (
    Backend,
    BackendUnavailableError,
    JoinResult,
    Member,
    ResumeRefusedError,
    RoomFullError,
)
from rendezvous.bus import BusDecodeError, BusKind, BusMessage, decode_bus, encode_bus
from rendezvous.protocol import (
    ErrorCode,
    LeaveReason,
    MessageType,
    SignalingError,
    encode,
)
from rendezvous.resuming import (
    HOLD_MARGIN_SECONDS,
    HeldPeer,
    HeldStream,
    Numbered,
    Replay,
    nothing_to_replay,
    replay_after,
    replay_stored,
)
from rendezvous.telemetry import spans as span_names
from rendezvous.telemetry.logging import Throttle
from rendezvous.telemetry.metrics import Metrics
from rendezvous.telemetry.spans import SignalingSpans

log = logging.getLogger(__name__)

# Why a frame was not queued for a recipient (a `reason` of rendezvous_messages_dropped):
# its session is closing, or the frame overflowed its send queue (`slow_consumer`).
RECIPIENT_CLOSED = "recipient_closed"
PUBLISH_FAILURE_LOG_SECONDS = 10.0
# How long a resume waits for the holder on another instance to hand the session over
# (GIVEN); past it the holder is taken for dead and the resume says `missed`.
GIVEN_WAIT_SECONDS = 1.5


class Peer(Protocol):
    """What the hub needs of a session (or of a participant held after its socket
    dropped). A resume gives the session the member it resumes: hence writable."""

    member: Member

    def deliver(self, frame: bytes) -> str | None:
        """Queue a frame; never blocks, never raises. None, or why the frame was dropped."""

    def close(self, error: SignalingError) -> None:
        """Send the error frame, then close with its close code."""

    @property
    def last_seen(self) -> float:
        """When the peer last proved alive, on the event loop's clock."""

    def time_out(self) -> None:
        """Drop a peer that stopped proving alive."""


class _Joining:
    """Everything said in a room while a member's join is in flight, replayed after its
    `room_state` so that nothing between its subscription and its snapshot is lost."""

    __slots__ = ("messages", "overflowed", "peer")

    def __init__(self, peer: Peer) -> None:
        self.peer = peer
        self.messages: list[BusMessage] = []
        self.overflowed = False


class _Taking:
    """A resume of a session held on another instance, in flight: the bus messages for it
    that come after its TAKE in the channel's order (those before went to the holder's
    buffer), and the holder's answer."""

    __slots__ = ("after", "echoed", "given", "overflowed", "published")

    def __init__(self) -> None:
        self.after: list[BusMessage] = []
        self.overflowed = False
        self.published = False  # our own messages from now on come after the TAKE
        self.echoed = False  # the others' messages from now on come after it
        # The holder's (last seq, last seq before the drop); (None, None): nothing stored.
        self.given: asyncio.Future[tuple[int | None, int | None]] = (
            asyncio.get_running_loop().create_future()
        )


class LocalRoom:
    """One room as this instance sees it."""

    __slots__ = (
        "acquaintances",
        "joining",
        "lock",
        "room_id",
        "roster",
        "sessions",
        "subscribed",
        "taken",
        "taking",
    )

    def __init__(self, room_id: str) -> None:
        self.room_id = room_id
        self.sessions: dict[str, Peer] = {}  # members on this instance, by user_id
        self.roster: dict[str, Member] = {}  # members on every instance, by user_id
        self.joining: dict[str, _Joining] = {}  # by session_id
        # By local session_id: whom that session has been told of (user_id -> session_id).
        # Joins racing on several instances can deliver an event after a snapshot that
        # already showed it; this keeps every member told of each other exactly once.
        self.acquaintances: dict[str, dict[str, str]] = {}
        self.lock = asyncio.Lock()  # orders subscribe/unsubscribe of the channel
        self.subscribed = False
        self.taking: dict[str, _Taking] = {}  # by the session_id being resumed here
        # Session ids whose live connection here was overtaken by a resume elsewhere: its
        # end is not a departure.
        self.taken: set[str] = set()

    @property
    def idle(self) -> bool:
        return not self.sessions and not self.joining


class Hub:
    def __init__(
        self,
        backend: Backend,
        *,
        metrics: Metrics,
        spans: SignalingSpans,
        join_buffer_limit: Callable[[], int],
        hold_bounds: Callable[[], tuple[int, int]] | None = None,
        resume_grace_seconds: float = 0.0,
        debug: bool = False,
    ) -> None:
        self._backend = backend
        self._metrics = metrics
        self._spans = spans
        self._tracing = spans.enabled  # per message: one test when tracing is off
        self._debug = debug  # DEBUG=true: a line per message delivered from the bus
        # While the bus is down every relay to another instance fails: one line per interval.
        self._publish_failures = Throttle(PUBLISH_FAILURE_LOG_SECONDS)
        self._join_buffer_limit = join_buffer_limit  # read when used: the policy may change
        # A held participant's buffer: (messages, bytes), the send-queue bounds in force.
        self._hold_bounds = hold_bounds or (lambda: (join_buffer_limit(), 1 << 20))
        self._grace = resume_grace_seconds
        self._holds: set[asyncio.Task[None]] = set()
        self._rooms: dict[str, LocalRoom] = {}
        self._relays = metrics.relays

    # Membership.

    async def join(
        self, peer: Peer, room_id: str, *, capacity: int, resume_token: str | None = None
    ) -> LocalRoom:
        """Subscribe, then join atomically, then announce; raise SignalingError if refused.
        `resume_token`: the session's, told to it in its `room_state`."""
        room = self._rooms.get(room_id)
        if room is None:
            room = self._rooms[room_id] = LocalRoom(room_id)
        member = peer.member
        room.joining[member.session_id] = _Joining(peer)
        try:
            with self._spans.presence(room_id, capacity):
                await self._subscribe(room)
                result = await self._backend.join(room_id, member, capacity=capacity)
        except BaseException as exc:
            room.joining.pop(member.session_id, None)
            await self._release(room)
            if isinstance(exc, RoomFullError):
                raise SignalingError(ErrorCode.ROOM_FULL, "the room is full") from exc
            if isinstance(exc, BackendUnavailableError):
                raise exc.to_signaling(refuses_join=True) from exc
            raise
        joining = room.joining.pop(member.session_id)
        ended = _ended_while_joining(joining.messages, member)
        if ended is not None:  # kicked, closed or replaced before it was admitted:
            await self._release(room)  # announcing it now would make it a ghost
            raise ended
        self._admit(room, peer, result, joining, resume_token)
        return room

    def _admit(
        self,
        room: LocalRoom,
        peer: Peer,
        result: JoinResult,
        joining: _Joining,
        resume_token: str | None,
    ) -> None:
        member = peer.member
        for other in result.members:
            room.roster[other.user_id] = other
        later = _after_snapshot(joining.messages, result.members, me=member.user_id)
        # These came after the snapshot: bring the roster up to date with them.
        for message in later:
            if message.kind is not BusKind.RELAY:
                _update_roster(room, message)
        previous = room.sessions.get(member.user_id)
        room.sessions[member.user_id] = peer
        participants = [{"user_id": m.user_id, "username": m.username} for m in result.members]
        state: dict[str, object] = {
            "room_id": room.room_id,
            "participants": participants,
            "participant_count": len(participants),
        }
        if resume_token is not None:
            state.update(session_id=member.session_id, resume_token=resume_token)
        room.acquaintances[member.session_id] = {
            m.user_id: m.session_id for m in result.members if m.user_id != member.user_id
        }
        peer.deliver(encode(MessageType.ROOM_STATE, state, room_id=room.room_id))
        self._replay(room, peer, later, joining)
        if previous is not None:
            previous.close(_replaced_error())
        if result.replaced is not None:
            self._emit(room, self._event(room, result.replaced, LeaveReason.REPLACED))
        self._emit(room, self._event(room, member, None))
        self._update_gauges()
        log.info(
            "participant joined",
            extra={
                "room_id": room.room_id,
                "user_id": member.user_id,
                "participant_count": len(participants),
            },
        )

    def _replay(
        self, room: LocalRoom, peer: Peer, later: list[BusMessage], joining: _Joining
    ) -> None:
        if joining.overflowed:
            peer.close(SignalingError(ErrorCode.SLOW_CONSUMER, "too much traffic while joining"))
            return
        for message in later:
            if message.kind is BusKind.RELAY:
                self._deliver_relayed(room, message, (peer,), sender=None)
            else:
                _tell(room, peer, message)

    async def leave(self, peer: Peer, room: LocalRoom, *, reason: LeaveReason) -> None:
        """Forget a session that ended; announce it unless it was replaced or already gone."""
        member = peer.member
        if not self._detach(peer, room):
            await self._release(room)
            return
        try:
            removed = await self._backend.leave(room.room_id, member)
        except BackendUnavailableError:
            self._departed_here_only(room, member, reason)
            removed = False
        await self._departed(room, member, reason=reason, removed=removed)

    def _detach(self, peer: Peer, room: LocalRoom) -> bool:
        """Forget `peer` here; False if its session lives on in a newer connection (a
        resume here overtook it), so nothing of it is this connection's to end."""
        member = peer.member
        current = room.sessions.get(member.user_id)
        if current is peer:
            del room.sessions[member.user_id]
        elif current is not None and current.member.session_id == member.session_id:
            return False
        if member.session_id in room.taken:  # resumed on another instance
            room.taken.discard(member.session_id)
            return False
        room.acquaintances.pop(member.session_id, None)
        return True

    # Holding and resuming.

    async def hold(
        self,
        peer: Peer,
        room: LocalRoom,
        *,
        reason: LeaveReason,
        frames: Iterable[bytes],
        last_seq: int,
    ) -> None:
        """A session's socket dropped: hold its participant for the grace window, numbering
        on from `last_seq` what is sent to it meanwhile (after `frames`, the last it was
        sent). Without a grace, or if it is no longer the room's, it leaves (`reason`)."""
        member = peer.member
        if (
            self._grace <= 0
            or not member.resume_hash
            or room.sessions.get(member.user_id) is not peer
            or room.roster.get(member.user_id) != member  # reaped or replaced meanwhile
        ):
            await self.leave(peer, room, reason=reason)
            return
        max_messages, max_bytes = self._hold_bounds()
        held = HeldPeer(
            member,
            frames=frames,
            last_seq=last_seq,
            max_messages=max_messages,
            max_bytes=max_bytes,
        )
        held.store(
            HeldStream(
                self._backend,
                room.room_id,
                member.session_id,
                max_entries=max_messages,
                ttl_seconds=self._grace + HOLD_MARGIN_SECONDS,
            )
        )
        room.sessions[member.user_id] = held
        held.task = asyncio.create_task(
            self._holding(room, held), name=f"rendezvous.hold:{member.session_id}"
        )
        self._holds.add(held.task)
        held.task.add_done_callback(self._holds.discard)
        log.info(
            "participant held",
            extra={"room_id": room.room_id, "user_id": member.user_id, "seq": last_seq},
        )

    async def _holding(self, room: LocalRoom, held: HeldPeer) -> None:
        """The grace timer of a held participant: a resume cancels it; else it leaves."""
        member = held.member
        try:
            try:
                await self._backend.hold(
                    room.room_id, member, grace_seconds=self._grace + HOLD_MARGIN_SECONDS
                )
            except BackendUnavailableError as exc:
                log.warning("could not mark a held participant in the backend: %s", exc)
            try:
                async with asyncio.timeout(self._grace):
                    await held.ended.wait()
            except TimeoutError:
                await self._release_held(room, held)
            else:  # kicked, replaced, its room closed, or reaped: announced already
                await self.leave(held, room, reason=LeaveReason.LEFT)
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("a held participant's grace timer failed", extra=_context(room, member))
            self._detach(held, room)
            await self._release(room)
        finally:
            if held.stream is not None and not held.given:
                held.stream.abandon()

    async def _release_held(self, room: LocalRoom, held: HeldPeer) -> None:
        """The grace ran out unresumed: it leaves, `timeout`, unless a resume on another
        instance claimed it meanwhile (the backend decides, atomically)."""
        member = held.member
        if not self._detach(held, room):
            return
        try:
            removed = await self._backend.release_held(room.room_id, member)
        except BackendUnavailableError:
            self._departed_here_only(room, member, LeaveReason.TIMEOUT)
            removed = False
        await self._departed(room, member, reason=LeaveReason.TIMEOUT, removed=removed)

    def _on_take(self, room: LocalRoom, message: BusMessage) -> None:
        """Another instance resumes a session: if it is ours, let it go (no departure:
        the participant stays in the room, served elsewhere) and hand over its buffer."""
        taking = room.taking.get(message.session_id)
        if taking is not None:  # our own TAKE, heard back: its place in the channel
            taking.echoed = True
            return
        peer = room.sessions.get(message.user_id)
        if peer is None or peer.member.session_id != message.session_id:
            return
        del room.sessions[message.user_id]
        room.acquaintances.pop(message.session_id, None)
        if isinstance(peer, HeldPeer):
            peer.given = True
            if peer.task is not None:
                peer.task.cancel()
            task = asyncio.create_task(
                self._give(room, peer), name=f"rendezvous.give:{message.session_id}"
            )
            self._holds.add(task)
            task.add_done_callback(self._holds.discard)
        else:  # its socket here is not known dead yet: it was, elsewhere
            room.taken.add(message.session_id)
            frames, last = peer.sent() if isinstance(peer, Numbered) else ((), -1)
            numbered = list(enumerate(frames, last - len(frames) + 1))
            peer.close(_resumed_error())
            task = asyncio.create_task(
                self._give_sent(room, peer.member, numbered, last),
                name=f"rendezvous.give:{message.session_id}",
            )
            self._holds.add(task)
            task.add_done_callback(self._holds.discard)
        log.info("participant handed over", extra=_context(room, peer.member))

    async def _give(self, room: LocalRoom, held: HeldPeer) -> None:
        """Store every frame held for the session, then tell the taker (GIVEN)."""
        try:
            if held.stream is not None:
                await held.stream.finish()
            self._send_given(
                room, held.member, last_seq=held.last_seq, dropped_at=held.dropped_at_seq
            )
        except Exception:  # the taker waits its bound, then says `missed`
            log.exception("handing over a held session failed", extra=_context(room, held.member))
        finally:
            await self._release(room)
            self._update_gauges()

    async def _give_sent(
        self, room: LocalRoom, member: Member, numbered: list[tuple[int, bytes]], last: int
    ) -> None:
        """Hand over a live session overtaken by a resume elsewhere: store what it sent
        (every frame still kept counts, since when its socket died is unknown)."""
        try:
            if numbered:
                await self._backend.keep_held(
                    room.room_id,
                    member.session_id,
                    numbered,
                    max_entries=len(numbered),
                    ttl_seconds=max(self._grace, 1.0) + HOLD_MARGIN_SECONDS,
                )
            self._send_given(room, member, last_seq=last, dropped_at=0)
        except BackendUnavailableError as exc:
            log.warning("could not hand over an overtaken session: %s", exc)
        except Exception:  # the taker waits its bound, then says `missed`
            log.exception("handing over an overtaken session failed", extra=_context(room, member))

    def _send_given(
        self, room: LocalRoom, member: Member, *, last_seq: int, dropped_at: int
    ) -> None:
        given = BusMessage(
            BusKind.GIVEN,
            member.user_id,
            b"",
            session_id=member.session_id,
            seq=last_seq,
            dropped_at=dropped_at,
        )
        try:
            self._backend.publish(room.room_id, encode_bus(given))
        except BackendUnavailableError as exc:
            log.warning("could not hand over a held session: %s", exc)

    async def _take(
        self, room: LocalRoom, user_id: str, session_id: str, taking: _Taking
    ) -> tuple[list[tuple[int, bytes]], int | None, int | None]:
        """Ask the holder on another instance for a session; wait (boundedly) until it
        has stored what it buffered; read that. Returns (stored, last seq, dropped at)."""
        take = BusMessage(BusKind.TAKE, user_id, b"", session_id=session_id)
        self._backend.publish_to_all(room.room_id, encode_bus(take))
        taking.published = True
        last, dropped_at = None, None
        try:
            async with asyncio.timeout(GIVEN_WAIT_SECONDS):
                last, dropped_at = await taking.given
        except TimeoutError:
            log.info(
                "the instance holding a resumed session did not answer; it is taken for dead",
                extra={"room_id": room.room_id, "user_id": user_id},
            )
        stored = await self._backend.take_held(room.room_id, session_id)
        return stored, last, dropped_at

    async def resume(
        self,
        peer: Peer,
        room_id: str,
        *,
        resume_hash: str,
        last_seq: int | None,
        resume_token: str,
    ) -> tuple[LocalRoom, bytes, Replay]:
        """Give `peer` (its member: the user, and the new token's hash) the session the
        token `resume_hash` stands for. Returns the room, the `room_state` to send first,
        and what to replay after it; raises SignalingError (`resume_failed`) if refused."""
        room = self._rooms.get(room_id)
        if room is None:
            room = self._rooms[room_id] = LocalRoom(room_id)
        asker = peer.member
        room.joining[asker.session_id] = _Joining(peer)  # what is said meanwhile
        taking: _Taking | None = None
        taken: tuple[list[tuple[int, bytes]], int | None, int | None] | None = None
        try:
            await self._subscribe(room)
            record = await self._backend.claim_resume(room_id, resume_hash, asker)
            snapshot = None if room.sessions else await self._backend.members(room_id)
            if record.instance_id != self._backend.instance_id:
                taking = room.taking[record.session_id] = _Taking()
                taken = await self._take(room, asker.user_id, record.session_id, taking)
        except BaseException as exc:
            room.joining.pop(asker.session_id, None)
            if taking is not None:
                room.taking.pop(record.session_id, None)
            await self._release(room)
            if isinstance(exc, ResumeRefusedError):
                raise SignalingError(ErrorCode.RESUME_FAILED, str(exc)) from exc
            if isinstance(exc, BackendUnavailableError):
                raise exc.to_signaling(refuses_join=True) from exc
            raise
        joining = room.joining.pop(asker.session_id)
        member = Member(asker.user_id, record.username, record.session_id, asker.resume_hash)
        peer.member = member
        previous = room.sessions.get(member.user_id)
        after: list[BusMessage] = []
        if taking is not None and taken is not None:  # held by another instance
            del room.taking[member.session_id]
            stored, last, dropped_at = taken
            since = last_seq if last_seq is not None else dropped_at
            replay = replay_stored(stored, after=since, last=last)
            if taking.overflowed:
                replay = Replay(replay.start_seq, replay.frames, True)
            after = taking.after
        elif isinstance(previous, HeldPeer) and previous.member.session_id == member.session_id:
            if previous.task is not None:
                previous.task.cancel()  # before any await: its timer can no longer fire
            replay = previous.replay(last_seq)
        elif previous is not None and previous.member.session_id == member.session_id:
            # Its old socket here is not known dead yet: replay from what it sent.
            replay = nothing_to_replay(last_seq)
            if isinstance(previous, Numbered):
                frames, last = previous.sent()
                replay = replay_after(list(frames), last=last, after=last_seq or 0)
            previous.close(_resumed_error())
        else:  # held here no more (its instance restarted, say): nothing to replay
            replay = nothing_to_replay(last_seq)
        later: list[BusMessage] = []
        if snapshot is not None:  # this instance did not serve the room: learn it
            for other in snapshot:
                room.roster[other.user_id] = other
            later = _after_snapshot(joining.messages, snapshot, me=member.user_id)
        room.acquaintances.setdefault(  # kept from the held session when it was here
            member.session_id,
            {m.user_id: m.session_id for m in room.roster.values() if m.user_id != asker.user_id},
        )
        for message in later:
            if message.kind is not BusKind.RELAY:
                _update_roster(room, message)
        room.roster[member.user_id] = member
        room.sessions[member.user_id] = peer
        participants = [
            {"user_id": m.user_id, "username": m.username} for m in room.roster.values()
        ]
        state = {
            "room_id": room.room_id,
            "participants": participants,
            "participant_count": len(participants),
            "session_id": member.session_id,
            "resume_token": resume_token,
            "resumed": True,
            "missed": replay.missed,
        }
        frame = encode(MessageType.ROOM_STATE, state, room_id=room.room_id)
        if taking is not None:  # said after the TAKE: not in the holder's buffer
            later = after
        if later:  # said in the room while this resume was in flight: sent on after it
            frames = [*replay.frames, *_frames_for(later, member)]
            replay = Replay(replay.start_seq, frames, replay.missed)
        self._update_gauges()
        log.info(
            "participant resumed",
            extra={**_context(room, member), "missed": state["missed"], "seq": replay.start_seq},
        )
        return room, frame, replay

    @property
    def holding(self) -> int:
        """How many participants this instance holds for a resume right now."""
        return len(self._holds)

    async def stop_holding(self) -> None:
        """Shutdown: cancel the grace timers (presence expires by itself; a survivor's
        reaper announces the departures)."""
        for task in list(self._holds):
            task.cancel()
        await asyncio.gather(*self._holds, return_exceptions=True)

    def _departed_here_only(self, room: LocalRoom, member: Member, reason: LeaveReason) -> None:
        log.warning(
            "backend unavailable: the departure is told to this instance only; "
            "elsewhere the participant's presence will expire",
            extra={"room_id": room.room_id, "user_id": member.user_id},
        )
        if room.roster.get(member.user_id) == member:  # not replaced meanwhile
            self._apply_event(room, self._event(room, member, reason))

    async def _departed(
        self, room: LocalRoom, member: Member, *, reason: LeaveReason, removed: bool
    ) -> None:
        if removed:
            self._emit(room, self._event(room, member, reason))
        await self._release(room)
        self._update_gauges()
        log.info(
            "participant left",
            extra={
                "room_id": room.room_id,
                "user_id": member.user_id,
                "reason": reason.value,
                "announced": removed,  # False: replaced or reaped already, or the backend down
            },
        )

    def expired(self, room_id: str, member: Member) -> None:
        """Announce a member the reaper removed (its instance stopped refreshing it)."""
        self._announce(room_id, member, LeaveReason.TIMEOUT)

    async def kick(self, room_id: str, user_id: str) -> Member | None:
        """Remove a member wherever it is connected (an admin's kick); None if it is not
        in the room. Presence is changed here, so the departure is announced once even if
        the member's instance is dead; that instance, if alive, closes it on the event."""
        member = await self._backend.evict(room_id, user_id)
        if member is not None:
            self._announce(room_id, member, LeaveReason.KICKED)
        return member

    async def close_room(self, room_id: str) -> tuple[Member, ...]:
        """Remove every member of a room (an admin's close); each member's instance closes
        its session with `room_closed`. Returns who was removed."""
        members = await self._backend.evict_all(room_id)
        for member in members:
            self._announce(room_id, member, LeaveReason.ROOM_CLOSED)
        return members

    def _announce(self, room_id: str, member: Member, reason: LeaveReason) -> None:
        """Announce a departure decided here, for a room this instance may not serve:
        a transient LocalRoom emits it then."""
        room = self._rooms.get(room_id) or LocalRoom(room_id)
        self._emit(room, self._event(room, member, reason))

    def local_members(self) -> Iterator[tuple[str, Peer]]:
        for room in self._rooms.values():
            for peer in room.sessions.values():
                yield room.room_id, peer

    def room_count(self) -> int:
        return len(self._rooms)

    # The per-message path.

    def relay(
        self,
        peer: Peer,
        room: LocalRoom,
        kind: MessageType,
        payload: dict[str, Any],
        *,
        span: Span | None = None,
    ) -> int:
        """Deliver a client message to its target, else to every other member of its room;
        return how many sockets on this instance it was queued for (the caller, which knows
        when the frame arrived, records the relay). `span`: the frame's, when sampled."""
        sender = peer.member.user_id
        target = payload.get("target_user_id")
        frame = encode(kind, payload, room_id=room.room_id, sender_id=sender)
        delivered = 0
        if target is not None:
            if target not in room.roster:
                raise SignalingError(
                    ErrorCode.TARGET_NOT_FOUND, f"{target[:128]!r} is not in this room"
                )
            local = room.sessions.get(target)
            if local is not None:
                delivered = self._count((local,), frame, kind, None)
            remote = local is None
        else:
            delivered = self._count(room.sessions.values(), frame, kind, sender)
            remote = len(room.roster) > len(room.sessions)  # members on other instances
        if remote or room.joining:
            message = BusMessage(
                BusKind.RELAY, sender, frame, target, relay_type=kind.value, sent_at=time.time()
            )
            if room.joining:
                self._buffer(room, message, own=True)
            if remote:
                self._publish(room, message, traced=span is not None)
        return delivered

    def _publish(self, room: LocalRoom, message: BusMessage, *, traced: bool) -> None:
        if traced:  # a sampled relay's span is current: the publish span nests in it
            with self._spans.publish(room.room_id, message.relay_type) as traceparent:
                if traceparent:
                    message = replace(message, traceparent=traceparent)
                self._send(room, message)
        else:
            self._send(room, message)

    def _send(self, room: LocalRoom, message: BusMessage) -> None:
        try:
            self._backend.publish(room.room_id, encode_bus(message))
        except BackendUnavailableError as exc:
            if (failures := self._publish_failures.due()) is not None:
                log.error(
                    "Failed to publish message",
                    extra={
                        "room_id": room.room_id,
                        "sender_id": message.user_id,
                        "message_type": message.relay_type,
                        "error": str(exc),
                        "failures": failures,
                    },
                )
            raise exc.to_signaling() from exc

    def on_bus_message(self, room_id: str, data: bytes) -> None:
        """Deliver what another instance published (the backend's listener calls this)."""
        try:
            message = decode_bus(data)
        except BusDecodeError:
            log.exception("dropped an undecodable bus message", extra={"room_id": room_id})
            return
        room = self._rooms.get(room_id)
        if room is None:
            return
        if message.kind is BusKind.TAKE:
            self._on_take(room, message)
            return
        if message.kind is BusKind.GIVEN:
            taking = room.taking.get(message.session_id)
            if taking is not None and not taking.given.done():
                given = (None, None) if message.seq < 0 else (message.seq, message.dropped_at)
                taking.given.set_result(given)
            return
        if message.kind is BusKind.RELAY:
            if message.target is not None:
                local = room.sessions.get(message.target)
                recipients: Iterable[Peer] = () if local is None else (local,)
            else:
                recipients = room.sessions.values()
            self._deliver_relayed(room, message, recipients, sender=message.user_id)
            if self._debug:
                log.debug(
                    "Delivered %s from another instance",
                    message.relay_type,
                    extra={
                        "room_id": room_id,
                        "sender_id": message.user_id,
                        "message_type": message.relay_type,
                        "target_user_id": message.target,
                    },
                )
        else:
            self._apply_event(room, message)
        if room.joining:
            self._buffer(room, message, own=False)

    def _count(
        self, recipients: Iterable[Peer], frame: bytes, relay_type: str, sender: str | None
    ) -> int:
        """Deliver a relayed frame to `recipients` but its sender; how many queued it."""
        delivered = 0
        for other in recipients:
            if other.member.user_id != sender:
                dropped = other.deliver(frame)
                if dropped is None:
                    delivered += 1
                else:
                    self._metrics.dropped(relay_type or "unknown", dropped)
        return delivered

    def _deliver_relayed(
        self,
        room: LocalRoom,
        message: BusMessage,
        recipients: Iterable[Peer],
        *,
        sender: str | None,
    ) -> None:
        """Deliver a frame relayed on another instance (or while a member was joining),
        in a span under its publish span when the trace is sampled."""
        if self._tracing and message.traceparent:
            with self._spans.deliver(
                room.room_id,
                traceparent=message.traceparent,
                relay_type=message.relay_type,
                sender=message.user_id,
                target=message.target,
            ) as span:
                delivered = self._count(recipients, message.frame, message.relay_type, sender)
                span.set_attribute(span_names.DELIVERED, delivered)
        else:
            delivered = self._count(recipients, message.frame, message.relay_type, sender)
        self._record_relayed(message, delivered)

    def _record_relayed(self, message: BusMessage, delivered: int) -> None:
        """Relay metrics for a frame relayed on another instance (or before a join): its
        latency runs from when that instance relayed it (wall clock: hosts' clocks must
        agree, as NTP keeps them)."""
        stats = self._relays.get(message.relay_type)
        if delivered and stats is not None and message.sent_at:
            stats.record(delivered, max(time.time() - message.sent_at, 0.0))

    # Join and leave events.

    def _event(self, room: LocalRoom, member: Member, reason: LeaveReason | None) -> BusMessage:
        person = {"user_id": member.user_id, "username": member.username}
        if reason is None:
            kind, frame = (
                BusKind.JOINED,
                encode(MessageType.USER_JOINED, person, room_id=room.room_id),
            )
        else:
            payload = {**person, "reason": reason.value}
            kind, frame = BusKind.LEFT, encode(MessageType.USER_LEFT, payload, room_id=room.room_id)
        return BusMessage(
            kind=kind,
            user_id=member.user_id,
            frame=frame,
            session_id=member.session_id,
            username=member.username,
            reason=reason.value if reason else "",
        )

    def _emit(self, room: LocalRoom, event: BusMessage) -> None:
        """Apply an event of ours here, then tell the other instances."""
        self._apply_event(room, event)
        if room.joining:
            self._buffer(room, event, own=True)
        try:
            self._backend.publish(room.room_id, encode_bus(event))
        except BackendUnavailableError:
            log.warning(
                "could not announce %s to other instances",
                event.kind.name.lower(),
                extra={"room_id": room.room_id, "user_id": event.user_id},
            )

    def _apply_event(self, room: LocalRoom, event: BusMessage) -> None:
        user_id = event.user_id
        _update_roster(room, event)
        local = room.sessions.get(user_id)
        if (
            event.kind is BusKind.LEFT
            and local is not None
            and local.member.session_id == event.session_id
        ):
            if event.reason == LeaveReason.TIMEOUT.value:
                local.time_out()  # reaped: its peers were told it left, so it must go
            elif (error := _ending_error(event.reason)) is not None:
                local.close(error)  # replaced elsewhere, kicked, or its room was closed
        for other in room.sessions.values():
            if other.member.user_id != user_id:
                _tell(room, other, event)

    def _buffer(self, room: LocalRoom, message: BusMessage, *, own: bool) -> None:
        limit = self._join_buffer_limit()
        for joining in room.joining.values():
            if len(joining.messages) < limit:
                joining.messages.append(message)
            else:
                joining.overflowed = True
        for taking in room.taking.values():
            if taking.published if own else taking.echoed:
                if len(taking.after) < limit:
                    taking.after.append(message)
                else:
                    taking.overflowed = True

    # Room channel subscriptions: the first local member subscribes, the last unsubscribes.

    async def _subscribe(self, room: LocalRoom) -> None:
        async with room.lock:
            if not room.subscribed:
                await self._backend.subscribe(room.room_id)
                room.subscribed = True

    async def _release(self, room: LocalRoom) -> None:
        if not room.idle:
            return
        async with room.lock:
            if room.subscribed and room.idle:
                try:
                    await self._backend.unsubscribe(room.room_id)
                except BackendUnavailableError:
                    log.warning("unsubscribe failed", extra={"room_id": room.room_id})
                room.subscribed = False
            if room.idle and not room.subscribed and self._rooms.get(room.room_id) is room:
                del self._rooms[room.room_id]

    def _update_gauges(self) -> None:
        self._metrics.rooms.set(len(self._rooms))
        self._metrics.participants.set(sum(len(r.sessions) for r in self._rooms.values()))


def _context(room: LocalRoom, member: Member) -> dict[str, str]:
    return {"room_id": room.room_id, "user_id": member.user_id}


def _resumed_error() -> SignalingError:
    return SignalingError(ErrorCode.SESSION_REPLACED, "this session was resumed elsewhere")


def _frames_for(messages: list[BusMessage], member: Member) -> list[bytes]:
    """The frames of buffered bus messages a resumed member is to be sent."""
    me = member.user_id
    return [
        m.frame
        for m in messages
        if m.target == me or (m.user_id != me and (m.kind is not BusKind.RELAY or m.target is None))
    ]


def _replaced_error() -> SignalingError:
    return SignalingError(ErrorCode.SESSION_REPLACED, "you joined this room again elsewhere")


def _ending_error(reason: str) -> SignalingError | None:
    """The error that closes a session a LEFT event with `reason` is about, if any."""
    if reason == LeaveReason.REPLACED.value:
        return _replaced_error()  # the user rejoined, maybe on another instance
    if reason == LeaveReason.KICKED.value:
        return SignalingError(ErrorCode.KICKED, "an administrator removed you from this room")
    if reason == LeaveReason.ROOM_CLOSED.value:
        return SignalingError(ErrorCode.ROOM_CLOSED, "an administrator closed this room")
    return None


def _ended_while_joining(messages: list[BusMessage], member: Member) -> SignalingError | None:
    """The error for a joiner whose very session a buffered LEFT event removed."""
    for message in messages:
        if (
            message.kind is BusKind.LEFT
            and message.user_id == member.user_id
            and message.session_id == member.session_id
        ):
            error = _ending_error(message.reason)
            if error is not None:
                return error
    return None


def _tell(room: LocalRoom, peer: Peer, event: BusMessage) -> None:
    """Deliver a join/leave event unless it is no news to `peer`: a join it already knows
    of (from its room_state), or the departure of a session it was never told of."""
    known = room.acquaintances.get(peer.member.session_id)
    if known is not None:
        if event.kind is BusKind.JOINED:
            if known.get(event.user_id) == event.session_id:
                return
            known[event.user_id] = event.session_id
        else:
            if known.get(event.user_id) != event.session_id:
                return
            del known[event.user_id]
    if event.reason == LeaveReason.ROOM_CLOSED.value:
        return  # everyone is leaving: each is told `room_closed` instead (see LeaveReason)
    peer.deliver(event.frame)


def _update_roster(room: LocalRoom, event: BusMessage) -> None:
    if event.kind is BusKind.JOINED:
        room.roster[event.user_id] = Member(event.user_id, event.username, event.session_id)
    else:
        known = room.roster.get(event.user_id)
        if known is not None and known.session_id == event.session_id:
            del room.roster[event.user_id]


def _after_snapshot(
    messages: list[BusMessage], members: tuple[Member, ...], *, me: str
) -> list[BusMessage]:
    """What a joiner still needs from its join buffer: relays meant for it and, for each
    other member, only the events after the last one its snapshot already reflects."""
    known = {m.user_id: m.session_id for m in members}
    reflected: dict[str, int] = {}  # user_id -> index of that event
    for index, message in enumerate(messages):
        if message.kind is BusKind.JOINED:
            if known.get(message.user_id) == message.session_id:
                reflected[message.user_id] = index
        elif message.kind is BusKind.LEFT and message.user_id not in known:
            reflected[message.user_id] = index
    later: list[BusMessage] = []
    for index, message in enumerate(messages):
        if message.kind is BusKind.RELAY:
            wanted = message.target == me or (message.target is None and message.user_id != me)
        else:
            wanted = message.user_id != me and index > reflected.get(message.user_id, -1)
        if wanted:
            later.append(message)
    return later
