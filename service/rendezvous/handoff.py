"""Session resume on the hub: holding a participant whose socket dropped, and handing a
session over to the instance a resume reaches (TAKE, then GIVEN on the room channel).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING

from rendezvous.backends.base import (
    Backend,
    BackendUnavailableError,
    Member,
    ResumeRefusedError,
)
from rendezvous.bus import BusKind, BusMessage, encode_bus
from rendezvous.protocol import ErrorCode, LeaveReason, MessageType, SignalingError, encode
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
from rendezvous.rosters import (
    Joining,
    LocalRoom,
    Peer,
    Taking,
    after_snapshot,
    log_context,
    update_roster,
)
from rendezvous.telemetry.metrics import Metrics

# The hub's logger: these lines were the hub's before the split, and keep its name.
log = logging.getLogger("rendezvous.hub")

# How long a resume waits for the holder on another instance to hand the session over
# (GIVEN); past it the holder is taken for dead and the resume says `missed`.
GIVEN_WAIT_SECONDS = 1.5


class Holding:
    """The hub's session resume: holding a dropped session's participant for the grace
    window, and handing a session over between instances (TAKE, then GIVEN). A mixin of
    `Hub`: it works through the hub's membership operations, declared here for typing."""

    _backend: Backend
    _grace: float
    _hold_bounds: Callable[[], tuple[int, int]]
    _holds: set[asyncio.Task[None]]
    _metrics: Metrics
    _rooms: dict[str, LocalRoom]

    if TYPE_CHECKING:  # defined by Hub

        async def leave(self, peer: Peer, room: LocalRoom, *, reason: LeaveReason) -> None: ...

        def _detach(self, peer: Peer, room: LocalRoom) -> bool: ...

        async def _subscribe(self, room: LocalRoom) -> None: ...

        async def _release(self, room: LocalRoom) -> None: ...

        def _update_gauges(self) -> None: ...

        def _departed_here_only(
            self, room: LocalRoom, member: Member, reason: LeaveReason
        ) -> None: ...

        async def _departed(
            self, room: LocalRoom, member: Member, *, reason: LeaveReason, removed: bool
        ) -> None: ...

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
            log.exception(
                "a held participant's grace timer failed", extra=log_context(room, member)
            )
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
        log.info("participant handed over", extra=log_context(room, peer.member))

    async def _give(self, room: LocalRoom, held: HeldPeer) -> None:
        """Store every frame held for the session, then tell the taker (GIVEN)."""
        try:
            if held.stream is not None:
                await held.stream.finish()
            self._send_given(
                room, held.member, last_seq=held.last_seq, dropped_at=held.dropped_at_seq
            )
        except Exception:  # the taker waits its bound, then says `missed`
            log.exception(
                "handing over a held session failed", extra=log_context(room, held.member)
            )
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
            log.exception(
                "handing over an overtaken session failed", extra=log_context(room, member)
            )

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
        self, room: LocalRoom, user_id: str, session_id: str, taking: Taking
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
        room.joining[asker.session_id] = Joining(peer)  # what is said meanwhile
        taking: Taking | None = None
        taken: tuple[list[tuple[int, bytes]], int | None, int | None] | None = None
        try:
            await self._subscribe(room)
            record = await self._backend.claim_resume(room_id, resume_hash, asker)
            snapshot = None if room.sessions else await self._backend.members(room_id)
            if record.instance_id != self._backend.instance_id:
                taking = room.taking[record.session_id] = Taking()
                taken = await self._take(room, asker.user_id, record.session_id, taking)
        except BaseException as exc:
            room.joining.pop(asker.session_id, None)
            if taking is not None:
                room.taking.pop(record.session_id, None)
            await self._release(room)
            if isinstance(exc, ResumeRefusedError):
                self._metrics.resume_refused.inc()
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
            later = after_snapshot(joining.messages, snapshot, me=member.user_id)
        room.acquaintances.setdefault(  # kept from the held session when it was here
            member.session_id,
            {m.user_id: m.session_id for m in room.roster.values() if m.user_id != asker.user_id},
        )
        for message in later:
            if message.kind is not BusKind.RELAY:
                update_roster(room, message)
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
        (self._metrics.resumed_missing if replay.missed else self._metrics.resumed).inc()
        self._update_gauges()
        log.info(
            "participant resumed",
            extra={**log_context(room, member), "missed": state["missed"], "seq": replay.start_seq},
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

    def _on_given(self, room: LocalRoom, message: BusMessage) -> None:
        """The holder on another instance stored the session a resume here takes."""
        taking = room.taking.get(message.session_id)
        if taking is not None and not taking.given.done():
            given = (None, None) if message.seq < 0 else (message.seq, message.dropped_at)
            taking.given.set_result(given)


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
