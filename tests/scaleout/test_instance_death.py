"""Instance death: three `rendezvous serve` processes on one Redis, members on each; one
instance is SIGKILLed. Nobody tells anyone: its participants' presence simply stops
being refreshed, expires, and is reaped by exactly one survivor, so each surviving peer
gets exactly one `user_left` (reason `timeout`) per lost participant, within TTL +
TTL/3 (asserted with twice that as margin). A client of the dead instance then
reconnects to a survivor and carries on."""

from __future__ import annotations

import asyncio
import contextlib
import time
from pathlib import Path

from tests.scaleout.helpers import (
    SDP,
    assert_every_key_expires,
    expect_event,
    expect_from,
    participants,
    pending_frames,
    user_ids,
)
from tests.support.client import Client, joined
from tests.support.instances import instance_env, running_instances
from tests.support.redis import RedisServer
from tests.support.tokens import token

ROOM = "huddle"
PRESENCE_TTL_SECONDS = 3.0
PING_INTERVAL_SECONDS = 1.0  # survivors prove alive by their pongs; the TTL needs it shorter
REAP_DEADLINE_SECONDS = 2 * (PRESENCE_TTL_SECONDS + PRESENCE_TTL_SECONDS / 3)
# After the last user_left, watch this long for a duplicate: three reaper ticks (TTL/3)
# on each survivor.
DUPLICATE_WATCH_SECONDS = PRESENCE_TTL_SECONDS


async def test_killed_instance_members_time_out_once_for_each_survivor(
    tmp_path: Path, redis_server: RedisServer
) -> None:
    env = instance_env(
        tmp_path,
        redis_url=redis_server.url,
        WEBRTC_ROOM_PRESENCE_TTL=str(PRESENCE_TTL_SECONDS),
        WEBRTC_WS_PING_INTERVAL=str(PING_INTERVAL_SECONDS),
    )
    # alice and bob survive (instances 0 and 1); carol and dave are on instance 2, which dies.
    placement = {"alice": 0, "bob": 1, "carol": 2, "dave": 2}
    lost = {"carol", "dave"}
    async with (
        running_instances(3, env=env, log_dir=tmp_path) as instances,
        contextlib.AsyncExitStack() as stack,
    ):
        clients: dict[str, Client] = {}
        for name, index in placement.items():
            url = instances[index].ws_url(ROOM, token(name))
            client, state = await stack.enter_async_context(joined(url))
            assert user_ids(state) == {*clients, name}
            for earlier in clients.values():
                await expect_event(earlier, "user_joined", name)
            clients[name] = client
        survivors = {name: clients[name] for name in placement if name not in lost}

        dead = instances[2]
        await dead.kill()
        killed_at = time.monotonic()

        async def departures(client: Client) -> dict[str, float]:
            """user_left (timeout) per lost member, by seconds since the kill."""
            seen: dict[str, float] = {}
            while seen.keys() != lost:
                frame = await client.expect("user_left", REAP_DEADLINE_SECONDS)
                user = frame["payload"]["user_id"]
                assert (frame["sender_id"], frame["payload"]["reason"]) == ("server", "timeout")
                assert user in lost and user not in seen, frame
                seen[user] = time.monotonic() - killed_at
            return seen

        async with asyncio.timeout(REAP_DEADLINE_SECONDS + 5):
            seen = await asyncio.gather(*(departures(c) for c in survivors.values()))
        for arrivals in seen:
            assert max(arrivals.values()) <= REAP_DEADLINE_SECONDS, arrivals

        # Exactly one each: no survivor hears of a lost member again.
        watched = await asyncio.gather(
            *(pending_frames(c, DUPLICATE_WATCH_SECONDS) for c in survivors.values())
        )
        assert watched == [[], []]
        for alive in instances[:2]:
            assert await participants(alive, ROOM) == ["alice", "bob"]
        assert await assert_every_key_expires(redis_server, PRESENCE_TTL_SECONDS) > 0

        # carol's client reconnects to a surviving instance and carries on.
        async with joined(instances[1].ws_url(ROOM, token("carol"))) as (carol, state):
            assert user_ids(state) == {"alice", "bob", "carol"}
            for survivor in survivors.values():
                await expect_event(survivor, "user_joined", "carol")
            sent_offer = {"type": "offer", "sdp": SDP, "target_user_id": "alice"}
            await carol.send({"type": "offer", "payload": sent_offer})
            await expect_from(
                survivors["alice"], "offer", sender="carol", payload=sent_offer, room=ROOM
            )
            sent_answer = {"type": "answer", "sdp": SDP, "target_user_id": "carol"}
            await survivors["alice"].send({"type": "answer", "payload": sent_answer})
            await expect_from(carol, "answer", sender="alice", payload=sent_answer, room=ROOM)
            for alive in instances[:2]:
                assert await participants(alive, ROOM) == ["alice", "bob", "carol"]
