"""Graceful drain of one scaled-out instance, with real `rendezvous serve` processes on a
real redis-server behind a real nginx: on SIGTERM the instance fails readiness and
refuses new handshakes with HTTP 503 (nginx sends them to another instance), tells each
of its clients `server_draining` (close 1012) spread over the drain window, its
participants leave at once with reason `left` (never a later `timeout`), it exits by the
drain deadline even when a client never reads, and its clients reconnect elsewhere and
carry on."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import os
import signal
import socket
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import websockets

from tests.scaleout_failures.conftest import SDP, participant_ids, readiness, send_offer, users
from tests.support.client import Client, connect, joined
from tests.support.instances import instance_env, running_instances
from tests.support.nginx import Nginx, joined_from, source_for_upstream
from tests.support.redis import RedisServer
from tests.support.tokens import token

DRAIN_WINDOW_SECONDS = 1.0
DRAIN_DEADLINE_SECONDS = 4.0
PRESENCE_TTL_SECONDS = 4.0
PING_INTERVAL_SECONDS = 1.5  # clients prove alive well within the short TTL
ROOM = "standup"
FRAME_TIMEOUT_SECONDS = 5.0
# Enough 50 kB offers to fill a stalled client's socket buffers (the kernel's send buffer
# grows to tcp_wmem's maximum, 4 MiB) and leave more queued; the send queue bound is
# raised for that test so that the client is not dropped as a slow consumer first.
STALLING_OFFERS = 120
STALLING_QUEUE_LIMITS = {
    "WEBRTC_SEND_QUEUE_MAX_BYTES": str(64 * 2**20),
    "WEBRTC_SEND_QUEUE_MAX_MESSAGES": str(4 * STALLING_OFFERS),
}


def _env(tmp_path: Path, redis: RedisServer, **variables: str) -> dict[str, str]:
    # Holding off (grace 0): these tests prove the drain itself, whose participants then
    # leave at once; a drain whose clients resume elsewhere (the default) is proven in
    # tests/scaleout/test_resume_scaleout.py.
    variables.setdefault("WEBRTC_RESUME_GRACE", "0")
    return instance_env(
        tmp_path,
        redis_url=redis.url,
        WEBRTC_DRAIN_WINDOW=str(DRAIN_WINDOW_SECONDS),
        WEBRTC_DRAIN_DEADLINE=str(DRAIN_DEADLINE_SECONDS),
        **variables,
    )


class Recorder:
    """Reads every frame a client gets, in the background, with its arrival time; tests
    wait for the frames they need and look back at all of them afterwards."""

    def __init__(self, client: Client, name: str) -> None:
        self.client = client
        self.name = name
        self.frames: list[tuple[float, dict[str, Any]]] = []
        self.closed_at: float | None = None
        self._changed = asyncio.Event()
        self._task = asyncio.create_task(self._read(), name=f"recorder:{name}")

    async def _read(self) -> None:
        try:
            async for text in self.client.connection:
                self.frames.append((time.monotonic(), json.loads(text)))
                self._changed.set()
        except websockets.ConnectionClosed:
            pass
        finally:
            self.closed_at = time.monotonic()
            self._changed.set()

    @property
    def close_code(self) -> int | None:
        return self.client.connection.close_code

    async def wait_for(
        self, what: str, match: Callable[[dict[str, Any]], bool], *, timeout: float
    ) -> tuple[float, dict[str, Any]]:
        """The first frame (any time so far, or still to come) that `match`es."""
        async with asyncio.timeout(timeout):
            while True:
                for arrival in self.frames:
                    if match(arrival[1]):
                        return arrival
                if self.closed_at is not None:
                    raise AssertionError(f"{self.name} closed before {what}: {self.frames}")
                self._changed.clear()
                await self._changed.wait()

    async def closed(self, timeout: float) -> float:
        await asyncio.wait_for(asyncio.shield(self._task), timeout)
        assert self.closed_at is not None
        return self.closed_at

    def left(self, user_id: str) -> list[tuple[float, str]]:
        """Every `user_left` for `user_id` so far: (arrival, reason)."""
        return [
            (at, frame["payload"]["reason"])
            for at, frame in self.frames
            if frame["type"] == "user_left" and frame["payload"]["user_id"] == user_id
        ]

    def errors(self) -> list[str]:
        return [frame["payload"]["code"] for _, frame in self.frames if frame["type"] == "error"]

    async def stop(self) -> None:
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task


async def _join(
    stack: contextlib.AsyncExitStack, name: str, session: Any
) -> tuple[Recorder, dict[str, Any]]:
    """Enter `session` (a `joined` context) on `stack` and record what its client gets."""
    client, state = await stack.enter_async_context(session)
    recorder = Recorder(client, name)
    stack.push_async_callback(recorder.stop)
    return recorder, state


def _is_join_of(user_id: str) -> Callable[[dict[str, Any]], bool]:
    return lambda f: f["type"] == "user_joined" and f["payload"]["user_id"] == user_id


def _is_leave_of(user_id: str) -> Callable[[dict[str, Any]], bool]:
    return lambda f: f["type"] == "user_left" and f["payload"]["user_id"] == user_id


def _is_offer(sender_id: str, sdp: str) -> Callable[[dict[str, Any]], bool]:
    def match(frame: dict[str, Any]) -> bool:
        if frame["type"] != "offer":
            return False
        return bool(frame["sender_id"] == sender_id and frame["payload"]["sdp"] == sdp)

    return match


async def _offer_arrives(sender: Recorder, receiver: Recorder) -> None:
    """A targeted offer crosses from sender to receiver (each a user named by its recorder)."""
    sdp = f"{SDP}s={sender.name}-to-{receiver.name}\r\n"
    await send_offer(sender.client, target=receiver.name, sdp=sdp)
    await receiver.wait_for(
        f"the offer from {sender.name}", _is_offer(sender.name, sdp), timeout=FRAME_TIMEOUT_SECONDS
    )


async def test_drained_clients_leave_at_once_and_carry_on_through_other_instances(
    tmp_path: Path, redis_server: RedisServer
) -> None:
    env = _env(
        tmp_path,
        redis_server,
        WEBRTC_ROOM_PRESENCE_TTL=str(PRESENCE_TTL_SECONDS),
        WEBRTC_WS_PING_INTERVAL=str(PING_INTERVAL_SECONDS),
    )
    async with (
        running_instances(3, env=env, log_dir=tmp_path) as instances,
        Nginx(tmp_path / "nginx", [i.port for i in instances]) as nginx,
        contextlib.AsyncExitStack() as stack,
    ):
        draining, one, two = instances  # nginx's upstreams 0, 1, 2
        sources = [source_for_upstream(0, 3, skip=n) for n in range(3)]  # ip_hash: draining
        url = nginx.ws_url
        # Two members elsewhere, watching; three on the instance to drain, two of them
        # through nginx (their source addresses hash to it) and one directly.
        xia, _ = await _join(stack, "xia", joined(one.ws_url(ROOM, token("xia"))))
        yan, _ = await _join(stack, "yan", joined(two.ws_url(ROOM, token("yan"))))
        dee, _ = await _join(stack, "dee", joined_from(sources[0], url(ROOM, token("dee"))))
        dov, _ = await _join(stack, "dov", joined_from(sources[1], url(ROOM, token("dov"))))
        dru, state = await _join(stack, "dru", joined(draining.ws_url(ROOM, token("dru"))))
        assert users(state) == {"xia", "yan", "dee", "dov", "dru"}
        drained = (dee, dov, dru)
        for watcher in (xia, yan):
            for member in drained:
                await watcher.wait_for(
                    f"{member.name} joined", _is_join_of(member.name), timeout=FRAME_TIMEOUT_SECONDS
                )

        signalled = time.monotonic()
        draining.terminate()
        # At once: not ready, and a direct handshake is refused with HTTP 503 ...
        assert await readiness(draining) == 503
        with pytest.raises(websockets.InvalidStatus) as refused:
            async with connect(draining.ws_url(ROOM, token("zed"))):
                pass
        assert refused.value.response.status_code == 503
        # ... while through nginx, a handshake ip_hash sends there lands elsewhere.
        zed, state = await _join(stack, "zed", joined_from(sources[2], url(ROOM, token("zed"))))
        assert {"xia", "yan"} <= users(state)
        # Who sees whom leave: zed joined mid-drain, so only those still in its snapshot.
        watched = {
            xia: drained,
            yan: drained,
            zed: tuple(member for member in drained if member.name in users(state)),
        }
        assert await readiness(one) == 200 and await readiness(two) == 200

        # Each drained client is told, then closed with 1012, spread over the window.
        close_times = [await member.closed(2 * DRAIN_DEADLINE_SECONDS) for member in drained]
        for member in drained:
            assert member.close_code == 1012, (member.name, member.close_code)
            assert member.errors() == ["server_draining"], member.frames
        assert max(close_times) - min(close_times) >= DRAIN_WINDOW_SECONDS / 3
        assert max(close_times) - signalled <= 2 * DRAIN_WINDOW_SECONDS
        # Their participants leave at once, with reason `left`, seen on every instance.
        for watcher, members in watched.items():
            for member in members:
                at, _ = await watcher.wait_for(
                    f"{member.name} left", _is_leave_of(member.name), timeout=FRAME_TIMEOUT_SECONDS
                )
                assert watcher.left(member.name) == [(at, "left")], watcher.name
                assert at - signalled <= 2 * DRAIN_WINDOW_SECONDS < PRESENCE_TTL_SECONDS
        returncode = await draining.wait(2 * DRAIN_DEADLINE_SECONDS)
        exited = time.monotonic()
        assert returncode in (0, -signal.SIGTERM)
        assert exited - signalled <= 2 * DRAIN_DEADLINE_SECONDS

        # They reconnect, two through nginx as before, one directly to another instance,
        # and carry on with the members elsewhere.
        dee2, state = await _join(stack, "dee", joined_from(sources[0], url(ROOM, token("dee"))))
        assert {"xia", "yan", "zed"} <= users(state)
        dov2, _ = await _join(stack, "dov", joined_from(sources[1], url(ROOM, token("dov"))))
        dru2, state = await _join(stack, "dru", joined(two.ws_url(ROOM, token("dru"))))
        assert users(state) == {"xia", "yan", "zed", "dee", "dov", "dru"}
        for rejoined in (dee2, dov2, dru2):
            for other in (xia, yan):
                await _offer_arrives(rejoined, other)
                await _offer_arrives(other, rejoined)

        # No participant of the drained instance ever times out: watch past the moment a
        # presence left behind would have been reaped (TTL after the last refresh, found
        # by a reaper ticking every TTL/3).
        watch_until = exited + PRESENCE_TTL_SECONDS * 4 / 3 + 1.0
        await asyncio.sleep(max(0.0, watch_until - time.monotonic()))
        for watcher, members in watched.items():
            for member in drained:
                reasons = [reason for _, reason in watcher.left(member.name)]
                if member in members:
                    assert reasons == ["left"], (watcher.name, member.name, reasons)
                else:  # gone before zed's snapshot: at most told late that it left
                    assert reasons in ([], ["left"]), (watcher.name, member.name, reasons)
        assert await participant_ids(one, ROOM) == {"xia", "yan", "zed", "dee", "dov", "dru"}

        # nginx tried the draining instance first, got its 503, and went on.
        await zed.stop()
        await zed.client.connection.close()
        draining_upstream = f"127.0.0.1:{draining.port}"

        def zed_line() -> list[str]:
            return [line for line in nginx.access_log() if line.startswith(f"{sources[2]} ")]

        async with asyncio.timeout(FRAME_TIMEOUT_SECONDS):
            while not zed_line():
                await asyncio.sleep(0.05)
        (line,) = zed_line()
        assert f"upstream={draining_upstream}, " in line, line
        assert "upstream_status=503, 101" in line, line
    print(
        f"\ndrain: closes {min(close_times) - signalled:.2f}..{max(close_times) - signalled:.2f} s"
        f" after SIGTERM, exit after {exited - signalled:.2f} s"
    )


def _stalled_websocket(port: int, room: str, user: str) -> socket.socket:
    """A client that completes the handshake, then never reads or answers again."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    # A small receive window from the start, so that little of what is sent gets through.
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.connect(("127.0.0.1", port))
    key = base64.b64encode(os.urandom(16)).decode()
    request = (
        f"GET /webrtc/ws/{room}?token={token(user)} HTTP/1.1\r\nHost: 127.0.0.1\r\n"
        "Upgrade: websocket\r\nConnection: Upgrade\r\n"
        f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n"
    )
    sock.sendall(request.encode())
    assert sock.recv(4096).startswith(b"HTTP/1.1 101")
    return sock


async def test_drain_exits_by_the_deadline_with_a_client_that_never_reads(
    tmp_path: Path, redis_server: RedisServer
) -> None:
    # Default presence TTL and ping interval: the stalled client is not timed out first.
    env = _env(tmp_path, redis_server, **STALLING_QUEUE_LIMITS)
    async with (
        running_instances(2, env=env, log_dir=tmp_path) as instances,
        contextlib.AsyncExitStack() as stack,
    ):
        draining, other = instances
        xia, _ = await _join(stack, "xia", joined(other.ws_url(ROOM, token("xia"))))
        dee, _ = await _join(stack, "dee", joined(draining.ws_url(ROOM, token("dee"))))
        stuck = await asyncio.to_thread(_stalled_websocket, draining.port, ROOM, "stuck")
        stack.callback(stuck.close)
        for user in ("dee", "stuck"):
            await xia.wait_for(f"{user} joined", _is_join_of(user), timeout=FRAME_TIMEOUT_SECONDS)
        # Fill the stalled client's path, so that no polite close can reach it.
        for n in range(STALLING_OFFERS):
            await send_offer(dee.client, target=None, sdp=f"{SDP}s={n}\r\n" + "a" * 50_000)
        last = f"{SDP}s={STALLING_OFFERS - 1}\r\n"
        await xia.wait_for(
            "the last offer",
            lambda f: f["type"] == "offer" and f["payload"]["sdp"].startswith(last),
            timeout=FRAME_TIMEOUT_SECONDS,
        )

        signalled = time.monotonic()
        draining.terminate()
        returncode = await draining.wait(2 * DRAIN_DEADLINE_SECONDS)
        exited = time.monotonic()
        assert returncode in (0, -signal.SIGTERM)
        assert exited - signalled <= 2 * DRAIN_DEADLINE_SECONDS
        assert dee.close_code == 1012 and dee.errors() == ["server_draining"]
        # Both its participants are gone from presence now, not a TTL later.
        for user in ("dee", "stuck"):
            at, _ = await xia.wait_for(
                f"{user} left",
                _is_leave_of(user),
                timeout=FRAME_TIMEOUT_SECONDS,
            )
            assert xia.left(user) == [(at, "left")]
        assert await participant_ids(other, ROOM) == {"xia"}
        # The stalled client really held the drain until the deadline cut it short.
        assert "drain deadline reached" in draining.output()
        assert await readiness(other) == 200
    print(f"\ndrain with a stalled client: exit after {exited - signalled:.2f} s")
