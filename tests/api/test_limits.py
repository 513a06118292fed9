"""Per-connection limits (issue 2, acceptance 6) over real sockets: atomic room capacity,
a broadcast's token cost, the handshake deadline, the server's WebSocket ping and the
bounded send queue that disconnects a peer which stopped reading.

Peers that misbehave at the TCP level (a half-sent request, a socket that never reads)
are raw loopback sockets driven by hand; everyone else is a real `websockets` client.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import os
import socket
from collections.abc import AsyncIterator
from typing import Any

import httpx
import websockets
from websockets.asyncio.client import ClientConnection

from tests.support.client import Client, joined, members
from tests.support.server import RunningServer, running_server
from tests.support.server import test_settings as settings_with
from tests.support.tokens import token

SDP = "v=0\r\no=- 1 2 IN IP4 127.0.0.1\r\ns=-\r\nt=0 0\r\n"


def offer(sdp: str = SDP, *, target: str | None = None) -> dict[str, Any]:
    payload: dict[str, Any] = {"type": "offer", "sdp": sdp}
    if target is not None:
        payload["target_user_id"] = target
    return {"type": "offer", "payload": payload}


async def participants(server: RunningServer, room: str) -> list[str]:
    async with httpx.AsyncClient(base_url=server.http) as http:
        response = await http.get(
            f"/webrtc/rooms/{room}/participants",
            headers={"Authorization": f"Bearer {token('observer')}"},
        )
    response.raise_for_status()
    return sorted(p["user_id"] for p in response.json()["participants"])


# Raw sockets: the handshake by hand, then whatever misbehaviour the test needs.


async def raw_connect(port: int, *, receive_buffer_bytes: int | None = None) -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    if receive_buffer_bytes is not None:  # before connect, so the window starts small
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, receive_buffer_bytes)
    sock.setblocking(False)
    await asyncio.get_running_loop().sock_connect(sock, ("127.0.0.1", port))
    return sock


@contextlib.asynccontextmanager
async def stalled_member(
    server: RunningServer, room: str, user: str, *, receive_buffer_bytes: int = 4096
) -> AsyncIterator[socket.socket]:
    """A member that completes the WebSocket handshake and then never reads again: no
    frame, no pong, a tiny receive window."""
    loop = asyncio.get_running_loop()
    sock = await raw_connect(server.port, receive_buffer_bytes=receive_buffer_bytes)
    try:
        key = base64.b64encode(os.urandom(16)).decode()
        request = (
            f"GET /webrtc/ws/{room}?token={token(user)} HTTP/1.1\r\n"
            f"Host: 127.0.0.1:{server.port}\r\n"
            "Upgrade: websocket\r\nConnection: Upgrade\r\n"
            f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n"
        )
        await loop.sock_sendall(sock, request.encode())
        response = b""
        async with asyncio.timeout(5):
            while b"\r\n\r\n" not in response:
                chunk = await loop.sock_recv(sock, 1)  # stop right after the headers
                assert chunk, f"closed during the handshake: {response!r}"
                response += chunk
        assert response.startswith(b"HTTP/1.1 101 "), response
        yield sock
    finally:
        sock.close()


async def wait_until_closed(sock: socket.socket, timeout: float) -> None:
    """Read (and discard) until the server ends the connection: EOF or a reset."""
    loop = asyncio.get_running_loop()
    async with asyncio.timeout(timeout):
        while True:
            try:
                if not await loop.sock_recv(sock, 65536):
                    return
            except ConnectionResetError:
                return


# Room capacity is atomic.


async def test_thirty_concurrent_joins_for_ten_seats_admit_exactly_ten() -> None:
    seats, contenders = 10, 30
    settings = settings_with(max_participants_per_room=seats, max_connections=100)
    async with running_server(settings) as server:
        opened: list[ClientConnection] = []

        async def attempt(user: str) -> tuple[str, Client]:
            connection = await websockets.connect(
                server.ws_url("arena", token(user)), open_timeout=10, close_timeout=2
            )
            opened.append(connection)
            client = Client(connection)
            return user, client

        try:
            users = [f"user-{n}" for n in range(contenders)]
            attempts = await asyncio.gather(*(attempt(user) for user in users))
            firsts = await asyncio.gather(*(client.recv(10) for _, client in attempts))
            admitted = {
                user: client
                for (user, client), first in zip(attempts, firsts, strict=True)
                if first["type"] == "room_state"
            }
            refused = [
                client
                for (_, client), first in zip(attempts, firsts, strict=True)
                if first["type"] == "error"
            ]
            assert len(admitted) == seats, firsts
            assert len(refused) == contenders - seats, firsts
            assert all(f["payload"]["code"] == "room_full" for f in firsts if f["type"] == "error")
            for client in refused:
                await client.expect_close(1008)
            assert await participants(server, "arena") == sorted(admitted)
            # Every snapshot and event an admitted member saw names admitted members only.
            for first in firsts:
                if first["type"] == "room_state":
                    seen = {p["user_id"] for p in first["payload"]["participants"]}
                    assert seen <= admitted.keys()
            largest = max(
                f["payload"]["participant_count"] for f in firsts if f["type"] == "room_state"
            )
            assert largest == seats

            async def events_seen_by(client: Client) -> None:
                with contextlib.suppress(TimeoutError):
                    while True:
                        event = await client.recv(0.3)
                        assert event["type"] == "user_joined", event
                        assert event["payload"]["user_id"] in admitted

            await asyncio.gather(*(events_seen_by(client) for client in admitted.values()))
        finally:
            await asyncio.gather(*(connection.close() for connection in opened))


# A broadcast costs one token per recipient.


async def test_broadcast_costs_one_token_per_recipient() -> None:
    # A bucket of 8 that practically never refills.
    settings = settings_with(rate_limit_burst=8, rate_limit_per_second=0.001)
    async with running_server(settings) as server:
        async with members(server, "r1", ["a", "b", "c", "d", "e"]) as room:
            a, e = room["a"], room["e"]
            for n in range(3):
                await a.send(offer(f"broadcast-{n}"))
            await a.expect_error("rate_limited")  # 4 + 4 tokens spent; the third needs 4 more
            for user in ("b", "c", "d", "e"):
                for n in range(2):
                    got = await room[user].expect("offer")
                    assert got["payload"]["sdp"] == f"broadcast-{n}"
                await room[user].expect_silence(0.1)
            # A bucket of the same size pays for eight targeted messages, and not a ninth.
            for n in range(9):
                await e.send(offer(f"targeted-{n}", target="b"))
            for n in range(8):
                assert (await room["b"].expect("offer"))["payload"]["sdp"] == f"targeted-{n}"
            await e.expect_error("rate_limited")
            await room["b"].expect_silence(0.1)


# The handshake deadline.


async def test_partial_handshake_is_dropped_by_the_deadline_and_others_still_connect() -> None:
    deadline = 1.0
    settings = settings_with(handshake_timeout_seconds=deadline)
    async with running_server(settings) as server:
        loop = asyncio.get_running_loop()
        silent = await raw_connect(server.port)
        partial = await raw_connect(server.port)
        trickling = await raw_connect(server.port)
        started = loop.time()

        async def trickle() -> None:
            # A header line every quarter second: busy, but never a complete request.
            with contextlib.suppress(OSError):
                await loop.sock_sendall(trickling, b"GET /webrtc/ws/r1 HTTP/1.1\r\n")
                for n in range(100):
                    await loop.sock_sendall(trickling, f"X-Slow-{n}: 1\r\n".encode())
                    await asyncio.sleep(0.25)

        trickler = asyncio.create_task(trickle())
        try:
            await loop.sock_sendall(partial, b"GET /webrtc/ws/r1 HTTP/1.1\r\nHost: x\r\n")
            # Meanwhile a real client connects, and stays connected past the deadline.
            async with joined(server.ws_url("r1", token("a"))) as (a, state):
                assert state["payload"]["participant_count"] == 1
                for sock in (silent, partial, trickling):
                    await wait_until_closed(sock, timeout=2 * deadline)
                    assert loop.time() - started <= 2 * deadline
                assert loop.time() - started >= 0.8 * deadline  # the deadline, not a refusal
                await asyncio.sleep(deadline)
                await a.send({"type": "ping", "payload": {}})
                await a.expect("pong")
        finally:
            trickler.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await trickler
            for sock in (silent, partial, trickling):
                sock.close()


# The server's WebSocket ping.

PING_SECONDS = 0.5
TTL_SECONDS = 3.0


async def test_client_that_only_answers_server_pings_stays_present() -> None:
    settings = settings_with(
        ws_ping_interval_seconds=PING_SECONDS, presence_ttl_seconds=TTL_SECONDS
    )
    async with (
        running_server(settings) as server,
        joined(server.ws_url("r1", token("watcher"))) as (watcher, _),
        # No pings of its own and no frames: only the automatic pong to the server's ping.
        joined(server.ws_url("r1", token("quiet")), ping_interval=None) as (quiet, _),
    ):
        await watcher.expect("user_joined")
        await watcher.expect_silence(2 * TTL_SECONDS + 1)  # no user_left for quiet
        assert await participants(server, "r1") == ["quiet", "watcher"]
        assert quiet.connection.state is websockets.State.OPEN
        await quiet.send({"type": "ping", "payload": {}})
        await quiet.expect("pong")


async def test_client_that_never_answers_pings_is_dropped() -> None:
    settings = settings_with(
        ws_ping_interval_seconds=PING_SECONDS, presence_ttl_seconds=TTL_SECONDS
    )
    bound = 2 * (PING_SECONDS + PING_SECONDS + TTL_SECONDS)  # interval + timeout + TTL
    async with (
        running_server(settings) as server,
        joined(server.ws_url("r1", token("watcher"))) as (watcher, _),
        stalled_member(server, "r1", "mute"),
    ):
        assert (await watcher.expect("user_joined"))["payload"]["user_id"] == "mute"
        left = await watcher.expect("user_left", timeout=bound)
        assert left["payload"] == {"user_id": "mute", "username": "mute", "reason": "timeout"}
        assert await participants(server, "r1") == ["watcher"]
        await watcher.send({"type": "ping", "payload": {}})
        await watcher.expect("pong")


# The bounded send queue: slow_consumer.


async def test_peer_that_stops_reading_is_disconnected_while_the_room_keeps_receiving() -> None:
    settings = settings_with(
        send_queue_max_messages=32,
        max_message_bytes=65536,
        rate_limit_per_second=100000,
        rate_limit_burst=100000,
    )
    sdp_bytes = 48 * 1024
    # Filling the stalled peer's socket buffers (a few MiB) and its 32-message queue takes
    # about a hundred of these; the socket is then aborted within seconds.
    bound_seconds = 20.0
    async with (
        running_server(settings) as server,
        joined(server.ws_url("r1", token("flooder"))) as (flooder, _),
        joined(server.ws_url("r1", token("healthy"))) as (healthy, _),
        stalled_member(server, "r1", "stalled") as stalled,
    ):
        await flooder.expect("user_joined")
        await flooder.expect("user_joined")
        await healthy.expect("user_joined")
        loop = asyncio.get_running_loop()
        deadline = loop.time() + bound_seconds
        stalled_left_after: int | None = None
        sent = 0
        while stalled_left_after is None or sent < stalled_left_after + 20:
            assert loop.time() < deadline, f"stalled peer still connected after {sent} messages"
            await flooder.send(offer(f"{sent:06d}" + "s" * sdp_bytes))
            # The healthy member receives every broadcast, in order, throughout.
            frame = await healthy.recv()
            if frame["type"] == "user_left":
                assert frame["payload"]["user_id"] == "stalled"
                stalled_left_after = sent
                frame = await healthy.recv()
            assert frame["type"] == "offer", frame
            assert frame["payload"]["sdp"][:6] == f"{sent:06d}"
            sent += 1
            await asyncio.sleep(0.005)  # a steady stream, not a CPU-bound spin
        left = await flooder.expect("user_left")
        assert left["payload"]["user_id"] == "stalled"
        # It was the send queue that ended it (no ping or presence deadline is near).
        registry = server.services.metrics.registry
        closed = registry.get_sample_value("rendezvous_errors_total", {"code": "slow_consumer"})
        assert closed == 1
        local = sorted(peer.member.user_id for _, peer in server.services.hub.local_members())
        assert local == ["flooder", "healthy"]
        await wait_until_closed(stalled, timeout=10)
        assert await participants(server, "r1") == ["flooder", "healthy"]
