"""Session resume across instances (issue 10, item 1): real `rendezvous serve` processes
sharing a real redis-server. A participant held on one instance resumes on another (the
holder hands its buffer over through a Redis Stream), on another after its holder died,
or not at all once the reaper announced it; a drained instance's clients resume
elsewhere with nothing lost and nobody told they left."""

from __future__ import annotations

import asyncio
import contextlib
import time
from pathlib import Path
from typing import Any

from tests.support.client import Client, connect, joined
from tests.support.instances import Instance, instance_env, running_instances
from tests.support.redis import RedisServer
from tests.support.tokens import token

ROOM = "resume"
SDP = "v=0\r\no=- 1 2 IN IP4 127.0.0.1\r\ns=-\r\nt=0 0\r\n"
GRACE_SECONDS = 6.0
PRESENCE_TTL_SECONDS = 3.0
FRAME_TIMEOUT_SECONDS = 10.0  # generous: two servers and Redis share two busy cores


def _env(tmp_path: Path, redis: RedisServer, **variables: str) -> dict[str, str]:
    return instance_env(
        tmp_path,
        redis_url=redis.url,
        WEBRTC_RESUME_GRACE=str(GRACE_SECONDS),
        WEBRTC_ROOM_PRESENCE_TTL=str(PRESENCE_TTL_SECONDS),
        WEBRTC_WS_PING_INTERVAL="1",
        **variables,
    )


def offer(sdp: str, target: str | None = None) -> dict[str, Any]:
    payload: dict[str, Any] = {"type": "offer", "sdp": f"{SDP}s={sdp}\r\n"}
    if target is not None:
        payload["target_user_id"] = target
    return {"type": "offer", "payload": payload}


def sdp_name(frame: dict[str, Any]) -> str:
    sdp: str = frame["payload"]["sdp"]
    return sdp.removeprefix(SDP).removeprefix("s=").strip()


def resume_url(instance: Instance, user: str, state: dict[str, Any], last_seq: int) -> str:
    resume_token = state["payload"]["resume_token"]
    return instance.ws_url(ROOM, token(user)) + f"&resume={resume_token}&last_seq={last_seq}"


def drop(client: Client) -> None:
    transport = client.connection.transport
    assert transport is not None
    transport.abort()


async def test_a_participant_held_on_one_instance_resumes_on_another_with_nothing_lost(
    tmp_path: Path, redis_server: RedisServer
) -> None:
    async with (
        running_instances(2, env=_env(tmp_path, redis_server), log_dir=tmp_path) as (a, b),
        contextlib.AsyncExitStack() as stack,
    ):
        alice, state = await stack.enter_async_context(joined(a.ws_url(ROOM, token("alice"))))
        carol, _ = await stack.enter_async_context(joined(a.ws_url(ROOM, token("carol"))))
        bob, _ = await stack.enter_async_context(joined(b.ws_url(ROOM, token("bob"))))
        await alice.expect("user_joined")
        seen = (await alice.expect("user_joined"))["seq"]
        await carol.expect("user_joined")
        drop(alice)
        await asyncio.sleep(0.3)  # A notices the dropped socket and holds alice
        await bob.send(offer("bob-1", "alice"))  # crosses Redis to the holder
        await carol.send(offer("carol-1"))  # local to the holder, a broadcast
        await bob.expect("offer")
        dan, _ = await stack.enter_async_context(joined(b.ws_url(ROOM, token("dan"))))
        for watcher in (bob, carol):
            await watcher.expect("user_joined")
        await bob.send(offer("bob-2", "alice"))

        back, resumed = await stack.enter_async_context(joined(resume_url(b, "alice", state, seen)))
        payload = resumed["payload"]
        assert (payload["resumed"], payload["missed"]) == (True, False), payload
        assert payload["session_id"] == state["payload"]["session_id"]
        assert {p["user_id"] for p in payload["participants"]} == {"alice", "bob", "carol", "dan"}
        replayed = [await back.recv(FRAME_TIMEOUT_SECONDS) for _ in range(4)]
        assert [f["seq"] for f in replayed] == list(range(seen + 1, seen + 5)), replayed
        # bob-1 and carol-1 raced to the holder (one through Redis): either order; the
        # rest is ordered (dan's join and bob-2 were both published by B, in that order).
        names = [sdp_name(f) if f["type"] == "offer" else f["type"] for f in replayed]
        assert sorted(names[:2]) == ["bob-1", "carol-1"], replayed
        assert names[2:] == ["user_joined", "bob-2"], replayed
        assert replayed[2]["payload"]["user_id"] == "dan"
        # Live again, from both instances, numbered on.
        await carol.send(offer("carol-2", "alice"))
        await dan.send(offer("dan-1", "alice"))
        live = [await back.expect("offer", FRAME_TIMEOUT_SECONDS) for _ in range(2)]
        assert sorted(f["seq"] for f in live) == [seen + 5, seen + 6]
        assert sorted(sdp_name(f) for f in live) == ["carol-2", "dan-1"]
        await back.expect_silence(0.5)
        # Nobody saw alice leave or join; past the grace, still nobody.
        await asyncio.sleep(GRACE_SECONDS + 1)
        for watcher in (bob, carol, dan):
            frames = await _pending(watcher)
            assert not [f for f in frames if f["payload"].get("user_id") == "alice"], frames


async def _pending(client: Client) -> list[dict[str, Any]]:
    frames: list[dict[str, Any]] = []
    with contextlib.suppress(TimeoutError):
        while True:
            frames.append(await client.recv(0.3))
    return frames


async def test_a_participant_whose_instance_died_resumes_elsewhere_until_reaped(
    tmp_path: Path, redis_server: RedisServer
) -> None:
    async with (
        running_instances(2, env=_env(tmp_path, redis_server), log_dir=tmp_path) as (a, b),
        joined(b.ws_url(ROOM, token("bob"))) as (bob, _),
    ):
        async with joined(a.ws_url(ROOM, token("alice"))) as (_, state):
            seen = state["seq"]
            await bob.expect("user_joined")
            await a.kill()  # no drain, no hold: its presence simply stops being refreshed
            async with joined(resume_url(b, "alice", state, seen)) as (back, resumed):
                payload = resumed["payload"]
                assert (payload["resumed"], payload["missed"]) == (True, True), payload
                assert {p["user_id"] for p in payload["participants"]} == {"alice", "bob"}
                # B keeps its presence now: no reaper ever announces it.
                await bob.expect_silence(PRESENCE_TTL_SECONDS * 2)
                await bob.send(offer("bob-1", "alice"))
                assert (await back.expect("offer", FRAME_TIMEOUT_SECONDS))["seq"] == seen + 1
            assert (await bob.expect("user_left", FRAME_TIMEOUT_SECONDS))["payload"][
                "reason"
            ] == "left"


async def test_a_resume_after_the_reaper_announced_the_departure_is_refused(
    tmp_path: Path, redis_server: RedisServer
) -> None:
    async with (
        running_instances(2, env=_env(tmp_path, redis_server), log_dir=tmp_path) as (a, b),
        joined(b.ws_url(ROOM, token("bob"))) as (bob, _),
    ):
        async with joined(a.ws_url(ROOM, token("alice"))) as (_, state):
            await bob.expect("user_joined")
            killed = time.monotonic()
            await a.kill()
            left = await bob.expect("user_left", 2 * (PRESENCE_TTL_SECONDS * 4 / 3) + 2)
            assert left["payload"]["reason"] == "timeout"
            assert time.monotonic() - killed >= PRESENCE_TTL_SECONDS / 2
            async with connect(resume_url(b, "alice", state, 1)) as late:
                error = await late.expect_error("resume_failed")
                assert "unknown or expired" in error["payload"]["message"]
                await late.expect_close(4004)
            await bob.expect_silence(0.5)  # never both: no user_joined comes back


async def test_a_drained_instances_client_resumes_on_another_with_nothing_lost(
    tmp_path: Path, redis_server: RedisServer
) -> None:
    deadline = 20.0
    env = _env(
        tmp_path, redis_server, WEBRTC_DRAIN_WINDOW="0.5", WEBRTC_DRAIN_DEADLINE=str(deadline)
    )
    async with (
        running_instances(2, env=env, log_dir=tmp_path) as (a, b),
        joined(b.ws_url(ROOM, token("bob"))) as (bob, _),
    ):
        async with joined(a.ws_url(ROOM, token("alice"))) as (alice, state):
            seen = state["seq"]
            await bob.expect("user_joined")
            signalled = time.monotonic()
            a.terminate()
            error = await alice.expect_error("server_draining")
            seen = error["seq"]
            await alice.expect_close(1012)
            for n in range(5):  # while alice is held by the draining instance
                await bob.send(offer(f"bob-{n}", "alice"))
            await bob.send({"type": "ping", "payload": {}})
            await bob.expect("pong")
        async with joined(resume_url(b, "alice", state, seen)) as (back, resumed):
            assert (resumed["payload"]["resumed"], resumed["payload"]["missed"]) == (True, False)
            offers = [await back.expect("offer", FRAME_TIMEOUT_SECONDS) for _ in range(5)]
            assert [sdp_name(f) for f in offers] == [f"bob-{n}" for n in range(5)]
            assert [f["seq"] for f in offers] == list(range(seen + 1, seen + 6))
            # Handed over: the drained instance has nobody left to wait for, and exits.
            assert await a.wait(deadline) is not None
            assert time.monotonic() - signalled < deadline
            await bob.send(offer("bob-live", "alice"))
            assert sdp_name(await back.expect("offer", FRAME_TIMEOUT_SECONDS)) == "bob-live"
            await bob.expect_silence(PRESENCE_TTL_SECONDS * 2)  # never a user_left for alice


async def test_a_resume_elsewhere_overtaking_a_socket_not_yet_known_dead_replays_from_it(
    tmp_path: Path, redis_server: RedisServer
) -> None:
    async with (
        running_instances(2, env=_env(tmp_path, redis_server), log_dir=tmp_path) as (a, b),
        joined(b.ws_url(ROOM, token("bob"))) as (bob, _),
        joined(a.ws_url(ROOM, token("alice"))) as (old, state),
    ):
        await bob.expect("user_joined")
        seen = state["seq"]
        for n in range(2):
            await bob.send(offer(f"bob-{n}", "alice"))
        for _ in range(2):  # they reached the old socket on A (the client lost them)
            await old.expect("offer", FRAME_TIMEOUT_SECONDS)
        async with joined(resume_url(b, "alice", state, seen)) as (back, resumed):
            assert (resumed["payload"]["resumed"], resumed["payload"]["missed"]) == (True, False)
            offers = [await back.expect("offer", FRAME_TIMEOUT_SECONDS) for _ in range(2)]
            assert [sdp_name(f) for f in offers] == ["bob-0", "bob-1"]
            assert [f["seq"] for f in offers] == [seen + 1, seen + 2]
            await old.expect_error("session_replaced")
            await old.expect_close(4001)
            await bob.send(offer("bob-live", "alice"))
            live = await back.expect("offer", FRAME_TIMEOUT_SECONDS)
            assert (sdp_name(live), live["seq"]) == ("bob-live", seen + 3)
            await bob.expect_silence(PRESENCE_TTL_SECONDS * 2)  # never a user_left for alice
