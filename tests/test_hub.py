"""Hub behaviour that is hard to reach over sockets: two Hubs on two MemoryBackends sharing
one MemoryBroker (two instances on one Redis), with recording peers in place of sessions.

`RecordingPeer` implements the hub's own `Peer` protocol and records what the hub hands
it; it stands in for a WebSocket session, not for any component under test.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import secrets
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from typing import Any

import pytest

from rendezvous.backends.base import JoinResult, Member
from rendezvous.backends.memory import MemoryBackend, MemoryBroker
from rendezvous.hub import Hub
from rendezvous.protocol import CloseCode, ErrorCode, LeaveReason, MessageType, SignalingError
from rendezvous.rosters import LocalRoom
from rendezvous.telemetry.metrics import Metrics
from rendezvous.telemetry.tracing import Tracing

SDP = "v=0\r\no=- 1 2 IN IP4 127.0.0.1\r\ns=-\r\nt=0 0\r\n"
CAPACITY = 10
RECEIVE_TIMEOUT_SECONDS = 2.0


class RecordingPeer:
    """A session as the hub sees it: it records delivered frames, closes and time-outs."""

    def __init__(self, user_id: str, username: str | None = None) -> None:
        self.member = Member(user_id, username or user_id.title(), secrets.token_hex(8))
        self.last_seen = asyncio.get_running_loop().time()
        self.frames: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        self.closed_with: list[SignalingError] = []
        self.timed_out = False

    def deliver(self, frame: bytes) -> None:
        self.frames.put_nowait(json.loads(frame))

    def close(self, error: SignalingError) -> None:
        self.closed_with.append(error)

    def time_out(self) -> None:
        self.timed_out = True

    async def expect(self, kind: str) -> dict[str, Any]:
        frame = await asyncio.wait_for(self.frames.get(), RECEIVE_TIMEOUT_SECONDS)
        assert frame["type"] == kind, f"expected {kind}, got {frame}"
        return frame

    async def expect_nothing(self, seconds: float = 0.2) -> None:
        with contextlib.suppress(TimeoutError):
            frame = await asyncio.wait_for(self.frames.get(), seconds)
            raise AssertionError(f"{self.member.user_id} expected nothing, got {frame}")


class CountingBackend(MemoryBackend):
    """Counts reads of the room, to prove the per-message path never makes one."""

    member_reads = 0

    async def members(self, room_id: str) -> tuple[Member, ...]:
        self.member_reads += 1
        return await super().members(room_id)


class GatedBackend(CountingBackend):
    """Holds a join in flight at a chosen point until the test opens the gate: before the
    backend takes its snapshot, or after it took it but before the result is returned."""

    def __init__(self, *, presence_ttl_seconds: float, broker: MemoryBroker) -> None:
        super().__init__(presence_ttl_seconds=presence_ttl_seconds, broker=broker)
        self.hold_before_snapshot = False
        self.hold_after_snapshot = False
        self.reached = asyncio.Event()
        self.gate = asyncio.Event()

    async def join(self, room_id: str, member: Member, *, capacity: int) -> JoinResult:
        if self.hold_before_snapshot:
            self.reached.set()
            await self.gate.wait()
        result = await super().join(room_id, member, capacity=capacity)
        if self.hold_after_snapshot:
            self.reached.set()
            await self.gate.wait()
        return result


@dataclass
class Instance:
    hub: Hub
    backend: GatedBackend
    broker: MemoryBroker

    async def join(self, peer: RecordingPeer, room_id: str = "r1") -> LocalRoom:
        room = await self.hub.join(peer, room_id, capacity=CAPACITY)
        await peer.expect("room_state")
        return room

    async def held_join(
        self, peer: RecordingPeer, *, before_snapshot: bool = False, after_snapshot: bool = False
    ) -> asyncio.Task[LocalRoom]:
        """Start `peer`'s join and return once the backend holds it at that point."""
        self.backend.hold_before_snapshot = before_snapshot
        self.backend.hold_after_snapshot = after_snapshot
        joining = asyncio.create_task(self.hub.join(peer, "r1", capacity=CAPACITY))
        await asyncio.wait_for(self.backend.reached.wait(), RECEIVE_TIMEOUT_SECONDS)
        return joining

    async def joined(self, user_id: str, room_id: str = "r1") -> tuple[RecordingPeer, LocalRoom]:
        peer = RecordingPeer(user_id)
        return peer, await self.join(peer, room_id)


@pytest.fixture
async def instances() -> AsyncIterator[tuple[Instance, Instance]]:
    broker = MemoryBroker()
    started: list[Instance] = []
    for _ in range(2):
        backend = GatedBackend(presence_ttl_seconds=30, broker=broker)
        hub = Hub(
            backend,
            metrics=Metrics(),
            spans=Tracing.disabled().spans(bus="memory"),
            join_buffer_limit=lambda: 64,
        )
        await backend.start(hub.on_bus_message)
        started.append(Instance(hub, backend, broker))
    try:
        yield started[0], started[1]
    finally:
        for instance in started:
            await instance.backend.stop()


def offer(target: str | None = None) -> dict[str, Any]:
    payload: dict[str, Any] = {"type": "offer", "sdp": SDP}
    if target is not None:
        payload["target_user_id"] = target
    return payload


async def drain(*peers: RecordingPeer) -> None:
    """Let the bus deliver what is in flight, then forget what the peers got so far."""
    await asyncio.sleep(0.05)
    for peer in peers:
        while not peer.frames.empty():
            peer.frames.get_nowait()


def view(frames: Sequence[dict[str, Any]]) -> set[str]:
    """The members a client believes are present, from its room_state and the events after."""
    present: set[str] = set()
    for frame in frames:
        if frame["type"] == "room_state":
            present = {p["user_id"] for p in frame["payload"]["participants"]}
        elif frame["type"] == "user_joined":
            present.add(frame["payload"]["user_id"])
        elif frame["type"] == "user_left":
            present.discard(frame["payload"]["user_id"])
    return present


async def received(peer: RecordingPeer) -> list[dict[str, Any]]:
    """Everything the peer got, once the bus has delivered what was in flight."""
    await asyncio.sleep(0.05)
    frames = []
    while not peer.frames.empty():
        frames.append(peer.frames.get_nowait())
    return frames


# Delivery across instances.


async def test_targeted_message_reaches_only_its_target_on_the_other_hub(
    instances: tuple[Instance, Instance],
) -> None:
    one, two = instances
    alice, room = await one.joined("alice")
    bob, _ = await two.joined("bob")
    carol, _ = await two.joined("carol")
    await drain(alice, bob, carol)
    one.hub.relay(alice, room, MessageType.OFFER, offer("bob"))
    got = await bob.expect("offer")
    assert got["sender_id"] == "alice"
    assert got["room_id"] == "r1"
    assert got["payload"] == offer("bob")
    await asyncio.gather(bob.expect_nothing(), carol.expect_nothing(), alice.expect_nothing())


async def test_broadcast_reaches_every_other_member_once_across_hubs(
    instances: tuple[Instance, Instance],
) -> None:
    one, two = instances
    alice, room = await one.joined("alice")
    dave, _ = await one.joined("dave")
    bob, _ = await two.joined("bob")
    carol, _ = await two.joined("carol")
    await drain(alice, dave, bob, carol)
    one.hub.relay(alice, room, MessageType.OFFER, offer())
    for peer in (dave, bob, carol):
        assert (await peer.expect("offer"))["sender_id"] == "alice"
    await asyncio.gather(*(p.expect_nothing() for p in (alice, dave, bob, carol)))


async def test_broadcast_with_every_member_local_stays_off_the_bus(
    instances: tuple[Instance, Instance],
) -> None:
    one, _ = instances
    alice, room = await one.joined("alice")
    bob, _ = await one.joined("bob")
    # Another instance listening to the room channel directly sees no relay traffic.
    spy = MemoryBackend(presence_ttl_seconds=30, broker=one.broker)
    heard: list[bytes] = []
    await spy.start(lambda room_id, data: heard.append(data))
    await spy.subscribe("r1")
    try:
        one.hub.relay(alice, room, MessageType.OFFER, offer())
        assert (await bob.expect("offer"))["sender_id"] == "alice"
        await asyncio.sleep(0.05)
        assert heard == []
    finally:
        await spy.stop()


async def test_target_not_found_comes_from_the_roster_without_backend_reads(
    instances: tuple[Instance, Instance],
) -> None:
    one, two = instances
    bob, bob_room = await two.joined("bob")  # known to alice from her join snapshot
    await two.joined("elsewhere", room_id="r2")
    alice, room = await one.joined("alice")
    carol, _ = await two.joined("carol")  # known to alice from the user_joined event
    await alice.expect("user_joined")
    await drain(bob, carol)
    reads = one.backend.member_reads
    one.hub.relay(alice, room, MessageType.OFFER, offer("carol"))
    assert (await carol.expect("offer"))["sender_id"] == "alice"
    for missing in ("nobody", "elsewhere"):  # never in the room, or in another room
        with pytest.raises(SignalingError) as refused:
            one.hub.relay(alice, room, MessageType.OFFER, offer(missing))
        assert refused.value.code is ErrorCode.TARGET_NOT_FOUND
    await two.hub.leave(bob, bob_room, reason=LeaveReason.LEFT)
    await alice.expect("user_left")
    with pytest.raises(SignalingError) as refused:
        one.hub.relay(alice, room, MessageType.OFFER, offer("bob"))
    assert refused.value.code is ErrorCode.TARGET_NOT_FOUND
    assert one.backend.member_reads == reads
    assert (await carol.expect("user_left"))["payload"]["user_id"] == "bob"
    await asyncio.gather(bob.expect_nothing(), carol.expect_nothing())


# Join and leave events.


async def test_join_and_leave_events_reach_the_other_hub(
    instances: tuple[Instance, Instance],
) -> None:
    one, two = instances
    alice, _ = await one.joined("alice")
    bob = RecordingPeer("bob", "Bob")
    room = await two.hub.join(bob, "r1", capacity=CAPACITY)
    state = await bob.expect("room_state")
    assert {p["user_id"] for p in state["payload"]["participants"]} == {"alice", "bob"}
    joined_event = await alice.expect("user_joined")
    assert joined_event["payload"] == {"user_id": "bob", "username": "Bob"}
    await two.hub.leave(bob, room, reason=LeaveReason.LEFT)
    left = await alice.expect("user_left")
    assert left["payload"] == {"user_id": "bob", "username": "Bob", "reason": "left"}
    await asyncio.gather(alice.expect_nothing(), bob.expect_nothing())


async def test_session_replaced_from_the_other_hub_is_closed(
    instances: tuple[Instance, Instance],
) -> None:
    one, two = instances
    old = RecordingPeer("alice", "Alice")
    old_room = await one.join(old)
    dave, dave_room = await one.joined("dave")
    bob, _ = await two.joined("bob")
    await drain(old, dave, bob)
    new = RecordingPeer("alice", "Alice")
    await two.hub.join(new, "r1", capacity=CAPACITY)
    room_state = await new.expect("room_state")
    assert room_state["payload"]["participant_count"] == 3
    await asyncio.sleep(0.05)
    assert [e.code for e in old.closed_with] == [ErrorCode.SESSION_REPLACED]
    assert old.closed_with[0].close_code == CloseCode.SESSION_REPLACED
    for peer in (dave, bob):
        left = await peer.expect("user_left")
        assert left["payload"] == {"user_id": "alice", "username": "Alice", "reason": "replaced"}
        assert (await peer.expect("user_joined"))["payload"]["user_id"] == "alice"
    # The closed session's own leave afterwards announces nothing and removes nobody.
    await one.hub.leave(old, old_room, reason=LeaveReason.LEFT)
    await asyncio.gather(dave.expect_nothing(), bob.expect_nothing())
    one.hub.relay(dave, dave_room, MessageType.OFFER, offer("alice"))
    assert (await new.expect("offer"))["sender_id"] == "dave"
    assert new.closed_with == []


async def test_expiry_is_announced_by_a_hub_without_local_members_of_the_room(
    instances: tuple[Instance, Instance],
) -> None:
    one, two = instances
    ghost = Member("ghost", "Ghost", "ghost-session")
    await one.backend.join("r1", ghost, capacity=CAPACITY)  # bob's room_state lists it
    bob, _ = await two.joined("bob")
    one.hub.expired("r1", ghost)
    left = await bob.expect("user_left")
    assert left["payload"] == {"user_id": "ghost", "username": "Ghost", "reason": "timeout"}
    await bob.expect_nothing()
    assert one.hub.room_count() == 0  # announcing did not leave an empty room behind


async def test_a_departure_is_told_only_to_those_who_knew_of_that_session(
    instances: tuple[Instance, Instance],
) -> None:
    """A join racing a leave can miss a member in its snapshot whose user_left arrives
    later: that departure is no news to it. (The twin case, a user_joined arriving after a
    snapshot that listed the member, is proven across real instances in tests/scaleout.)"""
    one, two = instances
    alice, _ = await one.joined("alice")
    bob, _ = await two.joined("bob")
    await drain(alice, bob)
    stranger = Member("stranger", "Stranger", "s-1")
    two.hub.expired("r1", stranger)  # neither was ever told of this session
    await alice.expect_nothing()
    await bob.expect_nothing()


async def test_a_local_session_whose_presence_was_reaped_elsewhere_is_timed_out(
    instances: tuple[Instance, Instance],
) -> None:
    """If this instance failed to refresh a member in time and another instance reaped it,
    its peers were told it left; the socket must not linger on, invisible to the room."""
    one, two = instances
    alice, _ = await one.joined("alice")
    bob, _ = await one.joined("bob")
    carol, _ = await two.joined("carol")
    await drain(alice, bob, carol)
    two.hub.expired("r1", alice.member)
    for peer in (bob, carol):
        left = await peer.expect("user_left")
        assert left["payload"]["reason"] == "timeout"
    assert alice.timed_out or alice.closed_with


# The join buffer: what is said while a join is in flight.


async def test_messages_during_a_join_in_flight_are_replayed_after_room_state(
    instances: tuple[Instance, Instance],
) -> None:
    one, two = instances
    alice, alice_room = await one.joined("alice")
    carol, _ = await two.joined("carol")  # so alice's broadcasts need the bus
    await drain(alice, carol)
    bob = RecordingPeer("bob")
    joining = await two.held_join(bob, before_snapshot=True)
    # Bob is subscribed but not yet in the room: these happen before his snapshot.
    one.hub.relay(alice, alice_room, MessageType.OFFER, offer())
    dave, _ = await one.joined("dave")
    await carol.expect("offer")
    assert bob.frames.empty()  # nothing before its room_state
    two.backend.gate.set()
    await joining
    frames = await received(bob)
    assert frames[0]["type"] == "room_state"
    assert {p["user_id"] for p in frames[0]["payload"]["participants"]} == {
        "alice",
        "carol",
        "dave",
        "bob",
    }
    # Alice's offer is replayed; dave's join is not, room_state already says it.
    assert [(f["type"], f["sender_id"]) for f in frames[1:]] == [("offer", "alice")]
    assert dave.member.user_id in view(frames)


async def test_member_who_came_and_went_during_a_join_is_not_left_behind(
    instances: tuple[Instance, Instance],
) -> None:
    one, two = instances
    await one.joined("alice")
    bob = RecordingPeer("bob")
    joining = await two.held_join(bob, before_snapshot=True)
    eve, eve_room = await one.joined("eve")
    await one.hub.leave(eve, eve_room, reason=LeaveReason.LEFT)
    await asyncio.sleep(0.05)
    two.backend.gate.set()
    await joining
    frames = await received(bob)
    assert view(frames) == {m.user_id for m in await two.backend.members("r1")}
    assert view(frames) == {"alice", "bob"}


async def test_events_after_the_join_snapshot_reach_the_joiner_and_its_roster(
    instances: tuple[Instance, Instance],
) -> None:
    one, two = instances
    eve, eve_room = await one.joined("eve")
    alice, _ = await one.joined("alice")
    bob = RecordingPeer("bob")
    joining = await two.held_join(bob, after_snapshot=True)
    # Bob's snapshot is taken (eve in it, frank not); the result is still on its way.
    await one.hub.leave(eve, eve_room, reason=LeaveReason.LEFT)
    frank, _ = await one.joined("frank")
    await asyncio.sleep(0.05)
    two.backend.gate.set()
    bob_room = await joining
    frames = await received(bob)
    assert frames[0]["type"] == "room_state"
    assert {p["user_id"] for p in frames[0]["payload"]["participants"]} == {
        "eve",
        "alice",
        "bob",
    }
    assert view(frames) == {"alice", "bob", "frank"}
    # The hub's roster agrees: eve is gone, frank is reachable.
    await drain(alice, frank)
    with pytest.raises(SignalingError) as refused:
        two.hub.relay(bob, bob_room, MessageType.OFFER, offer("eve"))
    assert refused.value.code is ErrorCode.TARGET_NOT_FOUND
    two.hub.relay(bob, bob_room, MessageType.OFFER, offer("frank"))
    assert (await frank.expect("offer"))["sender_id"] == "bob"
    await alice.expect_nothing()


async def test_rejoin_during_a_join_leaves_the_user_present(
    instances: tuple[Instance, Instance],
) -> None:
    """Events of a session older than the snapshot's must not undo the snapshot."""
    one, two = instances
    await one.joined("alice")
    bob = RecordingPeer("bob")
    joining = await two.held_join(bob, before_snapshot=True)
    await one.joined("eve")
    await one.joined("eve")  # replaces the first eve: user_left(replaced), user_joined
    await asyncio.sleep(0.05)
    two.backend.gate.set()
    await joining
    frames = await received(bob)
    assert view(frames) == {"alice", "eve", "bob"}


@pytest.mark.parametrize(
    ("code", "close_code"),
    [(ErrorCode.KICKED, CloseCode.KICKED), (ErrorCode.ROOM_CLOSED, CloseCode.ROOM_CLOSED)],
)
async def test_a_joiner_kicked_or_closed_before_it_is_admitted_is_refused_not_a_ghost(
    instances: tuple[Instance, Instance], code: ErrorCode, close_code: CloseCode
) -> None:
    """An admin's kick (or close) on another instance lands between the joiner's backend
    join and its admission: it must not be admitted, nor announced after its departure."""
    one, two = instances
    alice, _ = await one.joined("alice")
    bob = RecordingPeer("bob")
    joining = await two.held_join(bob, after_snapshot=True)
    if code is ErrorCode.KICKED:
        assert await one.hub.kick("r1", "bob") == bob.member
    else:
        assert set(await one.hub.close_room("r1")) == {alice.member, bob.member}
    await asyncio.sleep(0.05)  # the event reaches the joiner's hub, which buffers it
    two.backend.gate.set()
    with pytest.raises(SignalingError) as refused:
        await joining
    assert (refused.value.code, refused.value.close_code) == (code, close_code)
    await bob.expect_nothing()  # no room_state
    await alice.expect_nothing(0.3)  # neither user_joined nor user_left for bob
    if code is ErrorCode.KICKED:
        assert await one.backend.members("r1") == (alice.member,)
        assert alice.closed_with == []
    else:
        assert await one.backend.members("r1") == ()
        assert [e.code for e in alice.closed_with] == [ErrorCode.ROOM_CLOSED]
