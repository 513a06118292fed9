"""`publish_latency`: every backend observes each message it published once, on the
publishing instance, when the store has taken it (for Redis: when Redis acknowledged the
PUBLISH/SPUBLISH). Against real Redis: the ordered writer observes every acknowledged
message and never one lost with its link (frozen with SIGSTOP so that a batch is in
flight, then killed), and a Cluster's writers, one per node, share one histogram.
"""

from __future__ import annotations

import asyncio
import os
import signal
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest

from rendezvous.backends.redis import RedisBackend, keys_of
from rendezvous.backends.redis_listening import Credentials, Node
from rendezvous.backends.redis_writing import OrderedWriter
from rendezvous.redis_url import parse_redis_url
from rendezvous.telemetry.histogram import PUBLISH_LATENCY_BUCKETS_SECONDS, LatencyHistogram
from tests.backends.conftest import Cluster
from tests.support.redis import RedisCluster, RedisServer

DEADLINE_SECONDS = 10.0
POLL_SECONDS = 0.01


async def wait_until(what: str, check: Callable[[], bool]) -> None:
    async with asyncio.timeout(DEADLINE_SECONDS):
        while not check():
            await asyncio.sleep(POLL_SECONDS)
    assert check(), what


def assert_consistent(histogram: LatencyHistogram) -> None:
    """A measured histogram: positive sum, and Prometheus's +Inf bucket is the count."""
    assert histogram.sum > 0
    assert histogram.cumulative()[-1] == ("+Inf", float(histogram.count))


async def test_each_publish_is_observed_once_on_the_publishing_instance(
    cluster: Cluster,
) -> None:
    publisher = await cluster.instance()
    receiver = await cluster.instance()
    await receiver.backend.subscribe("heard")
    for n in range(5):
        publisher.backend.publish("heard", b"m%d" % n)
    # A message nobody listens to counts too: Redis acknowledges it all the same.
    publisher.backend.publish("unheard", b"alone")
    assert [await receiver.receive() for _ in range(5)] == [("heard", b"m%d" % n) for n in range(5)]
    latency = publisher.backend.publish_latency
    await wait_until("6 publishes observed", lambda: latency.count >= 6)
    await receiver.expect_nothing()
    assert latency.count == 6
    assert_consistent(latency)
    assert receiver.backend.publish_latency.count == 0  # receiving is not publishing
    assert publisher.backend.dropped_publishes == 0


@pytest.fixture
async def writer_on(redis_server: RedisServer) -> AsyncIterator[OrderedWriter]:
    """A running OrderedWriter on the test's redis-server, with a histogram of its own."""

    async def address() -> tuple[str, int]:
        return redis_server.address

    writer = OrderedWriter(
        Node("primary", address, Credentials(), sharded=False),
        client_name="rendezvous-publish-test",
        max_queued=1000,
        latency=LatencyHistogram(PUBLISH_LATENCY_BUCKETS_SECONDS),
    )
    task = asyncio.create_task(writer.run(), name="test.writer")
    try:
        yield writer
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        assert task.cancelled()  # it ran until cancelled, never died


async def publish_calls(server: RedisServer) -> int:
    stats = await server.info("commandstats")
    publish = stats.get("cmdstat_publish")
    return int(publish["calls"]) if isinstance(publish, dict) else 0


def process_state(pid: int) -> str:
    """The kernel's state letter of a process (T: stopped by a signal)."""
    stat = Path(f"/proc/{pid}/stat").read_text()
    return stat.rsplit(")", 1)[1].split()[0]


async def test_acked_messages_are_observed_and_those_lost_with_the_link_never(
    redis_server: RedisServer, writer_on: OrderedWriter
) -> None:
    writer, latency = writer_on, writer_on.latency
    for n in range(50):
        writer.put(b"ch", b"acked-%d" % n)
    await wait_until("50 acknowledged", lambda: latency.count >= 50)
    assert (latency.count, writer.dropped) == (50, 0)
    assert await publish_calls(redis_server) == 50  # Redis did run each of them
    assert_consistent(latency)
    observed_sum = latency.sum

    # Frozen, Redis reads nothing: the next batch leaves the queue and waits for replies
    # that never come; then Redis dies under it.
    os.kill(redis_server.pid, signal.SIGSTOP)
    try:
        await wait_until("redis stopped", lambda: process_state(redis_server.pid) == "T")
        for n in range(20):
            writer.put(b"ch", b"lost-%d" % n)
        await wait_until("the batch in flight", lambda: writer.queued == 0)
    finally:
        await redis_server.kill()  # SIGKILL ends a stopped process too
    await wait_until("the batch counted as dropped", lambda: writer.dropped >= 20)
    assert writer.dropped == 20
    assert latency.count == 50  # none of the lost ones observed
    assert latency.sum == observed_sum

    # Back up: the writer reconnects and new messages are observed again.
    await redis_server.start()
    for n in range(7):
        writer.put(b"ch", b"after-%d" % n)
    await wait_until("7 more acknowledged", lambda: latency.count >= 57)
    assert (latency.count, writer.dropped) == (57, 20)
    assert await publish_calls(redis_server) == 7  # a fresh process: only these


async def test_cluster_writers_one_per_node_share_one_histogram(
    redis_cluster: RedisCluster,
) -> None:
    for node in redis_cluster.nodes:
        await node.cli("CONFIG", "RESETSTAT")
    rooms_by_port: dict[int, list[str]] = {}
    for n in range(24):
        room = f"latency-{n}"
        node = await redis_cluster.node_for(keys_of(room)[0])
        rooms_by_port.setdefault(node.port, []).append(room)
    assert set(rooms_by_port) == {node.port for node in redis_cluster.nodes}, rooms_by_port
    backend = RedisBackend(parse_redis_url(redis_cluster.url), presence_ttl_seconds=30)
    await backend.start(lambda room_id, data: None)
    try:
        assert backend.ready
        for rooms in rooms_by_port.values():
            for room in rooms:
                backend.publish(room, b"hello")
        latency = backend.publish_latency
        await wait_until("every publish observed", lambda: latency.count >= 24)
        assert latency.count == 24
        assert_consistent(latency)
        # A listener and a writer per node, and each node's writer did its share.
        assert len(backend.tasks) == 2 * len(redis_cluster.nodes)
        for node in redis_cluster.nodes:
            stats = await node.info("commandstats")
            spublish = stats.get("cmdstat_spublish")
            assert isinstance(spublish, dict), node
            assert int(spublish["calls"]) == len(rooms_by_port[node.port])
    finally:
        await backend.stop()
