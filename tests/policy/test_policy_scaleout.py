"""Three real `rendezvous serve` processes sharing one real redis-server, each with its
own copy of the policy file on its own ConfigMap volume, as each pod has its own mount
(issue 5, acceptances 3 and 5). Each reconciles its own copy; once the same version is
on every volume, all three report the same sha256 and generation, and a room override
holds across instances, the capacity enforced in Redis."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import time
from collections.abc import AsyncIterator, Callable, Sequence
from pathlib import Path
from typing import Any

import httpx

from rendezvous.policy.reconciling import POLL_SECONDS
from tests.support.client import Client, connect, joined
from tests.support.instances import Instance, instance_env
from tests.support.kubelet import SecretVolume
from tests.support.redis import RedisServer
from tests.support.tokens import token

KEY = "policy.yaml"
COUNT = 3
# One poll, with margin for three processes and Redis on a busy machine.
CONVERGE_DEADLINE_SECONDS = 4 * POLL_SECONDS
FRAME_TIMEOUT_SECONDS = 10.0

FIRST = b"rooms:\n  max_participants: 3\n"
SECOND = b"""\
rooms:
  max_participants: 3
  overrides:
    - match: "1on1-*"
      max_participants: 2
limits:
  max_message_bytes: 4096
"""


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@contextlib.asynccontextmanager
async def pods(
    tmp_path: Path, redis: RedisServer, first: bytes
) -> AsyncIterator[list[tuple[Instance, SecretVolume]]]:
    """COUNT instances on one Redis, instance i reading its policy from volume i, which
    holds `first` at start-up. Every instance is stopped afterwards."""
    pairs: list[tuple[Instance, SecretVolume]] = []
    for index in range(COUNT):
        volume = SecretVolume(tmp_path / f"policy-{index}")
        volume.write({KEY: first})
        env = instance_env(
            tmp_path, redis_url=redis.url, WEBRTC_POLICY_FILE=str(volume.directory / KEY)
        )
        pairs.append((Instance(index, env=env, log_dir=tmp_path), volume))
    try:
        started = await asyncio.gather(*(i.start() for i, _ in pairs), return_exceptions=True)
        for result in started:
            if isinstance(result, BaseException):
                raise result
        yield pairs
    finally:
        await asyncio.gather(*(i.stop() for i, _ in pairs))


async def readyz(http: httpx.AsyncClient, instance: Instance) -> dict[str, Any]:
    response = await http.get(f"{instance.http}/readyz")
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


async def policies(instances: Sequence[Instance]) -> list[dict[str, Any]]:
    """Each instance's /readyz policy status, in order."""
    async with httpx.AsyncClient(timeout=5, trust_env=False) as http:
        bodies = await asyncio.gather(*(readyz(http, i) for i in instances))
    return [body["policy"] for body in bodies]


async def converge(
    instances: Sequence[Instance], what: str, condition: Callable[[dict[str, Any]], bool]
) -> list[dict[str, Any]]:
    """Every instance's policy status, once `condition` holds on each (bounded)."""
    deadline = time.monotonic() + CONVERGE_DEADLINE_SECONDS
    while True:
        statuses = await policies(instances)
        if all(condition(s) for s in statuses):
            return statuses
        if time.monotonic() > deadline:
            logs = "\n".join(f"--- {i!r}\n{i.output()[-2000:]}" for i in instances)
            raise AssertionError(
                f"{what}: not within {CONVERGE_DEADLINE_SECONDS} s: {statuses}\n{logs}"
            )
        await asyncio.sleep(0.05)


def at(data: bytes, generation: int) -> Callable[[dict[str, Any]], bool]:
    return lambda status: (status["sha256"], status["generation"]) == (sha256(data), generation)


async def generation_metric(instance: Instance) -> float:
    async with httpx.AsyncClient(timeout=5, trust_env=False) as http:
        text = (await http.get(f"{instance.http}/metrics")).text
    lines = [line for line in text.splitlines() if line.startswith("rendezvous_policy_generation ")]
    assert len(lines) == 1, text
    return float(lines[0].split()[1])


async def test_each_instance_reconciles_its_own_copy_and_all_report_the_same_hash(
    tmp_path: Path,
) -> None:
    async with RedisServer(tmp_path / "redis") as redis, pods(tmp_path, redis, FIRST) as pairs:
        instances = [instance for instance, _ in pairs]
        await converge(instances, "generation 1 everywhere", at(FIRST, 1))

        # One copy changes: only the instance that mounts it moves.
        pairs[0][1].write({KEY: SECOND})
        await converge(instances[:1], "instance 0 at generation 2", at(SECOND, 2))
        assert [s["sha256"] for s in await policies(instances[1:])] == [sha256(FIRST)] * 2

        # The rest of the rollout: every copy holds the same version.
        for _, volume in pairs[1:]:
            volume.write({KEY: SECOND})
        statuses = await converge(instances, "generation 2 everywhere", at(SECOND, 2))
        assert all(s["last_error"] is None for s in statuses), statuses
        assert [s["source"] for s in statuses] == [
            str(volume.directory / KEY) for _, volume in pairs
        ]
        assert [await generation_metric(i) for i in instances] == [2.0] * COUNT


async def test_a_room_override_applied_live_holds_across_instances(
    tmp_path: Path,
) -> None:
    async with RedisServer(tmp_path / "redis") as redis, pods(tmp_path, redis, FIRST) as pairs:
        instances = [instance for instance, _ in pairs]
        for _, volume in pairs:
            volume.write({KEY: SECOND})
        await converge(instances, "generation 2 everywhere", at(SECOND, 2))
        a, b, c = instances
        async with (
            joined(a.ws_url("1on1-x", token("alice"))) as (alice, _),
            joined(b.ws_url("1on1-x", token("bob"))),
        ):
            await expect_joined(alice, "bob")
            await refused_as_full(c.ws_url("1on1-x", token("carol")))
            await refused_as_full(a.ws_url("1on1-x", token("dave")))
        # Rooms the override does not match keep the file's default, across instances.
        async with contextlib.AsyncExitStack() as stack:
            for name, instance in zip(("p", "q", "r"), instances, strict=True):
                await stack.enter_async_context(joined(instance.ws_url("group", token(name))))
            await refused_as_full(b.ws_url("group", token("s")))


async def expect_joined(client: Client, user: str) -> None:
    frame = await client.expect("user_joined", FRAME_TIMEOUT_SECONDS)
    assert frame["payload"]["user_id"] == user, frame


async def refused_as_full(url: str) -> None:
    async with connect(url) as client:
        frame = await client.expect("error", FRAME_TIMEOUT_SECONDS)
        assert frame["payload"]["code"] == "room_full", frame
        await client.expect_close(1008, FRAME_TIMEOUT_SECONDS)
