"""The service through a real Sentinel failover: two instances on `redis+sentinel://`,
members on each; the primary is killed; once the sentinel has promoted the replica, the
same connections signal across instances again and new joins are admitted."""

from __future__ import annotations

import asyncio
import time

from tests.support.client import Client, joined
from tests.support.redis import RedisSentinel
from tests.support.server import running_server, test_settings
from tests.support.tokens import token

RECOVERY_SECONDS = 20.0  # the failover itself (~4 s) plus the backend's reconnect, doubled


async def _offer_until_delivered(sender: Client, receiver: Client, target: str) -> float:
    """Send targeted offers until one arrives; messages sent mid-failover may be lost."""
    started = time.monotonic()
    async with asyncio.timeout(RECOVERY_SECONDS):
        while True:
            payload = {"type": "offer", "sdp": f"v=0 {time.monotonic()}", "target_user_id": target}
            await sender.send({"type": "offer", "payload": payload})
            try:
                while True:
                    frame = await receiver.recv(timeout=0.5)
                    if frame["type"] == "offer":
                        return time.monotonic() - started
            except TimeoutError:
                continue


async def test_failover_keeps_signaling_working(redis_sentinel: RedisSentinel) -> None:
    settings = test_settings(redis_url=redis_sentinel.url)
    async with running_server(settings) as one, running_server(settings) as two:
        async with (
            joined(one.ws_url("call", token("alice"))) as (alice, _),
            joined(two.ws_url("call", token("bob"))) as (bob, state),
        ):
            assert state["payload"]["participant_count"] == 2
            await alice.expect("user_joined")
            await _offer_until_delivered(alice, bob, "bob")

            await redis_sentinel.kill_primary()

            async with asyncio.timeout(RECOVERY_SECONDS):
                while not (one.services.backend.ready and two.services.backend.ready):
                    await asyncio.sleep(0.05)
            # Drain what the outage produced (e.g. backend_unavailable for lost offers).
            await _offer_until_delivered(alice, bob, "bob")
            await _offer_until_delivered(bob, alice, "alice")
            async with joined(two.ws_url("call", token("carol"))) as (_, late):
                names = {p["user_id"] for p in late["payload"]["participants"]}
                assert names == {"alice", "bob", "carol"}
