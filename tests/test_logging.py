"""Tokens never reach the logs (DESIGN section 4): the real `rendezvous serve` process is
driven with tokens in every accepted place, and its captured output is searched for them;
plus the redaction filter and JSON formatter on their own."""

from __future__ import annotations

import io
import json
import logging
from pathlib import Path

import httpx
import pytest

from rendezvous.telemetry.logging import REDACTED, JsonFormatter, RedactTokens, redact
from tests.support.client import connect, joined
from tests.support.process import cli_env, serving
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
