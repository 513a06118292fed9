"""One room as this instance sees it: its sessions here, its roster of members on every
instance, the buffers of joins and resumes in flight, and the helpers that keep them.
"""

from __future__ import annotations

import asyncio
from typing import Protocol

from rendezvous.backends.base import Member
from rendezvous.bus import BusKind, BusMessage
from rendezvous.protocol import ErrorCode, LeaveReason, SignalingError


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


class Joining:
    """Everything said in a room while a member's join is in flight, replayed after its
    `room_state` so that nothing between its subscription and its snapshot is lost."""

    __slots__ = ("messages", "overflowed", "peer")

    def __init__(self, peer: Peer) -> None:
        self.peer = peer
        self.messages: list[BusMessage] = []
        self.overflowed = False


class Taking:
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
        self.joining: dict[str, Joining] = {}  # by session_id
        # By local session_id: whom that session has been told of (user_id -> session_id).
        # Joins racing on several instances can deliver an event after a snapshot that
        # already showed it; this keeps every member told of each other exactly once.
        self.acquaintances: dict[str, dict[str, str]] = {}
        self.lock = asyncio.Lock()  # orders subscribe/unsubscribe of the channel
        self.subscribed = False
        self.taking: dict[str, Taking] = {}  # by the session_id being resumed here
        # Session ids whose live connection here was overtaken by a resume elsewhere: its
        # end is not a departure.
        self.taken: set[str] = set()

    @property
    def idle(self) -> bool:
        return not self.sessions and not self.joining


def log_context(room: LocalRoom, member: Member) -> dict[str, str]:
    return {"room_id": room.room_id, "user_id": member.user_id}


def replaced_error() -> SignalingError:
    return SignalingError(ErrorCode.SESSION_REPLACED, "you joined this room again elsewhere")


def ending_error(reason: str) -> SignalingError | None:
    """The error that closes a session a LEFT event with `reason` is about, if any."""
    if reason == LeaveReason.REPLACED.value:
        return replaced_error()  # the user rejoined, maybe on another instance
    if reason == LeaveReason.KICKED.value:
        return SignalingError(ErrorCode.KICKED, "an administrator removed you from this room")
    if reason == LeaveReason.ROOM_CLOSED.value:
        return SignalingError(ErrorCode.ROOM_CLOSED, "an administrator closed this room")
    return None


def ended_while_joining(messages: list[BusMessage], member: Member) -> SignalingError | None:
    """The error for a joiner whose very session a buffered LEFT event removed."""
    for message in messages:
        if (
            message.kind is BusKind.LEFT
            and message.user_id == member.user_id
            and message.session_id == member.session_id
        ):
            error = ending_error(message.reason)
            if error is not None:
                return error
    return None


def tell(room: LocalRoom, peer: Peer, event: BusMessage) -> None:
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


def update_roster(room: LocalRoom, event: BusMessage) -> None:
    if event.kind is BusKind.JOINED:
        room.roster[event.user_id] = Member(event.user_id, event.username, event.session_id)
    else:
        known = room.roster.get(event.user_id)
        if known is not None and known.session_id == event.session_id:
            del room.roster[event.user_id]


def after_snapshot(
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
