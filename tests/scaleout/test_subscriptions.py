"""Room channel subscriptions on a real Redis: an instance subscribes when its first local
member joins and unsubscribes when its last one leaves, with one subscription per instance
however many of its clients share the room."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

from rendezvous.backends.redis import channel_of
from tests.support.client import Client, joined
from tests.support.redis import RedisServer
from tests.support.server import RunningServer, running_server, test_settings
from tests.support.tokens import token

SETTLE_SECONDS = 5.0


async def _subscribers(redis: RedisServer, room: str) -> int:
    reply = (await redis.cli("PUBSUB", "NUMSUB", channel_of(room).decode())).splitlines()
    return int(reply[1])


async def _until_subscribers(redis: RedisServer, room: str, count: int) -> None:
    """Unsubscribing is not awaited by a leave, so give Redis a moment to see it."""
    async with asyncio.timeout(SETTLE_SECONDS):
        while await _subscribers(redis, room) != count:
            await asyncio.sleep(0.02)


@contextlib.asynccontextmanager
async def _member(server: RunningServer, user: str) -> AsyncIterator[Client]:
    async with joined(server.ws_url("shared", token(user))) as (client, _):
        yield client


async def test_one_subscription_per_instance_from_first_join_to_last_leave(
    redis_server: RedisServer,
) -> None:
    settings = test_settings(redis_url=redis_server.url)
    async with running_server(settings) as one, running_server(settings) as two:
        assert await _subscribers(redis_server, "shared") == 0
        async with contextlib.AsyncExitStack() as alice_stack:
            await alice_stack.enter_async_context(_member(one, "alice"))
            assert await _subscribers(redis_server, "shared") == 1
            async with _member(one, "bob"):
                assert await _subscribers(redis_server, "shared") == 1  # still one: per instance
                async with _member(two, "carol"):
                    assert await _subscribers(redis_server, "shared") == 2
                    await alice_stack.aclose()  # alice leaves; bob keeps instance one in
                    await asyncio.sleep(0.2)
                    assert await _subscribers(redis_server, "shared") == 2
                await _until_subscribers(redis_server, "shared", 1)  # carol was two's last
            await _until_subscribers(redis_server, "shared", 0)  # bob was one's last
