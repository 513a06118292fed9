"""A call member's connection: a websocket-client WebSocket (blocking; under locust,
gevent has patched sockets, locks and sleep) with a greenlet that blocks reading it, and
sends from other greenlets under the member's send lock, so that a frame is never
interleaved with another. Sockets, for the WebSocket and for /webrtc/config, are opened
from the member's source address."""

from __future__ import annotations

import http.client
import itertools
import logging
import socket
import ssl
import threading
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import gevent
import orjson
import websocket

from loadtest.signaling import delivery, sdp
from loadtest.signaling.failures import ConfigFailed
from loadtest.signaling.options import Endpoint

if TYPE_CHECKING:
    from loadtest.signaling.calling import Call

log = logging.getLogger("rendezvous.loadtest")

SUBPROTOCOL = "rendezvous.v1"
CLOSE_WAIT_SECONDS = 2.0  # for the server's close frame after ours


class Sources:
    """Where members connect from: source addresses taken in turn, one per member (behind
    nginx's ip_hash, distinct /24s spread clients over the instances); None = the kernel's
    choice."""

    def __init__(self, addresses: tuple[str, ...]) -> None:
        self._addresses: Iterator[str | None] = itertools.cycle(addresses or (None,))

    def next(self) -> str | None:
        return next(self._addresses)


def open_socket(endpoint: Endpoint, source: str | None, timeout: float) -> socket.socket:
    """A TCP (or TLS) connection to `endpoint` from `source`, never through a proxy."""
    bind = (source, 0) if source else None
    sock = socket.create_connection((endpoint.host, endpoint.port), timeout, bind)
    if endpoint.secure:
        sock = ssl.create_default_context().wrap_socket(sock, server_hostname=endpoint.host)
    return sock


def get_config(endpoint: Endpoint, source: str | None, token: str, timeout: float) -> int:
    """GET /webrtc/config with the bearer token; the body's length if it is a 200 with an
    `iceServers` list, else ConfigFailed."""
    try:
        sock = open_socket(endpoint, source, timeout)
        connection = PreconnectedHTTP(sock, endpoint.host, endpoint.port, timeout)
        try:
            headers = {"Authorization": f"Bearer {token}", "Accept": "application/json"}
            connection.request("GET", endpoint.config_path, headers=headers)
            response = connection.getresponse()
            body = response.read()
        finally:
            connection.close()
        config = orjson.loads(body) if response.status == 200 else None
    except (OSError, http.client.HTTPException, ValueError) as exc:
        raise ConfigFailed(f"{type(exc).__name__}: {exc}") from exc
    if not isinstance(config, dict) or not isinstance(config.get("iceServers"), list):
        raise ConfigFailed(f"HTTP {response.status}: {body[:200]!r}")
    return len(body)


class Member:
    """One participant's connection: `user#n` for its n-th join."""

    def __init__(
        self, call: Call, user: str, number: int, endpoint: Endpoint, source: str | None
    ) -> None:
        self.call = call
        self.user = user
        self.conn = f"{user}#{number}"
        self.endpoint = endpoint
        self.source = source  # for its WebSocket and its /webrtc/config alike
        self.ufrag = sdp.ice_ufrag(call.rng)
        self.ws = websocket.WebSocket(enable_multithread=True, skip_utf8_validation=True)
        self.closing = False
        self.close_code: int | None = None
        self.gone = False  # its connection ended without our leave
        self._send_lock = threading.Lock()  # gevent's, once locust has patched threading
        self._reader: gevent.Greenlet[..., Any] | None = None

    def connect(self, token: str) -> None:
        timeout = self.call.options.deadline_seconds
        # websocket-client leaves connect, recv_frame and shutdown unannotated.
        self.ws.connect(  # type: ignore[no-untyped-call]
            self.endpoint.ws_url(self.call.room),
            socket=open_socket(self.endpoint, self.source, timeout),
            subprotocols=[SUBPROTOCOL, f"bearer.{token}"],  # as a browser passes the token
            suppress_origin=True,  # no page, no Origin: WEBRTC_ALLOWED_ORIGINS checks one sent
            timeout=timeout,
        )
        log.debug("%s joined %s from %s", self.conn, self.endpoint.authority, self.source)

    def read_text(self) -> str | None:
        """The next text frame; None when the connection closed. Answers pings."""
        ws = self.ws
        while True:
            frame = ws.recv_frame()  # type: ignore[no-untyped-call]
            opcode = frame.opcode
            if opcode in (websocket.ABNF.OPCODE_TEXT, websocket.ABNF.OPCODE_CONT):
                ws.cont_frame.validate(frame)
                ws.cont_frame.add(frame)
                if ws.cont_frame.is_fire(frame):
                    data = ws.cont_frame.extract(frame)[1].data  # the whole message
                    return data.decode() if isinstance(data, bytes) else str(data)
            elif opcode == websocket.ABNF.OPCODE_PING:
                ws.pong(frame.data)
            elif opcode == websocket.ABNF.OPCODE_CLOSE:
                code = int.from_bytes(frame.data[:2], "big") if len(frame.data) >= 2 else None
                self.close_code = code
                return None

    def start_reading(self) -> None:
        self.ws.settimeout(None)  # the reader blocks; leave() and abort() end it
        self._reader = gevent.spawn(self._read)

    def _read(self) -> None:
        reason = "its reader failed (the traceback is above)"
        try:
            while (text := self.read_text()) is not None:
                self.call.on_frame(self, text, self.call.clock())
            reason = f"closed by the server with code {self.close_code}"
        except (websocket.WebSocketException, OSError) as exc:
            reason = f"connection error: {exc!r}"
        finally:
            if not self.closing:
                self.call.on_gone(self, reason)

    def send(self, kind: str, payload: dict[str, Any], *, to_conn: str, to_user: str) -> None:
        ledger = self.call.ledger
        with self._send_lock:
            probe = ledger.stamp(kind, sender=self.conn, sender_user=self.user, receiver=to_conn)
            payload["target_user_id"] = to_user
            payload[delivery.PROBE] = probe
            try:
                self.ws.send(orjson.dumps({"type": kind, "payload": payload}).decode())
            except (websocket.WebSocketException, OSError):
                ledger.withdraw(probe)  # never sent: not lost either
                raise

    def leave(self) -> None:
        """Close as a browser tab does (close frame, wait for the server's), within bounds."""
        self.closing = True
        try:
            with self._send_lock:
                self.ws.send_close()
        except (websocket.WebSocketException, OSError) as exc:
            log.info("%s: close frame not sent: %r", self.conn, exc)
        if self._reader is not None:
            self._reader.join(timeout=CLOSE_WAIT_SECONDS)
        self.abort()

    def abort(self) -> None:
        """Drop the connection at once (cleanup; a killed locust user)."""
        self.closing = True
        if self._reader is not None:
            self._reader.kill(block=False)
        self.ws.shutdown()  # type: ignore[no-untyped-call]


class PreconnectedHTTP(http.client.HTTPConnection):
    """An HTTP connection over a socket the Dialer opened (bound to its source address)."""

    def __init__(self, sock: socket.socket, host: str, port: int, timeout: float) -> None:
        super().__init__(host, port, timeout=timeout)
        self.sock = sock

    def connect(self) -> None:  # already connected
        return
