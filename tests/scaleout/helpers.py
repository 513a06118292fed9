"""What the scale-out tests ask of a deployment: who a room holds (by the REST endpoint),
how many WebSockets an instance serves (its /metrics gauge), the frames a client has
waiting, and the Redis keyspace's expiries."""

from __future__ import annotations

import asyncio
import re
from collections.abc import Sequence
from typing import Any

import httpx

from tests.support.client import Client
from tests.support.instances import Instance
from tests.support.redis import RedisServer
from tests.support.tokens import token

SDP = "v=0\r\no=- 1 2 IN IP4 127.0.0.1\r\ns=-\r\nt=0 0\r\n"
FRAME_TIMEOUT_SECONDS = 10.0  # generous: three processes and Redis share two busy cores
QUIET_SECONDS = 0.5  # how long "nothing more arrives" is watched for
KEY_TTL_FACTOR = 3  # DESIGN: a room's keys are re-armed to 3x the presence TTL on each write
_CONNECTIONS = re.compile(r"^rendezvous_connections (\S+)$", re.MULTILINE)


def user_ids(room_state: dict[str, Any]) -> set[str]:
    return {p["user_id"] for p in room_state["payload"]["participants"]}


def candidate(foundation: int, *, target: str | None = None) -> dict[str, Any]:
    """An ICE candidate payload as a browser's RTCIceCandidate.toJSON() has it."""
    port = 40000 + foundation % 20000
    payload: dict[str, Any] = {
        "candidate": f"candidate:{foundation} 1 udp 2122260223 127.0.0.1 {port} typ host",
        "sdpMid": "0",
        "sdpMLineIndex": 0,
        "usernameFragment": "frag",
    }
    if target is not None:
        payload["target_user_id"] = target
    return payload


def end_of_candidates(*, target: str | None = None) -> dict[str, Any]:
    payload: dict[str, Any] = {"candidate": "", "sdpMid": "0", "sdpMLineIndex": 0}
    if target is not None:
        payload["target_user_id"] = target
    return payload


def relayed(sent: dict[str, Any]) -> dict[str, Any]:
    """An ICE payload as the service relays it: as sent, plus SEED.md's snake_case."""
    return {**sent, "sdp_mid": sent["sdpMid"], "sdp_m_line_index": sent["sdpMLineIndex"]}


async def expect_from(
    client: Client, kind: str, *, sender: str, payload: dict[str, Any], room: str
) -> dict[str, Any]:
    """The next frame is `kind` from `sender` in `room`, carrying exactly `payload`."""
    frame = await client.expect(kind, FRAME_TIMEOUT_SECONDS)
    assert (frame["sender_id"], frame["room_id"]) == (sender, room), frame
    assert frame["payload"] == payload, frame
    return frame


async def expect_event(
    client: Client, kind: str, user: str, *, reason: str | None = None
) -> dict[str, Any]:
    """The next frame is a server event `kind` (user_joined/user_left) about `user`."""
    frame = await client.expect(kind, FRAME_TIMEOUT_SECONDS)
    assert frame["sender_id"] == "server", frame
    assert frame["payload"]["user_id"] == user, frame
    if reason is not None:
        assert frame["payload"]["reason"] == reason, frame
    return frame


async def pending_frames(client: Client, quiet: float = QUIET_SECONDS) -> list[dict[str, Any]]:
    """Every frame that arrives until the socket has been quiet for `quiet` seconds."""
    frames: list[dict[str, Any]] = []
    while True:
        try:
            frames.append(await client.recv(quiet))
        except TimeoutError:
            return frames


async def participants(instance: Instance, room: str) -> list[str]:
    """The room's user ids as `GET /webrtc/rooms/{room}/participants` on `instance` lists them."""
    async with httpx.AsyncClient(base_url=instance.http, timeout=5, trust_env=False) as http:
        response = await http.get(
            f"/webrtc/rooms/{room}/participants",
            headers={"Authorization": f"Bearer {token('observer')}"},
        )
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["participant_count"] == len(body["participants"])
    return sorted(p["user_id"] for p in body["participants"])


async def connection_counts(instances: Sequence[Instance]) -> list[int]:
    """Each instance's open signaling WebSockets, from its own /metrics gauge."""

    async def count(instance: Instance) -> int:
        async with httpx.AsyncClient(base_url=instance.http, timeout=5, trust_env=False) as http:
            response = await http.get("/metrics")
        assert response.status_code == 200
        match = _CONNECTIONS.search(response.text)
        assert match is not None, response.text
        return int(float(match.group(1)))

    return list(await asyncio.gather(*(count(i) for i in instances)))


async def assert_every_key_expires(redis: RedisServer, presence_ttl_seconds: float) -> int:
    """Every key in Redis has a TTL, and none longer than a room's keys get; returns how
    many keys there are (so a caller can insist the check was not vacuous)."""
    ttls = await redis.key_ttls()
    ceiling_ms = KEY_TTL_FACTOR * presence_ttl_seconds * 1000
    for key, ttl_ms in ttls.items():
        # -1: no expiry (the defect this guards against); -2: expired between scan and PTTL.
        assert ttl_ms == -2 or 0 < ttl_ms <= ceiling_ms, (key, ttl_ms, ttls)
    return len(ttls)
