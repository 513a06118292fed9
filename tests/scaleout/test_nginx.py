"""SEED.md's deployment as written: a real nginx (Debian's) with the `ip_hash` upstream
and the WebSocket Upgrade/Connection headers in front of three `rendezvous serve`
instances on one Redis. Clients connect through nginx from distinct loopback source
addresses, land on different instances (each instance's own /metrics and log say so),
and signal across them. With Redis no stickiness is needed: the same holds behind
`least_conn`, with every client on one source address."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager
from pathlib import Path
from typing import Any

from tests.scaleout.helpers import (
    SDP,
    candidate,
    connection_counts,
    expect_event,
    expect_from,
    pending_frames,
    relayed,
    user_ids,
)
from tests.support.client import Client, joined
from tests.support.instances import Instance, instance_env, running_instances
from tests.support.nginx import Balance, Nginx, http_from, joined_from, source_for_upstream
from tests.support.redis import RedisServer
from tests.support.tokens import token

ROOM = "standup"
NAMES = ("alice", "bob", "carol")

Joined = AbstractAsyncContextManager[tuple[Client, dict[str, Any]]]
Join = Callable[[int, str], Joined]  # (client index, user) -> a joined client


@contextlib.asynccontextmanager
async def _deployment(
    tmp_path: Path, redis: RedisServer, *, balance: Balance
) -> AsyncIterator[tuple[list[Instance], Nginx]]:
    env = instance_env(tmp_path, redis_url=redis.url)
    async with running_instances(3, env=env, log_dir=tmp_path) as instances:
        ports = [instance.port for instance in instances]
        async with Nginx(tmp_path / "nginx", ports, balance=balance) as nginx:
            yield instances, nginx


async def _join_spread(
    stack: contextlib.AsyncExitStack, instances: list[Instance], join: Join
) -> tuple[dict[str, Client], list[int]]:
    """Join NAMES[i] through `join`, one at a time; after each, exactly one more instance
    holds a WebSocket (its /metrics gauge), which tells where that client landed.
    Returns the clients and the instance index of each."""
    clients: dict[str, Client] = {}
    landed: list[int] = []
    before = await connection_counts(instances)
    assert before == [0, 0, 0]
    for index, name in enumerate(NAMES):
        client, state = await stack.enter_async_context(join(index, name))
        assert user_ids(state) == {*clients, name}  # members on other instances included
        for earlier in clients.values():
            await expect_event(earlier, "user_joined", name)
        after = await connection_counts(instances)
        grew = [i for i in range(len(instances)) if after[i] == before[i] + 1]
        assert len(grew) == 1 and sum(after) == sum(before) + 1, (before, after)
        landed.append(grew[0])
        before = after
        clients[name] = client
    assert sorted(landed) == [0, 1, 2], landed  # one client per instance
    return clients, landed


async def _signal_across(clients: dict[str, Client]) -> None:
    """A targeted offer and its answer between two instances, a broadcast candidate to
    the two others, then a departure every remaining member hears of exactly once."""
    alice, bob, carol = (clients[name] for name in NAMES)
    sent_offer = {"type": "offer", "sdp": SDP, "target_user_id": "carol"}
    await alice.send({"type": "offer", "payload": sent_offer})
    await expect_from(carol, "offer", sender="alice", payload=sent_offer, room=ROOM)
    sent_answer = {"type": "answer", "sdp": SDP, "target_user_id": "alice"}
    await carol.send({"type": "answer", "payload": sent_answer})
    await expect_from(alice, "answer", sender="carol", payload=sent_answer, room=ROOM)
    sent = candidate(1)
    await bob.send({"type": "ice_candidate", "payload": sent})
    for receiver in (alice, carol):
        await expect_from(receiver, "ice_candidate", sender="bob", payload=relayed(sent), room=ROOM)
    await carol.connection.close()
    for remaining in (alice, bob):
        await expect_event(remaining, "user_left", "carol", reason="left")
    assert list(await asyncio.gather(pending_frames(alice), pending_frames(bob))) == [[], []]


async def _participants_through(nginx: Nginx, source: str = "127.0.0.1") -> list[str]:
    """The participants endpoint, asked through nginx from `source`."""
    async with http_from(source, nginx.url) as http:
        response = await http.get(
            f"/webrtc/rooms/{ROOM}/participants",
            headers={"Authorization": f"Bearer {token('observer')}"},
        )
    assert response.status_code == 200, response.text
    return sorted(p["user_id"] for p in response.json()["participants"])


async def test_ip_hash_spreads_clients_over_instances_that_signal_through_redis(
    tmp_path: Path, redis_server: RedisServer
) -> None:
    sources = [source_for_upstream(index, 3) for index in range(3)]
    async with _deployment(tmp_path, redis_server, balance="ip_hash") as (instances, nginx):

        def join(index: int, name: str) -> Joined:
            return joined_from(sources[index], nginx.ws_url(ROOM, token(name)))

        async with contextlib.AsyncExitStack() as stack:
            clients, landed = await _join_spread(stack, instances, join)
            # ip_hash sent each source address to the upstream it hashes to.
            assert landed == [nginx.upstream_for(source) for source in sources] == [0, 1, 2]
            for source, index in zip(sources, landed, strict=True):
                # uvicorn trusts nginx's X-Forwarded-For: the instance logged the client.
                accepted = [
                    line
                    for line in instances[index].output().splitlines()
                    if "WebSocket /webrtc/ws/" in line and "[accepted]" in line
                ]
                assert any(f"{source}:" in line for line in accepted), accepted
            assert await _participants_through(nginx, sources[0]) == sorted(NAMES)
            await _signal_across(clients)


async def test_least_conn_spreads_clients_from_one_address_that_signal_through_redis(
    tmp_path: Path, redis_server: RedisServer
) -> None:
    async with _deployment(tmp_path, redis_server, balance="least_conn") as (instances, nginx):
        assert "least_conn;" in nginx.config() and "ip_hash" not in nginx.config()

        def join(index: int, name: str) -> Joined:
            # Every client from 127.0.0.1: no address-based stickiness at all.
            return joined(nginx.ws_url(ROOM, token(name)))

        async with contextlib.AsyncExitStack() as stack:
            clients, _ = await _join_spread(stack, instances, join)
            assert await _participants_through(nginx) == sorted(NAMES)
            await _signal_across(clients)
