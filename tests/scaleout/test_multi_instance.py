"""Three real `rendezvous serve` processes sharing one real redis-server: clients on
different instances negotiate (offer, answer, trickled ICE), broadcast, see each other
join and leave, stream 10,000 ordered messages, and share one room capacity; two aiortc
peers on different instances open a data channel. Afterwards no Redis key lacks a TTL."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aioice.ice
import pytest
from aiortc import RTCPeerConnection

from tests.e2e.test_aiortc import (
    LOOPBACK,
    Peer,
    chat,
    fetch_rtc_configuration,
    stun_server,
    with_both_spellings,
)
from tests.scaleout.helpers import (
    FRAME_TIMEOUT_SECONDS,
    SDP,
    assert_every_key_expires,
    candidate,
    end_of_candidates,
    expect_event,
    expect_from,
    participants,
    pending_frames,
    relayed,
    user_ids,
)
from tests.support.client import Client, connect, joined
from tests.support.instances import Instance, instance_env, running_instances
from tests.support.redis import RedisServer
from tests.support.tokens import token

ROOM = "call-1"
PRESENCE_TTL_SECONDS = 30.0  # the default: nothing here waits for an expiry
CANDIDATES_PER_SIDE = 3


def _env(tmp_path: Path, redis: RedisServer, **variables: str) -> dict[str, str]:
    return instance_env(tmp_path, redis_url=redis.url, **variables)


@contextlib.asynccontextmanager
async def _members_one_per_instance(
    instances: list[Instance], names: list[str]
) -> AsyncIterator[dict[str, Client]]:
    """Join `names[i]` on `instances[i]`, in order, each earlier member seeing each later
    one join exactly once (the events cross instances through Redis)."""
    async with contextlib.AsyncExitStack() as stack:
        clients: dict[str, Client] = {}
        for name, instance in zip(names, instances, strict=True):
            client, state = await stack.enter_async_context(
                joined(instance.ws_url(ROOM, token(name)))
            )
            assert user_ids(state) == {*clients, name}
            for earlier in clients.values():
                await expect_event(earlier, "user_joined", name)
            clients[name] = client
        yield clients


async def _negotiate(clients: dict[str, Client], offerer: str, answerer: str) -> None:
    """A targeted offer, the answer back, then trickled candidates both ways, each ending
    with end-of-candidates; every frame arrives once, in order, from the right sender."""
    a, b = clients[offerer], clients[answerer]
    sent_offer = {
        "type": "offer",
        "sdp": SDP + f"a=x-from:{offerer}\r\n",
        "target_user_id": answerer,
    }
    await a.send({"type": "offer", "payload": sent_offer})
    await expect_from(b, "offer", sender=offerer, payload=sent_offer, room=ROOM)
    sent_answer = {
        "type": "answer",
        "sdp": SDP + f"a=x-from:{answerer}\r\n",
        "target_user_id": offerer,
    }
    await b.send({"type": "answer", "payload": sent_answer})
    await expect_from(a, "answer", sender=answerer, payload=sent_answer, room=ROOM)

    def trickle(base: int, target: str) -> list[dict[str, Any]]:
        own = [candidate(base + n, target=target) for n in range(CANDIDATES_PER_SIDE)]
        return [*own, end_of_candidates(target=target)]

    from_a, from_b = trickle(100, answerer), trickle(200, offerer)
    for mine, theirs in zip(from_a, from_b, strict=True):  # interleaved, as browsers trickle
        await a.send({"type": "ice_candidate", "payload": mine})
        await b.send({"type": "ice_candidate", "payload": theirs})
    for receiver, sender, sent in ((b, offerer, from_a), (a, answerer, from_b)):
        for payload in sent:
            await expect_from(
                receiver, "ice_candidate", sender=sender, payload=relayed(payload), room=ROOM
            )


async def test_members_on_three_instances_negotiate_and_broadcast_through_redis(
    tmp_path: Path, redis_server: RedisServer
) -> None:
    names = ["alice", "bob", "carol"]
    env = _env(tmp_path, redis_server)
    async with (
        running_instances(3, env=env, log_dir=tmp_path) as instances,
        _members_one_per_instance(instances, names) as clients,
    ):
        # Every ordered pair of instances carries an offer one way and an answer the other.
        for offerer, answerer in (("alice", "bob"), ("bob", "carol"), ("carol", "alice")):
            await _negotiate(clients, offerer, answerer)

        # A broadcast reaches both other members, on their two instances, exactly once.
        for sender in names:
            sent = candidate(300 + names.index(sender))
            await clients[sender].send({"type": "ice_candidate", "payload": sent})
            for receiver in names:
                if receiver != sender:
                    await expect_from(
                        clients[receiver],
                        "ice_candidate",
                        sender=sender,
                        payload=relayed(sent),
                        room=ROOM,
                    )
        sent_offer = {"type": "offer", "sdp": SDP}
        await clients["bob"].send({"type": "offer", "payload": sent_offer})
        for receiver in ("alice", "carol"):
            await expect_from(
                clients[receiver], "offer", sender="bob", payload=sent_offer, room=ROOM
            )

        # Nothing was delivered twice, nor to a member it was not meant for.
        leftovers = await asyncio.gather(*(pending_frames(c) for c in clients.values()))
        assert leftovers == [[], [], []]
        assert await assert_every_key_expires(redis_server, PRESENCE_TTL_SECONDS) > 0


MESSAGES = 10_000
IN_FLIGHT = 200  # how far the sender may run ahead of what the receiver has read


async def test_ten_thousand_messages_cross_instances_complete_and_in_order(
    tmp_path: Path, redis_server: RedisServer
) -> None:
    env = _env(
        tmp_path,
        redis_server,
        # The test's own pace: all 10,000 frames may go in one burst.
        WEBRTC_RATE_LIMIT_PER_SECOND=str(MESSAGES),
        WEBRTC_RATE_LIMIT_BURST=str(2 * MESSAGES),
        # Room for everything in flight, several times over.
        WEBRTC_SEND_QUEUE_MAX_MESSAGES=str(4 * IN_FLIGHT),
    )
    async with (
        running_instances(3, env=env, log_dir=tmp_path) as instances,
        _members_one_per_instance(instances, ["a", "b", "c"]) as clients,
    ):
        # c, on the third instance, hears the room's bus traffic but none is meant for it.
        sender, receiver, bystander = clients["a"], clients["b"], clients["c"]
        received: list[int] = []
        progress = asyncio.Event()

        async def send_all() -> None:
            for n in range(MESSAGES):
                while n - len(received) >= IN_FLIGHT:
                    progress.clear()
                    await progress.wait()
                await sender.send({"type": "ice_candidate", "payload": candidate(n, target="b")})

        async def receive_all() -> None:
            while len(received) < MESSAGES:
                frame = await receiver.recv(FRAME_TIMEOUT_SECONDS)
                assert (frame["type"], frame["sender_id"]) == ("ice_candidate", "a"), frame
                received.append(
                    int(frame["payload"]["candidate"].split()[0].removeprefix("candidate:"))
                )
                progress.set()

        async with asyncio.timeout(90), asyncio.TaskGroup() as group:
            group.create_task(send_all())
            group.create_task(receive_all())

        assert received == list(range(MESSAGES))
        # Nothing extra for the receiver, no error (rate_limited, ...) for the sender, and
        # nothing at all for the bystander.
        leftovers = await asyncio.gather(
            *(pending_frames(c) for c in (receiver, sender, bystander))
        )
        assert leftovers == [[], [], []]
        assert await assert_every_key_expires(redis_server, PRESENCE_TTL_SECONDS) > 0


async def test_joins_and_leaves_reach_members_on_every_instance_exactly_once(
    tmp_path: Path, redis_server: RedisServer
) -> None:
    watchers = ["w0", "w1", "w2"]
    async with (
        running_instances(3, env=_env(tmp_path, redis_server), log_dir=tmp_path) as instances,
        _members_one_per_instance(instances, watchers) as clients,
    ):
        for index, instance in enumerate(instances):
            newcomer = f"n{index}"
            url = instance.ws_url(ROOM, token(newcomer, username=f"Newcomer {index}"))
            async with joined(url) as (_, state):
                assert user_ids(state) == {*watchers, newcomer}
                for watcher in clients.values():
                    frame = await expect_event(watcher, "user_joined", newcomer)
                    assert frame["payload"]["username"] == f"Newcomer {index}"
            for watcher in clients.values():
                frame = await expect_event(watcher, "user_left", newcomer, reason="left")
                assert frame["payload"]["username"] == f"Newcomer {index}"
            for other in instances:
                assert await participants(other, ROOM) == watchers

        leftovers = await asyncio.gather(*(pending_frames(c) for c in clients.values()))
        assert leftovers == [[], [], []]  # no event twice
        assert await assert_every_key_expires(redis_server, PRESENCE_TTL_SECONDS) > 0


SEATS = 10
CONTENDERS = 50


async def test_fifty_concurrent_joins_over_three_instances_fill_exactly_ten_seats(
    tmp_path: Path, redis_server: RedisServer
) -> None:
    env = _env(tmp_path, redis_server, WEBRTC_MAX_PARTICIPANTS_PER_ROOM=str(SEATS))
    async with running_instances(3, env=env, log_dir=tmp_path) as instances:
        admitted: dict[str, tuple[Client, dict[str, Any]]] = {}
        refused: list[str] = []
        decided, release = asyncio.Event(), asyncio.Event()

        async def contend(n: int) -> None:
            user = f"u{n}"
            async with connect(instances[n % 3].ws_url(ROOM, token(user))) as client:
                first = await client.recv(FRAME_TIMEOUT_SECONDS)
                if first["type"] == "room_state":
                    admitted[user] = (client, first)
                else:
                    assert (first["type"], first["payload"]["code"]) == ("error", "room_full")
                    await client.expect_close(1008)
                    refused.append(user)
                if len(admitted) + len(refused) == CONTENDERS:
                    decided.set()
                await release.wait()  # a seated member holds its seat until the test has counted

        async with asyncio.timeout(60), asyncio.TaskGroup() as group:
            for n in range(CONTENDERS):
                group.create_task(contend(n))
            await decided.wait()
            try:
                assert (len(admitted), len(refused)) == (SEATS, CONTENDERS - SEATS)
                for instance in instances:
                    assert await participants(instance, ROOM) == sorted(admitted)
                assert await assert_every_key_expires(redis_server, PRESENCE_TTL_SECONDS) > 0
                # Each seated member learnt of each other one exactly once (in its room_state
                # or by a user_joined), and never of a refused one.
                later = await asyncio.gather(*(pending_frames(c) for c, _ in admitted.values()))
                for (user, (_, state)), frames in zip(admitted.items(), later, strict=True):
                    assert sorted(_told_of(user, state, frames)) == sorted(set(admitted) - {user})
            finally:
                release.set()


def _told_of(user: str, state: dict[str, Any], frames: list[dict[str, Any]]) -> list[str]:
    """Whom `user` was told of: its room_state's others, then one per user_joined."""
    told = [p["user_id"] for p in state["payload"]["participants"] if p["user_id"] != user]
    for frame in frames:
        assert frame["type"] == "user_joined", (user, frame)
        told.append(frame["payload"]["user_id"])
    return told


async def test_aiortc_peers_on_two_instances_open_a_data_channel(
    tmp_path: Path, redis_server: RedisServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    # aioice skips loopback when gathering; pin host candidates to 127.0.0.1.
    monkeypatch.setattr(
        aioice.ice, "get_host_addresses", lambda use_ipv4=True, use_ipv6=True: [LOOPBACK]
    )
    async with stun_server() as stun:
        env = _env(tmp_path, redis_server, WEBRTC_STUN_URLS=stun.url)
        async with running_instances(2, env=env, log_dir=tmp_path) as (first, second):
            alice_token, bob_token = token("alice"), token("bob")
            alice_config, alice_rtc = await fetch_rtc_configuration(first.http, alice_token)
            bob_config, bob_rtc = await fetch_rtc_configuration(second.http, bob_token)
            for config in (alice_config, bob_config):
                assert config["iceServers"] == [{"urls": [stun.url]}]
            alice_pc, bob_pc = RTCPeerConnection(alice_rtc), RTCPeerConnection(bob_rtc)
            try:
                async with (
                    joined(first.ws_url(ROOM, alice_token)) as (alice_ws, _),
                    joined(second.ws_url(ROOM, bob_token)) as (bob_ws, bob_state),
                ):
                    assert user_ids(bob_state) == {"alice", "bob"}
                    await expect_event(alice_ws, "user_joined", "bob")
                    alice, bob = Peer("alice", alice_ws, alice_pc), Peer("bob", bob_ws, bob_pc)
                    await chat(alice, bob, greeting="hello across instances", reply="hello back")
                    assert (alice_pc.connectionState, bob_pc.connectionState) == ("connected",) * 2
                    for receiver, sender in ((alice, bob), (bob, alice)):
                        # Candidates crossed instances only as trickled ice_candidate frames.
                        (description,) = receiver.relayed_descriptions
                        assert "a=candidate:" not in description["payload"]["sdp"]
                        assert sender.sent_candidates[-1]["candidate"] == ""
                        assert receiver.relayed_candidates == [
                            with_both_spellings(p) for p in sender.sent_candidates
                        ]
            finally:
                await asyncio.wait_for(
                    asyncio.gather(alice_pc.close(), bob_pc.close()), FRAME_TIMEOUT_SECONDS
                )
