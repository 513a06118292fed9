"""/metrics reports the link to Redis: up, reconnects, and messages lost on a broken link."""

from __future__ import annotations

import asyncio

import httpx

from tests.support.redis import RedisServer
from tests.support.server import RunningServer, running_server, test_settings

RECOVERY_SECONDS = 10.0


async def _metric(server: RunningServer, name: str) -> float:
    async with httpx.AsyncClient(trust_env=False) as http:
        text = (await http.get(f"{server.http}/metrics")).text
    (line,) = [row for row in text.splitlines() if row.startswith(f"{name} ")]
    return float(line.split()[1])


async def _until(server: RunningServer, name: str, value: float) -> None:
    async with asyncio.timeout(RECOVERY_SECONDS):
        while await _metric(server, name) != value:
            await asyncio.sleep(0.05)


async def test_metrics_follow_a_redis_outage(redis_server: RedisServer) -> None:
    async with running_server(test_settings(redis_url=redis_server.url)) as server:
        assert await _metric(server, "rendezvous_backend_up") == 1
        assert await _metric(server, "rendezvous_backend_reconnects_total") == 0
        assert await _metric(server, "rendezvous_backend_publish_dropped_total") == 0
        await redis_server.stop()
        await _until(server, "rendezvous_backend_up", 0)
        await redis_server.start()
        await _until(server, "rendezvous_backend_up", 1)
        assert await _metric(server, "rendezvous_backend_reconnects_total") >= 1
