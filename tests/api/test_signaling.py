"""The signaling protocol over a real WebSocket: joins, events, relay and isolation."""

from __future__ import annotations

import asyncio
import json
import re

import websockets

from tests.support.client import joined
from tests.support.server import running_server
from tests.support.tokens import token

SDP = "v=0\r\no=- 1 2 IN IP4 127.0.0.1\r\ns=-\r\nt=0 0\r\n"
TIMESTAMP = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z")


async def test_room_state_comes_first_and_includes_the_joiner() -> None:
    async with running_server() as server:
        async with joined(server.ws_url("r1", token("alice", username="Alice"))) as (_, state):
            assert state["sender_id"] == "server"
            assert state["room_id"] == "r1"
            assert TIMESTAMP.fullmatch(state["timestamp"])
            resume = {key: state["payload"].pop(key) for key in ("session_id", "resume_token")}
            assert all(type(value) is str and value for value in resume.values())
            assert state["payload"] == {
                "room_id": "r1",
                "participants": [{"user_id": "alice", "username": "Alice"}],
                "participant_count": 1,
            }
            async with joined(server.ws_url("r1", token("bob"))) as (_, second):
                users = {p["user_id"] for p in second["payload"]["participants"]}
                assert users == {"alice", "bob"}
                assert second["payload"]["participant_count"] == 2


async def test_members_see_joins_and_leaves_with_reason() -> None:
    async with running_server() as server:
        async with joined(server.ws_url("r1", token("alice"))) as (alice, _):
            async with joined(server.ws_url("r1", token("bob", username="Bob"))):
                joined_event = await alice.expect("user_joined")
                assert joined_event["payload"] == {"user_id": "bob", "username": "Bob"}
                assert joined_event["sender_id"] == "server"
            left = await alice.expect("user_left")
            assert left["payload"] == {"user_id": "bob", "username": "Bob", "reason": "left"}


async def test_broadcast_reaches_every_other_member_but_not_the_sender() -> None:
    async with (
        running_server() as server,
        joined(server.ws_url("r1", token("a"))) as (a, _),
        joined(server.ws_url("r1", token("b"))) as (b, _),
        joined(server.ws_url("r1", token("c"))) as (c, _),
    ):
        await a.expect("user_joined")
        await a.expect("user_joined")
        await b.expect("user_joined")
        await a.send({"type": "offer", "payload": {"type": "offer", "sdp": SDP}})
        for receiver in (b, c):
            offer = await receiver.expect("offer")
            assert offer["sender_id"] == "a"
            assert offer["payload"] == {"type": "offer", "sdp": SDP}
        await a.expect_silence()


async def test_targeted_offer_reaches_only_target() -> None:
    async with (
        running_server() as server,
        joined(server.ws_url("r1", token("a"))) as (a, _),
        joined(server.ws_url("r1", token("b"))) as (b, _),
        joined(server.ws_url("r1", token("c"))) as (c, _),
    ):
        await b.expect("user_joined")
        payload = {"type": "answer", "sdp": SDP, "target_user_id": "c"}
        await a.send({"type": "answer", "payload": payload})
        answer = await c.expect("answer")
        assert answer["payload"]["target_user_id"] == "c"
        assert answer["sender_id"] == "a"
        await b.expect_silence()


async def test_unknown_target_is_reported_and_nothing_is_delivered() -> None:
    async with (
        running_server() as server,
        joined(server.ws_url("r1", token("a"))) as (a, _),
        joined(server.ws_url("r1", token("b"))) as (b, _),
        joined(server.ws_url("r2", token("c"))),
    ):
        await a.expect("user_joined")
        # c exists, but in another room: a message never leaves its room.
        payload = {"type": "offer", "sdp": SDP, "target_user_id": "c"}
        await a.send({"type": "offer", "payload": payload})
        await a.expect_error("target_not_found")
        await b.expect_silence()


async def test_messages_never_cross_rooms() -> None:
    async with (
        running_server() as server,
        joined(server.ws_url("r1", token("a"))) as (a, _),
        joined(server.ws_url("r2", token("b"))) as (b, _),
    ):
        await a.send({"type": "offer", "payload": {"type": "offer", "sdp": SDP}})
        await b.expect_silence()


async def test_server_overwrites_sender_room_and_timestamp() -> None:
    async with (
        running_server() as server,
        joined(server.ws_url("r1", token("a"))) as (a, _),
        joined(server.ws_url("r1", token("b"))) as (b, _),
    ):
        await a.send(
            {
                "type": "offer",
                "payload": {"type": "offer", "sdp": SDP},
                "sender_id": "mallory",
                "room_id": "r1",
                "timestamp": "1999-01-01T00:00:00Z",
            }
        )
        offer = await b.expect("offer")
        assert offer["sender_id"] == "a"
        assert offer["room_id"] == "r1"
        assert offer["timestamp"] != "1999-01-01T00:00:00Z"
        assert TIMESTAMP.fullmatch(offer["timestamp"])


async def test_ice_candidates_are_relayed_with_both_spellings() -> None:
    candidate = "candidate:1 1 UDP 2122252543 127.0.0.1 50000 typ host"
    async with (
        running_server() as server,
        joined(server.ws_url("r1", token("a"))) as (a, _),
        joined(server.ws_url("r1", token("b"))) as (b, _),
    ):
        # A browser's RTCIceCandidate.toJSON(), camelCase.
        browser = {
            "candidate": candidate,
            "sdpMid": "0",
            "sdpMLineIndex": 0,
            "usernameFragment": "abcd",
        }
        await a.send({"type": "ice_candidate", "payload": browser, "room_id": "r1"})
        relayed = (await b.expect("ice_candidate"))["payload"]
        assert relayed == {**browser, "sdp_mid": "0", "sdp_m_line_index": 0}
        # SEED.md's snake_case.
        seed = {"candidate": candidate, "sdp_mid": "1", "sdp_m_line_index": 1}
        await a.send({"type": "ice_candidate", "payload": seed})
        relayed = (await b.expect("ice_candidate"))["payload"]
        assert relayed == {**seed, "sdpMid": "1", "sdpMLineIndex": 1}
        # End of candidates.
        await a.send({"type": "ice_candidate", "payload": {"candidate": ""}})
        relayed = (await b.expect("ice_candidate"))["payload"]
        assert relayed["candidate"] == ""


async def test_ping_gets_pong_with_the_same_payload() -> None:
    async with running_server() as server, joined(server.ws_url("r1", token("a"))) as (a, _):
        await a.send({"type": "ping", "payload": {"n": 7}})
        pong = await a.expect("pong")
        assert pong["payload"] == {"n": 7}
        assert pong["sender_id"] == "server"


async def test_rejoin_replaces_the_old_session() -> None:
    async with running_server() as server:
        async with joined(server.ws_url("r1", token("peer"))) as (peer, _):
            async with joined(server.ws_url("r1", token("bob", username="Bob"))) as (old, _):
                await peer.expect("user_joined")
                async with joined(server.ws_url("r1", token("bob", username="Bob"))) as (new, st):
                    assert st["payload"]["participant_count"] == 2
                    await old.expect_error("session_replaced")
                    await old.expect_close(4001)
                    left = await peer.expect("user_left")
                    assert left["payload"]["reason"] == "replaced"
                    assert left["payload"]["user_id"] == "bob"
                    again = await peer.expect("user_joined")
                    assert again["payload"]["user_id"] == "bob"
                    # The new session works, and the old one's close did not remove it.
                    await peer.send({"type": "offer", "payload": {"type": "offer", "sdp": SDP}})
                    await new.expect("offer")
                    await peer.expect_silence()


async def test_seed_python_client_works_as_written() -> None:
    """SEED.md's client: websockets.connect(url), read room_state, send an offer."""
    async with running_server() as server:
        async with joined(server.ws_url("room-123", token("bob"))) as (bob, _):
            url = server.ws_url("room-123", token("user_1"))
            async with websockets.connect(url) as websocket:
                message = await websocket.recv()  # SEED.md's receive() is a typo for recv()
                room_state = json.loads(message)
                assert room_state["type"] == "room_state"
                offer_message = {
                    "type": "offer",
                    "payload": {"type": "offer", "sdp": "v=0\r\n..."},
                    "room_id": "room-123",
                    "timestamp": "2024-01-01T00:00:00Z",
                }
                await websocket.send(json.dumps(offer_message))
                await bob.expect("user_joined")
                offer = await bob.expect("offer")
                assert offer["sender_id"] == "user_1"
                assert offer["payload"]["sdp"] == "v=0\r\n..."


async def test_many_messages_arrive_in_order() -> None:
    async with (
        running_server() as server,
        joined(server.ws_url("r1", token("a"))) as (a, _),
        joined(server.ws_url("r1", token("b"))) as (b, _),
    ):
        for n in range(200):
            payload = {
                "candidate": f"candidate:{n} 1 UDP 1 127.0.0.1 {n} typ host",
                "sdpMid": "0",
                "target_user_id": "b",
            }
            await a.send({"type": "ice_candidate", "payload": payload})
        for n in range(200):
            got = await b.expect("ice_candidate")
            assert got["payload"]["candidate"].startswith(f"candidate:{n} ")
        await asyncio.sleep(0)
