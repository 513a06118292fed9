"""A Redis outage under real `rendezvous serve` instances on a real redis-server: liveness
stays green and readiness red while it lasts, peers on one instance carry on, what needs
Redis is refused with `backend_unavailable`, nothing crashes; once Redis is back (empty),
readiness, subscriptions, presence and cross-instance delivery recover within a bounded
time. Killing the pub/sub connections alone is survived the same way.

The measured times are printed (`pytest -s`) for the README."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import time
from pathlib import Path

from rendezvous.backends.redis_listening import (
    BACKOFF_SECONDS,
    PING_INTERVAL_SECONDS,
    SUBSCRIBE_TIMEOUT_SECONDS,
)
from tests.scaleout_failures.conftest import (
    crash_lines,
    liveness,
    offer_arrives,
    participant_ids,
    ping_pong,
    readiness,
    seconds_until,
    send_offer,
    users,
)
from tests.support.client import Client, connect, joined
from tests.support.instances import Instance, instance_env, running_instances
from tests.support.redis import RedisServer
from tests.support.tokens import token

# A stopped redis-server closes its connections, so an instance sees the loss at once,
# without waiting for a ping; twice a ping interval is a generous bound.
READINESS_LOST_DEADLINE_SECONDS = 2 * PING_INTERVAL_SECONDS
# Back: the listener retries at least every backoff cap, then re-subscribes (bounded by
# the subscribe timeout) and the presence keeper re-asserts at once; twice that.
RECOVERY_DEADLINE_SECONDS = 2 * (BACKOFF_SECONDS[1] + SUBSCRIBE_TIMEOUT_SECONDS)
LOG_DEADLINE_SECONDS = 5.0
# The backoff doubles up to its cap: the delays before the cap add up to less than twice it.
MIN_OUTAGE_SECONDS = 2 * BACKOFF_SECONDS[1]
# A short presence TTL, so that the presence keeper ticks (and fails) during the outage,
# and must be seen refreshing again afterwards.
PRESENCE_TTL_SECONDS = 3.0
OUTAGE_ENV = {"WEBRTC_ROOM_PRESENCE_TTL": "3", "WEBRTC_WS_PING_INTERVAL": "1.5"}


def _channel(room: str) -> str:
    return f"rdv:{{{room}}}:bus"


async def _subscribers(redis: RedisServer, room: str) -> int:
    """How many connections subscribe to the room's channel (PUBSUB NUMSUB)."""
    reply = (await redis.cli("PUBSUB", "NUMSUB", _channel(room))).splitlines()
    assert reply[0] == _channel(room), reply
    return int(reply[1])


async def _all_ready(instances: list[Instance], status: int) -> bool:
    return all(s == status for s in await asyncio.gather(*(readiness(i) for i in instances)))


async def _all_live(instances: list[Instance]) -> None:
    statuses = await asyncio.gather(*(liveness(i) for i in instances))
    assert statuses == [200] * len(instances), statuses


async def _expect_joins(client: Client, *user_ids: str) -> None:
    seen = [(await client.expect("user_joined"))["payload"]["user_id"] for _ in user_ids]
    assert sorted(seen) == sorted(user_ids), seen


async def _logged(instance: Instance, text: str) -> bool:
    return text in instance.output()


async def test_redis_outage_keeps_local_peers_talking_and_recovers_when_redis_returns(
    tmp_path: Path, redis_server: RedisServer
) -> None:
    env = instance_env(tmp_path, redis_url=redis_server.url, **OUTAGE_ENV)
    async with (
        running_instances(3, env=env, log_dir=tmp_path) as instances,
        contextlib.AsyncExitStack() as stack,
    ):
        a, b, c = instances
        pids = [i.pid for i in instances]
        # Room "mesh": one member on each instance. Room "local": two members, both on a.
        ann, _ = await stack.enter_async_context(joined(a.ws_url("mesh", token("ann"))))
        ben, _ = await stack.enter_async_context(joined(b.ws_url("mesh", token("ben"))))
        cat, state = await stack.enter_async_context(joined(c.ws_url("mesh", token("cat"))))
        assert users(state) == {"ann", "ben", "cat"}
        await _expect_joins(ann, "ben", "cat")
        await _expect_joins(ben, "cat")
        pia, _ = await stack.enter_async_context(joined(a.ws_url("local", token("pia"))))
        quy, state = await stack.enter_async_context(joined(a.ws_url("local", token("quy"))))
        assert users(state) == {"pia", "quy"}
        await _expect_joins(pia, "quy")
        await offer_arrives(ann, "ann", ben, "ben")  # across instances, before the outage
        assert await _subscribers(redis_server, "mesh") == 3
        assert await _subscribers(redis_server, "local") == 1

        # Redis goes away.
        stopped_at = time.monotonic()
        await redis_server.stop()
        readiness_lost = await seconds_until(
            "every /readyz answers 503",
            lambda: _all_ready(instances, 503),
            deadline_seconds=READINESS_LOST_DEADLINE_SECONDS,
        )
        await _all_live(instances)

        # Peers on one instance carry on: targeted both ways, and a broadcast.
        await offer_arrives(pia, "pia", quy, "quy", sdp="v=0\r\ns=local-1\r\n")
        await offer_arrives(quy, "quy", pia, "pia", sdp="v=0\r\ns=local-2\r\n")
        await send_offer(pia, target=None, sdp="v=0\r\ns=local-3\r\n")
        assert (await quy.expect("offer"))["payload"]["sdp"] == "v=0\r\ns=local-3\r\n"
        await pia.expect_silence()
        # A frame that needs the bus is dropped, told to its sender; the socket stays.
        await send_offer(ann, target="ben")
        await ann.expect_error("backend_unavailable")
        await ping_pong(ann, "still here")
        await ben.expect_silence()
        # A new join is refused: try again later.
        async with connect(b.ws_url("refused", token("dan"))) as dan:
            await dan.expect_error("backend_unavailable")
            await dan.expect_close(1013)
        await _all_live(instances)
        for instance in instances:
            await seconds_until(
                f"instance {instance.index} logs the outage and its reconnect attempts",
                functools.partial(_logged, instance, "connect attempt"),
                deadline_seconds=LOG_DEADLINE_SECONDS,
            )
            assert "redis listener primary: down" in instance.output()
        # Long enough for the reconnect backoff to reach its cap: the recovery measured
        # below is then the slowest one an outage of any length gives.
        await asyncio.sleep(max(0.0, MIN_OUTAGE_SECONDS - (time.monotonic() - stopped_at)))
        await _all_live(instances)
        outage_seconds = time.monotonic() - stopped_at

        # Redis is back, empty.
        await redis_server.start()
        readiness_back = await seconds_until(
            "every /readyz answers 200 again",
            lambda: _all_ready(instances, 200),
            deadline_seconds=RECOVERY_DEADLINE_SECONDS,
        )

        async def presence_restored() -> bool:
            listed = await asyncio.gather(
                *(participant_ids(i, room) for i in instances for room in ("mesh", "local"))
            )
            return listed == [{"ann", "ben", "cat"}, {"pia", "quy"}] * len(instances)

        presence_back = readiness_back + await seconds_until(
            "every member is listed again, from every instance",
            presence_restored,
            deadline_seconds=RECOVERY_DEADLINE_SECONDS,
        )
        restored_at = time.monotonic()
        # Live rooms are subscribed again; the refused join left no subscription behind.
        assert await _subscribers(redis_server, "mesh") == 3
        assert await _subscribers(redis_server, "local") == 1
        assert await _subscribers(redis_server, "refused") == 0
        ttls = await redis_server.key_ttls()
        assert ttls and all(ttl > 0 for ttl in ttls.values()), ttls  # re-asserted keys expire

        # Cross-instance delivery resumes, and joins are admitted again.
        await offer_arrives(ann, "ann", ben, "ben", sdp="v=0\r\ns=after-1\r\n")
        await offer_arrives(cat, "cat", ann, "ann", sdp="v=0\r\ns=after-2\r\n")
        async with joined(c.ws_url("mesh", token("eve"))) as (_, state):
            assert users(state) == {"ann", "ben", "cat", "eve"}
            for member in (ann, ben, cat):
                assert (await member.expect("user_joined"))["payload"]["user_id"] == "eve"
        for member in (ann, ben, cat):
            left = await member.expect("user_left")
            assert left["payload"]["user_id"] == "eve" and left["payload"]["reason"] == "left"
        for member in (ann, ben, cat, pia, quy):
            await member.expect_silence(0.1)  # nothing else reached anyone
        # Presence upkeep survived its failed ticks: members are still listed well past
        # the TTL (a reaper ticking every TTL/3 would have removed unrefreshed ones).
        refresh_proven_at = restored_at + PRESENCE_TTL_SECONDS * 4 / 3 + 0.5
        await asyncio.sleep(max(0.0, refresh_proven_at - time.monotonic()))
        assert await presence_restored()
        for member in (ann, ben, cat, pia, quy):
            await member.expect_silence(0.1)  # in particular, no user_left

        assert [i.pid for i in instances] == pids and all(i.running for i in instances)
        assert all(i.runs == 1 for i in instances)
        assert [crash_lines(i) for i in instances] == [[], [], []]
    print(
        f"\nredis outage ({outage_seconds:.2f} s): readiness lost after {readiness_lost:.2f} s;"
        f" after restart, readiness back in {readiness_back:.2f} s,"
        f" presence back in {presence_back:.2f} s"
    )


async def test_killed_pubsub_connections_reconnect_and_delivery_resumes(
    tmp_path: Path, redis_server: RedisServer
) -> None:
    env = instance_env(tmp_path, redis_url=redis_server.url)
    async with (
        running_instances(2, env=env, log_dir=tmp_path) as instances,
        joined(instances[0].ws_url("pair", token("ann"))) as (ann, _),
        joined(instances[1].ws_url("pair", token("ben"))) as (ben, state),
    ):
        a, b = instances
        pids = [a.pid, b.pid]
        assert users(state) == {"ann", "ben"}
        await _expect_joins(ann, "ben")
        await offer_arrives(ann, "ann", ben, "ben")

        # One pub/sub connection per instance, nothing else.
        assert await redis_server.cli("CLIENT", "KILL", "TYPE", "pubsub") == "2"
        resumed = await seconds_until(
            "a targeted offer crosses instances again",
            lambda: _crosses(ann, ben, "ben"),
            deadline_seconds=RECOVERY_DEADLINE_SECONDS,
        )
        await offer_arrives(ben, "ben", ann, "ann", sdp="v=0\r\ns=back\r\n")
        await offer_arrives(ann, "ann", ben, "ben", sdp="v=0\r\ns=forth\r\n")
        for instance in instances:
            assert "redis listener primary: down" in instance.output()
        assert await _all_ready(instances, 200)
        assert await _subscribers(redis_server, "pair") == 2
        assert [i.pid for i in instances] == pids and all(i.running for i in instances)
        assert all(i.runs == 1 for i in instances)
        assert [crash_lines(i) for i in instances] == [[], []]
    print(f"\npub/sub connections killed: cross-instance delivery resumed in {resumed:.2f} s")


async def _crosses(sender: Client, receiver: Client, receiver_id: str) -> bool:
    """Send one targeted offer; whether it arrived within half a second. What the sender
    is told meanwhile can only be `backend_unavailable` (its own listener is down), and
    what the receiver gets can only be this probe or an earlier one."""
    sdp = f"v=0\r\ns=probe-{time.monotonic_ns()}\r\n"
    await send_offer(sender, target=receiver_id, sdp=sdp)
    arrived = False
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(0.5):
            while not arrived:
                offer = await receiver.expect("offer")
                assert offer["payload"]["sdp"].startswith("v=0\r\ns=probe-"), offer
                arrived = offer["payload"]["sdp"] == sdp
    with contextlib.suppress(TimeoutError):
        while True:
            refused = await sender.recv(timeout=0.05)
            assert refused["type"] == "error", refused
            assert refused["payload"]["code"] == "backend_unavailable", refused
    return arrived
