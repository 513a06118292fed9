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
        self._ready = asyncio.Event()  # something was queued (or the link failed)
        self._acked = asyncio.Event()  # the batch in flight was acknowledged (or failed)
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
        """Forever: connect, then send what is queued, one pipelined batch at a time; on
        failure drop the batch in flight (its senders cannot be told any more) and
        reconnect with capped backoff."""
        while True:
            connection, _ = await self._node.connect("writer", client_name=self._client_name)
            replies = _Replies(connection, self.latency, wake=(self._ready, self._acked))
            try:
                await self._send(connection, replies)
            except LINK_ERRORS as exc:
                lost = len(replies.in_flight)
                self.dropped += lost
                log.warning(
                    "redis writer %s: link lost (%s); %d messages dropped",
                    self.name,
                    exc or type(exc).__name__,
                    lost,
                )
            finally:
                connection.abort()
                await replies.stop()

    async def _send(self, connection: RespConnection, replies: _Replies) -> None:
        """Send batches until the link fails (raises one of LINK_ERRORS). While idle the
        reply reader watches the link, so a connection Redis closed (a restart, CLIENT
        KILL) is replaced before it loses a batch."""
        queue = self._queue
        while True:
            if not queue:
                self._ready.clear()
                replies.check()
                await self._ready.wait()
                replies.check()
                continue
            batch = min(len(queue), BATCH_MESSAGES)
            in_flight = replies.in_flight
            for _ in range(batch):
                channel, data, queued_at = queue.popleft()
                connection.send(self._command, channel, data)
                in_flight.append(queued_at)
            self._acked.clear()
            await connection.drain()
            await self._acked.wait()  # set by the reader: all replied, or the link failed
            replies.check()


class _Replies:
    """Reads one connection's replies for as long as it lives: each acknowledges the
    oldest message in flight (and times it). One reader per connection, instead of a
    watcher started and cancelled each time the queue empties: at a moderate rate that
    was once per message. Its end (the link failed) wakes the writer."""

    def __init__(
        self,
        connection: RespConnection,
        latency: LatencyHistogram,
        *,
        wake: tuple[asyncio.Event, asyncio.Event],
    ) -> None:
        self.in_flight: deque[float] = deque()  # when each unacknowledged message was queued
        self._connection = connection
        self._latency = latency
        self._wake = wake
        self._task = asyncio.ensure_future(self._read())
        self._task.add_done_callback(self._ended)

    async def _read(self) -> None:
        read, in_flight, observe = self._connection.read, self.in_flight, self._latency.observe
        acked = self._wake[1]
        while True:
            await read()
            if not in_flight:
                raise ConnectionResetError("unexpected data from redis on an idle connection")
            observe(time.perf_counter() - in_flight.popleft())
            if not in_flight:
                acked.set()

    def _ended(self, _: asyncio.Future[None]) -> None:
        for event in self._wake:
            event.set()

    def check(self) -> None:
        """Raise what ended the reader (the link is gone), if it ended."""
        if self._task.done():
            if self._task.cancelled():
                raise ConnectionResetError("redis reply reader stopped")
            self._task.result()  # raises: the reader only ends by an error
            raise ConnectionResetError("redis reply reader ended")

    async def stop(self) -> None:
        self._task.cancel()
        # Its error, if it ended by one, is the link failure the writer has reported.
        await asyncio.gather(self._task, return_exceptions=True)
