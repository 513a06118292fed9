"""An aiortc participant for the browser tests: it joins a room over the service's
WebSocket, answers every offer (a renegotiation too), offers on request, trickles its
candidates (tests/e2e/test_aiortc.py's `send_description`: the bare SDP, then each
candidate, then end-of-candidates), sends aiortc's synthetic camera and microphone, and
keeps what the other side sent: data-channel text and decoded video frames.

    async with aiortc_peer(url, user_id="py", configuration=rtc) as peer:
        await peer.offer(to="alice")
        text = await peer.next_message(timeout=10)

Its frame loop and track readers are tasks it owns: cancelled on the way out, and a loop
that died is re-raised there (and by every wait) rather than lost."""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import AsyncIterator, Callable, Coroutine
from typing import Any

from aiortc import (
    MediaStreamTrack,
    RTCConfiguration,
    RTCDataChannel,
    RTCPeerConnection,
    RTCSessionDescription,
)
from aiortc.mediastreams import AudioStreamTrack, MediaStreamError, VideoStreamTrack
from aiortc.sdp import candidate_from_sdp

from tests.e2e.test_aiortc import send_description
from tests.support.client import Client, connect

CHAT_LABEL = "chat"
MAX_MESSAGES = 100  # a test exchanges a handful
CLOSE_TIMEOUT_SECONDS = 10.0
POLL_SECONDS = 0.05


class AiortcPeer:
    """One aiortc RTCPeerConnection to one remote participant, signaled over `client`."""

    def __init__(self, user_id: str, client: Client, configuration: RTCConfiguration) -> None:
        self.user_id = user_id
        self.client = client
        self.pc = RTCPeerConnection(configuration)
        self.pc.addTrack(AudioStreamTrack())
        self.pc.addTrack(VideoStreamTrack())
        self.remote: str | None = None  # whom we signal with
        self.room_state: dict[str, Any] | None = None
        self.errors: list[dict[str, Any]] = []
        self.channels: list[RTCDataChannel] = []
        self.messages: asyncio.Queue[str] = asyncio.Queue(MAX_MESSAGES)
        self.video_frames = 0
        self._tasks: set[asyncio.Task[None]] = set()
        self._loop_task: asyncio.Task[None] | None = None
        self.pc.on("datachannel", self._adopt)
        self.pc.on("track", self._read_track)

    def start(self) -> None:
        self._loop_task = self._own(self._serve(), "aiortc frames")

    async def offer(self, *, to: str) -> None:
        """Open the "chat" channel and offer to `to` (with our audio and video)."""
        self.remote = to
        self._adopt(self.pc.createDataChannel(CHAT_LABEL))
        await self.pc.setLocalDescription(await self.pc.createOffer())  # gathers
        await send_description(self.client, self.pc, kind="offer", target=to)

    def send(self, text: str) -> None:
        """Send `text` on the first open chat channel."""
        channel = next((c for c in self.channels if c.readyState == "open"), None)
        assert channel is not None, f"no open chat channel: {self.channels}"
        channel.send(text)

    async def wait_until(self, what: str, condition: Callable[[], bool], *, timeout: float) -> None:
        """Wait (bounded) for `condition()`; fail saying `what`, or with the loop's error."""
        deadline = time.monotonic() + timeout
        while not condition():
            self.check()
            assert time.monotonic() < deadline, (
                f"aiortc {self.user_id}: no {what} within {timeout:.0f} s "
                f"(connection {self.pc.connectionState}, ICE {self.pc.iceConnectionState}, "
                f"errors {self.errors})"
            )
            await asyncio.sleep(POLL_SECONDS)

    async def next_message(self, *, timeout: float) -> str:
        await self.wait_until("chat message", lambda: not self.messages.empty(), timeout=timeout)
        return self.messages.get_nowait()

    def check(self) -> None:
        """Re-raise the frame loop's failure, if it died."""
        task = self._loop_task
        if task is not None and task.done() and not task.cancelled():
            task.result()

    async def close(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await asyncio.wait_for(self.pc.close(), CLOSE_TIMEOUT_SECONDS)

    # The frame loop: signaling from the service.

    async def _serve(self) -> None:
        while True:
            frame = json.loads(await self.client.connection.recv())
            await self._handle(frame)

    async def _handle(self, frame: dict[str, Any]) -> None:
        kind, payload = frame["type"], frame.get("payload") or {}
        if kind == "room_state":
            self.room_state = payload
        elif kind == "error":
            self.errors.append(payload)
        elif kind == "offer":
            self.remote = frame["sender_id"]
            await self.pc.setRemoteDescription(RTCSessionDescription(payload["sdp"], "offer"))
            await self.pc.setLocalDescription(await self.pc.createAnswer())
            await send_description(self.client, self.pc, kind="answer", target=self.remote)
        elif kind == "answer":
            await self.pc.setRemoteDescription(RTCSessionDescription(payload["sdp"], "answer"))
        elif kind == "ice_candidate":
            await self._add_candidate(payload)

    async def _add_candidate(self, payload: dict[str, Any]) -> None:
        # The service orders a sender's frames, so the description came first.
        if not payload.get("candidate"):
            await self.pc.addIceCandidate(None)
            return
        candidate = candidate_from_sdp(payload["candidate"].removeprefix("candidate:"))
        candidate.sdpMid = payload.get("sdpMid")
        candidate.sdpMLineIndex = payload.get("sdpMLineIndex")
        await self.pc.addIceCandidate(candidate)

    # Media and data from the other side.

    def _adopt(self, channel: RTCDataChannel) -> None:
        if channel.label != CHAT_LABEL:
            return
        self.channels.append(channel)
        channel.on("message", self._received)

    def _received(self, message: str | bytes) -> None:
        text = message if isinstance(message, str) else message.decode()
        self.messages.put_nowait(text)  # QueueFull (a runaway sender) fails the test

    def _read_track(self, track: MediaStreamTrack) -> None:
        self._own(self._consume(track), f"aiortc {track.kind} reader")

    async def _consume(self, track: MediaStreamTrack) -> None:
        # Reading decodes; an unread track would also queue frames without end.
        with contextlib.suppress(MediaStreamError):  # the track ended: the call is over
            while True:
                await track.recv()
                if track.kind == "video":
                    self.video_frames += 1

    def _own(self, coroutine: Coroutine[Any, Any, None], name: str) -> asyncio.Task[None]:
        task = asyncio.create_task(coroutine, name=f"{name} ({self.user_id})")
        self._tasks.add(task)
        return task


@contextlib.asynccontextmanager
async def aiortc_peer(
    url: str, *, user_id: str, configuration: RTCConfiguration
) -> AsyncIterator[AiortcPeer]:
    """Join `url` (a WebSocket URL with its token) as `user_id`; the room_state has come."""
    async with connect(url) as client:
        peer = AiortcPeer(user_id, client, configuration)
        try:
            peer.start()
            await peer.wait_until("room_state", lambda: peer.room_state is not None, timeout=10)
            yield peer
            peer.check()
        finally:
            await peer.close()
