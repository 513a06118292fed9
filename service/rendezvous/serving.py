"""Running the app under uvicorn: the WebSocket layer sized from the settings, a handshake
deadline, and a per-connection control that ASGI itself does not offer.

This is the one module that knows uvicorn's protocol classes. `rendezvous serve` uses it;
the app still runs under any ASGI server, but without the handshake deadline and with
a softer slow-consumer abort (see `ConnectionControl`).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Iterable
from types import FrameType
from typing import Any

import uvicorn
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol
from uvicorn.protocols.websockets.websockets_sansio_impl import WebSocketsSansIOProtocol
from websockets.frames import CloseCode
from websockets.http11 import Request
from websockets.protocol import State

from rendezvous.draining import Drainer
from rendezvous.protocol import with_seq
from rendezvous.settings import Settings
from rendezvous.wire import read_text_frame, text_frame_header

log = logging.getLogger(__name__)

CONNECTION_EXTENSION = "rendezvous.connection"
# Of the drain deadline, what is kept for uvicorn's own shutdown (waiting for the last
# connections, at most UVICORN_GRACE_SECONDS) and for the app's lifespan and exit.
SHUTDOWN_RESERVE_SECONDS = 2.0
UVICORN_GRACE_SECONDS = 1


class ConnectionControl:
    """Handed to the app in the scope's extensions: when the peer last sent anything (a
    frame or a pong, on the loop's clock), and a hard abort that works even when the
    peer has stopped reading and a polite close would wait behind a full buffer."""

    __slots__ = ("_protocol",)

    def __init__(self, protocol: RendezvousWebSocketProtocol) -> None:
        self._protocol = protocol

    @property
    def last_seen(self) -> float:
        return self._protocol.last_seen

    @property
    def timed_out(self) -> bool:
        """Whether the peer was dropped for not answering the server's ping in time."""
        return self._protocol.timed_out

    def abort(self) -> None:
        if self._protocol.transport is not None:
            self._protocol.transport.abort()

    def push_messages(self, handler: Callable[[str | None], None] | None) -> bool:
        """From now on hand each message to `handler` as soon as it is parsed (its text,
        or None for a binary one) instead of queueing it for `receive()`, which then only
        reports the disconnect. Refused (False) while messages are still queued, so none
        overtakes an earlier one. `None` goes back to queueing."""
        protocol = self._protocol
        if handler is not None and not protocol.queue.empty():
            return False
        protocol.on_message = handler
        return True

    def write_texts(self, frames: Iterable[bytes], first_seq: int) -> bool:
        """Frame `frames`, numbered `seq` from `first_seq` on (spliced in here: a frame's
        bytes are shared between recipients), and write them in one go, past the ASGI
        send path, if the socket takes them now: open, and its buffer not pushing back.
        False: nothing written; send them through ASGI, which waits until it drains."""
        protocol = self._protocol
        connection = protocol.conn
        if (
            connection.state is not State.OPEN
            or protocol.close_sent
            or protocol.disconnected
            or not protocol.writable.is_set()
        ):
            return False
        if connection.extensions or connection.writes:
            # Compression, or websockets has bytes of its own queued (a pong): its way.
            send_text = connection.send_text
            for seq, frame in enumerate(frames, first_seq):
                send_text(with_seq(frame, seq))
            protocol.transport.write(b"".join(connection.data_to_send()))
            return True
        parts = []
        for seq, frame in enumerate(frames, first_seq):
            numbered = with_seq(frame, seq)
            parts.append(text_frame_header(len(numbered)))
            parts.append(numbered)
        protocol.transport.write(b"".join(parts))
        return True


class RendezvousWebSocketProtocol(WebSocketsSansIOProtocol):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.last_seen = self.loop.time()
        self.timed_out = False
        self.on_message: Callable[[str | None], None] | None = None

    def send_receive_event_to_app(self) -> None:
        """A whole message arrived: straight to the session's handler when it has one.
        uvicorn's way queues it for a task to pick up and pauses reading until then: a
        task switch and two epoll changes per message."""
        handler = self.on_message
        if handler is None or self.close_sent:
            super().send_receive_event_to_app()
            return
        frames = self.frames
        data = frames[0] if len(frames) == 1 else b"".join(frames)
        if self.curr_msg_data_type != "text":
            self.frames = []
            handler(None)
            return
        try:
            text = data.decode()
        except UnicodeDecodeError:
            # uvicorn's answer, close 1007, without its error log and stack trace: the
            # fault is the client's.
            self.frames = []
            log.info("closed a WebSocket that sent invalid UTF-8 in a text frame (1007)")
            self.conn.send_close(CloseCode.INVALID_DATA)
            self.handle_parser_exception()
            return
        self.frames = []
        handler(text)

    def data_received(self, data: bytes) -> None:
        """Whole text frames go straight to the session's handler (`wire`); the rest, from
        the first frame that is anything else, through websockets' parser."""
        self.last_seen = self.loop.time()
        connection = self.conn
        start = 0
        while (
            self.on_message is not None
            and not self.close_sent
            and connection.state is State.OPEN
            and connection.current_size is None  # not inside a fragmented message
            and not connection.reader.buffer  # the parser waits at a frame boundary
        ):
            frame = read_text_frame(data, start, connection.max_message_size)
            if frame is None:
                break
            text, start = frame
            self.on_message(text)
            if start == len(data):
                return
        super().data_received(data[start:] if start else data)

    def handle_connect(self, event: Request) -> None:
        super().handle_connect(event)
        scope = getattr(self, "scope", None)  # absent when the handshake was refused
        if scope is not None:
            scope["extensions"][CONNECTION_EXTENSION] = ConnectionControl(self)

    async def send(self, message: Any) -> None:
        await super().send(message)
        if message["type"] == "websocket.http.response.body" and not message.get("more_body"):
            # A denial response (the drain's HTTP 503) ends the handshake; uvicorn does not
            # note it, then logs "returned without completing handshake" at error level.
            self.handshake_complete = True

    def keepalive_timeout(self) -> None:
        # uvicorn closes politely; a vanished peer never acknowledges, so abort instead.
        self.timed_out = True
        super().keepalive_timeout()
        self.transport.abort()


class DeadlineHttpProtocol(HttpToolsProtocol):
    """Drops a connection whose request headers do not arrive within the deadline, so
    half-open handshakes cannot pile up (uvicorn has no such timeout of its own)."""

    handshake_timeout_seconds = 10.0

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._deadline: asyncio.TimerHandle | None = self.loop.call_later(
            self.handshake_timeout_seconds, self._handshake_expired
        )

    def on_message_begin(self) -> None:
        super().on_message_begin()
        if self._deadline is None:  # the next request on a kept-alive connection
            self._deadline = self.loop.call_later(
                self.handshake_timeout_seconds, self._handshake_expired
            )

    def on_headers_complete(self) -> None:
        self._cancel_deadline()
        super().on_headers_complete()

    def connection_lost(self, exc: Exception | None) -> None:
        self._cancel_deadline()
        super().connection_lost(exc)

    def _cancel_deadline(self) -> None:
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None

    def _handshake_expired(self) -> None:
        self._deadline = None
        log.info(
            "dropped a connection that sent no complete request within %.1fs",
            self.handshake_timeout_seconds,
            extra={"client": f"{self.client[0]}:{self.client[1]}" if self.client else ""},
        )
        self.transport.abort()


def http_protocol_for(settings: Settings) -> type[DeadlineHttpProtocol]:
    return type(
        "DeadlineHttpProtocol",
        (DeadlineHttpProtocol,),
        {"handshake_timeout_seconds": settings.handshake_timeout_seconds},
    )


def uvicorn_config(
    app: Any, settings: Settings, *, host: str, port: int, log_config: dict[str, Any] | None
) -> uvicorn.Config:
    """The uvicorn configuration `rendezvous serve` runs with."""
    return uvicorn.Config(
        app,
        host=host,
        port=port,
        http=http_protocol_for(settings),
        ws=RendezvousWebSocketProtocol,
        ws_max_size=settings.ws_frame_limit_bytes,
        ws_ping_interval=settings.ws_ping_interval_seconds,
        ws_ping_timeout=settings.ws_ping_interval_seconds,
        ws_per_message_deflate=settings.ws_per_message_deflate,
        log_config=log_config,
        proxy_headers=True,
        server_header=False,
        lifespan="on",
        timeout_graceful_shutdown=UVICORN_GRACE_SECONDS,
    )


class DrainingServer(uvicorn.Server):
    """uvicorn, but the first SIGTERM (or Ctrl-C) drains before shutting down; a second
    one shuts down at once. The whole drain is bounded by WEBRTC_DRAIN_DEADLINE."""

    def __init__(
        self, config: uvicorn.Config, *, drainer: Drainer, deadline_seconds: float
    ) -> None:
        super().__init__(config)
        self._drainer = drainer
        self._drain_budget = max(deadline_seconds - SHUTDOWN_RESERVE_SECONDS, 0.0)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._drain_task: asyncio.Task[None] | None = None

    async def serve(self, sockets: Any = None) -> None:
        self._loop = asyncio.get_running_loop()
        await super().serve(sockets)

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        if self._loop is None or not self.started or self._drainer.draining:
            super().handle_exit(sig, frame)
            return
        self._drainer.draining = True  # readiness fails from this instant
        self._captured_signals.append(sig)  # uvicorn re-raises it once it has stopped
        self._loop.call_soon_threadsafe(self._start_drain)

    def _start_drain(self) -> None:
        self._drain_task = asyncio.create_task(self._drain(), name="rendezvous.drain")

    async def _drain(self) -> None:
        try:
            await asyncio.wait_for(self._drainer.drain(), self._drain_budget)
        except TimeoutError:
            log.warning("drain deadline reached; closing the remaining connections")
        except Exception:
            log.exception("drain failed; shutting down")
        finally:
            self.should_exit = True
