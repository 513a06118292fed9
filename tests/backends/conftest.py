"""Fixtures for the backend contract suite: a cluster of backend instances sharing one store.

Each parameter of `cluster` is one store: the in-memory broker, a real standalone
redis-server, the session's real 3-node Redis Cluster, and a real Sentinel setup. A store
is an async context manager (given the test's request, to reach the Redis fixtures) that
yields a `BackendFactory` (presence TTL in seconds -> a new, unstarted backend on that
store) and tears the store down afterwards.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field

import pytest

from rendezvous.backends.base import Backend, Member
from rendezvous.backends.memory import MemoryBackend, MemoryBroker
from rendezvous.backends.redis import RedisBackend
from rendezvous.redis_url import parse_redis_url
from tests.support.redis import RedisCluster, RedisSentinel, RedisServer

BackendFactory = Callable[[float], Backend]
Store = Callable[[pytest.FixtureRequest], contextlib.AbstractAsyncContextManager[BackendFactory]]

RECEIVE_TIMEOUT_SECONDS = 5.0
DEFAULT_TTL_SECONDS = 30.0


@contextlib.asynccontextmanager
async def memory_store(request: pytest.FixtureRequest) -> AsyncIterator[BackendFactory]:
    """MemoryBackends on one MemoryBroker, as instances on one Redis (real time clock)."""
    broker = MemoryBroker()

    def new_backend(presence_ttl_seconds: float) -> Backend:
        return MemoryBackend(presence_ttl_seconds=presence_ttl_seconds, broker=broker)

    yield new_backend


def redis_factory(url: str) -> BackendFactory:
    """RedisBackends on the Redis at `url`, as instances configured with that URL."""
    target = parse_redis_url(url)

    def new_backend(presence_ttl_seconds: float) -> Backend:
        return RedisBackend(target, presence_ttl_seconds=presence_ttl_seconds)

    return new_backend


@contextlib.asynccontextmanager
async def redis_store(request: pytest.FixtureRequest) -> AsyncIterator[BackendFactory]:
    """A real standalone redis-server, fresh for the test."""
    server: RedisServer = request.getfixturevalue("redis_server")
    yield redis_factory(server.url)


@contextlib.asynccontextmanager
async def redis_cluster_store(request: pytest.FixtureRequest) -> AsyncIterator[BackendFactory]:
    """The session's real 3-node Redis Cluster (sharded pub/sub), emptied for the test."""
    cluster: RedisCluster = request.getfixturevalue("redis_cluster")
    yield redis_factory(cluster.url)


@contextlib.asynccontextmanager
async def redis_sentinel_store(request: pytest.FixtureRequest) -> AsyncIterator[BackendFactory]:
    """A real primary, replica and sentinel; backends find the primary through the sentinel."""
    sentinel: RedisSentinel = request.getfixturevalue("redis_sentinel")
    yield redis_factory(sentinel.url)


STORES: dict[str, Store] = {
    "memory": memory_store,
    "redis": redis_store,
    "redis-cluster": redis_cluster_store,
    "redis-sentinel": redis_sentinel_store,
}


@dataclass
class Instance:
    """One started backend and the bus messages it was handed, in arrival order."""

    backend: Backend
    inbox: asyncio.Queue[tuple[str, bytes]] = field(default_factory=asyncio.Queue)

    def on_message(self, room_id: str, data: bytes) -> None:
        self.inbox.put_nowait((room_id, data))

    async def receive(self, timeout: float = RECEIVE_TIMEOUT_SECONDS) -> tuple[str, bytes]:
        return await asyncio.wait_for(self.inbox.get(), timeout)

    async def reap(self, *rooms: str) -> list[tuple[str, Member]]:
        """Reap as a hub does: only the rooms this instance listens to."""
        for room in rooms:
            await self.backend.subscribe(room)
        return await self.backend.reap_expired()

    async def expect_nothing(self, seconds: float = 0.3) -> None:
        with contextlib.suppress(TimeoutError):
            message = await self.receive(seconds)
            raise AssertionError(f"expected no bus message, got {message!r}")


class Cluster:
    """Backend instances sharing one store, like processes sharing one Redis."""

    def __init__(self, factory: BackendFactory) -> None:
        self._factory = factory
        self._started: list[Backend] = []

    async def instance(self, *, presence_ttl_seconds: float = DEFAULT_TTL_SECONDS) -> Instance:
        instance = Instance(self._factory(presence_ttl_seconds))
        await instance.backend.start(instance.on_message)
        self._started.append(instance.backend)
        return instance

    async def close(self) -> None:
        for backend in self._started:
            await backend.stop()


@pytest.fixture(params=sorted(STORES))
async def cluster(request: pytest.FixtureRequest) -> AsyncIterator[Cluster]:
    store: Store = STORES[request.param]
    async with store(request) as factory:
        cluster = Cluster(factory)
        try:
            yield cluster
        finally:
            await cluster.close()


# Real Redis for the stores (tests/support/redis.py documents them): a store reaches one
# through request.getfixturevalue("redis_server" | "redis_cluster" | "redis_sentinel").
from tests.support.redis import (  # noqa: E402, F401
    redis_cluster,
    redis_cluster_pool,
    redis_sentinel,
    redis_server,
)
