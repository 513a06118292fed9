"""Frames as a real client's TCP stream delivers them: several in one segment, one split
over two, control frames and fragments between text frames. The server reads whole text
frames on a fast path and hands the rest to websockets at a frame boundary
(`rendezvous.wire`, `serving.RendezvousWebSocketProtocol.data_received`); whatever the
mix, every frame is answered, once, in the order sent.

The client is websockets' sans-I/O `ClientProtocol` over a raw socket, so the test
decides exactly which bytes go in which write and sees the server's control frames.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator
from typing import Any

from websockets.client import ClientProtocol
from websockets.frames import Close, Frame, Opcode
from websockets.http11 import Response
from websockets.uri import parse_uri

from tests.support.server import running_server
from tests.support.server import test_settings as settings_with
from tests.support.tokens import token

READ_TIMEOUT_SECONDS = 5.0


class RawClient:
    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer
        self.protocol = ClientProtocol(parse_uri("ws://127.0.0.1/"))  # the URI only names it
        self.frames: list[Frame] = []

    def write(self, data: bytes) -> None:
        self.writer.write(data)

    async def next_frame(self) -> Frame:
        async with asyncio.timeout(READ_TIMEOUT_SECONDS):
            while not self.frames:
                data = await self.reader.read(65536)
                if not data:
                    self.protocol.receive_eof()
                    raise EOFError("the server closed the connection")
                self.protocol.receive_data(data)
                for event in self.protocol.events_received():
                    if isinstance(event, Frame):
                        self.frames.append(event)
        return self.frames.pop(0)

    async def next_json(self) -> dict[str, Any]:
        frame = await self.next_frame()
        assert frame.opcode is Opcode.TEXT, frame
        message: dict[str, Any] = json.loads(bytes(frame.data))
        return message


@contextlib.asynccontextmanager
async def raw_joined(port: int, room: str, user: str) -> AsyncIterator[RawClient]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    client = RawClient(reader, writer)
    client.protocol = ClientProtocol(
        parse_uri(f"ws://127.0.0.1:{port}/webrtc/ws/{room}?token={token(user)}")
    )
    request = client.protocol.connect()
    client.protocol.send_request(request)
    writer.write(b"".join(client.protocol.data_to_send()))
    async with asyncio.timeout(READ_TIMEOUT_SECONDS):
        while True:
            client.protocol.receive_data(await reader.read(65536))
            events = client.protocol.events_received()
            if any(isinstance(event, Response) for event in events):
                client.frames.extend(e for e in events if isinstance(e, Frame))
                break
    assert (await client.next_json())["type"] == "room_state"
    try:
        yield client
    finally:
        writer.close()
        with contextlib.suppress(ConnectionError):
            await writer.wait_closed()


def masked(data: bytes, opcode: Opcode = Opcode.TEXT, *, fin: bool = True) -> bytes:
    return Frame(opcode, data, fin).serialize(mask=True, extensions=[])


def ping(n: int, padding: int = 0) -> bytes:
    return masked(json.dumps({"type": "ping", "payload": {"n": n, "pad": "x" * padding}}).encode())


async def expect_pong(client: RawClient, n: int) -> None:
    frame = await client.next_json()
    assert (frame["type"], frame["payload"]["n"]) == ("pong", n), frame


async def test_frames_of_every_kind_in_one_stream_are_answered_in_order() -> None:
    """Text replies keep their order; the control pong is written at once by the
    WebSocket layer, so it may overtake a text reply still queued (RFC 6455 allows it)."""
    fragmented = json.dumps({"type": "ping", "payload": {"n": 3}}).encode()
    split = ping(5, padding=300)
    async with running_server() as server, raw_joined(server.port, "r1", "a") as client:
        client.write(
            ping(1)
            + masked(b"are you there", Opcode.PING)
            + ping(2)
            + masked(fragmented[:10], fin=False)
            + masked(fragmented[10:], Opcode.CONT)
            + ping(4, padding=200)  # a 16-bit length
            + split[:7]  # inside the mask
        )
        await asyncio.sleep(0.05)
        client.write(split[7:] + ping(6))
        texts: list[tuple[str, int]] = []
        controls: list[tuple[Opcode, bytes]] = []
        while len(texts) < 6:
            frame = await client.next_frame()
            if frame.opcode is Opcode.TEXT:
                message = json.loads(bytes(frame.data))
                texts.append((message["type"], message["payload"]["n"]))
            else:
                controls.append((frame.opcode, bytes(frame.data)))
        assert texts == [("pong", n) for n in range(1, 7)]
        assert controls in ([(Opcode.PONG, b"are you there")], [])
        if not controls:
            control = await client.next_frame()
            assert (control.opcode, control.data) == (Opcode.PONG, b"are you there")


async def test_a_frame_after_a_fragment_waits_for_the_fragmented_message() -> None:
    first = json.dumps({"type": "ping", "payload": {"n": 1}}).encode()
    async with running_server() as server, raw_joined(server.port, "r1", "a") as client:
        client.write(masked(first[:5], fin=False))
        await asyncio.sleep(0.05)
        client.write(masked(first[5:], Opcode.CONT) + ping(2))
        await expect_pong(client, 1)
        await expect_pong(client, 2)


async def frames_until_close(client: RawClient) -> tuple[list[dict[str, Any]], int]:
    texts = []
    while (frame := await client.next_frame()).opcode is not Opcode.CLOSE:
        texts.append(json.loads(bytes(frame.data)))
    return texts, Close.parse(frame.data).code


async def test_invalid_utf8_after_a_good_frame_closes_1007_and_nothing_after_is_read() -> None:
    """A protocol error closes at once: the reply to the good frame before it, queued for
    the end of the loop turn, may or may not make it; nothing after it is handled."""
    async with running_server() as server, raw_joined(server.port, "r1", "a") as client:
        client.write(ping(1) + masked(b'{"type": "ping", "payload": "\xff"}') + ping(2))
        texts, code = await frames_until_close(client)
        assert code == 1007
        assert [frame["payload"]["n"] for frame in texts] in ([], [1])


async def test_an_oversize_frame_after_good_frames_closes_1009() -> None:
    settings = settings_with(max_message_bytes=1024)
    async with running_server(settings) as server, raw_joined(server.port, "r1", "a") as client:
        client.write(ping(1) + ping(2, padding=2000) + ping(3))
        texts, code = await frames_until_close(client)
        assert code == 1009
        pongs = [frame["payload"]["n"] for frame in texts if frame["type"] == "pong"]
        assert pongs in ([], [1])
        assert all(frame["payload"]["code"] == "message_too_large" for frame in texts[len(pongs) :])


async def test_an_unmasked_client_frame_is_a_protocol_error() -> None:
    async with running_server() as server, raw_joined(server.port, "r1", "a") as client:
        client.write(ping(1) + Frame(Opcode.TEXT, b"{}").serialize(mask=False, extensions=[]))
        texts, code = await frames_until_close(client)
        assert code == 1002
        assert [frame["payload"]["n"] for frame in texts] in ([], [1])
