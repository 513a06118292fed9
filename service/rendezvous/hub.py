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
from typing import Any

from opentelemetry.trace import Span

from rendezvous.backends.base import (
    Backend,
    BackendUnavailableError,
    JoinResult,
    Member,
    RoomFullError,
)
from rendezvous.bus import BusDecodeError, BusKind, BusMessage, decode_bus, encode_bus
from rendezvous.handoff import Holding
from rendezvous.protocol import (
    ErrorCode,
    LeaveReason,
    MessageType,
    SignalingError,
    encode,
)
from rendezvous.rosters import (
    Joining,
    LocalRoom,
    Peer,
    after_snapshot,
    ended_while_joining,
    ending_error,
    replaced_error,
    tell,
    update_roster,
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


class Hub(Holding):
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
        room.joining[member.session_id] = Joining(peer)
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
        ended = ended_while_joining(joining.messages, member)
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
        joining: Joining,
        resume_token: str | None,
    ) -> None:
        member = peer.member
        for other in result.members:
            room.roster[other.user_id] = other
        later = after_snapshot(joining.messages, result.members, me=member.user_id)
        # These came after the snapshot: bring the roster up to date with them.
        for message in later:
            if message.kind is not BusKind.RELAY:
                update_roster(room, message)
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
            previous.close(replaced_error())
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
        self, room: LocalRoom, peer: Peer, later: list[BusMessage], joining: Joining
    ) -> None:
        if joining.overflowed:
            peer.close(SignalingError(ErrorCode.SLOW_CONSUMER, "too much traffic while joining"))
            return
        for message in later:
            if message.kind is BusKind.RELAY:
                self._deliver_relayed(room, message, (peer,), sender=None)
            else:
                tell(room, peer, message)

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
            self._on_given(room, message)
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
        update_roster(room, event)
        local = room.sessions.get(user_id)
        if (
            event.kind is BusKind.LEFT
            and local is not None
            and local.member.session_id == event.session_id
        ):
            if event.reason == LeaveReason.TIMEOUT.value:
                local.time_out()  # reaped: its peers were told it left, so it must go
            elif (error := ending_error(event.reason)) is not None:
                local.close(error)  # replaced elsewhere, kicked, or its room was closed
        for other in room.sessions.values():
            if other.member.user_id != user_id:
                tell(room, other, event)

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
