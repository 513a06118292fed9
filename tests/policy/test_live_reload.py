"""A live reload through a real server (issue 5, acceptances 2, 3 and 5): the policy file
sits on a ConfigMap volume written as kubelet writes one (tests/support/kubelet.py), the
server's own reconciler polls it once a second, and what a new version changes is seen
where users see it: /webrtc/config, joins, frames, handshakes, /readyz, /metrics and the
admin endpoint. No WebSocket is ever dropped by a reload.

ICE URLs are loopback addresses only: nothing here contacts a STUN or TURN server."""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
import websockets
from websockets.exceptions import InvalidStatus

from rendezvous.backends.memory import MemoryBackend
from rendezvous.backends.redis import RedisBackend
from rendezvous.policy.document import parse_policy
from rendezvous.policy.effective import resolve
from rendezvous.policy.reconciling import POLL_SECONDS
from rendezvous.settings import Settings
from tests.support.client import Client, connect, joined, members
from tests.support.kubelet import SecretVolume
from tests.support.redis import RedisServer
from tests.support.server import RunningServer, running_server
from tests.support.server import test_settings as settings_with
from tests.support.tokens import TEST_SECRET, token

KEY = "policy.yaml"
TURN_SECRET = "turn-rest-secret-never-shown-7f3a"
# The reconciler's poll, with margin: a new version is in force within one poll of the
# write, but these machines are shared and busy.
RELOAD_DEADLINE_SECONDS = 3 * POLL_SECONDS
SDP = "v=0\r\no=- 1 2 IN IP4 127.0.0.1\r\ns=-\r\nt=0 0\r\n"
ANSWER = {"type": "answer", "sdp": SDP + "a=x-answer\r\n"}


@pytest.fixture
def volume(tmp_path: Path) -> SecretVolume:
    return SecretVolume(tmp_path / "policy")


def serving(volume: SecretVolume, first: str, **environment: Any) -> Settings:
    """Put `first` on the volume and return settings that read the policy from it, with
    TURN REST credentials configured (so a policy may name TURN URLs)."""
    volume.write({KEY: first.encode()})
    environment.setdefault("turn_secret", TURN_SECRET)
    return settings_with(policy_file=volume.directory / KEY, **environment)


@contextlib.asynccontextmanager
async def http_to(server: RunningServer) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=server.http, timeout=5, trust_env=False) as http:
        yield http


async def readyz_policy(server: RunningServer) -> dict[str, Any]:
    async with http_to(server) as http:
        response = await http.get("/readyz")
    assert response.status_code == 200, response.text  # a policy never makes it unready
    policy: dict[str, Any] = response.json()["policy"]
    return policy


async def wait_for_policy(
    server: RunningServer, what: str, condition: Callable[[dict[str, Any]], bool]
) -> dict[str, Any]:
    """/readyz's policy status once `condition` holds on it (bounded)."""
    deadline = time.monotonic() + RELOAD_DEADLINE_SECONDS
    while True:
        policy = await readyz_policy(server)
        if condition(policy):
            return policy
        assert time.monotonic() < deadline, f"{what}: not within {RELOAD_DEADLINE_SECONDS} s"
        await asyncio.sleep(0.05)


async def reload(
    server: RunningServer, volume: SecretVolume, text: str, *, generation: int
) -> dict[str, Any]:
    """Write a new version, as kubelet does, and wait until the server reports it."""
    volume.write({KEY: text.encode()})
    return await wait_for_policy(server, f"generation {generation}", _at(generation))


def _at(generation: int) -> Callable[[dict[str, Any]], bool]:
    return lambda policy: policy["generation"] == generation


async def webrtc_config(server: RunningServer) -> dict[str, Any]:
    async with http_to(server) as http:
        response = await http.get(
            "/webrtc/config", headers={"Authorization": f"Bearer {token('alice')}"}
        )
    response.raise_for_status()
    config: dict[str, Any] = response.json()
    return config


def offer_to(target: str, sdp: str = SDP) -> dict[str, Any]:
    return {"type": "offer", "payload": {"type": "offer", "sdp": sdp, "target_user_id": target}}


async def relays(sender: Client, receiver: Client, target: str, sdp: str) -> None:
    """`sender`'s offer reaches `receiver` unchanged."""
    await sender.send(offer_to(target, sdp))
    assert (await receiver.expect("offer"))["payload"]["sdp"] == sdp


async def refused_as_full(server: RunningServer, room: str, user: str) -> None:
    async with connect(server.ws_url(room, token(user))) as client:
        await client.expect_error("room_full")
        await client.expect_close(1008)


def still_open(*clients: Client) -> None:
    for client in clients:
        assert client.connection.state is websockets.State.OPEN


# A session across a reload; the next /webrtc/config.

FIRST_ICE = """
ice:
  stun_urls: ["stun:127.0.0.1:3478"]
  ice_transport_policy: all
"""
NEW_ICE = """
ice:
  stun_urls: ["stun:127.0.0.2:3478"]
  turn_urls: ["turn:127.0.0.1:3478?transport=udp", "turn:127.0.0.1:3478?transport=tcp"]
  ice_transport_policy: relay
  bundle_policy: max-bundle
  rtcp_mux_policy: negotiate
"""


async def test_a_session_stays_open_across_a_reload_and_config_shows_the_new_servers(
    volume: SecretVolume,
) -> None:
    async with (
        running_server(serving(volume, FIRST_ICE)) as server,
        members(server, "call-1", ["a", "b"]) as clients,
    ):
        a, b = clients["a"], clients["b"]
        before = await webrtc_config(server)
        assert before["iceServers"] == [{"urls": ["stun:127.0.0.1:3478"]}]
        assert before["iceTransportPolicy"] == "all"
        await relays(a, b, "b", "before the reload")

        status = await reload(server, volume, NEW_ICE, generation=2)
        assert status["last_error"] is None

        # The same sockets carry on, both ways, and nobody saw anyone leave.
        still_open(a, b)
        await relays(a, b, "b", "after the reload")
        await b.send({"type": "answer", "payload": {**ANSWER, "target_user_id": "a"}})
        assert (await a.expect("answer"))["payload"]["sdp"] == ANSWER["sdp"]
        await a.expect_silence(0.2)
        await b.expect_silence(0.01)

        after = await webrtc_config(server)
        stun, turn = after["iceServers"]
        assert stun == {"urls": ["stun:127.0.0.2:3478"]}
        assert turn["urls"] == [
            "turn:127.0.0.1:3478?transport=udp",
            "turn:127.0.0.1:3478?transport=tcp",
        ]
        assert turn["username"].endswith(":alice") and turn["credential"]
        assert after["ice_servers"] == after["iceServers"]
        assert (after["iceTransportPolicy"], after["ice_transport_policy"]) == ("relay", "relay")
        assert (after["bundlePolicy"], after["rtcpMuxPolicy"]) == ("max-bundle", "negotiate")


# Room limits apply to the next join; members already in stay.


async def test_a_lower_room_limit_keeps_members_and_refuses_the_next_join(
    volume: SecretVolume,
) -> None:
    settings = serving(volume, "rooms: {max_participants: 10}\n")
    async with (
        running_server(settings) as server,
        members(server, "team-1", ["a", "b", "c"]) as clients,
    ):
        a, b, c = clients.values()
        await reload(server, volume, "rooms: {max_participants: 2}\n", generation=2)
        still_open(a, b, c)
        await relays(a, c, "c", "three members, limit two: all stay")
        await refused_as_full(server, "team-1", "d")
        await b.connection.close()  # two left: still full at the new limit
        assert (await a.expect("user_left"))["payload"]["user_id"] == "b"
        await c.expect("user_left")
        await refused_as_full(server, "team-1", "e")
        await c.connection.close()
        await a.expect("user_left")
        async with joined(server.ws_url("team-1", token("e"))):
            assert (await a.expect("user_joined"))["payload"]["user_id"] == "e"


@contextlib.asynccontextmanager
async def backend_settings(backend: str, tmp_path: Path) -> AsyncIterator[dict[str, Any]]:
    """Environment for the named backend: nothing for memory, a fresh redis-server's URL."""
    if backend == "memory":
        yield {}
        return
    async with RedisServer(tmp_path / "redis") as redis:
        yield {"redis_url": redis.url}


OVERRIDES = """
rooms:
  max_participants: 3
  overrides:
    - {match: "1on1-*", max_participants: 2}
    - {match: "big", max_participants: 4}
"""


@pytest.mark.parametrize("backend", ["memory", "redis"])
async def test_a_prefix_override_applied_live_enforces_capacity(
    backend: str, volume: SecretVolume, tmp_path: Path
) -> None:
    async with backend_settings(backend, tmp_path) as environment:
        settings = serving(volume, "rooms: {max_participants: 3}\n", **environment)
        async with running_server(settings) as server:
            expected = RedisBackend if backend == "redis" else MemoryBackend
            assert type(server.services.backend) is expected  # capacity is the backend's
            await reload(server, volume, OVERRIDES, generation=2)
            async with members(server, "1on1-abc", ["a", "b"]):
                await refused_as_full(server, "1on1-abc", "c")
            async with members(server, "big", ["a", "b", "c", "d"]):
                await refused_as_full(server, "big", "e")
            async with members(server, "1on1", ["a", "b", "c"]):  # no prefix match: default
                await refused_as_full(server, "1on1", "d")


# New limits apply to the next frame of an existing session.


def offer_of(size_bytes: int, target: str) -> str:
    """An offer frame to `target` of exactly `size_bytes` bytes."""
    empty = json.dumps(offer_to(target, sdp=""))
    frame = json.dumps(offer_to(target, sdp="x" * (size_bytes - len(empty))))
    assert len(frame.encode()) == size_bytes
    return frame


async def test_a_lower_message_limit_applies_to_the_next_frame(volume: SecretVolume) -> None:
    async with (
        running_server(serving(volume, "limits: {max_message_bytes: 8192}\n")) as server,
        members(server, "r1", ["a", "b"]) as clients,
    ):
        a, b = clients["a"], clients["b"]
        await a.connection.send(offer_of(4000, "b"))
        assert len((await b.expect("offer"))["payload"]["sdp"]) > 3900
        await reload(server, volume, "limits: {max_message_bytes: 2048}\n", generation=2)
        await relays(a, b, "b", "small frames still pass")
        await a.connection.send(offer_of(4000, "b"))  # passed under the last version
        await a.expect_error("message_too_large")
        await a.expect_close(1009)
        assert (await b.expect("user_left"))["payload"]["user_id"] == "a"


async def test_a_lower_rate_limit_applies_to_the_next_frames(volume: SecretVolume) -> None:
    async with (
        running_server(serving(volume, "limits: {rate_limit_burst: 1000}\n")) as server,
        joined(server.ws_url("r1", token("a"))) as (a, _),
    ):
        for n in range(4):
            await a.send({"type": "ping", "payload": {"n": n}})
        for n in range(4):
            assert (await a.expect("pong"))["payload"] == {"n": n}
        # One token every ten seconds: nothing refills within the test.
        limits = "limits: {rate_limit_per_second: 0.1, rate_limit_burst: 2}\n"
        await reload(server, volume, limits, generation=2)
        for n in range(4):
            await a.send({"type": "ping", "payload": {"n": n}})
        for n in range(2):
            assert (await a.expect("pong"))["payload"] == {"n": n}
        for _ in range(2):
            await a.expect_error("rate_limited")
        await a.expect_silence(0.1)
        still_open(a)


# Origins apply to the next handshake.


async def test_allowed_origins_apply_to_the_next_handshake_and_open_sockets_stay(
    volume: SecretVolume,
) -> None:
    foreign, app = "https://foreign.example.org", "https://app.example.org"
    async with running_server(serving(volume, "allowed_origins: []\n")) as server:
        url = server.ws_url("r1", token("a"))
        async with joined(url, origin=foreign) as (a, _):
            await reload(server, volume, f"allowed_origins: ['{app}']\n", generation=2)
            with pytest.raises(InvalidStatus) as refused:
                async with connect(server.ws_url("r1", token("b")), origin=foreign):
                    pass
            assert refused.value.response.status_code == 403
            async with joined(server.ws_url("r1", token("c")), origin=app):
                assert (await a.expect("user_joined"))["payload"]["user_id"] == "c"
                await a.send({"type": "ping", "payload": {}})
                await a.expect("pong")  # the socket opened from the foreign origin stays
            still_open(a)


# An invalid version changes nothing in force.

GOOD = """
ice: {stun_urls: ["stun:127.0.0.1:3478"]}
rooms: {max_participants: 2}
limits: {max_message_bytes: 4096}
"""
# Valid fields next to an invalid one: none of them may apply.
BAD = """
ice: {stun_urls: ["stun:127.0.0.9:3478"]}
rooms: {max_participants: 0}
limits: {max_message_bytes: 2048}
"""


def metric(text: str, name: str) -> float:
    values = [line.split()[1] for line in text.splitlines() if line.startswith(name + " ")]
    assert len(values) == 1, f"{name} in:\n{text}"
    return float(values[0])


async def test_an_invalid_version_leaves_the_last_good_in_force_and_is_reported(
    volume: SecretVolume,
) -> None:
    async with (
        running_server(serving(volume, GOOD)) as server,
        members(server, "r1", ["a", "b"]) as clients,
    ):
        a, b = clients["a"], clients["b"]
        config = await webrtc_config(server)
        first = await readyz_policy(server)
        volume.write({KEY: BAD.encode()})
        status = await wait_for_policy(server, "refused", lambda p: p["last_error"] is not None)

        assert status["last_error"] == (
            "rooms.max_participants: Input should be greater than or equal to 1"
        )
        assert status["last_error_at"] is not None
        assert {k: status[k] for k in ("generation", "sha256", "applied_at")} == {
            k: first[k] for k in ("generation", "sha256", "applied_at")
        }
        assert status["generation"] == 1
        async with http_to(server) as http:
            ready = await http.get("/readyz")
            metrics = (await http.get("/metrics")).text
        assert ready.status_code == 200 and ready.json()["status"] == "ready"
        assert metric(metrics, "rendezvous_policy_rejected_total") == 1
        assert metric(metrics, "rendezvous_policy_generation") == 1

        # Everything in force is the good version's: servers, room limit, frame limit.
        assert (await webrtc_config(server))["iceServers"] == config["iceServers"]
        await refused_as_full(server, "r1", "c")
        await a.connection.send(offer_of(3000, "b"))  # over BAD's 2048, within GOOD's 4096
        assert len((await b.expect("offer"))["payload"]["sdp"]) > 2900
        still_open(a, b)


# The admin endpoint.

ADMIN_VIEW = """
ice:
  stun_urls: ["stun:127.0.0.1:3478"]
  turn_urls: ["turn:127.0.0.1:3478?transport=udp"]
rooms:
  max_participants: 20
  overrides: [{match: "1on1-*", max_participants: 2}]
limits: {max_message_bytes: 4096, rate_limit_burst: 50}
allowed_origins: ["https://app.example.org"]
"""


async def test_the_admin_endpoint_needs_the_admin_role(volume: SecretVolume) -> None:
    async with running_server(serving(volume, ADMIN_VIEW)) as server, http_to(server) as http:
        anonymous = await http.get("/webrtc/admin/policy")
        assert anonymous.status_code == 401
        user = await http.get(
            "/webrtc/admin/policy", headers={"Authorization": f"Bearer {token('bob')}"}
        )
        assert user.status_code == 403
        assert user.json()["code"] == "forbidden"


async def test_the_admin_endpoint_shows_status_and_policy_and_no_secret(
    volume: SecretVolume,
) -> None:
    async with running_server(serving(volume, ADMIN_VIEW)) as server, http_to(server) as http:
        response = await http.get(
            "/webrtc/admin/policy",
            headers={"Authorization": f"Bearer {token('root', roles=['admin'])}"},
        )
        readyz = await readyz_policy(server)
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["status"] == readyz
    assert body["status"]["generation"] == 1 and body["status"]["source"] == str(
        volume.directory / KEY
    )
    policy = body["policy"]
    assert policy == {
        "ice": {
            "stun_urls": ["stun:127.0.0.1:3478"],
            "turn_urls": ["turn:127.0.0.1:3478?transport=udp"],
            "ice_transport_policy": "all",  # not in the file: the environment's
            "bundle_policy": "balanced",
            "rtcp_mux_policy": "require",
        },
        "rooms": {
            "max_participants": 20,
            "overrides": [{"match": "1on1-*", "max_participants": 2}],
        },
        "limits": {
            "max_message_bytes": 4096,
            "rate_limit_per_second": 100.0,
            "rate_limit_burst": 50,
            "send_queue_max_messages": 256,
            "send_queue_max_bytes": 1024 * 1024,
        },
        "allowed_origins": ["https://app.example.org"],
    }
    # Shaped like a policy file: an operator can save it and get the same policy in force.
    view = parse_policy(json.dumps(policy).encode())
    assert resolve(server.services.settings, view) == server.services.policy.effective
    assert "WEBRTC_TURN_SECRET" in body["turn_credentials"]  # named by source only
    for secret in (TURN_SECRET, TEST_SECRET):
        assert secret not in response.text
