"""One joined WebSocket: prints every frame it reads, sends what the prompt or the flags
ask for, and keeps what a clean finish waits for (pongs) and what a refusal reports."""

from __future__ import annotations

import asyncio
import itertools
import json
from dataclasses import dataclass
from typing import Any

from websockets.asyncio.client import ClientConnection
from websockets.exceptions import ConnectionClosed

from rendezvous.client.commands import Command, Offer, Ping, Raw, offer_frame, ping_frame
from rendezvous.client.rendering import Printer

SETTLE_SECONDS = 0.5  # an error reply to an offer (target_not_found) comes back within it


@dataclass(frozen=True)
class ErrorReport:
    code: str
    message: str


class Conversation:
    def __init__(self, connection: ClientConnection, *, room: str, printer: Printer) -> None:
        self._connection = connection
        self._room = room
        self._printer = printer
        self.joined = asyncio.Event()
        self._answered = asyncio.Event()
        self._answered.set()
        self._pending_pongs: set[int] = set()
        self._seq = itertools.count(1)
        self._sent_other = False  # sent something that has no reply but may draw an error
        self.errors: list[ErrorReport] = []
        self.closing_error: ErrorReport | None = None  # the error frame right before a close
        self.we_closed = False

    @property
    def pending_pongs(self) -> int:
        return len(self._pending_pongs)

    @property
    def close_code(self) -> int | None:
        return self._connection.close_code

    @property
    def close_reason(self) -> str:
        return self._connection.close_reason or ""

    async def read(self) -> None:
        """Print frames until the connection closes, from either side."""
        try:
            async for message in self._connection:
                self._receive(message)
        except ConnectionClosed:
            return  # an abnormal close ends the reading too; close_code tells which

    def _receive(self, message: str | bytes) -> None:
        self._printer.received(message)
        self.closing_error = None
        frame = _as_frame(message)
        kind, payload = frame.get("type"), frame.get("payload")
        payload = payload if isinstance(payload, dict) else {}
        if kind == "room_state":
            self.joined.set()
        elif kind == "pong":
            self._pong(payload.get("seq"))
        elif kind == "error":
            error = ErrorReport(str(payload.get("code")), str(payload.get("message")))
            self.errors.append(error)
            self.closing_error = error

    def _pong(self, seq: Any) -> None:
        if isinstance(seq, int):
            self._pending_pongs.discard(seq)
        if not self._pending_pongs:
            self._answered.set()

    async def execute(self, command: Command) -> None:
        if isinstance(command, Ping):
            await self.ping(command.text)
        elif isinstance(command, Offer):
            await self.offer(command.target)
        elif isinstance(command, Raw):
            await self.raw(command.text)

    async def ping(self, text: str | None = None) -> None:
        seq = next(self._seq)
        self._pending_pongs.add(seq)
        self._answered.clear()
        await self._send(ping_frame(self._room, seq=seq, text=text))

    async def offer(self, target: str | None) -> None:
        self._sent_other = True
        await self._send(offer_frame(self._room, target=target))

    async def raw(self, text: str) -> None:
        self._sent_other = True
        self._printer.sent(text)
        await self._connection.send(text)

    async def _send(self, frame: dict[str, Any]) -> None:
        self._printer.sent(frame)
        await self._connection.send(json.dumps(frame))

    async def settle(self) -> None:
        """Wait for every pong (the caller bounds it), and briefly for an error reply to
        anything else sent."""
        await self._answered.wait()
        if self._sent_other:
            await asyncio.sleep(SETTLE_SECONDS)

    async def close(self) -> None:
        self.we_closed = True
        await self._connection.close()


def _as_frame(message: str | bytes) -> dict[str, Any]:
    if isinstance(message, bytes):
        return {}
    try:
        frame = json.loads(message)
    except json.JSONDecodeError:
        return {}
    return frame if isinstance(frame, dict) else {}
