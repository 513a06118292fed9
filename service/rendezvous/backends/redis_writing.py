"""Writing: one ordered publisher per Redis node. Messages leave in the order they were
queued, pipelined in batches over a single connection, so a sender's offer can never be
overtaken by its own ICE candidates the way it could through a pool of connections.

Each message is timed from its queueing to Redis's reply, into a histogram the backend's
writers share: one clock read per batch, once every reply is in (a pipelined batch's
replies arrive close together). A batch lost with its link is counted as dropped and
never observed: every message sent is in exactly one of the two."""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque

from rendezvous.backends.base import BackendUnavailableError
from rendezvous.backends.redis_listening import LINK_ERRORS, Node
from rendezvous.backends.resp import RespConnection
from rendezvous.telemetry.histogram import LatencyHistogram

log = logging.getLogger(__name__)

BATCH_MESSAGES = 256

# (channel, data, when it was queued on the perf_counter clock)
_Queued = tuple[bytes, bytes, float]


class OrderedWriter:
    def __init__(
        self, node: Node, *, client_name: str, max_queued: int, latency: LatencyHistogram
    ) -> None:
        self.name = node.name
        self._node = node
        self._client_name = client_name
        self._command = b"SPUBLISH" if node.sharded else b"PUBLISH"
        self._max_queued = max_queued
        self._queue: deque[_Queued] = deque()
        self._ready = asyncio.Event()
        self.dropped = 0
        self.latency = latency

    @property
    def queued(self) -> int:
        """Messages waiting to be sent (a batch in flight is no longer queued)."""
        return len(self._queue)

    def put(self, channel: bytes, data: bytes) -> None:
        """Queue one message; never blocks. Raise when the queue is full (Redis too slow)."""
        if len(self._queue) >= self._max_queued:
            raise BackendUnavailableError(f"publish queue to redis {self.name} is full")
        self._queue.append((channel, data, time.perf_counter()))
        self._ready.set()

    async def run(self) -> None:
        """Forever: connect, then send what is queued; on failure drop the batch in flight
        (its senders cannot be told any more) and reconnect with capped backoff."""
        while True:
            connection, _ = await self._node.connect("writer", client_name=self._client_name)
            batch: list[_Queued] = []
            try:
                while True:
                    if not self._queue:
                        await self._idle(connection)
                    batch = [
                        self._queue.popleft() for _ in range(min(len(self._queue), BATCH_MESSAGES))
                    ]
                    for channel, data, _ in batch:
                        connection.send(self._command, channel, data)
                    await connection.drain()
                    for _ in batch:
                        await connection.read()
                    acked = time.perf_counter()
                    observe = self.latency.observe
                    for _, _, queued_at in batch:
                        observe(acked - queued_at)
                    batch = []
            except LINK_ERRORS as exc:
                self.dropped += len(batch)
                log.warning(
                    "redis writer %s: link lost (%s); %d messages dropped",
                    self.name,
                    exc or type(exc).__name__,
                    len(batch),
                )
            finally:
                connection.abort()

    async def _idle(self, connection: RespConnection) -> None:
        """Wait for the next message, watching the link meanwhile: a connection Redis closed
        while we were idle (a restart, CLIENT KILL) is replaced before it loses a batch."""
        self._ready.clear()
        queued = asyncio.ensure_future(self._ready.wait())
        closed = asyncio.ensure_future(connection.closed_by_peer())
        try:
            await asyncio.wait((queued, closed), return_when=asyncio.FIRST_COMPLETED)
        finally:
            for waiter in (queued, closed):
                waiter.cancel()
            await asyncio.gather(queued, closed, return_exceptions=True)
        if closed.done() and not closed.cancelled():
            closed.result()  # raises: the link is gone
