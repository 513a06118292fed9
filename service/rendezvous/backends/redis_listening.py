"""Listening: one pub/sub connection per Redis node, kept alive for the life of the
instance. It reconnects with capped backoff, re-subscribes every live channel before it
reports itself up again, and pings so that a silently dead link is noticed."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from rendezvous.backends.base import BackendUnavailableError
from rendezvous.backends.resp import RespConnection, RespError, RespValue

log = logging.getLogger(__name__)

Resolve = Callable[[], Awaitable[tuple[str, int]]]
# Where a connection fails: the socket, the RESP stream, Redis itself, or address lookup.
LINK_ERRORS = (OSError, TimeoutError, EOFError, RespError, BackendUnavailableError)

BACKOFF_SECONDS = (0.05, 2.0)  # first retry, cap
PING_INTERVAL_SECONDS = 2.0
SILENCE_LIMIT_SECONDS = 3 * PING_INTERVAL_SECONDS
SUBSCRIBE_TIMEOUT_SECONDS = 3.0


@dataclass(frozen=True, slots=True)
class Credentials:
    username: str | None = None
    password: str | None = None
    tls: bool = False


def backoff_seconds(attempt: int) -> float:
    first, cap = BACKOFF_SECONDS
    return float(min(first * 2 ** max(attempt - 1, 0), cap))


async def open_resp(
    resolve: Resolve, credentials: Credentials, *, client_name: str
) -> RespConnection:
    host, port = await resolve()
    return await RespConnection.open(
        host,
        port,
        username=credentials.username,
        password=credentials.password,
        tls=credentials.tls,
        client_name=client_name,
    )


async def connect_with_backoff(
    what: str, resolve: Resolve, credentials: Credentials, *, client_name: str
) -> tuple[RespConnection, int]:
    """Connect, retrying with capped backoff and logging every failed attempt; return the
    connection and how many attempts failed before it."""
    failures = 0
    while True:
        try:
            return await open_resp(resolve, credentials, client_name=client_name), failures
        except LINK_ERRORS as exc:
            failures += 1
            delay = backoff_seconds(failures)
            log.warning(
                "%s: connect attempt %d failed (%s); retrying in %.2fs",
                what,
                failures,
                exc or type(exc).__name__,
                delay,
            )
            await asyncio.sleep(delay)


@dataclass(frozen=True, slots=True)
class Node:
    """One Redis node as the listener and the writer reach it: where (resolved anew on
    every connect, as a Sentinel primary moves), how to log in, and whether its pub/sub
    is sharded (Cluster)."""

    name: str
    resolve: Resolve
    credentials: Credentials
    sharded: bool

    async def connect(self, role: str, *, client_name: str) -> tuple[RespConnection, int]:
        return await connect_with_backoff(
            f"redis {role} {self.name}", self.resolve, self.credentials, client_name=client_name
        )


class Listener:
    """Subscriptions of one node. `subscribe` returns once Redis confirmed it."""

    def __init__(
        self,
        node: Node,
        *,
        client_name: str,
        on_message: Callable[[bytes, bytes], None],
        on_up: Callable[[], None],
    ) -> None:
        self.name = node.name
        self._node = node
        self._client_name = client_name
        prefix = b"S" if node.sharded else b""
        self._subscribe_command = prefix + b"SUBSCRIBE"
        self._unsubscribe_command = prefix + b"UNSUBSCRIBE"
        self._message_kinds = {b"message", b"smessage"}
        self._confirm_kinds = {b"subscribe", b"ssubscribe"}
        self._on_message = on_message
        self._on_up = on_up
        self.channels: set[bytes] = set()
        self._pending: dict[bytes, asyncio.Future[None]] = {}
        self._connection: RespConnection | None = None
        self.connected = False
        self.reconnects = 0
        self._last_heard = 0.0

    async def run(self) -> None:
        """Forever: connect, re-subscribe, read; on failure back off and start again."""
        lost = False
        while True:
            connection, failures = await self._node.connect(
                "listener", client_name=self._client_name
            )
            self.reconnects += failures + int(lost)
            try:
                await self._serve(connection, failures=failures if lost or failures else None)
            except LINK_ERRORS as exc:
                log.warning(
                    "redis listener %s: link lost (%s)", self.name, exc or type(exc).__name__
                )
            finally:
                self._down(connection)
            lost = True

    async def _serve(self, connection: RespConnection, *, failures: int | None) -> None:
        """Re-subscribe, report up, then read until the link fails. `failures` is None on
        the first connection, else how many attempts failed before this reconnection."""
        self._connection = connection
        self._last_heard = asyncio.get_running_loop().time()
        await self._resubscribe(connection)
        self.connected = True
        if failures is not None:
            log.info("redis listener %s: reconnected after %d failed attempts", self.name, failures)
        self._on_up()
        pinger = asyncio.create_task(
            self._ping(connection), name=f"rendezvous.redis.ping:{self.name}"
        )
        try:
            while True:
                self._handle(await connection.read())
        finally:
            pinger.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await pinger

    async def _resubscribe(self, connection: RespConnection) -> None:
        channels = sorted(self.channels)
        if not channels:
            return
        # One command per channel, pipelined: SSUBSCRIBE takes only channels of one slot.
        for channel in channels:
            connection.send(self._subscribe_command, channel)
        await connection.drain()
        confirmed: set[bytes] = set()
        async with asyncio.timeout(SUBSCRIBE_TIMEOUT_SECONDS):
            while not confirmed.issuperset(channels):
                reply = await connection.read()
                if isinstance(reply, list) and reply[0] in self._confirm_kinds:
                    confirmed.add(reply[1])  # type: ignore[arg-type]
                else:
                    self._handle(reply)
        for channel in channels:
            self._resolve_pending(channel)

    def _handle(self, reply: RespValue) -> None:
        self._last_heard = asyncio.get_running_loop().time()
        if not isinstance(reply, list):
            return  # +PONG outside subscribed mode
        kind = reply[0]
        if kind in self._message_kinds:
            self._on_message(reply[1], reply[2])  # type: ignore[arg-type]
        elif kind in self._confirm_kinds:
            self._resolve_pending(reply[1])  # type: ignore[arg-type]

    async def _ping(self, connection: RespConnection) -> None:
        loop = asyncio.get_running_loop()
        while True:
            await asyncio.sleep(PING_INTERVAL_SECONDS)
            if loop.time() - self._last_heard > SILENCE_LIMIT_SECONDS:
                log.warning("redis listener %s: no answer to pings; reconnecting", self.name)
                connection.abort()
                return
            connection.send(b"PING")
            await connection.drain()

    def _down(self, connection: RespConnection) -> None:
        task = asyncio.current_task()
        if self.connected and not (task and task.cancelling()):  # not when shutting down
            log.warning(
                "redis listener %s: down, %d channels to restore", self.name, len(self.channels)
            )
        self.connected = False
        self._connection = None
        connection.abort()
        for future in self._pending.values():
            if not future.done():
                future.set_exception(BackendUnavailableError(f"redis {self.name} is unreachable"))
        self._pending.clear()

    def _resolve_pending(self, channel: bytes) -> None:
        future = self._pending.pop(channel, None)
        if future is not None and not future.done():
            future.set_result(None)

    async def subscribe(self, channel: bytes) -> None:
        """Subscribe; on failure leave no trace, or a reconnect would restore a channel
        whose caller was told it is not subscribed."""
        known = channel in self.channels
        connection = self._connection
        if connection is None or not self.connected:
            raise BackendUnavailableError(f"redis {self.name} is unreachable")
        self.channels.add(channel)
        future = self._pending.get(channel)
        if future is None:
            future = self._pending[channel] = asyncio.get_running_loop().create_future()
            connection.send(self._subscribe_command, channel)
        try:
            await connection.drain()
            async with asyncio.timeout(SUBSCRIBE_TIMEOUT_SECONDS):  # not wait_for: see resp
                await asyncio.shield(future)
        except BaseException as exc:  # cancelled too: the caller never had the channel
            self._abandon(channel, future)
            if not known:
                self._drop(channel)
            if isinstance(exc, OSError | TimeoutError):
                raise BackendUnavailableError(f"subscribe on redis {self.name} failed") from exc
            raise

    def _abandon(self, channel: bytes, future: asyncio.Future[None]) -> None:
        """Forget a confirmation nobody waits for any more (and whose error was told)."""
        if self._pending.get(channel) is future:
            del self._pending[channel]
        if not future.done():
            future.set_exception(BackendUnavailableError(f"redis {self.name}: gave up"))
        if not future.cancelled():
            future.exception()  # marks it retrieved

    async def unsubscribe(self, channel: bytes) -> None:
        connection = self._drop(channel)
        if connection is not None:
            with contextlib.suppress(OSError):
                await connection.drain()

    def _drop(self, channel: bytes) -> RespConnection | None:
        """Forget the channel and tell Redis if connected (a reconnect forgets it anyway)."""
        self.channels.discard(channel)
        connection = self._connection
        if connection is None or not self.connected:
            return None
        connection.send(self._unsubscribe_command, channel)
        return connection
