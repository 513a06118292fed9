"""Tokens never reach the logs (DESIGN section 4): the real `rendezvous serve` process is
driven with tokens in every accepted place, and its captured output is searched for them;
plus the redaction filter and JSON formatter on their own."""

from __future__ import annotations

import asyncio
import io
import json
import logging
from pathlib import Path
from typing import Any

import httpx
import pytest

from rendezvous.telemetry.logging import REDACTED, JsonFormatter, RedactTokens, Throttle, redact
from tests.support.client import connect, joined
from tests.support.instances import instance_env, running_instances
from tests.support.process import cli_env, serving
from tests.support.redis import RedisServer, redis_server  # noqa: F401
from tests.support.tokens import token

SECRET = "logging-secret-" + "w" * 40
SUBSTRING_CHARS = 20


def substrings(text: str, size: int = SUBSTRING_CHARS) -> set[str]:
    return {text[i : i + size] for i in range(len(text) - size + 1)}


def assert_absent(output: str, secret: str) -> None:
    assert secret not in output
    leaked = [part for part in substrings(secret) if part in output]
    assert not leaked, f"{len(leaked)} fragments of a token in the log, e.g. {leaked[0]!r}"


@pytest.mark.parametrize("debug", ["false", "true"])
async def test_tokens_never_appear_in_the_server_output(tmp_path: Path, debug: str) -> None:
    env = cli_env(tmp_path, JWT_SECRET_KEY=SECRET, WEBRTC_STUN_URLS="", DEBUG=debug)
    query_token = token("alice", secret=SECRET, username="Alice")
    header_token = token("bob", secret=SECRET)
    subprotocol_token = token("carol", secret=SECRET)
    rest_token = token("dave", secret=SECRET)
    bad_token = token("mallory", secret="not-the-server-secret-" + "m" * 40)
    tokens = [query_token, header_token, subprotocol_token, rest_token, bad_token]

    async with serving(env=env, log_dir=tmp_path / "serve") as served:
        ws = f"ws://127.0.0.1:{served.port}/webrtc/ws/demo"
        async with joined(f"{ws}?token={query_token}") as (alice, _):
            await alice.send({"type": "ping", "payload": {"n": 1}})
            await alice.expect("pong")
            headers = {"Authorization": f"Bearer {header_token}"}
            async with joined(ws, additional_headers=headers):
                await alice.expect("user_joined")
            offered = ["rendezvous.v1", f"bearer.{subprotocol_token}"]
            async with joined(ws, subprotocols=offered):
                await alice.expect("user_left")
                await alice.expect("user_joined")
            async with connect(f"{ws}?token={bad_token}") as rejected:
                await rejected.expect_error("unauthorized")
                await rejected.expect_close(1008)

            async with httpx.AsyncClient(base_url=served.http, timeout=5) as http:
                auth = {"Authorization": f"Bearer {rest_token}"}
                assert (await http.get("/webrtc/config", headers=auth)).status_code == 200
                people = await http.get("/webrtc/rooms/demo/participants", headers=auth)
                assert people.status_code == 200
                assert people.json()["participant_count"] == 1
                # A token in a REST query is not how REST authenticates, but it is logged.
                misplaced = await http.get(f"/webrtc/config?token={rest_token}")
                assert misplaced.status_code == 401
                refused = {"Authorization": f"Bearer {bad_token}"}
                assert (await http.get("/webrtc/config", headers=refused)).status_code == 401

    output = served.output()
    # The capture is real: an access-log line for each kind of request is in it.
    lines = [json.loads(line) for line in output.splitlines() if line.startswith("{")]
    messages = [line["message"] for line in lines]
    assert any("GET /webrtc/config HTTP/1.1" in m and "200" in m for m in messages), output
    assert any("GET /webrtc/config HTTP/1.1" in m and "401" in m for m in messages), output
    assert any("GET /webrtc/rooms/demo/participants HTTP/1.1" in m for m in messages), output
    assert any(f"/webrtc/config?token={REDACTED}" in m for m in messages), output
    websocket_lines = [m for m in messages if "/webrtc/ws/demo" in m]
    assert any(f"/webrtc/ws/demo?token={REDACTED}" in m for m in websocket_lines), output
    assert len(websocket_lines) >= 4, websocket_lines  # four handshakes
    for secret in tokens:
        assert_absent(output, secret)


# The filter and the formatter on their own.

JWT = token("alice")


@pytest.mark.parametrize(
    "text",
    [
        f'127.0.0.1:5000 - "WebSocket /webrtc/ws/r1?token={JWT}" [accepted]',
        f'"GET /webrtc/config?x=1&token={JWT}&y=2 HTTP/1.1" 200',
        f"Authorization: Bearer {JWT}",
        f"authorization: bearer {JWT}",
        f"Sec-WebSocket-Protocol: rendezvous.v1, bearer.{JWT}",
        f"TOKEN={JWT}",
    ],
)
def test_redact_removes_tokens_from_text(text: str) -> None:
    cleaned = redact(text)
    assert REDACTED in cleaned
    assert_absent(cleaned, JWT)


def test_redact_keeps_text_without_tokens() -> None:
    text = '127.0.0.1:5000 - "GET /webrtc/rooms/r1/participants HTTP/1.1" 200'
    assert redact(text) == text


def record_through_handler(message: str, *args: object, exc: bool = False) -> dict[str, object]:
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JsonFormatter(instance_id="inst-1"))
    handler.addFilter(RedactTokens())
    logger = logging.getLogger("rendezvous.test_logging")
    logger.propagate = False
    logger.addHandler(handler)
    try:
        if exc:
            try:
                raise ValueError(f"bad token={JWT}")
            except ValueError:
                logger.exception(message, *args, extra={"room_id": "r1"})
        else:
            logger.warning(message, *args, extra={"room_id": "r1"})
    finally:
        logger.removeHandler(handler)
    line: dict[str, object] = json.loads(stream.getvalue())
    return line


def test_json_lines_carry_context_and_redacted_arguments() -> None:
    line = record_through_handler('%s - "%s %s"', "127.0.0.1", "GET", f"/x?token={JWT}")
    assert line["message"] == f'127.0.0.1 - "GET /x?token={REDACTED}"'
    assert line["level"] == "warning"
    assert line["instance_id"] == "inst-1"
    assert line["room_id"] == "r1"
    assert_absent(json.dumps(line), JWT)


def test_exception_text_is_redacted_too() -> None:
    line = record_through_handler("failed")
    assert "exception" not in line
    failed = record_through_handler("failed", exc=True)
    assert "ValueError" in str(failed["exception"])
    assert_absent(json.dumps(failed), JWT)


def test_a_line_logged_inside_a_span_names_its_trace_and_span() -> None:
    """What lets an operator go from a log line to the trace in the dashboard."""
    from opentelemetry.sdk.trace import TracerProvider

    tracer = TracerProvider().get_tracer("test")  # a provider of its own, not the global one
    with tracer.start_as_current_span("relay") as span:
        inside = record_through_handler("relayed")
    context = span.get_span_context()
    assert inside["trace_id"] == format(context.trace_id, "032x")
    assert inside["span_id"] == format(context.span_id, "016x")
    outside = record_through_handler("relayed")
    assert "trace_id" not in outside and "span_id" not in outside


# The events a session goes through, at the levels SEED.md gives, never with a body.

SDP_MARKER = "a=never-in-a-log-line"
SDP = f"v=0\r\no=- 1 2 IN IP4 127.0.0.1\r\n{SDP_MARKER}\r\nt=0 0\r\n"


def json_lines(output: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in output.splitlines() if line.startswith("{")]


def events(lines: list[dict[str, Any]], message: str) -> list[dict[str, Any]]:
    return [line for line in lines if line["message"] == message]


async def play_a_call(ws: str, *, secret: str) -> None:
    """Three members; an offer, an answer and a candidate relayed, each with an SDP body;
    a frame refused for its target, a malformed one and an oversize one (which closes its
    socket), each carrying the body too; a connection refused for its token."""
    async with joined(f"{ws}?token={token('alice', secret=secret)}") as (alice, _):
        async with joined(f"{ws}?token={token('bob', secret=secret)}") as (bob, _):
            await alice.expect("user_joined")
            await alice.send(
                {"type": "offer", "payload": {"type": "offer", "sdp": SDP, "target_user_id": "bob"}}
            )
            await bob.expect("offer")
            await bob.send({"type": "answer", "payload": {"type": "answer", "sdp": SDP}})
            await alice.expect("answer")
            candidate = {"candidate": SDP_MARKER, "sdpMid": "0", "sdpMLineIndex": 0}
            await alice.send({"type": "ice_candidate", "payload": candidate})
            await bob.expect("ice_candidate")
            await alice.send(
                {"type": "offer", "payload": {"type": "offer", "sdp": SDP, "target_user_id": "eve"}}
            )
            await alice.expect_error("target_not_found")
            await alice.connection.send('{"type": "offer", "payload": {"sdp": "' + SDP_MARKER)
            await alice.expect_error("invalid_message")
            async with joined(f"{ws}?token={token('carol', secret=secret)}") as (carol, _):
                await carol.connection.send(json.dumps({"type": "offer", "sdp": SDP * 1500}))
                await carol.expect_error("message_too_large")
            await alice.expect("user_joined")
            await alice.expect("user_left")
        await alice.expect("user_left")
    async with connect(f"{ws}?token=not-a-jwt-{SDP_MARKER}") as stranger:
        await stranger.expect_error("unauthorized")


@pytest.mark.parametrize("debug", [False, True], ids=["info", "debug"])
async def test_session_events_are_logged_at_seed_levels_without_a_body(
    tmp_path: Path, debug: bool
) -> None:
    env = cli_env(tmp_path, JWT_SECRET_KEY=SECRET, WEBRTC_STUN_URLS="", DEBUG=str(debug).lower())
    async with serving(env=env, log_dir=tmp_path / "serve") as served:
        await play_a_call(f"ws://127.0.0.1:{served.port}/webrtc/ws/demo", secret=SECRET)
        output = served.output()
    lines = json_lines(output)
    assert SDP_MARKER not in output
    instance_id = events(lines, "rendezvous started")[0]["instance_id"]
    assert all(line.get("instance_id") == instance_id for line in lines)

    connected = events(lines, "WebSocket connected")
    joined_ = events(lines, "participant joined")
    left = events(lines, "participant left")
    for found in (connected, joined_, left):
        assert [(line["level"], line["room_id"]) for line in found] == [("info", "demo")] * 3
    assert [line["user_id"] for line in connected] == ["alice", "bob", "carol"]
    assert [(line["user_id"], line["participant_count"]) for line in joined_] == [
        ("alice", 1),
        ("bob", 2),
        ("carol", 3),
    ]
    assert {(line["user_id"], line["reason"]) for line in left} == {
        ("alice", "left"),
        ("bob", "left"),
        ("carol", "left"),
    }
    refused = events(lines, "WebSocket refused")
    assert [(line["level"], line["code"]) for line in refused] == [("info", "unauthorized")]

    routed = [line for line in lines if line["message"].startswith("Forwarded ")]
    refusals = [line for line in lines if line["message"].startswith("Refused ")]
    if not debug:
        assert [line for line in lines if line["level"] == "debug"] == []
        return
    assert [
        (line["level"], line["sender_id"], line["message_type"], line["target_user_id"])
        for line in routed
    ] == [
        ("debug", "alice", "offer", "bob"),
        ("debug", "bob", "answer", None),
        ("debug", "alice", "ice_candidate", None),
    ]
    assert all(line["room_id"] == "demo" and line["delivered"] == 1 for line in routed)
    assert [(line["message"], line["code"]) for line in refusals] == [
        ("Refused offer", "target_not_found"),
        ("Refused invalid", "invalid_message"),
        ("Refused invalid", "message_too_large"),
    ]


async def test_a_failed_publish_is_an_error_line_once_per_interval(
    tmp_path: Path,
    redis_server: RedisServer,  # noqa: F811
) -> None:
    """Redis is gone: every relay to another instance fails, each refused to its sender,
    and the instance says so at ERROR once (folding in the rest), never with the body."""
    env = instance_env(tmp_path, redis_url=redis_server.url)
    async with running_instances(2, env=env, log_dir=tmp_path) as (a, b):
        async with joined(a.ws_url("down", token("alice"))) as (alice, _):
            async with joined(b.ws_url("down", token("bob"))):
                await alice.expect("user_joined")
                await redis_server.kill()
                async with httpx.AsyncClient(base_url=a.http, timeout=5) as http:
                    deadline = asyncio.get_running_loop().time() + 10
                    while (await http.get("/readyz")).status_code == 200:
                        assert asyncio.get_running_loop().time() < deadline, "still ready"
                        await asyncio.sleep(0.05)
                payload = {"type": "offer", "sdp": SDP, "target_user_id": "bob"}
                for _ in range(5):
                    await alice.send({"type": "offer", "payload": payload})
                    await alice.expect_error("backend_unavailable")
        output = a.output()
    lines = json_lines(output)
    assert SDP_MARKER not in output
    failures = events(lines, "Failed to publish message")
    assert [(line["level"], line["failures"]) for line in failures] == [("error", 1)], failures
    assert failures[0]["room_id"] == "down" and failures[0]["sender_id"] == "alice"
    assert failures[0]["message_type"] == "offer"
    assert any(line["level"] == "warning" and "redis" in line["message"] for line in lines)


def test_the_throttle_folds_a_burst_into_one_line_per_interval() -> None:
    now = [0.0]
    throttle = Throttle(10.0, clock=lambda: now[0])
    assert [throttle.due() for _ in range(4)] == [1, None, None, None]
    now[0] = 9.9
    assert throttle.due() is None
    now[0] = 10.0
    assert throttle.due() == 5  # the four folded in, and this one
    now[0] = 25.0
    assert throttle.due() == 1
