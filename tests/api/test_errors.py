"""Every error code and close code of DESIGN section 3, each over a real WebSocket.

A dropped frame is proven dropped by what follows it: the sender's next frame reaches the
peer first (one sender to one receiver is ordered), and the sender's connection still
relays. `target_not_found` and `session_replaced` are in test_signaling.py; `unauthorized`
and the token's room grant are in the auth tests; `server_draining` is in the drain tests;
`slow_consumer` and the other per-connection limits are in test_limits.py.
"""

from __future__ import annotations

import asyncio
import json
import logging
from typing import Any

import httpx
import pytest
import websockets
from websockets.exceptions import InvalidStatus

from rendezvous.backends.memory import MemoryBackend, MemoryBroker
from rendezvous.limits import ABUSE_DROPPED_FRAMES
from rendezvous.protocol import MessageType
from rendezvous.rosters import LocalRoom, Peer
from tests.support.client import Client, connect, joined
from tests.support.server import running_server
from tests.support.server import test_settings as settings_with
from tests.support.tokens import token

SDP = "v=0\r\no=- 1 2 IN IP4 127.0.0.1\r\ns=-\r\nt=0 0\r\n"
CANDIDATE = "candidate:1 1 UDP 2122252543 127.0.0.1 50000 typ host"


def offer_to(target: str, sdp: str = SDP) -> dict[str, Any]:
    return {"type": "offer", "payload": {"type": "offer", "sdp": sdp, "target_user_id": target}}


async def assert_still_relays(sender: Client, receiver: Client, receiver_id: str) -> None:
    """The sender's connection is usable, and nothing it sent before reached the receiver:
    the receiver's next frame is this marker offer."""
    await sender.send({"type": "ping", "payload": {"still": "open"}})
    assert (await sender.expect("pong"))["payload"] == {"still": "open"}
    await sender.send(offer_to(receiver_id, sdp="marker"))
    assert (await receiver.expect("offer"))["payload"]["sdp"] == "marker"


# invalid_message: frame dropped, connection stays.

INVALID_FRAMES: dict[str, str | bytes] = {
    "not JSON": '{"type": "offer", "payload": ',
    "a JSON array": json.dumps([{"type": "ping"}]),
    "a JSON string": json.dumps("ping"),
    "no type": json.dumps({"payload": {}}),
    "a type that is not a string": json.dumps({"type": ["offer"], "payload": {}}),
    "an offer without payload": json.dumps({"type": "offer"}),
    "a payload that is not an object": json.dumps({"type": "offer", "payload": SDP}),
    "an offer without sdp": json.dumps({"type": "offer", "payload": {"type": "offer"}}),
    "an offer with an empty sdp": json.dumps(
        {"type": "offer", "payload": {"type": "offer", "sdp": ""}}
    ),
    "an sdp that is not a string": json.dumps(
        {"type": "offer", "payload": {"type": "offer", "sdp": 1}}
    ),
    "payload.type other than the envelope type": json.dumps(
        {"type": "offer", "payload": {"type": "answer", "sdp": SDP}}
    ),
    "an answer without payload.type": json.dumps({"type": "answer", "payload": {"sdp": SDP}}),
    "a candidate without sdpMid or sdpMLineIndex": json.dumps(
        {"type": "ice_candidate", "payload": {"candidate": CANDIDATE}}
    ),
    "a candidate that is not a string": json.dumps(
        {"type": "ice_candidate", "payload": {"candidate": 5, "sdpMid": "0"}}
    ),
    "an sdpMLineIndex that is a string": json.dumps(
        {"type": "ice_candidate", "payload": {"candidate": CANDIDATE, "sdpMLineIndex": "0"}}
    ),
    "an sdpMLineIndex that is a boolean": json.dumps(
        {"type": "ice_candidate", "payload": {"candidate": CANDIDATE, "sdpMLineIndex": True}}
    ),
    "a negative sdpMLineIndex": json.dumps(
        {"type": "ice_candidate", "payload": {"candidate": CANDIDATE, "sdpMLineIndex": -1}}
    ),
    "an sdpMid that is a number": json.dumps(
        {"type": "ice_candidate", "payload": {"candidate": CANDIDATE, "sdpMid": 0}}
    ),
    "spellings that disagree": json.dumps(
        {
            "type": "ice_candidate",
            "payload": {"candidate": CANDIDATE, "sdpMid": "0", "sdp_mid": "1"},
        }
    ),
    "a usernameFragment that is not a string": json.dumps(
        {
            "type": "ice_candidate",
            "payload": {"candidate": CANDIDATE, "sdpMid": "0", "usernameFragment": 7},
        }
    ),
    "a target_user_id that is not a string": json.dumps(
        {"type": "offer", "payload": {"type": "offer", "sdp": SDP, "target_user_id": 7}}
    ),
    "a ping payload that is not an object": json.dumps({"type": "ping", "payload": [1]}),
    "a room_id other than the path room": json.dumps(
        {"room_id": "r2", **offer_to("b")},
    ),
    "a binary frame": json.dumps(offer_to("b")).encode(),
}


@pytest.mark.parametrize("frame", INVALID_FRAMES.values(), ids=INVALID_FRAMES.keys())
async def test_invalid_frame_is_reported_and_dropped_and_the_connection_stays(
    frame: str | bytes,
) -> None:
    async with (
        running_server() as server,
        joined(server.ws_url("r1", token("a"))) as (a, _),
        joined(server.ws_url("r1", token("b"))) as (b, _),
    ):
        await a.expect("user_joined")
        await a.connection.send(frame)
        error = await a.expect_error("invalid_message")
        assert error["sender_id"] == "server"
        assert error["room_id"] == "r1"
        assert error["payload"]["message"]
        await assert_still_relays(a, b, "b")


# unsupported_type: frame dropped.


@pytest.mark.parametrize(
    "kind", ["hello", "OFFER", "", "room_state", "user_joined", "user_left", "pong", "error"]
)
async def test_unknown_or_server_only_type_is_unsupported_and_dropped(kind: str) -> None:
    async with (
        running_server() as server,
        joined(server.ws_url("r1", token("a"))) as (a, _),
        joined(server.ws_url("r1", token("b"))) as (b, _),
    ):
        await a.expect("user_joined")
        # Shaped like a server frame, even aimed at b: still nobody receives it.
        fake = {"user_id": "mallory", "username": "M", "code": "x", "target_user_id": "b"}
        await a.send({"type": kind, "payload": fake})
        await a.expect_error("unsupported_type")
        await assert_still_relays(a, b, "b")


# message_too_large: close 1009.

LIMIT_BYTES = 2048


def offer_of_size(size_bytes: int, *, char: str = "x", target: str = "b") -> str:
    """An offer frame of exactly `size_bytes` UTF-8 bytes, its SDP made of `char`."""
    empty = json.dumps(offer_to(target, sdp=""), ensure_ascii=False)
    room = size_bytes - len(empty.encode())
    width = len(char.encode())
    frame = json.dumps(
        offer_to(target, sdp=char * (room // width) + "x" * (room % width)), ensure_ascii=False
    )
    assert len(frame.encode()) == size_bytes
    return frame


@pytest.mark.parametrize("char", ["x", "é", "€", "😀"], ids=["ascii", "2-byte", "3-byte", "4-byte"])
async def test_frame_at_the_byte_limit_passes(char: str) -> None:
    settings = settings_with(max_message_bytes=LIMIT_BYTES)
    async with (
        running_server(settings) as server,
        joined(server.ws_url("r1", token("a"))) as (a, _),
        joined(server.ws_url("r1", token("b"))) as (b, _),
    ):
        await a.expect("user_joined")
        frame = offer_of_size(LIMIT_BYTES, char=char)
        await a.connection.send(frame)
        relayed = await b.expect("offer")
        assert relayed["payload"]["sdp"] == json.loads(frame)["payload"]["sdp"]
        await a.expect_silence(0.1)


async def test_frame_over_the_byte_limit_is_refused_with_1009() -> None:
    settings = settings_with(max_message_bytes=LIMIT_BYTES)
    async with (
        running_server(settings) as server,
        joined(server.ws_url("r1", token("a"))) as (a, _),
        joined(server.ws_url("r1", token("b"))) as (b, _),
    ):
        await a.expect("user_joined")
        await a.connection.send(offer_of_size(LIMIT_BYTES + 1))
        await a.expect_error("message_too_large")
        await a.expect_close(1009)
        left = await b.expect("user_left")
        assert left["payload"]["user_id"] == "a"  # the big offer never reached b


@pytest.mark.parametrize("char", ["é", "€", "😀"], ids=["2-byte", "3-byte", "4-byte"])
async def test_limit_counts_utf8_bytes_not_characters(char: str) -> None:
    settings = settings_with(max_message_bytes=LIMIT_BYTES)
    async with (
        running_server(settings) as server,
        joined(server.ws_url("r1", token("a"))) as (a, _),
        joined(server.ws_url("r1", token("b"))) as (b, _),
    ):
        await a.expect("user_joined")
        frame = offer_of_size(LIMIT_BYTES + 1, char=char)
        assert len(frame) < LIMIT_BYTES  # few enough characters, too many bytes
        await a.connection.send(frame)
        await a.expect_error("message_too_large")
        await a.expect_close(1009)
        assert (await b.expect("user_left"))["payload"]["user_id"] == "a"


async def test_frame_far_over_the_limit_is_still_closed_with_1009() -> None:
    settings = settings_with(max_message_bytes=LIMIT_BYTES)
    async with (
        running_server(settings) as server,
        joined(server.ws_url("r1", token("a"))) as (a, _),
    ):
        # Past what the WebSocket layer buffers at all: no error frame, but the same close.
        await a.connection.send(offer_of_size(settings.ws_frame_limit_bytes + 1))
        await a.expect_close(1009)


# rate_limited: dropped; sustained abuse closes 1008.


async def test_frames_over_the_rate_limit_are_dropped_until_the_bucket_refills() -> None:
    # One token a second: the five frames below would need a second to earn one more.
    settings = settings_with(rate_limit_per_second=1, rate_limit_burst=3)
    async with (
        running_server(settings) as server,
        joined(server.ws_url("r1", token("a"))) as (a, _),
        joined(server.ws_url("r1", token("b"))) as (b, _),
    ):
        await a.expect("user_joined")
        for n in range(5):
            await a.send(offer_to("b", sdp=f"sdp-{n}"))
        for _ in range(2):
            error = await a.expect_error("rate_limited")
            assert error["payload"]["message"]
        for n in range(3):
            assert (await b.expect("offer"))["payload"]["sdp"] == f"sdp-{n}"
        await b.expect_silence()
        assert a.connection.state is websockets.State.OPEN
        await asyncio.sleep(2.0)  # twice the time one token takes
        await a.send(offer_to("b", sdp="refilled"))
        assert (await b.expect("offer"))["payload"]["sdp"] == "refilled"
        await a.expect_silence(0.1)


async def test_more_than_a_thousand_drops_close_1008() -> None:
    settings = settings_with(
        rate_limit_per_second=0.001, rate_limit_burst=1, send_queue_max_messages=4096
    )
    async with (
        running_server(settings) as server,
        joined(server.ws_url("r1", token("a"))) as (a, _),
    ):
        # One ping passes, then exactly the tolerated number of drops.
        for n in range(ABUSE_DROPPED_FRAMES + 1):
            await a.send({"type": "ping", "payload": {"n": n}})
        assert (await a.expect("pong"))["payload"] == {"n": 0}
        for _ in range(ABUSE_DROPPED_FRAMES):
            await a.expect_error("rate_limited")
        await a.expect_silence(0.2)
        assert a.connection.state is websockets.State.OPEN
        # One more drop is abuse.
        await a.send({"type": "ping", "payload": {}})
        await a.expect_error("rate_limited")
        await a.expect_close(1008)


# forbidden_room for a bad room id; an unknown path shape is refused.


@pytest.mark.parametrize(
    "room",
    ["bad_room!", "r" * 65, "caf%C3%A9", "a.b"],
    ids=["symbol", "65 chars", "non-ascii", "dot"],
)
async def test_bad_room_id_is_forbidden_with_1008(room: str) -> None:
    async with running_server() as server, connect(server.ws_url(room, token("a"))) as client:
        error = await client.expect_error("forbidden_room")
        assert error["sender_id"] == "server"
        await client.expect_close(1008)


@pytest.mark.parametrize("path", ["/webrtc/ws/", "/webrtc/ws/a/b", "/webrtc/ws/a%2Fb", "/ws/r1"])
async def test_unknown_path_shape_is_refused(path: str) -> None:
    async with running_server() as server:
        url = f"ws://127.0.0.1:{server.port}{path}?token={token('a')}"
        with pytest.raises(InvalidStatus) as refused:
            async with connect(url):
                pass
        assert refused.value.response.status_code == 403


# room_full: close 1008, and the refused joiner never shows.


async def test_join_over_capacity_is_room_full_and_never_seen() -> None:
    settings = settings_with(max_participants_per_room=2)
    async with (
        running_server(settings) as server,
        joined(server.ws_url("r1", token("alice", username="Alice"))) as (a, _),
    ):
        async with joined(server.ws_url("r1", token("bob", username="Bob"))) as (b, _):
            await a.expect("user_joined")
            async with connect(server.ws_url("r1", token("carol", username="Carol"))) as carol:
                error = await carol.expect_error("room_full")
                assert set(error["payload"]) == {"code", "message"}
                for name in ("alice", "Alice", "bob", "Bob"):  # no member names leak
                    assert name not in error["payload"]["message"]
                await carol.expect_close(1008)
            await a.expect_silence()
            await b.expect_silence()
        assert (await a.expect("user_left"))["payload"]["user_id"] == "bob"
        async with joined(server.ws_url("r1", token("dave"))) as (_, state):
            users = [p["user_id"] for p in state["payload"]["participants"]]
            assert sorted(users) == ["alice", "dave"]
            assert (await a.expect("user_joined"))["payload"]["user_id"] == "dave"
        async with httpx.AsyncClient(base_url=server.http) as http:
            response = await http.get(
                "/webrtc/rooms/r1/participants",
                headers={"Authorization": f"Bearer {token('admin')}"},
            )
        assert [p["user_id"] for p in response.json()["participants"]] == ["alice"]


# backend_unavailable: a join closes 1013; a frame that needs the bus is dropped.


async def test_join_while_the_backend_is_down_is_refused_with_1013() -> None:
    async with running_server() as server:
        await server.services.backend.stop()
        async with connect(server.ws_url("r1", token("a"))) as client:
            await client.expect_error("backend_unavailable")
            await client.expect_close(1013)


async def test_frame_needing_the_bus_while_it_is_down_is_dropped_and_connection_stays() -> None:
    broker = MemoryBroker()
    settings = settings_with()
    async with (
        running_server(
            settings, backend=MemoryBackend(presence_ttl_seconds=30, broker=broker)
        ) as server_a,
        running_server(
            settings, backend=MemoryBackend(presence_ttl_seconds=30, broker=broker)
        ) as server_b,
        joined(server_a.ws_url("r1", token("a"))) as (a, _),
        joined(server_a.ws_url("r1", token("a2"))) as (a2, _),
        joined(server_b.ws_url("r1", token("b"))) as (b, state),
    ):
        assert sorted(p["user_id"] for p in state["payload"]["participants"]) == ["a", "a2", "b"]
        await a.expect("user_joined")  # a2
        assert (await a.expect("user_joined"))["payload"]["user_id"] == "b"
        assert (await a2.expect("user_joined"))["payload"]["user_id"] == "b"
        await a.send(offer_to("b", sdp="across"))
        assert (await b.expect("offer"))["payload"]["sdp"] == "across"

        await server_a.services.backend.stop()
        await a.send(offer_to("b", sdp="lost"))
        error = await a.expect_error("backend_unavailable")
        assert error["payload"]["message"]
        # A broadcast needs the bus too (b is on the other instance); a2, on this one,
        # still receives it.
        await a.send({"type": "offer", "payload": {"type": "offer", "sdp": "broadcast"}})
        await a.expect_error("backend_unavailable")
        assert (await a2.expect("offer"))["payload"]["sdp"] == "broadcast"
        # The connection stays, and members on this instance still reach each other.
        await a.send({"type": "ping", "payload": {}})
        await a.expect("pong")
        await a.send(offer_to("a2", sdp="local"))
        assert (await a2.expect("offer"))["payload"]["sdp"] == "local"
        assert a.connection.state is websockets.State.OPEN
        await b.expect_silence()


# server_busy: close 1013.


async def test_connection_over_the_instance_cap_is_server_busy_with_1013() -> None:
    settings = settings_with(max_connections=2)
    async with running_server(settings) as server:
        async with (
            joined(server.ws_url("r1", token("a"))) as (a, _),
            joined(server.ws_url("r2", token("b"))),
        ):
            async with connect(server.ws_url("r1", token("c"))) as c:
                await c.expect_error("server_busy")
                await c.expect_close(1013)
            await a.expect_silence(0.1)  # c never joined
            assert server.services.connections == 2
        # The refused connection took no slot, and closed ones give theirs back.
        async with asyncio.timeout(5):
            while server.services.connections > 0:
                await asyncio.sleep(0.01)
        async with (
            joined(server.ws_url("r1", token("d"))),
            joined(server.ws_url("r1", token("e"))),
        ):
            assert server.services.connections == 2


# internal_error: close 1011, logged with a stack trace.


async def test_fault_in_our_code_is_internal_error_1011_with_a_logged_traceback(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    def broken_relay(
        peer: Peer, room: LocalRoom, kind: MessageType, payload: dict[str, Any], **_: object
    ) -> None:
        raise RuntimeError("injected fault")

    async with (
        running_server() as server,
        joined(server.ws_url("r1", token("a"))) as (a, _),
        joined(server.ws_url("r1", token("b"))) as (b, _),
    ):
        await a.expect("user_joined")
        monkeypatch.setattr(server.services.hub, "relay", broken_relay)
        with caplog.at_level(logging.ERROR):
            await b.send(offer_to("a"))
            error = await b.expect_error("internal_error")
            assert "injected" not in error["payload"]["message"]  # no internals on the wire
            await b.expect_close(1011)
            assert (await a.expect("user_left"))["payload"]["user_id"] == "b"
        failures = [r for r in caplog.records if r.exc_info and r.levelno >= logging.ERROR]
        assert failures, caplog.text
        assert "RuntimeError: injected fault" in caplog.text
        assert "Traceback" in caplog.text
        assert "broken_relay" in caplog.text
        # The fault ended one session, not the server.
        async with joined(server.ws_url("r1", token("c"))) as (_, state):
            assert state["payload"]["participant_count"] == 2


# Invalid UTF-8 in a text frame: WebSocket protocol error, close 1007.


async def test_invalid_utf8_in_a_text_frame_closes_1007() -> None:
    async with (
        running_server() as server,
        joined(server.ws_url("r1", token("a"))) as (a, _),
        joined(server.ws_url("r1", token("b"))) as (b, _),
    ):
        await a.expect("user_joined")
        await a.connection.send(b'{"type": "ping", "payload": "\xff\xfe"}', text=True)
        await a.expect_close(1007)
        assert (await b.expect("user_left"))["payload"]["user_id"] == "a"
