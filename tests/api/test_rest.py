"""The REST endpoints over real HTTP: `/webrtc/config` (both key spellings, SEED.md's STUN
fallback, TURN, policies), the participants snapshot, the probes and `/metrics`."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from rendezvous.settings import Settings, load_settings
from tests.support.client import connect, joined
from tests.support.server import RunningServer, running_server
from tests.support.tokens import TEST_SECRET, token

GOOGLE_STUN = ["stun:stun.l.google.com:19302", "stun:stun1.l.google.com:19302"]
SDP = "v=0\r\no=- 1 2 IN IP4 127.0.0.1\r\ns=-\r\nt=0 0\r\n"
CAMEL_KEYS = {
    "ice_servers": "iceServers",
    "ice_transport_policy": "iceTransportPolicy",
    "bundle_policy": "bundlePolicy",
    "rtcp_mux_policy": "rtcpMuxPolicy",
}


def bearer(tok: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {tok}"}


def from_environment() -> Settings:
    """Settings as `rendezvous serve` reads them: the environment, plus the test key."""
    return load_settings(jwt_secret_key=TEST_SECRET)


@asynccontextmanager
async def http_to(server: RunningServer) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=server.http, timeout=5) as http:
        yield http


async def fetch_config(settings: Settings) -> dict[str, Any]:
    async with running_server(settings) as server, http_to(server) as http:
        response = await http.get("/webrtc/config", headers=bearer(token("alice")))
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "application/json"
    body: dict[str, Any] = response.json()
    for snake, camel in CAMEL_KEYS.items():
        assert body[camel] == body[snake], (snake, body)
    return body


# /webrtc/config


@pytest.mark.parametrize(
    "headers",
    [{}, bearer("garbage"), bearer(token(ttl=-120)), {"Authorization": f"Basic {token()}"}],
    ids=["no-header", "garbage", "expired", "not-bearer"],
)
async def test_config_requires_a_valid_bearer_token(headers: dict[str, str]) -> None:
    async with running_server() as server, http_to(server) as http:
        response = await http.get("/webrtc/config", headers=headers)
    assert response.status_code == 401
    assert response.headers["www-authenticate"] == "Bearer"
    body = response.json()
    assert set(body) == {"code", "message"}
    assert body["code"] == "unauthorized"
    assert body["message"]


async def test_config_falls_back_to_google_stun_when_nothing_is_configured() -> None:
    body = await fetch_config(from_environment())
    assert body["ice_servers"] == [{"urls": GOOGLE_STUN}]
    assert body["ice_transport_policy"] == "all"
    assert body["bundle_policy"] == "balanced"
    assert body["rtcp_mux_policy"] == "require"
    assert body["ttl"] == 86400


async def test_empty_stun_variable_means_no_servers(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WEBRTC_STUN_URLS", "")
    body = await fetch_config(from_environment())
    assert body["ice_servers"] == []
    assert body["iceServers"] == []


async def test_config_lists_stun_and_turn_with_static_credentials(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("WEBRTC_STUN_URLS", "stun:127.0.0.1:3478, stun:127.0.0.2:3478")
    monkeypatch.setenv("WEBRTC_TURN_URLS", "turn:127.0.0.1:3478?transport=udp,turns:127.0.0.1:5349")
    monkeypatch.setenv("WEBRTC_TURN_USERNAME", "turn-user")
    monkeypatch.setenv("WEBRTC_TURN_CREDENTIAL", "turn-pass")
    body = await fetch_config(from_environment())
    assert body["ice_servers"] == [
        {"urls": ["stun:127.0.0.1:3478", "stun:127.0.0.2:3478"]},
        {
            "urls": ["turn:127.0.0.1:3478?transport=udp", "turns:127.0.0.1:5349"],
            "username": "turn-user",
            "credential": "turn-pass",
        },
    ]


async def test_config_carries_the_policies_in_both_spellings(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("WEBRTC_STUN_URLS", "")
    monkeypatch.setenv("WEBRTC_ICE_TRANSPORT_POLICY", "relay")
    monkeypatch.setenv("WEBRTC_BUNDLE_POLICY", "max-bundle")
    monkeypatch.setenv("WEBRTC_RTCP_MUX_POLICY", "negotiate")
    body = await fetch_config(from_environment())
    assert body["ice_transport_policy"] == body["iceTransportPolicy"] == "relay"
    assert body["bundle_policy"] == body["bundlePolicy"] == "max-bundle"
    assert body["rtcp_mux_policy"] == body["rtcpMuxPolicy"] == "negotiate"


# /webrtc/rooms/{room}/participants


async def test_participants_lists_the_live_members_of_the_room() -> None:
    async with (
        running_server() as server,
        http_to(server) as http,
        joined(server.ws_url("r1", token("alice", username="Alice"))) as (alice, _),
        joined(server.ws_url("r1", token("bob", username="Bob"))),
        joined(server.ws_url("elsewhere", token("carol"))),
    ):
        await alice.expect("user_joined")
        response = await http.get("/webrtc/rooms/r1/participants", headers=bearer(token("x")))
        assert response.status_code == 200
        body = response.json()
        assert body["room_id"] == "r1"
        assert body["participant_count"] == 2
        assert sorted(body["participants"], key=lambda p: p["user_id"]) == [
            {"user_id": "alice", "username": "Alice"},
            {"user_id": "bob", "username": "Bob"},
        ]
        empty = await http.get("/webrtc/rooms/nobody/participants", headers=bearer(token("x")))
        assert empty.json() == {"room_id": "nobody", "participants": [], "participant_count": 0}


async def test_participants_drops_a_member_who_left() -> None:
    async with running_server() as server, http_to(server) as http:
        async with joined(server.ws_url("r1", token("alice"))) as (alice, _):
            async with joined(server.ws_url("r1", token("bob"))):
                await alice.expect("user_joined")
            await alice.expect("user_left")
            response = await http.get("/webrtc/rooms/r1/participants", headers=bearer(token()))
            assert [p["user_id"] for p in response.json()["participants"]] == ["alice"]


@pytest.mark.parametrize(
    ("rooms", "status"),
    [(["r1"], 200), (["r-*"], 403), (["r*"], 200), (["other"], 403), ([], 403)],
)
async def test_participants_honours_the_rooms_grant(rooms: list[str], status: int) -> None:
    async with running_server() as server, http_to(server) as http:
        response = await http.get(
            "/webrtc/rooms/r1/participants", headers=bearer(token("alice", rooms=rooms))
        )
    assert response.status_code == status, response.text
    if status == 403:
        assert response.json()["code"] == "forbidden_room"


@pytest.mark.parametrize("room", ["bad_room", "a" * 65, "sp%20ace", "dot.ted"])
async def test_participants_rejects_a_bad_room_id(room: str) -> None:
    async with running_server() as server, http_to(server) as http:
        response = await http.get(f"/webrtc/rooms/{room}/participants", headers=bearer(token()))
    assert response.status_code == 400, response.text
    assert response.json()["code"] == "invalid_message"


async def test_participants_requires_a_token() -> None:
    async with running_server() as server, http_to(server) as http:
        response = await http.get("/webrtc/rooms/r1/participants")
    assert response.status_code == 401
    assert response.json()["code"] == "unauthorized"


# Probes.


async def test_liveness_stays_green_and_readiness_follows_the_backend() -> None:
    async with running_server() as server, http_to(server) as http:
        assert (await http.get("/healthz")).status_code == 200
        ready = await http.get("/readyz")
        assert ready.status_code == 200
        assert ready.json()["status"] == "ready"

        await server.services.backend.stop()

        down = await http.get("/readyz")
        assert down.status_code == 503
        assert down.json()["status"] == "not ready"
        live = await http.get("/healthz")
        assert live.status_code == 200
        assert live.json() == {"status": "ok"}


# /metrics


Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


async def scrape(http: httpx.AsyncClient) -> Samples:
    response = await http.get("/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(response.text)
        for sample in family.samples
    }


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, frozenset(labels.items())), 0.0)


async def eventually(http: httpx.AsyncClient, name: str, expected: float) -> Samples:
    """Scrape until `name` reads `expected` (a disconnect is processed asynchronously)."""
    async with asyncio.timeout(5):
        while True:
            samples = await scrape(http)
            if value(samples, name) == expected:
                return samples
            await asyncio.sleep(0.02)


async def test_metrics_count_connections_rooms_messages_and_errors() -> None:
    async with running_server() as server, http_to(server) as http:
        before = await scrape(http)
        assert value(before, "rendezvous_connections") == 0
        assert value(before, "rendezvous_rooms") == 0

        async with (
            joined(server.ws_url("r1", token("a"))) as (a, _),
            joined(server.ws_url("r1", token("b"))) as (b, _),
        ):
            await a.expect("user_joined")
            await a.send({"type": "offer", "payload": {"type": "offer", "sdp": SDP}})
            await b.expect("offer")
            await a.connection.send("not json")
            await a.expect_error("invalid_message")
            async with connect(server.ws_url("r2", "garbage")) as rejected:
                await rejected.expect_error("unauthorized")
                await rejected.expect_close(1008)

            during = await eventually(http, "rendezvous_connections", 2)
            assert value(during, "rendezvous_rooms") == 1
            assert value(during, "rendezvous_participants") == 2
            assert (
                value(during, "rendezvous_messages_total", type="offer", outcome="ok")
                == value(before, "rendezvous_messages_total", type="offer", outcome="ok") + 1
            )
            invalid = value(
                during, "rendezvous_messages_total", type="invalid", outcome="invalid_message"
            )
            assert invalid == 1
            assert value(during, "rendezvous_errors_total", code="invalid_message") == 1
            assert value(during, "rendezvous_errors_total", code="unauthorized") == 1

        after = await eventually(http, "rendezvous_connections", 0)
        assert value(after, "rendezvous_rooms") == 0
        assert value(after, "rendezvous_participants") == 0
        assert value(after, "rendezvous_messages_total", type="offer", outcome="ok") == 1
