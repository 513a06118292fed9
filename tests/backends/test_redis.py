"""The Redis backend against real Redis only: a standalone redis-server, the 3-node Redis
Cluster and a Sentinel setup started by the tests. What the contract suite cannot see is
proved here: every key carries a TTL, scripts never cross slots, 10,000 messages keep
their order, one pub/sub and one writer connection per node (counted in `CLIENT LIST`),
recovery from `CLIENT KILL`, from a restart and from a Sentinel failover, and that
redis-py's errors never leak past the backend.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import redis.exceptions

from rendezvous.backends.base import (
    BackendError,
    BackendUnavailableError,
    Member,
    ResumeRecord,
)
from rendezvous.backends.redis import (
    COMMAND_TIMEOUT_SECONDS,
    START_WAIT_SECONDS,
    RedisBackend,
    channel_of,
    keys_of,
    resume_key,
)
from rendezvous.backends.redis_listening import BACKOFF_SECONDS, SILENCE_LIMIT_SECONDS
from rendezvous.redis_url import parse_redis_url
from rendezvous.resuming import mint_resume_token
from tests.support.redis import RedisCluster, RedisSentinel, RedisServer

RECEIVE_TIMEOUT_SECONDS = 5.0
# After Redis is reachable again the next attempt is at most one capped backoff step away,
# plus a connect and a re-subscribe (generously 0.5 s); the test allows twice that.
RECOVERY_DEADLINE_SECONDS = 2 * (BACKOFF_SECONDS[1] + 0.5)
# A dropped link is noticed at once when Redis closes it, within the silence limit when it
# dies silently; the tests allow twice the worst case.
OUTAGE_NOTICE_DEADLINE_SECONDS = 2 * SILENCE_LIMIT_SECONDS
# Any single operation during an outage must fail fast: within a command timeout, doubled.
FAIL_FAST_SECONDS = 2 * COMMAND_TIMEOUT_SECONDS
POLL_SECONDS = 0.02
LONG_TTL_SECONDS = 30.0
LISTENER_LOGGER = "rendezvous.backends.redis_listening"


def member(user_id: str) -> Member:
    return Member(user_id, user_id.title(), secrets.token_hex(8))


@dataclass
class Instance:
    """One started RedisBackend: the bus messages it was handed and its recoveries."""

    backend: RedisBackend
    inbox: asyncio.Queue[tuple[str, bytes]] = field(default_factory=asyncio.Queue)
    recoveries: int = 0

    def on_message(self, room_id: str, data: bytes) -> None:
        self.inbox.put_nowait((room_id, data))

    def on_recovered(self) -> None:
        self.recoveries += 1

    async def receive(self, timeout: float = RECEIVE_TIMEOUT_SECONDS) -> tuple[str, bytes]:
        return await asyncio.wait_for(self.inbox.get(), timeout)

    async def expect_nothing(self, seconds: float = 0.3) -> None:
        with contextlib.suppress(TimeoutError):
            message = await self.receive(seconds)
            raise AssertionError(f"expected no bus message, got {message!r}")


Start = Callable[..., Awaitable[Instance]]


@pytest.fixture
async def start() -> AsyncIterator[Start]:
    """Start RedisBackends (`await start(url, ttl=...)`); all are stopped afterwards."""
    started: list[RedisBackend] = []

    async def new(url: str, *, ttl: float = LONG_TTL_SECONDS) -> Instance:
        instance = Instance(RedisBackend(parse_redis_url(url), presence_ttl_seconds=ttl))
        await instance.backend.start(instance.on_message, instance.on_recovered)
        started.append(instance.backend)
        return instance

    yield new
    for backend in started:
        await backend.stop()


@dataclass
class Deployment:
    """A Redis the backends share, standalone or clustered, with its nodes at hand."""

    url: str
    nodes: list[RedisServer]
    cluster: RedisCluster | None = None

    async def node_of(self, room_id: str) -> RedisServer:
        if self.cluster is None:
            return self.nodes[0]
        return await self.cluster.node_for(keys_of(room_id)[0])

    async def key_ttls(self) -> dict[str, int]:
        ttls: dict[str, int] = {}
        for node in self.nodes:
            ttls.update(await node.key_ttls())
        return ttls

    async def rooms_by_node(self, count: int, prefix: str = "room") -> dict[int, list[str]]:
        """`count` rooms, by the port of the node that serves them."""
        rooms: dict[int, list[str]] = {}
        for n in range(count):
            room = f"{prefix}-{n}"
            rooms.setdefault((await self.node_of(room)).port, []).append(room)
        return rooms

    async def spread_rooms(self, count: int, prefix: str = "room") -> list[str]:
        """`count` rooms that together live on every node (asserted)."""
        by_node = await self.rooms_by_node(count, prefix)
        assert set(by_node) == {node.port for node in self.nodes}, by_node
        return [room for rooms in by_node.values() for room in rooms]


@pytest.fixture(params=["standalone", "cluster"])
def deployment(request: pytest.FixtureRequest) -> Deployment:
    if request.param == "standalone":
        server: RedisServer = request.getfixturevalue("redis_server")
        return Deployment(server.url, [server])
    cluster: RedisCluster = request.getfixturevalue("redis_cluster")
    return Deployment(cluster.url, cluster.nodes, cluster)


async def wait_until(what: str, check: Callable[[], bool], deadline_seconds: float) -> float:
    """Poll `check` until it holds; return the seconds it took, fail after the deadline."""
    loop = asyncio.get_running_loop()
    began = loop.time()
    while not check():
        if loop.time() - began > deadline_seconds:
            raise AssertionError(f"{what}: not within {deadline_seconds} s")
        await asyncio.sleep(POLL_SECONDS)
    return loop.time() - began


async def client_list(node: RedisServer) -> list[dict[str, str]]:
    text = await node.cli("CLIENT", "LIST")
    return [dict(f.split("=", 1) for f in line.split()) for line in text.splitlines()]


def room_keys(rooms: Iterable[str]) -> set[str]:
    return {key for room in rooms for key in keys_of(room)}


def all_alive(instances: Iterable[Instance]) -> bool:
    return all(not task.done() for i in instances for task in i.backend.tasks)


# Keys and slots.


async def test_no_key_lives_without_a_ttl_and_emptied_rooms_leave_no_key(
    deployment: Deployment, start: Start
) -> None:
    ttl = 1.0
    keeper = await start(deployment.url, ttl=ttl)
    visitor = await start(deployment.url, ttl=ttl)
    dying = await start(deployment.url, ttl=ttl)
    rooms = await deployment.spread_rooms(12)
    kept, left, expired = rooms[0::3], rooms[1::3], rooms[2::3]
    stays = [(room, member(f"{room}-{n}")) for room in kept for n in range(2)]
    for room, person in stays:
        await keeper.backend.join(room, person, capacity=10)
    for room in kept + left:  # visitors come and go, in kept rooms too
        guest = member(f"{room}-guest")
        await visitor.backend.join(room, guest, capacity=10)
        assert await visitor.backend.leave(room, guest)
    for room in left:
        people = [member(f"{room}-{n}") for n in range(2)]
        for person in people:
            await keeper.backend.join(room, person, capacity=10)
        for person in people:
            assert await keeper.backend.leave(room, person)
    lost = [(room, member(f"{room}-lost")) for room in expired]
    for room, person in lost:
        await dying.backend.join(room, person, capacity=10)
    await dying.backend.stop()  # a dead instance: its members are never refreshed
    await keeper.backend.reassert(stays)
    loop = asyncio.get_running_loop()
    until = loop.time() + 2 * ttl
    while loop.time() < until:
        await keeper.backend.refresh(stays)
        await asyncio.sleep(ttl / 4)
    for room in kept + expired:
        await keeper.backend.subscribe(room)
    assert sorted(await keeper.backend.reap_expired()) == sorted(lost)
    await keeper.backend.refresh(stays)

    ttls = await deployment.key_ttls()
    assert set(ttls) == room_keys(kept)  # rooms everybody left, or was reaped from, are gone
    key_ttl_ms = 3 * int(ttl * 1000)
    assert all(0 < pttl <= key_ttl_ms for pttl in ttls.values()), ttls


async def test_every_operation_works_on_rooms_spread_over_all_cluster_nodes(
    redis_cluster: RedisCluster, start: Start
) -> None:
    deployment = Deployment(redis_cluster.url, redis_cluster.nodes, redis_cluster)
    by_node = await deployment.rooms_by_node(30)
    assert len(by_node) == 3  # the rooms really live on all three nodes
    rooms = [room for node_rooms in by_node.values() for room in node_rooms]
    a = await start(redis_cluster.url)
    b = await start(redis_cluster.url)
    short = await start(redis_cluster.url, ttl=0.5)
    alices = [(room, member("alice")) for room in rooms]
    bobs = [(room, member("bob")) for room in rooms]
    for (room, alice), (_, bob) in zip(alices, bobs, strict=True):
        await a.backend.join(room, alice, capacity=10)
        assert set((await b.backend.join(room, bob, capacity=10)).members) == {alice, bob}
        await short.backend.join(room, member("ghost"), capacity=10)
    await a.backend.refresh(alices)  # one pipelined batch across all three nodes
    await a.backend.reassert(alices + bobs)
    for room in rooms:
        assert len(await b.backend.members(room)) == 3
    # Each node holds the keys of its own rooms, and nothing else.
    for node in redis_cluster.nodes:
        assert set(await node.key_ttls()) == room_keys(by_node[node.port])
    await asyncio.sleep(1.0)  # twice the short TTL: every ghost has expired
    for room in rooms:
        await a.backend.subscribe(room)
        await b.backend.subscribe(room)
    reaped = await a.backend.reap_expired()
    assert sorted(room for room, _ in reaped) == sorted(rooms)
    assert {m.user_id for _, m in reaped} == {"ghost"}
    for room, bob in bobs:
        assert await b.backend.leave(room, bob)
        assert await a.backend.members(room) == (dict(alices)[room],)
    # The bus, both ways, on every node.
    for room in rooms:
        a.backend.publish(room, f"a:{room}".encode())
    assert sorted([await b.receive() for _ in rooms]) == sorted(
        (room, f"a:{room}".encode()) for room in rooms
    )
    for room in rooms:
        b.backend.publish(room, f"b:{room}".encode())
    assert sorted([await a.receive() for _ in rooms]) == sorted(
        (room, f"b:{room}".encode()) for room in rooms
    )
    await a.expect_nothing()
    await b.expect_nothing()


# The bus.


async def test_ten_thousand_messages_arrive_complete_and_in_order(
    deployment: Deployment, start: Start
) -> None:
    sender = await start(deployment.url)
    receiver = await start(deployment.url)
    await receiver.backend.subscribe("r1")
    padding = "x" * 200  # about the size of an ICE candidate frame
    expected = [f"{n:05d}:{padding}".encode() for n in range(10_000)]
    for data in expected:  # as fast as publish accepts them
        while True:
            try:
                sender.backend.publish("r1", data)
                break
            except BackendUnavailableError:
                assert sender.backend.ready  # only a full queue may refuse here
                await asyncio.sleep(0.001)
    received = [await receiver.receive() for _ in expected]
    assert [room for room, _ in received] == ["r1"] * len(expected)
    assert [data for _, data in received] == expected
    await receiver.expect_nothing()


async def test_one_pubsub_and_one_writer_connection_per_node(
    deployment: Deployment, start: Start
) -> None:
    instances = [await start(deployment.url) for _ in range(2)]
    rooms = await deployment.spread_rooms(20)
    for instance in instances:
        for room in rooms:
            await instance.backend.subscribe(room)
            await instance.backend.join(room, member(instance.backend.instance_id), capacity=5)
    for room in rooms:
        instances[0].backend.publish(room, b"hello")
    assert len([await instances[1].receive() for _ in rooms]) == len(rooms)
    sharded = deployment.cluster is not None
    for node in deployment.nodes:
        clients = await client_list(node)
        on_node = [r for r in rooms if (await deployment.node_of(r)).port == node.port]
        for instance in instances:
            names = [c["name"] for c in clients]
            listen = f"rendezvous-listen-{instance.backend.instance_id}"
            publish = f"rendezvous-publish-{instance.backend.instance_id}"
            assert names.count(listen) == 1
            assert names.count(publish) == 1
            listener = next(c for c in clients if c["name"] == listen)
            assert "P" in listener["flags"]
            subscribed = int(listener["ssub" if sharded else "sub"])
            assert subscribed == len(on_node)  # this node's rooms, on this node's connection
        # Nothing else listens: one pub/sub connection per instance, no hidden pool.
        pubsub = [c for c in clients if "P" in c["flags"]]
        assert len(pubsub) == len(instances)
        writers = [c for c in clients if c["name"].startswith("rendezvous-publish-")]
        assert all("P" not in c["flags"] for c in writers)


# Recovery.


async def test_connections_killed_by_redis_reconnect_and_resubscribe(
    deployment: Deployment, start: Start, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="rendezvous.backends")
    listener = await start(deployment.url)
    publisher = await start(deployment.url)
    rooms = await deployment.spread_rooms(6)
    for room in rooms:
        await listener.backend.subscribe(room)
    seen = [listener.backend.ready]

    async def watch_readiness() -> None:
        while True:  # every loop iteration: a reconnect spans several
            if listener.backend.ready != seen[-1]:
                seen.append(listener.backend.ready)
            await asyncio.sleep(0)

    watcher = asyncio.create_task(watch_readiness())
    loop = asyncio.get_running_loop()
    began = loop.time()
    try:
        for node in deployment.nodes:
            assert await node.cli("CLIENT", "KILL", "TYPE", "pubsub") == "1"
            # Writers and presence connections too (redis-cli spares its own).
            assert int(await node.cli("CLIENT", "KILL", "TYPE", "normal")) >= 2
        await wait_until(
            "every node's listeners back",
            lambda: all(
                i.recoveries == len(deployment.nodes) and i.backend.ready
                for i in (listener, publisher)
            ),
            RECOVERY_DEADLINE_SECONDS,
        )
    finally:
        watcher.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await watcher
    assert seen[:3] == [True, False, True]
    for room in rooms:
        publisher.backend.publish(room, room.encode())
    received = [await listener.receive() for _ in rooms]
    assert sorted(received) == sorted((room, room.encode()) for room in rooms)
    assert loop.time() - began < RECOVERY_DEADLINE_SECONDS
    assert len(await publisher.backend.members(rooms[0])) == 0  # presence reconnects too
    messages = [r.getMessage() for r in caplog.records if r.name == LISTENER_LOGGER]
    cut = 2 * len(deployment.nodes)  # both instances' listeners, on every node
    assert sum("redis listener" in m and "link lost" in m for m in messages) == cut
    assert sum("redis listener" in m and "reconnected" in m for m in messages) == cut
    assert all_alive([listener, publisher])


async def test_a_restarted_redis_gets_rooms_and_presence_back(
    redis_server: RedisServer, start: Start, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="rendezvous.backends")
    a = await start(redis_server.url)
    b = await start(redis_server.url)
    rooms = ["r1", "r2", "r3"]
    present = [(room, member(f"{room}-alice")) for room in rooms]
    for room, person in present:
        await a.backend.subscribe(room)
        await a.backend.join(room, person, capacity=10)
    alice = present[0][1]

    await redis_server.stop()
    await wait_until(
        "both instances unready",
        lambda: not a.backend.ready and not b.backend.ready,
        OUTAGE_NOTICE_DEADLINE_SECONDS,
    )
    with pytest.raises(BackendUnavailableError):
        b.backend.publish("r1", b"lost")  # synchronous: refused at once
    async with asyncio.timeout(FAIL_FAST_SECONDS):
        with pytest.raises(BackendUnavailableError):
            await a.backend.subscribe("late")
        with pytest.raises(BackendUnavailableError):
            await b.backend.join("r1", member("bob"), capacity=10)
        with pytest.raises(BackendUnavailableError):
            await a.backend.leave("r1", alice)
        with pytest.raises(BackendUnavailableError):
            await a.backend.members("r1")
        with pytest.raises(BackendUnavailableError):
            await a.backend.refresh(present)
        with pytest.raises(BackendUnavailableError):
            await a.backend.reassert(present)
        with pytest.raises(BackendUnavailableError):
            await a.backend.reap_expired()

    await redis_server.start()
    took = await wait_until(
        "ready again",
        lambda: a.backend.ready and b.backend.ready,
        RECOVERY_DEADLINE_SECONDS,
    )
    assert took < RECOVERY_DEADLINE_SECONDS
    assert (a.recoveries, b.recoveries) == (1, 1)
    # The restarted server is empty; re-asserting (as the presence keeper does on
    # recovery) puts the members back.
    assert await b.backend.members("r1") == ()
    await a.backend.reassert(present)
    for room, person in present:
        assert await b.backend.members(room) == (person,)
    # Every room is subscribed again; the one whose subscribe failed is not.
    assert await redis_server.cli("PUBSUB", "NUMSUB", channel_of("late").decode()) == (
        f"{channel_of('late').decode()}\n0"
    )
    for room in ["late", *rooms]:
        b.backend.publish(room, room.encode())
    assert [await a.receive() for _ in rooms] == [(room, room.encode()) for room in rooms]
    await a.expect_nothing()
    assert all_alive([a, b])
    assert len(a.backend.tasks) == 2  # one listener and one writer, still running
    records = [r for r in caplog.records if r.name.startswith("rendezvous.")]
    assert not [r for r in records if r.levelno >= logging.ERROR]  # nothing crashed
    messages = [r.getMessage() for r in records]
    assert any("connect attempt" in m and "failed" in m for m in messages)
    assert any("down, 3 channels to restore" in m for m in messages)
    assert any("reconnected after" in m for m in messages)


async def test_an_instance_started_before_its_cluster_comes_up_once_it_forms(
    tmp_path: Path, start: Start
) -> None:
    cluster = RedisCluster(tmp_path / "late-cluster")  # ports chosen, nothing running yet
    target = parse_redis_url(cluster.url)
    early = Instance(RedisBackend(target, presence_ttl_seconds=LONG_TTL_SECONDS))
    starting = asyncio.create_task(early.backend.start(early.on_message, early.on_recovered))
    try:
        await asyncio.sleep(0.3)  # the backend is trying to reach the cluster
        assert not early.backend.ready
        with pytest.raises(BackendUnavailableError):
            early.backend.publish("r1", b"lost")
        with pytest.raises(BackendUnavailableError):
            await early.backend.subscribe("r1")
        with pytest.raises(BackendUnavailableError):
            await early.backend.members("r1")
        async with cluster:
            await asyncio.wait_for(starting, START_WAIT_SECONDS + FAIL_FAST_SECONDS)
            await wait_until("ready", lambda: early.backend.ready, RECOVERY_DEADLINE_SECONDS)
            other = await start(cluster.url)
            rooms = await Deployment(cluster.url, cluster.nodes, cluster).spread_rooms(6)
            for room in rooms:
                await early.backend.subscribe(room)
                await other.backend.join(room, member("bob"), capacity=10)
                other.backend.publish(room, room.encode())
            assert sorted([await early.receive() for _ in rooms]) == sorted(
                (room, room.encode()) for room in rooms
            )
            assert [len(await early.backend.members(room)) for room in rooms] == [1] * 6
            assert all_alive([early, other])
            await early.backend.stop()
    finally:
        starting.cancel()
        await early.backend.stop()


async def test_sentinel_failover_keeps_the_backend_working(
    redis_sentinel: RedisSentinel, start: Start
) -> None:
    a = await start(redis_sentinel.url)
    b = await start(redis_sentinel.url)
    await a.backend.subscribe("r1")
    await a.backend.join("r1", member("alice"), capacity=10)
    b.backend.publish("r1", b"before")
    assert await a.receive() == ("r1", b"before")

    failures: list[BaseException] = []

    async def probe() -> None:
        """Use the backend throughout the failover, recording what it raises."""
        while True:
            for operation in (
                lambda: b.backend.members("r1"),
                lambda: b.backend.join("probe", member("prober"), capacity=10),
            ):
                try:
                    await operation()
                except Exception as exc:  # noqa: BLE001 - recorded, to assert its type
                    failures.append(exc)
            try:
                b.backend.publish("probe", b"probe")
            except Exception as exc:  # noqa: BLE001 - recorded, to assert its type
                failures.append(exc)
            await asyncio.sleep(0.05)

    prober = asyncio.create_task(probe())
    try:
        old = await redis_sentinel.primary()
        new = await redis_sentinel.kill_primary()
        assert new is not old
        await wait_until(
            "ready on the new primary",
            lambda: a.backend.ready and b.backend.ready,
            RECOVERY_DEADLINE_SECONDS,
        )
    finally:
        prober.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await prober
    assert failures  # the failover window was really crossed
    assert all(isinstance(exc, BackendUnavailableError) for exc in failures), failures

    bob = member("bob")
    await a.backend.join("r2", bob, capacity=10)
    assert await b.backend.members("r2") == (bob,)
    await a.backend.subscribe("r2")
    b.backend.publish("r1", b"after")  # subscribed before the failover
    b.backend.publish("r2", b"new room")
    assert [await a.receive() for _ in range(2)] == [("r1", b"after"), ("r2", b"new room")]
    assert await new.cli("PUBSUB", "NUMSUB", channel_of("r2").decode()) == (
        f"{channel_of('r2').decode()}\n1"
    )
    assert all_alive([a, b])


# Errors.


async def test_a_redis_error_reply_surfaces_as_backend_error(
    redis_server: RedisServer, start: Start
) -> None:
    instance = await start(redis_server.url)
    for key in keys_of("broken"):
        await redis_server.cli("SET", key, "not a hash")
    for operation in (
        lambda: instance.backend.join("broken", member("alice"), capacity=10),
        lambda: instance.backend.members("broken"),
    ):
        with pytest.raises(BackendError) as raised:
            await operation()
        assert not isinstance(raised.value, BackendUnavailableError)
        assert isinstance(raised.value.__cause__, redis.exceptions.ResponseError)
        assert "WRONGTYPE" in str(raised.value)


async def test_resume_records_live_in_their_room_slot_with_the_presence_ttl(
    deployment: Deployment, start: Start
) -> None:
    ttl = 0.5
    instance = await start(deployment.url, ttl=ttl)
    rooms = await deployment.spread_rooms(6)
    joined = {room: resumable_member("alice") for room in rooms}
    for room, alice in joined.items():  # in a Cluster, a record off its room's slot: CROSSSLOT
        await instance.backend.join(room, alice, capacity=10)
    ttls = await deployment.key_ttls()
    records = {resume_key(room, alice.resume_hash) for room, alice in joined.items()}
    assert records <= set(ttls)
    # Never a key without a TTL; a record lives as long as its room's keys (3 TTLs).
    assert all(0 < ttls[key] <= 3 * int(ttl * 1000) for key in records), ttls
    await asyncio.sleep(2 * 3 * ttl)
    assert not records & set(await deployment.key_ttls())


def resumable_member(user_id: str) -> Member:
    return Member(user_id, user_id.title(), secrets.token_hex(8), secrets.token_hex(32))


async def test_reassert_after_redis_lost_everything_puts_back_resume_records(
    redis_server: RedisServer, start: Start
) -> None:
    """A restarted Redis without persistence has lost every resume record with the rest:
    the re-assert that puts presence back gives each member put back its record too (the
    client can still resume), leaves a record Redis kept alone, and restores nothing for a
    member whose seat another session took meanwhile."""
    a = await start(redis_server.url)
    b = await start(redis_server.url)
    alice, bob = resumable("alice"), resumable("bob")
    plain, stale = member("carol"), resumable("dave")
    for person in (alice, bob, plain, stale):
        await a.backend.join("r1", person, capacity=10)
    await redis_server.flush()  # what a restart without persistence leaves
    newer = resumable("dave")
    await b.backend.join("r1", newer, capacity=10)  # dave joined again meanwhile, on b
    await a.backend.join("r1", bob, capacity=10)  # bob's seat and record survived the loss
    kept = await a.backend.resume_record("r1", bob.resume_hash)

    await a.backend.reassert([("r1", p) for p in (alice, bob, plain, stale)])

    home = a.backend.instance_id
    assert await b.backend.resume_record("r1", alice.resume_hash) == ResumeRecord(
        "alice", "Alice", alice.session_id, home, False
    )
    assert await b.backend.resume_record("r1", bob.resume_hash) == kept
    assert await b.backend.resume_record("r1", stale.resume_hash) is None
    assert {m.session_id for m in await b.backend.members("r1")} == {
        alice.session_id,
        bob.session_id,
        plain.session_id,
        newer.session_id,
    }
    ttls = await redis_server.key_ttls()
    records = [key for key in ttls if ":resume:" in key]
    assert len(records) == 3 and all(ttls[key] > 0 for key in records), ttls


def resumable(user_id: str) -> Member:
    _, resume_hash = mint_resume_token()
    return Member(user_id, user_id.title(), secrets.token_hex(8), resume_hash)
