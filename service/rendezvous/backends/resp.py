"""A minimal RESP2 connection for the two long-lived Redis streams of an instance: the
pub/sub listener and the ordered publisher.

Both sit on the per-message path, and both need exact control over reconnection (no
hidden retries, no automatic re-subscription, a protocol pinned to RESP2), which is
where general-purpose clients have bitten pub/sub users. Presence commands use redis-py.
"""

from __future__ import annotations

import asyncio
import ssl
from typing import TypeAlias

RespValue: TypeAlias = "bytes | int | list[RespValue] | None"

CONNECT_TIMEOUT_SECONDS = 3.0


class RespError(Exception):
    """An error reply (`-ERR ...`) from Redis."""


class RespConnection:
    """One TCP (or TLS) connection speaking RESP2. Not safe for concurrent readers."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._reader = reader
        self._writer = writer

    @classmethod
    async def open(
        cls,
        host: str,
        port: int,
        *,
        username: str | None = None,
        password: str | None = None,
        tls: bool = False,
        client_name: str | None = None,
    ) -> RespConnection:
        """Connect, authenticate and name the connection (`CLIENT SETNAME`, so operators
        see it in `CLIENT LIST`); raise OSError, TimeoutError or RespError."""
        context = ssl.create_default_context() if tls else None
        # asyncio.timeout, not wait_for: on 3.11 wait_for can swallow a cancel that
        # arrives as the connect fails, and a stopping backend would reconnect forever.
        async with asyncio.timeout(CONNECT_TIMEOUT_SECONDS):
            reader, writer = await asyncio.open_connection(host, port, ssl=context, limit=2**20)
        connection = cls(reader, writer)
        try:
            commands: list[tuple[bytes, ...]] = []
            if password is not None:
                credentials = (username.encode(),) if username else ()
                commands.append((b"AUTH", *credentials, password.encode()))
            if client_name is not None:
                commands.append((b"CLIENT", b"SETNAME", client_name.encode()))
            for command in commands:
                connection.send(*command)
            async with asyncio.timeout(CONNECT_TIMEOUT_SECONDS):
                await connection.drain()
                for _ in commands:
                    await connection.read()
        except BaseException:
            connection.abort()
            raise
        return connection

    def send(self, *parts: bytes) -> None:
        """Queue one command; it leaves with the next `drain` (or when the buffer fills)."""
        chunks = [b"*%d\r\n" % len(parts)]
        for part in parts:
            chunks.append(b"$%d\r\n" % len(part))
            chunks.append(part)
            chunks.append(b"\r\n")
        self._writer.write(b"".join(chunks))

    async def drain(self) -> None:
        await self._writer.drain()

    async def read(self) -> RespValue:
        line = await self._reader.readline()
        if not line.endswith(b"\r\n"):
            raise ConnectionResetError("redis closed the connection")
        kind, rest = line[:1], line[1:-2]
        if kind == b"$":
            size = int(rest)
            if size < 0:
                return None
            data = await self._reader.readexactly(size + 2)
            return data[:-2]
        if kind == b"*":
            count = int(rest)
            if count < 0:
                return None
            return [await self.read() for _ in range(count)]
        if kind == b":":
            return int(rest)
        if kind == b"+":
            return rest
        if kind == b"-":
            raise RespError(rest.decode(errors="replace"))
        raise ConnectionResetError(f"unexpected RESP type {kind!r}")

    def abort(self) -> None:
        transport = self._writer.transport
        if transport is not None:
            transport.abort()

    async def close(self) -> None:
        self._writer.close()
        try:
            async with asyncio.timeout(CONNECT_TIMEOUT_SECONDS):
                await self._writer.wait_closed()
        except (OSError, TimeoutError):
            self.abort()
