"""Churn: two real `rendezvous serve` instances sharing one real redis-server, with a
short presence TTL. For a bounded time (RENDEZVOUS_CHURN_SECONDS, default 60) random
clients join random rooms on random instances, trade offers and candidates, leave
cleanly or vanish (TCP aborted, no close frame), while Redis blips: it is restarted on
its port (coming back empty) and its clients' connections are killed (CLIENT KILL).

Once every client is gone and the presence TTL plus the resume grace has passed (with
the same again as margin), nothing is left behind: Redis holds no key, each instance's
gauges say no connection, room or participant, its resident memory grew less than
RSS_GROWTH_LIMIT_BYTES since a warm baseline and its open file descriptors are back near
theirs, its logs show no crash (Redis-outage lines aside), and it is ready again.
Every client saw only well-formed frames of its own room and defined errors.

`pytest -s` prints the tally and the memory figures; RENDEZVOUS_CHURN_SEED replays a run."""

from __future__ import annotations

import asyncio
import os
import random
import re
from collections.abc import Sequence
from pathlib import Path

import httpx
import pytest
from pydantic import AliasChoices

from rendezvous.settings import Settings
from tests.hostile.churning import Tally, worker
from tests.scaleout_failures.conftest import crash_lines, readiness
from tests.support.instances import Instance, instance_env, running_instances
from tests.support.redis import RedisServer

CHURN_SECONDS = float(os.environ.get("RENDEZVOUS_CHURN_SECONDS", "60"))
SEED = int(os.environ.get("RENDEZVOUS_CHURN_SEED", random.randrange(2**32)))
WARMUP_SECONDS = 8.0
WORKERS = 8
PRESENCE_TTL_SECONDS = 3.0
PING_INTERVAL_SECONDS = 1.0  # shorter than the TTL, as the README requires
BLIP_INTERVAL_SECONDS = min(15.0, CHURN_SECONDS / 4)
REDIS_DOWN_SECONDS = 1.0
KEY_SAMPLE_SECONDS = 2.0
RSS_GROWTH_LIMIT_BYTES = 50 * 2**20
# Redis connections are pooled and may be more after the run than at the baseline.
FD_GROWTH_LIMIT = 16
POLL_SECONDS = 0.1
_GAUGE = re.compile(r"^(rendezvous_(?:connections|rooms|participants)) (\S+)$", re.MULTILINE)


def resume_grace_seconds() -> float:
    """WEBRTC_RESUME_GRACE's default when the settings have it (session resume holds a
    vanished participant that long), else 0."""
    for field in Settings.model_fields.values():
        alias = field.validation_alias
        if isinstance(alias, AliasChoices) and "WEBRTC_RESUME_GRACE" in alias.choices:
            return float(field.default)
    return 0.0


def rss_bytes(pid: int) -> int:
    status = Path(f"/proc/{pid}/status").read_text()
    (line,) = [row for row in status.splitlines() if row.startswith("VmRSS:")]
    return int(line.split()[1]) * 1024


def open_fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


async def gauges(instance: Instance) -> dict[str, float]:
    async with httpx.AsyncClient(base_url=instance.http, timeout=5, trust_env=False) as http:
        text = (await http.get("/metrics")).text
    return {name: float(value) for name, value in _GAUGE.findall(text)}


async def tasks(instance: Instance) -> int:
    async with httpx.AsyncClient(base_url=instance.http, timeout=5, trust_env=False) as http:
        text = (await http.get("/metrics")).text
    (value,) = re.findall(r"^rendezvous_asyncio_tasks (\S+)$", text, re.MULTILINE)
    return int(float(value))


async def leftovers(instances: Sequence[Instance], redis: RedisServer) -> list[str]:
    """What still says someone is there: Redis keys, non-zero gauges."""
    found = []
    if (keys := int(await redis.cli("DBSIZE"))) != 0:
        found.append(f"{keys} Redis keys: {sorted(await redis.key_ttls())}")
    for instance in instances:
        busy = {name: v for name, v in (await gauges(instance)).items() if v != 0}
        if busy:
            found.append(f"{instance}: {busy}")
    return found


async def settled(instances: Sequence[Instance], redis: RedisServer, *, within: float) -> None:
    deadline = asyncio.get_running_loop().time() + within
    while found := await leftovers(instances, redis):
        assert asyncio.get_running_loop().time() < deadline, f"left behind: {found}"
        await asyncio.sleep(POLL_SECONDS)


async def churn(instances: Sequence[Instance], seconds: float, tally: Tally) -> None:
    until = asyncio.get_running_loop().time() + seconds
    await asyncio.gather(
        *(
            worker(n, instances=instances, until=until, tally=tally, seed=SEED)
            for n in range(WORKERS)
        )
    )


async def blip_redis(redis: RedisServer, seconds: float, tally: Tally) -> None:
    """Every BLIP_INTERVAL_SECONDS, restart Redis or kill its clients' connections, by
    turns; meanwhile check that no key lives without a TTL."""
    loop = asyncio.get_running_loop()
    until = loop.time() + seconds
    next_blip = loop.time() + BLIP_INTERVAL_SECONDS
    restart = True
    while loop.time() < until - BLIP_INTERVAL_SECONDS / 2:
        await asyncio.sleep(KEY_SAMPLE_SECONDS)
        if redis.running:
            eternal = [key for key, ttl in (await redis.key_ttls()).items() if ttl == -1]
            if eternal:
                tally.problem(f"keys without a TTL: {eternal}")
        if loop.time() < next_blip:
            continue
        next_blip += BLIP_INTERVAL_SECONDS
        if restart:
            tally.add("redis restarts")
            await redis.stop()
            await asyncio.sleep(REDIS_DOWN_SECONDS)
            await redis.start()
        else:
            tally.add("redis client kills")
            await redis.cli("CLIENT", "KILL", "TYPE", "pubsub")
            await redis.cli("CLIENT", "KILL", "TYPE", "normal")
        restart = not restart


@pytest.mark.timeout(CHURN_SECONDS + 240)
async def test_churn_with_redis_blips_leaves_nothing_behind(
    redis_server: RedisServer, tmp_path: Path
) -> None:
    print(f"churn: {CHURN_SECONDS:.0f} s, seed {SEED} (RENDEZVOUS_CHURN_SEED replays it)")
    wait = PRESENCE_TTL_SECONDS + resume_grace_seconds()
    env = instance_env(
        tmp_path,
        redis_url=redis_server.url,
        WEBRTC_ROOM_PRESENCE_TTL=str(PRESENCE_TTL_SECONDS),
        WEBRTC_WS_PING_INTERVAL=str(PING_INTERVAL_SECONDS),
    )
    async with running_instances(2, env=env, log_dir=tmp_path) as instances:
        tally = Tally()
        await churn(instances, WARMUP_SECONDS, tally)
        await settled(instances, redis_server, within=2 * wait)
        baseline = {i.index: (rss_bytes(i.pid), open_fds(i.pid)) for i in instances}
        base_tasks = {i.index: await tasks(i) for i in instances}

        await asyncio.gather(
            churn(instances, CHURN_SECONDS, tally), blip_redis(redis_server, CHURN_SECONDS, tally)
        )
        # Every client is gone: after the TTL plus the grace, nothing may remain; the same
        # again is the margin.
        await asyncio.sleep(wait)
        await settled(instances, redis_server, within=wait)
        final = {i.index: (rss_bytes(i.pid), open_fds(i.pid)) for i in instances}
        final_tasks = {i.index: await tasks(i) for i in instances}

        print("tally:", dict(sorted(tally.counts.items())))
        for index, (rss, fds) in final.items():
            base_rss, base_fds = baseline[index]
            growth = (rss - base_rss) / 2**20
            print(
                f"instance {index}: RSS {base_rss / 2**20:.1f} -> {rss / 2**20:.1f} MiB "
                f"({growth:+.1f}), fds {base_fds} -> {fds}, "
                f"tasks {base_tasks[index]} -> {final_tasks[index]}"
            )
        assert tally.problems == []
        assert all(i.running for i in instances)
        assert [await readiness(i) for i in instances] == [200, 200]
        assert [crash_lines(i) for i in instances] == [[], []]
        for index, (rss, fds) in final.items():
            assert rss - baseline[index][0] < RSS_GROWTH_LIMIT_BYTES, (index, baseline, final)
            assert fds - baseline[index][1] <= FD_GROWTH_LIMIT, (index, baseline, final)
        # Every session's tasks ended with it: the task count is back at its idle level.
        assert final_tasks == base_tasks, (base_tasks, final_tasks)
        # The run did what it says, so that the checks above mean something.
        counts = tally.counts
        assert counts["joined"] >= 50, counts
        assert counts["left"] >= 10 and counts["vanished"] >= 10, counts
        assert counts["received offer"] + counts["received ice_candidate"] >= 20, counts
        assert counts["redis restarts"] >= 1 and counts["redis client kills"] >= 1, counts
