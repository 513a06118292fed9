"""The backend contract (DESIGN section 2), run against every backend in `STORES`.

Several instances share one store, as processes share one Redis. Timing-based tests use
short real TTLs and wait at least twice as long as the contract needs, so a backend with
a real clock and a network (Redis) passes them unchanged.
"""

from __future__ import annotations

import asyncio
import secrets
from collections import Counter

import pytest

from rendezvous.backends.base import (
    BackendUnavailableError,
    JoinResult,
    Member,
    RoomFullError,
    RoomPage,
    RoomSummary,
)
from tests.backends.conftest import Cluster

SHORT_TTL_SECONDS = 0.5
# Twice the TTL: by then every unrefreshed member must have expired.
EXPIRY_WAIT_SECONDS = 2 * SHORT_TTL_SECONDS


def member(user_id: str, username: str | None = None) -> Member:
    """A fresh session of `user_id`."""
    return Member(user_id, username or user_id.title(), secrets.token_hex(8))


# The room bus.


async def test_publish_right_after_subscribe_is_received(cluster: Cluster) -> None:
    publisher = await cluster.instance()
    listener = await cluster.instance()
    rooms = [f"room-{n}" for n in range(20)]
    for room in rooms:
        await listener.backend.subscribe(room)
        publisher.backend.publish(room, room.encode())
    received = [await listener.receive() for _ in rooms]
    assert sorted(received) == sorted((room, room.encode()) for room in rooms)


async def test_publish_order_is_preserved_per_publisher(cluster: Cluster) -> None:
    first = await cluster.instance()
    second = await cluster.instance()
    listener = await cluster.instance()
    await listener.backend.subscribe("r1")
    for n in range(1000):
        first.backend.publish("r1", f"a{n}".encode())
        if n % 2:
            second.backend.publish("r1", f"b{n}".encode())
    received = [(await listener.receive())[1].decode() for _ in range(1500)]
    assert [m for m in received if m.startswith("a")] == [f"a{n}" for n in range(1000)]
    assert [m for m in received if m.startswith("b")] == [f"b{n}" for n in range(1, 1000, 2)]
    await listener.expect_nothing()


async def test_every_subscribed_instance_receives_a_message_once(cluster: Cluster) -> None:
    publisher = await cluster.instance()
    listeners = [await cluster.instance() for _ in range(2)]
    outsider = await cluster.instance()
    for listener in listeners:
        await listener.backend.subscribe("r1")
    await outsider.backend.subscribe("r2")
    publisher.backend.publish("r1", b"hello")
    for listener in listeners:
        assert await listener.receive() == ("r1", b"hello")
        await listener.expect_nothing()
    await outsider.expect_nothing()


async def test_an_instance_never_receives_its_own_publishes(cluster: Cluster) -> None:
    a = await cluster.instance()
    b = await cluster.instance()
    await a.backend.subscribe("r1")
    await b.backend.subscribe("r1")
    a.backend.publish("r1", b"from-a")
    assert await b.receive() == ("r1", b"from-a")
    # b answers only after a's message reached b, so it reaches a after a's own would have.
    b.backend.publish("r1", b"from-b")
    assert await a.receive() == ("r1", b"from-b")
    await a.expect_nothing()


async def test_unsubscribe_stops_delivery(cluster: Cluster) -> None:
    publisher = await cluster.instance()
    listener = await cluster.instance()
    await listener.backend.subscribe("r1")
    await listener.backend.subscribe("r2")
    publisher.backend.publish("r1", b"before")
    assert await listener.receive() == ("r1", b"before")
    await listener.backend.unsubscribe("r1")
    publisher.backend.publish("r1", b"after")
    publisher.backend.publish("r2", b"marker")
    assert await listener.receive() == ("r2", b"marker")
    await listener.expect_nothing()


async def test_every_operation_on_a_stopped_backend_raises_unavailable(cluster: Cluster) -> None:
    instance = await cluster.instance()
    alice = member("alice")
    await instance.backend.join("r1", alice, capacity=10)
    await instance.backend.stop()
    assert not instance.backend.ready
    # publish is synchronous: it must fail at once, not queue into the void.
    with pytest.raises(BackendUnavailableError):
        instance.backend.publish("r1", b"lost")
    with pytest.raises(BackendUnavailableError):
        await instance.backend.subscribe("r1")
    with pytest.raises(BackendUnavailableError):
        await instance.backend.join("r1", member("bob"), capacity=10)
    with pytest.raises(BackendUnavailableError):
        await instance.backend.leave("r1", alice)
    with pytest.raises(BackendUnavailableError):
        await instance.backend.refresh([("r1", alice)])
    with pytest.raises(BackendUnavailableError):
        await instance.backend.members("r1")
    with pytest.raises(BackendUnavailableError):
        await instance.backend.reap_expired()
    with pytest.raises(BackendUnavailableError):
        await instance.backend.evict("r1", "alice")
    with pytest.raises(BackendUnavailableError):
        await instance.backend.evict_all("r1")
    with pytest.raises(BackendUnavailableError):
        await instance.backend.active_rooms(after=None, limit=10)
    # The store itself is untouched: a stopped instance is a dead process, not a leave.
    other = await cluster.instance()
    assert await other.backend.members("r1") == (alice,)


async def test_started_backend_is_ready(cluster: Cluster) -> None:
    instance = await cluster.instance()
    assert instance.backend.ready
    assert instance.backend.instance_id
    other = await cluster.instance()
    assert other.backend.instance_id != instance.backend.instance_id


# Joining, capacity and leaving.


async def test_join_returns_the_room_including_the_joiner(cluster: Cluster) -> None:
    a = await cluster.instance()
    b = await cluster.instance()
    alice, bob = member("alice"), member("bob")
    first = await a.backend.join("r1", alice, capacity=10)
    assert first == JoinResult(members=(alice,), replaced=None)
    second = await b.backend.join("r1", bob, capacity=10)
    assert set(second.members) == {alice, bob}
    assert second.replaced is None
    assert set(await a.backend.members("r1")) == {alice, bob}
    assert await a.backend.members("r2") == ()


async def test_capacity_admits_exactly_the_free_seats_under_concurrent_joins(
    cluster: Cluster,
) -> None:
    instances = [await cluster.instance() for _ in range(3)]
    people = [member(f"user-{n}") for n in range(30)]
    results = await asyncio.gather(
        *(
            instances[n % 3].backend.join("r1", person, capacity=10)
            for n, person in enumerate(people)
        ),
        return_exceptions=True,
    )
    admitted = [p for p, r in zip(people, results, strict=True) if isinstance(r, JoinResult)]
    refused = [r for r in results if isinstance(r, RoomFullError)]
    assert len(admitted) == 10
    assert len(refused) == 20
    for person, result in zip(people, results, strict=True):
        if isinstance(result, JoinResult):
            assert person in result.members
            assert len(result.members) <= 10
    assert set(await instances[0].backend.members("r1")) == set(admitted)


async def test_rejoin_replaces_and_takes_no_extra_seat_in_a_full_room(cluster: Cluster) -> None:
    a = await cluster.instance()
    b = await cluster.instance()
    alice, bob = member("alice"), member("bob")
    await a.backend.join("r1", alice, capacity=2)
    await a.backend.join("r1", bob, capacity=2)
    with pytest.raises(RoomFullError):
        await b.backend.join("r1", member("carol"), capacity=2)
    alice_again = member("alice", "Alice Again")
    result = await b.backend.join("r1", alice_again, capacity=2)
    assert result.replaced == alice
    assert set(result.members) == {alice_again, bob}
    assert set(await a.backend.members("r1")) == {alice_again, bob}


async def test_leave_removes_only_the_same_session(cluster: Cluster) -> None:
    a = await cluster.instance()
    b = await cluster.instance()
    old, new = member("alice"), member("alice")
    await a.backend.join("r1", old, capacity=10)
    await b.backend.join("r1", new, capacity=10)
    assert await a.backend.leave("r1", old) is False
    assert await a.backend.members("r1") == (new,)
    assert await b.backend.leave("r1", new) is True
    assert await b.backend.leave("r1", new) is False
    assert await a.backend.members("r1") == ()
    assert await a.backend.leave("r1", member("nobody")) is False


async def test_a_left_seat_is_free_again(cluster: Cluster) -> None:
    instance = await cluster.instance()
    alice = member("alice")
    await instance.backend.join("r1", alice, capacity=1)
    await instance.backend.leave("r1", alice)
    bob = member("bob")
    assert (await instance.backend.join("r1", bob, capacity=1)).members == (bob,)


# Presence: expiry, refresh and reaping.


async def test_members_never_lists_an_expired_member_even_before_reaping(
    cluster: Cluster,
) -> None:
    short = await cluster.instance(presence_ttl_seconds=SHORT_TTL_SECONDS)
    reader = await cluster.instance()
    alice = member("alice")
    await short.backend.join("r1", alice, capacity=10)
    assert await reader.backend.members("r1") == (alice,)
    await asyncio.sleep(EXPIRY_WAIT_SECONDS)
    assert await reader.backend.members("r1") == ()
    # Not reaped yet: it was only hidden, and the reaper still finds it.
    assert await reader.reap("r1") == [("r1", alice)]


async def test_join_snapshot_leaves_out_expired_members(cluster: Cluster) -> None:
    short = await cluster.instance(presence_ttl_seconds=SHORT_TTL_SECONDS)
    other = await cluster.instance()
    await short.backend.join("r1", member("ghost"), capacity=10)
    await asyncio.sleep(EXPIRY_WAIT_SECONDS)
    bob = member("bob")
    assert (await other.backend.join("r1", bob, capacity=10)).members == (bob,)


async def test_refresh_keeps_a_member_alive_past_the_ttl(cluster: Cluster) -> None:
    ttl = 1.0
    keeper = await cluster.instance(presence_ttl_seconds=ttl)
    reader = await cluster.instance()
    alice, bob = member("alice"), member("bob")
    await keeper.backend.join("r1", alice, capacity=10)
    await keeper.backend.join("r2", bob, capacity=10)
    loop = asyncio.get_running_loop()
    until = loop.time() + 2.5 * ttl
    while loop.time() < until:
        await asyncio.sleep(ttl / 5)  # well inside the TTL/3 the service uses
        await keeper.backend.refresh([("r1", alice), ("r2", bob)])
    assert await reader.backend.members("r1") == (alice,)
    assert await reader.backend.members("r2") == (bob,)
    assert await reader.reap("r1", "r2") == []
    # Once refreshing stops, they expire.
    await asyncio.sleep(2 * ttl)
    assert await reader.backend.members("r1") == ()
    assert Counter(await reader.reap("r1", "r2")) == Counter([("r1", alice), ("r2", bob)])


async def test_refresh_of_a_replaced_session_does_not_resurrect_anything(
    cluster: Cluster,
) -> None:
    a = await cluster.instance(presence_ttl_seconds=SHORT_TTL_SECONDS)
    b = await cluster.instance(presence_ttl_seconds=SHORT_TTL_SECONDS)
    old, new = member("alice"), member("alice")
    await a.backend.join("r1", old, capacity=10)
    await b.backend.join("r1", new, capacity=10)  # replaces `old`; nobody refreshes `new`
    loop = asyncio.get_running_loop()
    until = loop.time() + EXPIRY_WAIT_SECONDS
    while loop.time() < until:
        await a.backend.refresh([("r1", old)])  # a stale instance still refreshing
        await asyncio.sleep(SHORT_TTL_SECONDS / 5)
    assert await a.backend.members("r1") == ()
    assert await a.reap("r1") == [("r1", new)]
    assert await a.reap("r1") == []


async def test_refresh_does_not_revive_an_expired_or_departed_member(cluster: Cluster) -> None:
    instance = await cluster.instance(presence_ttl_seconds=SHORT_TTL_SECONDS)
    gone, late = member("gone"), member("late")
    await instance.backend.join("r1", gone, capacity=10)
    await instance.backend.leave("r1", gone)
    await instance.backend.join("r2", late, capacity=10)
    await asyncio.sleep(EXPIRY_WAIT_SECONDS)
    await instance.backend.refresh([("r1", gone), ("r2", late)])
    assert await instance.backend.members("r1") == ()
    assert await instance.backend.members("r2") == ()
    # The expired one is still the reaper's, exactly once; the departed one never is.
    assert await instance.reap("r1", "r2") == [("r2", late)]


async def test_each_expired_member_is_reaped_exactly_once_across_instances(
    cluster: Cluster,
) -> None:
    dying = await cluster.instance(presence_ttl_seconds=SHORT_TTL_SECONDS)
    survivors = [await cluster.instance() for _ in range(3)]
    expired = {(f"room-{n % 4}", member(f"user-{n}")) for n in range(40)}
    for room, person in expired:
        await dying.backend.join(room, person, capacity=100)
    alive = member("alive")
    await survivors[0].backend.join("room-0", alive, capacity=100)
    await dying.backend.stop()
    await asyncio.sleep(EXPIRY_WAIT_SECONDS)
    reaped: list[tuple[str, tuple[str, Member]]] = []
    for _ in range(3):
        rooms = sorted({room for room, _ in expired})
        batches = await asyncio.gather(*(s.reap(*rooms) for s in survivors))
        for survivor, batch in zip(survivors, batches, strict=True):
            reaped.extend((survivor.backend.instance_id, entry) for entry in batch)
    entries = [entry for _, entry in reaped]
    assert len(entries) == len(expired)  # nobody twice
    assert set(entries) == expired  # everybody once
    assert await survivors[1].backend.members("room-0") == (alive,)


async def test_an_expired_seat_is_free_for_a_new_join(cluster: Cluster) -> None:
    short = await cluster.instance(presence_ttl_seconds=SHORT_TTL_SECONDS)
    other = await cluster.instance()
    alice, bob = member("alice"), member("bob")
    await short.backend.join("r1", alice, capacity=2)
    await short.backend.join("r1", bob, capacity=2)
    with pytest.raises(RoomFullError):
        await other.backend.join("r1", member("carol"), capacity=2)
    await asyncio.sleep(EXPIRY_WAIT_SECONDS)
    carol, dave = member("carol"), member("dave")
    assert (await other.backend.join("r1", carol, capacity=2)).members == (carol,)
    assert set((await other.backend.join("r1", dave, capacity=2)).members) == {carol, dave}
    # Taking their seats did not swallow them: the reaper still announces both, once.
    assert Counter(await other.reap("r1")) == Counter([("r1", alice), ("r1", bob)])
    assert await other.reap("r1") == []
    assert set(await other.backend.members("r1")) == {carol, dave}


async def test_a_member_who_left_is_never_reaped(cluster: Cluster) -> None:
    instance = await cluster.instance(presence_ttl_seconds=SHORT_TTL_SECONDS)
    alice = member("alice")
    await instance.backend.join("r1", alice, capacity=10)
    assert await instance.backend.leave("r1", alice) is True
    await asyncio.sleep(EXPIRY_WAIT_SECONDS)
    assert await instance.reap("r1") == []


async def test_leave_after_expiry_claims_the_member_so_the_reaper_does_not(
    cluster: Cluster,
) -> None:
    """A late leave and the reaper must not both announce the same departure."""
    instance = await cluster.instance(presence_ttl_seconds=SHORT_TTL_SECONDS)
    alice = member("alice")
    await instance.backend.join("r1", alice, capacity=10)
    await asyncio.sleep(EXPIRY_WAIT_SECONDS)
    left = await instance.backend.leave("r1", alice)
    reaped = await instance.reap("r1")
    assert (left, reaped) in [(True, []), (False, [("r1", alice)])]


# The admin's kick and close: atomic removals, each member claimed once.


async def test_evict_removes_a_live_member_for_exactly_one_caller(cluster: Cluster) -> None:
    home = await cluster.instance()
    admins = [await cluster.instance() for _ in range(2)]
    alice, bob = member("alice"), member("bob")
    await home.backend.join("r1", alice, capacity=10)
    await home.backend.join("r1", bob, capacity=10)
    results = await asyncio.gather(*(a.backend.evict("r1", "alice") for a in admins))
    assert sorted(results, key=lambda r: r is None) == [alice, None]
    assert await home.backend.members("r1") == (bob,)
    # The evicted session is claimed: its own instance's leave announces nothing more.
    assert await home.backend.leave("r1", alice) is False
    assert await admins[0].backend.evict("r1", "nobody") is None
    assert await admins[0].backend.evict("r2", "bob") is None
    # Not a ban: the user may join again.
    alice_again = member("alice")
    assert set((await home.backend.join("r1", alice_again, capacity=10)).members) == {
        alice_again,
        bob,
    }


async def test_evict_leaves_an_expired_member_to_the_reaper(cluster: Cluster) -> None:
    short = await cluster.instance(presence_ttl_seconds=SHORT_TTL_SECONDS)
    admin = await cluster.instance()
    alice = member("alice")
    await short.backend.join("r1", alice, capacity=10)
    await asyncio.sleep(EXPIRY_WAIT_SECONDS)
    assert await admin.backend.evict("r1", "alice") is None
    assert await admin.backend.evict_all("r1") == ()
    assert await admin.reap("r1") == [("r1", alice)]  # announced once, as a timeout


async def test_evict_all_removes_every_live_member_once(cluster: Cluster) -> None:
    short = await cluster.instance(presence_ttl_seconds=SHORT_TTL_SECONDS)
    home = await cluster.instance()
    admins = [await cluster.instance() for _ in range(2)]
    ghost = member("ghost")
    await short.backend.join("r1", ghost, capacity=100)
    await asyncio.sleep(EXPIRY_WAIT_SECONDS)
    people = [member(f"user-{n}") for n in range(20)]
    for person in people:
        await home.backend.join("r1", person, capacity=100)
    await home.backend.join("r2", member("elsewhere"), capacity=100)
    batches = await asyncio.gather(*(a.backend.evict_all("r1") for a in admins))
    evicted = [m for batch in batches for m in batch]
    assert Counter(evicted) == Counter(people)  # everyone once, nobody twice
    assert await home.backend.members("r1") == ()
    assert [await home.backend.leave("r1", p) for p in people[:3]] == [False] * 3
    assert len(await home.backend.members("r2")) == 1  # other rooms untouched
    assert await admins[0].reap("r1") == [("r1", ghost)]  # the expired one: the reaper's
    assert await admins[0].backend.evict_all("r1") == ()


# Listing rooms, across instances, a page at a time.


async def test_active_rooms_lists_live_rooms_by_id_with_counts_in_pages(
    cluster: Cluster,
) -> None:
    short = await cluster.instance(presence_ttl_seconds=SHORT_TTL_SECONDS)
    a = await cluster.instance()
    b = await cluster.instance()
    await short.backend.join("room-9-expired", member("ghost"), capacity=10)
    await short.backend.join("room-3", member("ghost"), capacity=10)
    await asyncio.sleep(EXPIRY_WAIT_SECONDS)
    sizes = {f"room-{n}": n % 3 + 1 for n in range(7)}
    for room, size in sizes.items():
        for n in range(size):  # members on two instances
            await (a if n % 2 else b).backend.join(room, member(f"u{n}"), capacity=10)
    gone = member("gone")
    await a.backend.join("room-0-left", gone, capacity=10)
    await a.backend.leave("room-0-left", gone)
    expected = [RoomSummary(room, size) for room, size in sorted(sizes.items())]

    first = await b.backend.active_rooms(after=None, limit=3)
    assert first == RoomPage(tuple(expected[:3]), "room-2")
    second = await a.backend.active_rooms(after=first.next_cursor, limit=3)
    assert second == RoomPage(tuple(expected[3:6]), "room-5")
    third = await b.backend.active_rooms(after=second.next_cursor, limit=3)
    assert third == RoomPage(tuple(expected[6:]), None)
    assert await a.backend.active_rooms(after=None, limit=1000) == RoomPage(tuple(expected), None)


async def test_active_rooms_pages_stay_consistent_as_rooms_come_and_go(cluster: Cluster) -> None:
    """Each page is a snapshot of its own: a cursor stays valid when its room empties,
    and a room created behind the cursor is not listed again."""
    instance = await cluster.instance()
    people = {f"room-{n}": member(f"u{n}") for n in range(6)}
    for room, person in people.items():
        await instance.backend.join(room, person, capacity=10)
    first = await instance.backend.active_rooms(after=None, limit=2)
    assert [r.room_id for r in first.rooms] == ["room-0", "room-1"]
    await instance.backend.evict_all("room-1")  # the cursor's own room empties
    await instance.backend.evict("room-2", people["room-2"].user_id)
    await instance.backend.join("room-00", member("late"), capacity=10)  # behind the cursor
    second = await instance.backend.active_rooms(after=first.next_cursor, limit=2)
    assert [r.room_id for r in second.rooms] == ["room-3", "room-4"]
    last = await instance.backend.active_rooms(after=second.next_cursor, limit=2)
    assert last == RoomPage((RoomSummary("room-5", 1),), None)


async def test_active_rooms_of_an_empty_store_is_one_empty_page(cluster: Cluster) -> None:
    instance = await cluster.instance()
    assert await instance.backend.active_rooms(after=None, limit=100) == RoomPage((), None)
