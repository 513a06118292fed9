"""A signaling client for tests: a real `websockets` connection with JSON helpers."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator, Sequence
from typing import TYPE_CHECKING, Any

import websockets
from websockets.asyncio.client import ClientConnection

from tests.support.tokens import token

if TYPE_CHECKING:
    from tests.support.server import RunningServer

RECV_TIMEOUT_SECONDS = 5.0


class Client:
    def __init__(self, connection: ClientConnection) -> None:
        self.connection = connection

    async def send(self, frame: dict[str, Any]) -> None:
        await self.connection.send(json.dumps(frame))

    async def recv(self, timeout: float = RECV_TIMEOUT_SECONDS) -> dict[str, Any]:
        text = await asyncio.wait_for(self.connection.recv(), timeout)
        frame: dict[str, Any] = json.loads(text)
        return frame

    async def expect(self, kind: str, timeout: float = RECV_TIMEOUT_SECONDS) -> dict[str, Any]:
        frame = await self.recv(timeout)
        assert frame["type"] == kind, f"expected {kind}, got {frame}"
        return frame

    async def expect_error(self, code: str) -> dict[str, Any]:
        frame = await self.expect("error")
        assert frame["payload"]["code"] == code, frame
        return frame

    async def expect_silence(self, seconds: float = 0.3) -> None:
        with contextlib.suppress(TimeoutError):
            frame = await self.recv(seconds)
            raise AssertionError(f"expected nothing, got {frame}")

    async def expect_close(self, code: int, timeout: float = RECV_TIMEOUT_SECONDS) -> None:
        """Read until the server closes, and check its close code."""
        with contextlib.suppress(websockets.ConnectionClosed):
            async with asyncio.timeout(timeout):
                while True:
                    await self.connection.recv()
        await asyncio.wait_for(self.connection.wait_closed(), timeout)
        assert self.connection.close_code == code, (
            f"close code {self.connection.close_code}, expected {code}"
        )


@contextlib.asynccontextmanager
async def connect(url: str, **kwargs: Any) -> AsyncIterator[Client]:
    kwargs.setdefault("proxy", None)  # loopback only, whatever proxy the environment names
    async with websockets.connect(url, open_timeout=5, close_timeout=2, **kwargs) as connection:
        yield Client(connection)


@contextlib.asynccontextmanager
async def joined(url: str, **kwargs: Any) -> AsyncIterator[tuple[Client, dict[str, Any]]]:
    """Connect and read the `room_state` that must come first."""
    async with connect(url, **kwargs) as client:
        state = await client.expect("room_state")
        yield client, state


@contextlib.asynccontextmanager
async def members(
    server: RunningServer, room: str, users: Sequence[str]
) -> AsyncIterator[dict[str, Client]]:
    """Join `users` one by one; each earlier member has read every later one's user_joined."""
    async with contextlib.AsyncExitStack() as stack:
        clients: dict[str, Client] = {}
        for user in users:
            client, _ = await stack.enter_async_context(joined(server.ws_url(room, token(user))))
            for earlier in clients.values():
                assert (await earlier.expect("user_joined"))["payload"]["user_id"] == user
            clients[user] = client
        yield clients
