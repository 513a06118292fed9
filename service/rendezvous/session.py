"""One signaling WebSocket: the receive loop with its limits, and a bounded send queue.

Frames go out through one writer task per session, so a peer that stops reading only
fills its own queue; past the bound it is disconnected (`slow_consumer`) while the rest
of the room carries on.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import time
from collections import deque
from collections.abc import Mapping, Sequence
from typing import Any

from opentelemetry.trace import Span
from starlette.websockets import WebSocket, WebSocketDisconnect

from rendezvous.auth import Identity
from rendezvous.backends.base import Member
from rendezvous.hub import RECIPIENT_CLOSED, Hub
from rendezvous.limits import SessionLimits, TokenBucket
from rendezvous.policy.live import LivePolicy
from rendezvous.protocol import (
    CloseCode,
    ErrorCode,
    LeaveReason,
    MessageType,
    SignalingError,
    encode,
    error_frame,
    invalid,
    parse_client_frame,
    with_seq,
)
from rendezvous.resuming import LEAVE_CLOSE_CODES, ResumeRequest, mint_resume_token, resume_hash
from rendezvous.rosters import LocalRoom
from rendezvous.serving import CONNECTION_EXTENSION, ConnectionControl
from rendezvous.stats import parse_report
from rendezvous.telemetry import spans as span_names
from rendezvous.telemetry.metrics import Metrics
from rendezvous.telemetry.spans import SignalingSpans, add_stats_event, current, mark_refused

log = logging.getLogger(__name__)

_SLOW_CONSUMER = ErrorCode.SLOW_CONSUMER.value
# The server's own closes after which the participant is held for a resume.
_HELD_AFTER = frozenset({ErrorCode.SERVER_DRAINING, ErrorCode.SLOW_CONSUMER})

# After a close is queued, how long the writer may take to flush it before we abort.
CLOSE_FLUSH_SECONDS = 2.0


class Session:
    """A member's connection to one room."""

    def __init__(
        self,
        websocket: WebSocket,
        identity: Identity,
        room_id: str,
        *,
        hub: Hub,
        policy: LivePolicy,
        metrics: Metrics,
        spans: SignalingSpans,
        resume: ResumeRequest | None = None,
        debug: bool = False,
    ) -> None:
        self._websocket = websocket
        self._resume = resume
        self._debug = debug  # DEBUG=true: a log line per message
        self._room_id = room_id
        self._hub = hub
        self._policy = policy
        self._metrics = metrics
        self._relays = metrics.relays
        self._spans = spans
        self._tracing = spans.enabled
        self._relay_links = spans.links_to_current()  # each relay span links to the connection
        self._loop = asyncio.get_running_loop()
        # A resume keeps the session id it resumes (the hub sets `member` then).
        self._resume_token, token_hash = mint_resume_token()
        self.member = Member(identity.user_id, identity.username, secrets.token_hex(8), token_hash)
        self._connection: ConnectionControl | None = websocket.scope.get("extensions", {}).get(
            CONNECTION_EXTENSION
        )
        self._last_frame_at = self._loop.time()
        limits = self._limits = policy.limits  # the version the bucket is tuned to
        self._bucket = TokenBucket(
            rate=limits.rate_per_second, burst=limits.burst, now=self._last_frame_at
        )
        # A frame this short is within the byte limit whatever its characters (UTF-8 <= 4x).
        self._always_small_chars = limits.max_message_bytes // 4
        self._queue: deque[bytes] = deque()
        self._queued_bytes = 0
        # Every frame queued gets the next `seq` (spliced in when written); `_seq` is the
        # last one's. `_sent` keeps the latest frames (shared references, not copies), the
        # newest numbered `_seq`, for a resume to replay what a dropped socket lost.
        self._seq = 0
        self._sent: deque[bytes] = deque(maxlen=limits.queue_max_messages)
        self._ready = asyncio.Event()  # wakes the writer task
        # Under `rendezvous serve`, what is queued in one turn of the loop is written at its
        # end in one write (`_flush`), with no task switch; the writer task takes over while
        # the socket pushes back, and for the close.
        self._write_now = None if self._connection is None else self._connection.write_texts
        self._flush_pending = False
        self._sending = False  # the writer task holds a frame: no direct write may overtake it
        self._closing: SignalingError | None = None
        self.leave_reason = LeaveReason.LEFT
        self._room: LocalRoom | None = None

    # Lifecycle.

    async def run(self, *, capacity: int, join_span: Span) -> None:
        """Join, relay until the socket ends, leave. Never raises for a client's doing.

        `join_span`, begun by admission, ends once the join is decided."""
        writer = asyncio.create_task(
            self._write(), name=f"rendezvous.send:{self.member.session_id}"
        )
        try:
            try:
                with current(join_span, end=True):
                    if self._resume is None:
                        self._room = await self._hub.join(
                            self, self._room_id, capacity=capacity, resume_token=self._resume_token
                        )
                        join_span.set_attribute(span_names.OUTCOME, "joined")
                    else:
                        self._room = await self._resumed(self._resume)
                        join_span.set_attribute(span_names.OUTCOME, "resumed")
            except SignalingError as error:
                self.close(error)
                return
            close_code: int | None = None
            try:
                close_code = await self._read(self._room)
            except Exception:
                log.exception("session failed", extra=self._log_context())
                self.close(SignalingError(ErrorCode.INTERNAL_ERROR, "internal error"))
            finally:
                if self._connection is not None and self._connection.timed_out:
                    self.leave_reason = LeaveReason.TIMEOUT
                if self._dropped(close_code):
                    await self._hub.hold(
                        self,
                        self._room,
                        reason=self.leave_reason,
                        frames=self._sent,
                        last_seq=self._seq,
                    )
                else:
                    await self._hub.leave(self, self._room, reason=self.leave_reason)
        finally:
            await self._finish(writer)

    async def _resumed(self, request: ResumeRequest) -> LocalRoom:
        """Take over a held session: its `room_state` (resumed), then what it missed,
        numbered as first sent, then live frames numbered on."""
        room, state, replay = await self._hub.resume(
            self,
            self._room_id,
            resume_hash=resume_hash(request.token),
            last_seq=request.last_seq,
            resume_token=self._resume_token,
        )
        self._seq = replay.start_seq - 1  # the room_state takes start_seq, then the replay
        for frame in (state, *replay.frames):
            self._push(frame)  # bounded already: the held buffer has the queue's bounds
        return room

    def sent(self) -> tuple[Sequence[bytes], int]:
        """The last frames queued for the peer (a ring) and the seq of the newest."""
        return self._sent, self._seq

    def _dropped(self, close_code: int | None) -> bool:
        """Whether the session ended by a drop (its participant is held for a resume)
        rather than a leave: a client's close other than 1000/1001, none at all, or the
        server's own close for a drain (the client resumes on another instance) or a
        slow consumer (its socket was fine, its reading not)."""
        if self._closing is not None:
            return self._closing.code in _HELD_AFTER
        return close_code not in LEAVE_CLOSE_CODES

    async def _finish(self, writer: asyncio.Task[None]) -> None:
        if self._closing is not None and not writer.done():
            try:
                await asyncio.wait_for(asyncio.shield(writer), CLOSE_FLUSH_SECONDS)
            except TimeoutError:
                self.abort()
        writer.cancel()
        try:
            await writer
        except asyncio.CancelledError:
            if asyncio.current_task().cancelling():  # type: ignore[union-attr]
                raise

    @property
    def last_seen(self) -> float:
        """When the peer last proved alive (any frame, or a pong), on the loop's clock."""
        if self._connection is not None:
            return self._connection.last_seen
        return self._last_frame_at

    def time_out(self) -> None:
        """The peer stopped answering: drop the socket; its leave says `timeout`."""
        self.leave_reason = LeaveReason.TIMEOUT
        self.abort()

    def abort(self) -> None:
        if self._connection is not None:
            self._connection.abort()
        else:  # not under `rendezvous serve`: the best ASGI offers is to stop writing
            self._closing = self._closing or SignalingError(ErrorCode.INTERNAL_ERROR, "aborted")
            self._ready.set()

    # Outbound.

    def deliver(self, frame: bytes) -> str | None:
        """Queue one frame for this peer; None, or why it was dropped. The per-message
        path, so keep it tiny."""
        if self._closing is not None:
            return RECIPIENT_CLOSED
        size = len(frame)
        limits = self._policy.limits
        if (
            len(self._queue) >= limits.queue_max_messages
            or self._queued_bytes + size > limits.queue_max_bytes
        ):
            self._slow_consumer()
            return _SLOW_CONSUMER
        # `_push`, inlined: this is the per-message path.
        self._queue.append(frame)
        self._queued_bytes += size
        self._sent.append(frame)
        self._seq += 1
        if self._write_now is None:
            self._ready.set()
        elif not self._flush_pending:
            self._flush_pending = True
            self._loop.call_soon(self._flush)
        return None

    def _push(self, frame: bytes) -> None:
        """Queue `frame` as the next `seq`, to be written at the end of this loop turn."""
        self._queue.append(frame)
        self._queued_bytes += len(frame)
        self._sent.append(frame)
        self._seq += 1
        if self._write_now is None:
            self._ready.set()
        elif not self._flush_pending:
            self._flush_pending = True
            self._loop.call_soon(self._flush)

    def _flush(self) -> None:
        """End of a loop turn: write what was queued in it at once, or leave it to the
        writer task (the socket pushes back, the writer is mid-frame, or we are closing)."""
        self._flush_pending = False
        queue = self._queue
        if not queue:
            return
        assert self._write_now is not None
        first_seq = self._seq - len(queue) + 1
        if self._sending or self._closing is not None or not self._write_now(queue, first_seq):
            self._ready.set()
            return
        queue.clear()
        self._queued_bytes = 0

    def close(self, error: SignalingError) -> None:
        """Send `error` after what is queued, then close with its close code."""
        if self._closing is not None:
            return
        self._closing = error
        self._metrics.error(error.code.value)
        if error.code is ErrorCode.SLOW_CONSUMER:
            self._metrics.slow_consumer_disconnects.inc()
        frame = error_frame(error, room_id=self._room_id)
        self._queue.append(frame)
        self._sent.append(frame)
        self._seq += 1
        self._ready.set()

    def _slow_consumer(self) -> None:
        log.info("disconnecting a slow consumer", extra=self._log_context())
        self._queue.clear()
        self._queued_bytes = 0
        self.close(SignalingError(ErrorCode.SLOW_CONSUMER, "you are not reading fast enough"))
        # Its buffers are full, so the close frame may never leave: abort if it does not.
        self._loop.call_later(CLOSE_FLUSH_SECONDS, self.abort)

    async def _write(self) -> None:
        send = self._websocket.send
        queue = self._queue
        try:
            while True:
                while queue:
                    frame = queue.popleft()
                    self._queued_bytes -= len(frame)
                    self._sending = True
                    text = with_seq(frame, self._seq - len(queue)).decode()
                    await send({"type": "websocket.send", "text": text})
                    self._sending = False
                if self._closing is not None:
                    code = self._closing.close_code
                    await send({"type": "websocket.close", "code": code or 1000})
                    return
                self._ready.clear()
                await self._ready.wait()
        except WebSocketDisconnect:
            return  # the peer is gone; the reader sees it too
        except Exception:
            log.exception("send loop failed", extra=self._log_context())
            self.abort()

    # Inbound.

    async def _read(self, room: LocalRoom) -> int | None:
        """Handle frames until the peer disconnects; return its close code. Under
        `rendezvous serve` they are pushed to `_on_pushed` as they are parsed, once what
        was queued (during the join) is handled; `receive()` then only reports the
        disconnect."""
        receive = self._websocket.receive
        connection = self._connection
        pushed = False
        try:
            while True:
                if connection is not None and not pushed:
                    pushed = connection.push_messages(self._on_pushed)
                message = await receive()
                if message["type"] == "websocket.disconnect":
                    code: int | None = message.get("code")
                    return code
                if self._closing is None:
                    self._on_frame(room, message.get("text"))
        finally:
            if pushed:
                connection.push_messages(None)  # type: ignore[union-attr]

    def _on_pushed(self, text: str | None) -> None:
        if self._closing is not None or self._room is None:
            return
        try:
            self._on_frame(self._room, text)
        except Exception:
            log.exception("session failed", extra=self._log_context())
            self.close(SignalingError(ErrorCode.INTERNAL_ERROR, "internal error"))

    def _on_frame(self, room: LocalRoom, text: str | None) -> None:
        """One client frame: its text, or None for a binary one."""
        if self._tracing and (span := self._spans.relay(self._relay_links)) is not None:
            with current(span, end=True):
                self._handle(room, text, span)
        else:
            self._handle(room, text, None)

    def _handle(self, room: LocalRoom, text: str | None, span: Span | None) -> None:
        received_at = time.perf_counter()  # the loop's clock may be coarse (uvloop: 1 ms)
        now = self._loop.time()
        self._last_frame_at = now
        if self._policy.limits is not self._limits:
            self._retune(self._policy.limits)
        kind: str = "invalid"
        try:
            self._take(1, now)  # every frame costs a token, even one that proves invalid
            if text is None:
                raise invalid("binary frames are not accepted; send JSON text")
            self._check_size(text)
            kind, payload = parse_client_frame(text, room_id=self._room_id)
            if span is not None:
                self._describe(span, kind, payload, text)
            if kind is MessageType.PING:
                self.deliver(encode(MessageType.PONG, payload, room_id=self._room_id))
            elif kind is MessageType.STATS:
                self._record_stats(payload, span)
            else:
                if payload.get("target_user_id") is None:
                    # A broadcast costs one token per recipient; the first is paid above.
                    self._take(min(len(room.roster) - 2, self._limits.burst - 1), now)
                delivered = self._hub.relay(self, room, kind, payload, span=span)
                if delivered:
                    self._relays[kind].record(delivered, time.perf_counter() - received_at)
                if span is not None:
                    span.set_attributes(
                        {span_names.OUTCOME: "relayed", span_names.DELIVERED: delivered}
                    )
                if self._debug:
                    self._log_routed(kind, payload, delivered)
            self._metrics.message_ok(kind)
        except SignalingError as error:
            self._metrics.refused(kind, error.code.value)
            if self._debug:
                log.debug(
                    "Refused %s", kind, extra={**self._log_context(), "code": error.code.value}
                )
            if span is not None:
                mark_refused(span, error)
            if error.close_code is not None:
                self.close(error)
            else:
                self._metrics.error(error.code.value)
                self.deliver(error_frame(error, room_id=self._room_id))

    def _record_stats(self, payload: Mapping[str, Any], span: Span | None) -> None:
        """A call-quality report: checked, then recorded; never relayed, never answered."""
        report = parse_report(payload)  # a bad field refuses it whole: nothing recorded
        self._metrics.call_quality.record(report)
        if span is not None:
            add_stats_event(
                span,
                rtt_ms=report.rtt_ms,
                jitter_ms=report.jitter_ms,
                packet_loss=report.packet_loss,
                bitrate_kbps=report.bitrate_kbps,
                candidate_pair=report.candidate_pair,
            )
            span.set_attribute(span_names.OUTCOME, "recorded")
        if self._debug:
            log.debug("Recorded stats", extra=self._log_context())

    def _describe(self, span: Span, kind: str, payload: Mapping[str, Any], text: str) -> None:
        """What a relay span says of its frame: never the body, only its size in bytes."""
        span.set_attributes(
            {
                span_names.ROOM_ID: self._room_id,
                span_names.MESSAGE_TYPE: kind,
                span_names.SENDER_ID: self.member.user_id,
                span_names.BODY_SIZE: len(text) if text.isascii() else len(text.encode()),
            }
        )
        target = payload.get("target_user_id")
        if target is not None:
            span.set_attribute(span_names.TARGET_ID, target)
        if kind is MessageType.PING:
            span.set_attribute(span_names.OUTCOME, "pong")

    def _retune(self, limits: SessionLimits) -> None:
        """A new policy version is in force: its limits apply from this frame on."""
        self._limits = limits
        self._bucket.retune(rate=limits.rate_per_second, burst=limits.burst)
        self._always_small_chars = limits.max_message_bytes // 4

    def _check_size(self, text: str) -> None:
        limit = self._limits.max_message_bytes
        if len(text) > self._always_small_chars and (
            len(text) > limit or len(text.encode()) > limit
        ):
            raise SignalingError(
                ErrorCode.MESSAGE_TOO_LARGE, f"frames are limited to {limit} bytes"
            )

    def _take(self, cost: int, now: float) -> None:
        if cost <= 0 or self._bucket.take(cost, now):
            return
        if self._bucket.abusive:
            raise SignalingError(
                ErrorCode.RATE_LIMITED,
                "too many frames dropped",
                close_code=CloseCode.POLICY_VIOLATION,
            )
        raise SignalingError(ErrorCode.RATE_LIMITED, "rate limit exceeded; frame dropped")

    def _log_routed(self, kind: str, payload: Mapping[str, Any], delivered: int) -> None:
        """DEBUG=true: SEED.md's line per routed message (never its body)."""
        log.debug(
            "Forwarded %s",
            kind,
            extra={
                "room_id": self._room_id,
                "sender_id": self.member.user_id,
                "message_type": kind,
                "target_user_id": payload.get("target_user_id"),
                "delivered": delivered,
            },
        )

    def _log_context(self) -> dict[str, str]:
        return {"room_id": self._room_id, "user_id": self.member.user_id}
