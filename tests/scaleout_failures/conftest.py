"""Fixtures and helpers for the scale-out failure tests: real `rendezvous serve`
instances on a real redis-server, which the tests stop, restart and SIGTERM."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Any

import httpx

from tests.support.client import Client
from tests.support.instances import Instance
from tests.support.redis import redis_server  # noqa: F401  (a fixture, used by name)
from tests.support.tokens import token

SDP = "v=0\r\no=- 1 2 IN IP4 127.0.0.1\r\ns=-\r\nt=0 0\r\n"
POLL_SECONDS = 0.05
# What an escaped exception or a dead background task leaves in an instance's output.
CRASH_MARKERS = (
    "Traceback",
    "crashed",
    "Exception in ASGI application",
    "died",
    '"level":"error"',
    '"level":"critical"',
)
OUTAGE_ERROR = '"message":"Failed to publish message"'


def users(room_state: dict[str, Any]) -> set[str]:
    return {p["user_id"] for p in room_state["payload"]["participants"]}


async def send_offer(sender: Client, *, target: str | None, sdp: str = SDP) -> None:
    payload: dict[str, Any] = {"type": "offer", "sdp": sdp}
    if target is not None:
        payload["target_user_id"] = target
    await sender.send({"type": "offer", "payload": payload})


async def offer_arrives(
    sender: Client, sender_id: str, receiver: Client, receiver_id: str, *, sdp: str = SDP
) -> None:
    """A targeted offer from sender reaches receiver, unaltered and attributed."""
    await send_offer(sender, target=receiver_id, sdp=sdp)
    offer = await receiver.expect("offer")
    assert offer["sender_id"] == sender_id, offer
    assert offer["payload"]["sdp"] == sdp, offer
    assert offer["payload"]["target_user_id"] == receiver_id, offer


async def ping_pong(client: Client, marker: str) -> None:
    await client.send({"type": "ping", "payload": {"marker": marker}})
    pong = await client.expect("pong")
    assert pong["payload"] == {"marker": marker}, pong


async def readiness(instance: Instance) -> int:
    """The status of GET /readyz; 0 if the instance does not answer at all."""
    async with httpx.AsyncClient(base_url=instance.http, timeout=2, trust_env=False) as http:
        try:
            return (await http.get("/readyz")).status_code
        except httpx.TransportError:
            return 0


async def liveness(instance: Instance) -> int:
    async with httpx.AsyncClient(base_url=instance.http, timeout=2, trust_env=False) as http:
        return (await http.get("/healthz")).status_code


async def participant_ids(instance: Instance, room: str) -> set[str] | None:
    """Who the participants endpoint of `instance` lists in `room`; None if it refuses."""
    headers = {"Authorization": f"Bearer {token('inspector')}"}
    async with httpx.AsyncClient(base_url=instance.http, timeout=2, trust_env=False) as http:
        response = await http.get(f"/webrtc/rooms/{room}/participants", headers=headers)
    if response.status_code != 200:
        return None
    return {p["user_id"] for p in response.json()["participants"]}


async def seconds_until(
    what: str, check: Callable[[], Awaitable[bool]], *, deadline_seconds: float
) -> float:
    """Poll `check` until it holds; return how long that took. Fails past the deadline."""
    started = time.monotonic()
    while not await check():
        elapsed = time.monotonic() - started
        assert elapsed < deadline_seconds, f"{what}: not within {deadline_seconds} s"
        await asyncio.sleep(POLL_SECONDS)
    return time.monotonic() - started


def crash_lines(instance: Instance) -> list[str]:
    """Every output line (all runs) that shows an escaped exception or a dead task; a
    relay refused while Redis is down is an error the outage is expected to log."""
    return [
        line
        for line in instance.all_output().splitlines()
        if any(marker in line for marker in CRASH_MARKERS) and OUTAGE_ERROR not in line
    ]
