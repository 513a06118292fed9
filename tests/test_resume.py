"""Session resume over real sockets (issue 10, item 1): what a session is told to come
back with (`session_id`, `resume_token`), the per-session `seq` on every server frame
(spliced in as each frame is written: a broadcast's bytes are shared, its seqs are not),
and holding a dropped participant on one instance until it resumes or its grace ends.
A drop is a real one: the client's TCP connection is aborted, with no close frame."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import httpx
from prometheus_client.parser import text_string_to_metric_families

from rendezvous.resuming import resume_hash
from rendezvous.settings import Settings
from tests.support.client import Client, connect, joined
from tests.support.server import RunningServer, running_server
from tests.support.server import test_settings as settings_with
from tests.support.tokens import token

SDP = "v=0\r\no=- 1 2 IN IP4 127.0.0.1\r\ns=-\r\nt=0 0\r\n"


def offer(target: str | None = None) -> dict[str, Any]:
    payload: dict[str, Any] = {"type": "offer", "sdp": SDP}
    if target is not None:
        payload["target_user_id"] = target
    return {"type": "offer", "payload": payload}


async def test_room_state_tells_the_session_id_and_a_fresh_resume_token() -> None:
    async with running_server() as server:
        url = server.ws_url("r1", token("alice"))
        async with joined(url) as (_, first):
            state = first["payload"]
            assert len(state["session_id"]) >= 16
            assert len(state["resume_token"]) >= 43  # 32 random bytes, URL-safe base64
            # Stored by hash only, for the session that got it.
            record = await server.services.backend.resume_record(
                "r1", resume_hash(state["resume_token"])
            )
            assert record is not None
            assert (record.user_id, record.session_id, record.held) == (
                "alice",
                state["session_id"],
                False,
            )
        async with joined(url) as (_, second):
            assert second["payload"]["resume_token"] != state["resume_token"]
            assert second["payload"]["session_id"] != state["session_id"]


async def test_a_clean_leave_deletes_the_resume_record() -> None:
    async with running_server() as server:
        backend = server.services.backend
        async with joined(server.ws_url("r1", token("alice"))) as (_, state):
            spent = resume_hash(state["payload"]["resume_token"])
            assert await backend.resume_record("r1", spent) is not None
        async with asyncio.timeout(5):  # the close (1000) is a leave: the record goes
            while await backend.resume_record("r1", spent) is not None:
                await asyncio.sleep(0.02)


async def test_every_frame_carries_the_next_seq_of_its_session() -> None:
    async with running_server() as server:
        async with joined(server.ws_url("r1", token("alice"))) as (alice, state):
            assert state["seq"] == 1
            async with joined(server.ws_url("r1", token("bob"))) as (bob, bob_state):
                assert bob_state["seq"] == 1
                assert (await alice.expect("user_joined"))["seq"] == 2
                await bob.send(offer())  # a broadcast: one frame's bytes, each its own seq
                assert (await alice.expect("offer"))["seq"] == 3
                await alice.send({"type": "ping", "payload": {"n": 1}})
                assert (await alice.expect("pong"))["seq"] == 4
                await alice.send(offer("nobody"))
                assert (await alice.expect_error("target_not_found"))["seq"] == 5
                for _ in range(6, 56):  # many in one loop turn: one write, numbered in order
                    await bob.send(offer("alice"))
                seqs = [(await alice.expect("offer"))["seq"] for _ in range(6, 56)]
                assert seqs == list(range(6, 56))
            left = await alice.expect("user_left")
            assert left["seq"] == 56


async def test_the_closing_error_frame_carries_its_seq_too() -> None:
    """The close goes through the session's writer task, the other write path."""
    async with running_server() as server:
        async with joined(server.ws_url("r1", token("alice"))) as (alice, state):
            await alice.connection.send("x" * 70_000)  # over the 64 KiB frame limit
            error = await alice.expect_error("message_too_large")
            assert error["seq"] == state["seq"] + 1
            await alice.expect_close(1009)


async def test_a_refused_join_still_numbers_its_only_frame() -> None:
    async with running_server() as server:
        async with connect(server.ws_url("r1", "not-a-token")) as client:
            error = await _raw(client)
            assert error["type"] == "error" and error["seq"] == 1


async def _raw(client: Client) -> dict[str, Any]:
    frame: dict[str, Any] = json.loads(await client.connection.recv())
    return frame


# Holding and same-instance resume (stage 2).

GRACE_SECONDS = 5.0  # long enough never to expire by accident in the tests that resume


def resuming_settings(**overrides: Any) -> Settings:
    values: dict[str, Any] = {"resume_grace_seconds": GRACE_SECONDS}
    values.update(overrides)
    return settings_with(**values)


def resume_url(server: RunningServer, jwt: str, state: dict[str, Any], last_seq: int | None) -> str:
    url = server.ws_url("r1", jwt) + f"&resume={state['payload']['resume_token']}"
    return url if last_seq is None else url + f"&last_seq={last_seq}"


def drop(client: Client) -> None:
    """The socket vanishes: no close frame (what a network blink or a dead proxy does)."""
    transport = client.connection.transport
    assert transport is not None
    transport.abort()


async def until_held(server: RunningServer, count: int) -> None:
    async with asyncio.timeout(5):
        while server.services.hub.holding != count:
            await asyncio.sleep(0.01)


async def test_a_dropped_participant_resumes_with_every_frame_it_missed_once_in_order() -> None:
    async with running_server(resuming_settings()) as server:
        alice_jwt = token("alice")
        async with (
            joined(server.ws_url("r1", alice_jwt)) as (alice, state),
            joined(server.ws_url("r1", token("bob"))) as (bob, _),
        ):
            seen = (await alice.expect("user_joined"))["seq"]  # 2
            drop(alice)
            await until_held(server, 1)
            await bob.send(offer("alice"))  # relayed, targeted
            await bob.send(offer())  # a broadcast
            async with joined(server.ws_url("r1", token("carol"))):  # presence events
                await bob.expect("user_joined")
            await bob.expect("user_left")
            async with joined(resume_url(server, alice_jwt, state, seen)) as (back, resumed):
                payload = resumed["payload"]
                assert payload["resumed"] is True and payload["missed"] is False
                assert payload["session_id"] == state["payload"]["session_id"]
                assert payload["resume_token"] != state["payload"]["resume_token"]
                assert {p["user_id"] for p in payload["participants"]} == {"alice", "bob"}
                replayed = [await back.recv() for _ in range(4)]
                assert [(f["type"], f["seq"]) for f in replayed] == [
                    ("offer", 3),
                    ("offer", 4),
                    ("user_joined", 5),
                    ("user_left", 6),
                ]
                assert replayed[0]["payload"]["target_user_id"] == "alice"
                await bob.send(offer("alice"))  # live again, numbered on
                assert (await back.expect("offer"))["seq"] == 7
                await back.expect_silence()
                await bob.expect_silence()  # bob never saw alice leave or join


async def test_without_last_seq_everything_since_the_drop_is_replayed() -> None:
    async with running_server(resuming_settings()) as server:
        alice_jwt = token("alice")
        async with (
            joined(server.ws_url("r1", alice_jwt)) as (alice, state),
            joined(server.ws_url("r1", token("bob"))) as (bob, _),
        ):
            await alice.expect("user_joined")
            drop(alice)
            await until_held(server, 1)
            for _ in range(3):
                await bob.send(offer("alice"))
            async with joined(resume_url(server, alice_jwt, state, None)) as (back, resumed):
                assert resumed["payload"]["missed"] is False
                assert resumed["seq"] == 2  # the last frame sent before the drop
                assert [(await back.expect("offer"))["seq"] for _ in range(3)] == [3, 4, 5]


async def test_overflow_while_held_drops_the_oldest_and_the_resume_says_missed() -> None:
    bound = 8
    settings = resuming_settings(send_queue_max_messages=bound)
    async with running_server(settings) as server:
        alice_jwt = token("alice")
        async with (
            joined(server.ws_url("r1", alice_jwt)) as (alice, state),
            joined(server.ws_url("r1", token("bob"))) as (bob, _),
        ):
            seen = (await alice.expect("user_joined"))["seq"]
            drop(alice)
            await until_held(server, 1)
            for n in range(20):
                payload = {"type": "offer", "sdp": f"{n}", "target_user_id": "alice"}
                await bob.send({"type": "offer", "payload": payload})
            await bob.send({"type": "ping", "payload": {}})
            await bob.expect("pong")  # every offer was relayed by now
            async with joined(resume_url(server, alice_jwt, state, seen)) as (back, resumed):
                assert resumed["payload"]["missed"] is True
                frames = [await back.expect("offer") for _ in range(bound)]
                # The newest `bound` are kept, numbered as first sent: 3..22, so 15..22.
                assert [f["seq"] for f in frames] == list(range(23 - bound, 23))
                assert [f["payload"]["sdp"] for f in frames] == [str(n) for n in range(12, 20)]
                assert resumed["seq"] == frames[0]["seq"] - 1
                await back.expect_silence()


async def test_an_unresumed_participant_leaves_with_timeout_once_the_grace_runs_out() -> None:
    grace = 0.5
    async with running_server(resuming_settings(resume_grace_seconds=grace)) as server:
        alice_jwt = token("alice")
        async with (
            joined(server.ws_url("r1", alice_jwt)) as (alice, state),
            joined(server.ws_url("r1", token("bob"))) as (bob, _),
        ):
            await alice.expect("user_joined")
            loop = asyncio.get_running_loop()
            dropped_at = loop.time()
            drop(alice)
            left = await bob.expect("user_left", timeout=2 * grace + 1)
            assert loop.time() - dropped_at >= grace
            assert left["payload"] == {"user_id": "alice", "username": "alice", "reason": "timeout"}
            await until_held(server, 0)
            await refused(resume_url(server, alice_jwt, state, 2), "unknown or expired")


async def refused(url: str, why: str) -> None:
    async with connect(url) as client:
        error = await client.expect_error("resume_failed")
        assert why in error["payload"]["message"], error
        assert error["seq"] == 1
        await client.expect_close(4004)


async def test_forged_spent_and_foreign_tokens_are_refused() -> None:
    async with running_server(resuming_settings()) as server:
        alice_jwt = token("alice")
        async with joined(server.ws_url("r1", alice_jwt)) as (alice, state):
            drop(alice)
            await until_held(server, 1)
            forged = {"payload": {"resume_token": "A" * 43}}
            await refused(resume_url(server, alice_jwt, forged, 1), "unknown or expired")
            await refused(resume_url(server, token("mallory"), state, 1), "another user")
            async with joined(resume_url(server, alice_jwt, state, 1)) as (_, resumed):
                assert resumed["payload"]["resumed"] is True
                await refused(resume_url(server, alice_jwt, state, 1), "unknown or expired")
            await refused(resume_url(server, alice_jwt, resumed, 1), "unknown or expired")
        # A token for another room is unknown in this one.
        async with joined(server.ws_url("r2", alice_jwt)) as (_, other_room):
            await refused(resume_url(server, alice_jwt, other_room, 1), "unknown or expired")


async def test_a_bad_last_seq_is_refused() -> None:
    async with running_server(resuming_settings()) as server:
        async with joined(server.ws_url("r1", token("alice"))) as (_, state):
            url = resume_url(server, token("alice"), state, None) + "&last_seq=-1"
            await refused(url, "last_seq")


async def test_a_clean_leave_is_announced_at_once_and_is_not_resumable() -> None:
    async with running_server(resuming_settings()) as server:
        alice_jwt = token("alice")
        async with joined(server.ws_url("r1", token("bob"))) as (bob, _):
            async with joined(server.ws_url("r1", alice_jwt)) as (_, state):
                await bob.expect("user_joined")
            left = await bob.expect("user_left", timeout=GRACE_SECONDS / 2)
            assert left["payload"]["reason"] == "left"
            assert server.services.hub.holding == 0
            await refused(resume_url(server, alice_jwt, state, 1), "unknown or expired")


async def test_kicked_replaced_and_held_sessions_are_not_resumable() -> None:
    async with running_server(resuming_settings()) as server:
        alice_jwt = token("alice")
        async with joined(server.ws_url("r1", token("bob"))) as (bob, _):
            async with joined(server.ws_url("r1", alice_jwt)) as (alice, kicked):
                await bob.expect("user_joined")
                await server.services.hub.kick("r1", "alice")
                await alice.expect_close(4002)
            assert (await bob.expect("user_left"))["payload"]["reason"] == "kicked"
            await refused(resume_url(server, alice_jwt, kicked, 1), "unknown or expired")
            async with joined(server.ws_url("r1", alice_jwt)) as (alice, replaced):
                await bob.expect("user_joined")
                drop(alice)
                await until_held(server, 1)
                async with joined(server.ws_url("r1", alice_jwt)):  # a fresh join replaces it
                    await until_held(server, 0)
                    await refused(resume_url(server, alice_jwt, replaced, 1), "unknown or expired")


async def test_a_kick_while_held_ends_the_hold() -> None:
    async with running_server(resuming_settings()) as server:
        alice_jwt = token("alice")
        async with joined(server.ws_url("r1", token("bob"))) as (bob, _):
            async with joined(server.ws_url("r1", alice_jwt)) as (alice, state):
                await bob.expect("user_joined")
                drop(alice)
                await until_held(server, 1)
                await server.services.hub.kick("r1", "alice")
                assert (await bob.expect("user_left"))["payload"]["reason"] == "kicked"
                await until_held(server, 0)
                await refused(resume_url(server, alice_jwt, state, 1), "unknown or expired")
                await bob.expect_silence()  # announced once


async def test_a_resume_overtaking_a_socket_not_yet_known_dead_replays_from_it() -> None:
    """The client saw its connection die before the server did (a phone switching
    networks): the old socket is still open here when the resume arrives."""
    async with running_server(resuming_settings()) as server:
        alice_jwt = token("alice")
        async with (
            joined(server.ws_url("r1", alice_jwt)) as (old, state),
            joined(server.ws_url("r1", token("bob"))) as (bob, _),
        ):
            seen = (await old.expect("user_joined"))["seq"]
            for _ in range(2):  # sent to the old socket, still unread when alice resumes
                await bob.send(offer("alice"))
            await bob.send({"type": "ping", "payload": {}})
            await bob.expect("pong")
            async with joined(resume_url(server, alice_jwt, state, seen)) as (back, resumed):
                assert (resumed["payload"]["resumed"], resumed["payload"]["missed"]) == (
                    True,
                    False,
                )
                assert [(await back.expect("offer"))["seq"] for _ in range(2)] == [3, 4]
                for _ in range(2):  # what the old socket had been sent, then its end
                    await old.expect("offer")
                await old.expect_error("session_replaced")
                await old.expect_close(4001)
                await bob.send(offer("alice"))
                assert (await back.expect("offer"))["seq"] == 5
                await bob.expect_silence()  # no user_left, no user_joined


async def resume_metrics(server: RunningServer) -> dict[str, float]:
    async with httpx.AsyncClient(timeout=5, trust_env=False) as http:
        text = (await http.get(f"{server.http}/metrics")).text
    wanted = ("rendezvous_held_participants", "rendezvous_resumes_total")
    return {
        sample.name + (f"/{sample.labels['outcome']}" if "outcome" in sample.labels else ""): (
            sample.value
        )
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name in wanted
    }


async def test_held_participants_and_resume_outcomes_are_metrics() -> None:
    async with running_server(resuming_settings()) as server:
        alice_jwt = token("alice")
        before = await resume_metrics(server)
        assert before == {
            "rendezvous_held_participants": 0,
            "rendezvous_resumes_total/resumed": 0,
            "rendezvous_resumes_total/missed": 0,
            "rendezvous_resumes_total/refused": 0,
        }
        async with joined(server.ws_url("r1", alice_jwt)) as (alice, state):
            drop(alice)
            await until_held(server, 1)
            assert (await resume_metrics(server))["rendezvous_held_participants"] == 1
            forged = {"payload": {"resume_token": "A" * 43}}
            await refused(resume_url(server, alice_jwt, forged, 1), "unknown or expired")
            async with joined(resume_url(server, alice_jwt, state, 1)):
                after = await resume_metrics(server)
        assert after == {
            "rendezvous_held_participants": 0,
            "rendezvous_resumes_total/resumed": 1,
            "rendezvous_resumes_total/missed": 0,
            "rendezvous_resumes_total/refused": 1,
        }
