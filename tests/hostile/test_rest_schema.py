"""schemathesis against the REST API's own OpenAPI schema, sent to a real server over
loopback: every documented operation, with generated path parameters (valid and not),
under each kind of credential (none, garbage, a user token, an admin token). No request
gets a 5xx, no request makes the server log an ERROR, and every response whose status
the schema documents has the documented media type and body.

The WebSocket route is not an OpenAPI operation (FastAPI leaves it out); a test below
makes sure it stays out, so schemathesis never speaks HTTP to it."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest
import schemathesis
from hypothesis import settings
from hypothesis import strategies as st
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
)

from rendezvous.app import create_app
from rendezvous.settings import Settings
from tests.hostile.conftest import BASE_SETTINGS, ErrorRecorder, recording_errors, server_in_thread
from tests.support.server import RunningServer
from tests.support.server import test_settings as settings_with
from tests.support.tokens import token

ADMIN_PREFIX = "/webrtc/admin/"
CHECKS = [not_a_server_error, response_schema_conformance, content_type_conformance]
CREDENTIALS = ["none", "garbage", "expired", "user", "admin"]


def _settings() -> Settings:
    """What both the tested schema and the server are built from."""
    return settings_with()


# The schema is the app's own, built as the served one is; a test below checks they match.
schema = schemathesis.openapi.from_dict(create_app(_settings()).openapi())


@dataclass
class Served:
    server: RunningServer
    errors: ErrorRecorder


@pytest.fixture
def served() -> Iterator[Served]:
    with recording_errors() as errors, server_in_thread(_settings()) as (_, server):
        yield Served(server, errors)
        assert errors.take() == []


def authorization(credential: str, path: str) -> dict[str, str]:
    """The Authorization header for a kind of credential; `user` is the least a route needs
    (an admin token for the admin routes)."""
    if credential == "none":
        return {}
    if credential == "garbage":
        return {"Authorization": "Bearer not.a.jwt"}
    if credential == "expired":
        return {"Authorization": f"Bearer {token('fuzzer', ttl=-3600)}"}
    admin = credential == "admin" or path.startswith(ADMIN_PREFIX)
    roles = ["admin"] if admin else None
    return {"Authorization": f"Bearer {token('fuzzer', roles=roles)}"}


@schema.parametrize()
@schema.given(credential=st.sampled_from(CREDENTIALS))
@settings(BASE_SETTINGS, max_examples=100)
def test_no_operation_fails_on_the_server_or_breaks_its_schema(
    case: schemathesis.Case[Any], credential: str, served: Served
) -> None:
    response = case.call_and_validate(
        base_url=served.server.http,
        headers=authorization(credential, case.operation.path),
        checks=CHECKS,
        timeout=10,
    )
    assert response.status_code < 500, response.text
    assert served.errors.take() == []


def test_the_served_schema_is_the_one_tested_and_has_no_websocket_route() -> None:
    with server_in_thread(_settings()) as (_, server):
        served = httpx.get(f"{server.http}/openapi.json", trust_env=False, timeout=10).json()
    assert served == schema.raw_schema
    assert not any(path.startswith("/webrtc/ws") for path in served["paths"])
    operations = {path for path in served["paths"]}
    assert {"/webrtc/config", "/webrtc/rooms/{room_id}/participants", "/metrics"} <= operations
