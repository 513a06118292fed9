"""A stand-in for the Kubernetes API server: the Secret list/watch endpoint of one
namespace, on 127.0.0.1, for the TURN sidecar's API source.

No Kubernetes API server can run on these machines (no cluster, no etcd, no kind), so the
real `kubernetes` client talks to this instead. It speaks the same JSON as the real one
for `GET /api/v1/namespaces/{ns}/secrets`: a SecretList with `metadata.resourceVersion`,
or with `watch=true` a chunked stream of `{"type": ..., "object": ...}` lines, replaying
the events after the requested resourceVersion first. It refuses (400, as a Status, and
counts the refusal) any list or watch without `fieldSelector=metadata.name=<name>`, which
a Role restricted by `resourceNames` demands of a real cluster.

A test scripts it: `set_secret` / `delete_secret` (bumping the resourceVersion and pushing
events to open watches), `bookmark`, `expire_next_watches` / `expire_open_watches` (HTTP 200
and an ERROR event carrying a 410 Status, as the real API answers a too-old
resourceVersion), `drop_open_watches` (the socket closes mid-body), `end_open_watches`
(the body ends normally, as at `timeoutSeconds`), `fail_next` (500, 403, ...). Every
request is recorded. `kubeconfig` is a file plain `load_kube_config` connects with."""

from __future__ import annotations

import base64
import contextlib
import json
import queue
import socket
import sys
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Literal
from urllib.parse import parse_qsl, urlsplit

from tests.support.process import Component

TOKEN = "fake-service-account-token"
NAMESPACE = "turn-ns"
SECRET_NAME = "turn-secret"
_END, _DROP = "end", "drop"  # stream actions besides an event
_JOIN_SECONDS = 5.0
_POLL_SECONDS = 0.05  # how soon serve_forever notices shutdown()

Verb = Literal["list", "watch"]


@dataclass(frozen=True)
class ApiRequest:
    """One request as the server saw it."""

    path: str
    query: Mapping[str, str]
    authorization: str | None
    refused: bool = False  # no (or the wrong) name field selector
    at: float = field(default_factory=time.monotonic)

    @property
    def verb(self) -> Verb:
        return "watch" if self.query.get("watch") in ("true", "1") else "list"

    @property
    def resource_version(self) -> str | None:
        return self.query.get("resourceVersion")


@dataclass
class _Stream:
    """An open watch; the handler thread sends what arrives on `actions`."""

    bookmarks: bool
    actions: queue.Queue[dict[str, Any] | str] = field(default_factory=queue.Queue)


class FakeKubeApi(Component):
    def __init__(self, directory: Path, *, namespace: str = NAMESPACE, name: str = SECRET_NAME):
        self.namespace, self.name = namespace, name
        self.kubeconfig = directory / "kubeconfig"
        self._lock = threading.Lock()
        self._version = 1
        self._secret: dict[str, Any] | None = None
        self._history: list[tuple[int, dict[str, Any]]] = []  # (resourceVersion, event)
        self._streams: list[_Stream] = []
        self._requests: list[ApiRequest] = []
        self._failures: list[tuple[int, Verb | None]] = []  # (status, only this verb)
        self._watches_to_expire = 0
        self._closing = False  # set by _down: a watch opening now is dropped at once
        self._connections: set[socket.socket] = set()
        self._handlers: list[threading.Thread] = []
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        assert self._server is not None, "not started"
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    # Scripting.

    def set_secret(self, data: Mapping[str, bytes], *, deliver: bool = True) -> str:
        """Create or replace the Secret; returns its resourceVersion. With deliver=False
        open watches miss the event (a later watch from an older version replays it)."""
        with self._lock:
            kind = "ADDED" if self._secret is None else "MODIFIED"
            self._version += 1
            encoded = {k: base64.b64encode(v).decode() for k, v in data.items()}
            self._secret = {
                "kind": "Secret",
                "apiVersion": "v1",
                "metadata": self._metadata(),
                "type": "Opaque",
                "data": encoded,
            }
            self._record_event(kind, self._secret, deliver=deliver)
            return str(self._version)

    def delete_secret(self) -> None:
        with self._lock:
            assert self._secret is not None, "no Secret to delete"
            self._version += 1
            deleted = {**self._secret, "metadata": self._metadata()}
            self._secret = None
            self._record_event("DELETED", deleted, deliver=True)

    def bookmark(self) -> str:
        """Move the resourceVersion on (as other objects' changes do) and send watches
        that asked for bookmarks a BOOKMARK with it."""
        with self._lock:
            self._version += 1
            event = {
                "type": "BOOKMARK",
                "object": {"kind": "Secret", "apiVersion": "v1", "metadata": self._metadata()},
            }
            for stream in self._streams:
                if stream.bookmarks:
                    stream.actions.put(event)
            return str(self._version)

    def expire_next_watches(self, count: int = 1) -> None:
        """Answer the next `count` watches with 410 Gone whatever version they ask for."""
        with self._lock:
            self._watches_to_expire += count

    def expire_open_watches(self) -> int:
        return self._to_open_streams(_gone())

    def drop_open_watches(self) -> int:
        return self._to_open_streams(_DROP)

    def end_open_watches(self) -> int:
        return self._to_open_streams(_END)

    def fail_next(self, count: int, status: int, *, only: Verb | None = None) -> None:
        """Answer the next `count` requests (of verb `only`, if given) with `status`."""
        with self._lock:
            self._failures.extend([(status, only)] * count)

    # Inspection.

    @property
    def requests(self) -> list[ApiRequest]:
        with self._lock:
            return list(self._requests)

    def received(self, verb: Verb) -> list[ApiRequest]:
        """The lists or watches that carried the field selector, failed ones included."""
        return [r for r in self.requests if r.verb == verb and not r.refused]

    @property
    def refusals(self) -> list[ApiRequest]:
        return [r for r in self.requests if r.refused]

    @property
    def open_watches(self) -> int:
        with self._lock:
            return len(self._streams)

    @property
    def version(self) -> str:
        with self._lock:
            return str(self._version)

    def write_kubeconfig(
        self, path: Path, *, namespace: str | None, server: str | None = None
    ) -> Path:
        """A kubeconfig for this server (or `server`) with a token user and `namespace` on
        its context."""
        context: dict[str, str] = {"cluster": "fake", "user": "fake"}
        if namespace is not None:
            context["namespace"] = namespace
        config = {
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [{"name": "fake", "cluster": {"server": server or self.url}}],
            "users": [{"name": "fake", "user": {"token": TOKEN}}],
            "contexts": [{"name": "fake", "context": context}],
            "current-context": "fake",
        }
        path.write_text(json.dumps(config))  # JSON is YAML
        return path

    # Component.

    def _up(self) -> None:
        server = _Server(("127.0.0.1", 0), _Handler)
        server.api = self
        self._server = server
        self._thread = threading.Thread(
            target=server.serve_forever, args=(_POLL_SECONDS,), name="fake-kube-api", daemon=True
        )
        self._thread.start()
        self.write_kubeconfig(self.kubeconfig, namespace=self.namespace)

    def _down(self) -> None:
        server, self._server = self._server, None
        if server is None:
            return
        with self._lock:
            self._closing = True
            for stream in self._streams:
                stream.actions.put(_DROP)
        server.shutdown()
        with self._lock:
            connections = list(self._connections)
        for connection in connections:  # idle keep-alive readers, so server_close can join
            with contextlib.suppress(OSError):
                connection.shutdown(socket.SHUT_RDWR)
        server.server_close()
        for thread in [*self._handlers, self._thread]:
            if thread is not None:
                thread.join(_JOIN_SECONDS)
                assert not thread.is_alive(), f"{thread.name} did not stop"

    # Serving (handler threads).

    def _metadata(self) -> dict[str, str]:
        return {
            "name": self.name,
            "namespace": self.namespace,
            "uid": "6c1f4f5e-0000-4000-8000-000000000001",
            "resourceVersion": str(self._version),
        }

    def _record_event(self, kind: str, obj: dict[str, Any], *, deliver: bool) -> None:
        event = {"type": kind, "object": obj}
        self._history.append((self._version, event))
        if deliver:
            for stream in self._streams:
                stream.actions.put(event)

    def _to_open_streams(self, action: dict[str, Any] | str) -> int:
        with self._lock:
            for stream in self._streams:
                stream.actions.put(action)
            return len(self._streams)

    def handle(self, handler: _Handler) -> None:
        url = urlsplit(handler.path)
        query = dict(parse_qsl(url.query))
        selector_ok = query.get("fieldSelector") in (
            f"metadata.name={self.name}",
            f"metadata.name=={self.name}",
        )
        request = ApiRequest(
            url.path, query, handler.headers.get("Authorization"), refused=not selector_ok
        )
        with self._lock:
            self._requests.append(request)
            failure = None if request.refused else self._take_failure(request.verb)
        parts = url.path.strip("/").split("/")
        if len(parts) != 5 or parts[:3] != ["api", "v1", "namespaces"] or parts[4] != "secrets":
            handler.send_json(404, _status(404, "NotFound", f"no route {url.path}"))
        elif request.authorization != f"Bearer {TOKEN}":
            handler.send_json(401, _status(401, "Unauthorized", "Unauthorized"))
        elif request.refused:
            message = f"{request.verb} must carry fieldSelector=metadata.name={self.name}"
            handler.send_json(400, _status(400, "BadRequest", message))
        elif failure is not None:
            handler.send_json(failure, self._failure(failure, request.verb))
        elif request.verb == "watch":
            self._serve_watch(handler, request, parts[3])
        else:
            handler.send_json(200, self._list(parts[3]))

    def _take_failure(self, verb: Verb) -> int | None:
        for index, (status, only) in enumerate(self._failures):
            if only in (None, verb):
                del self._failures[index]
                return status
        return None

    def _failure(self, status: int, verb: Verb) -> dict[str, Any]:
        if status == 403:
            message = (
                f'secrets "{self.name}" is forbidden: User "system:serviceaccount:'
                f'{self.namespace}:rendezvous" cannot {verb} resource "secrets" in API group '
                f'"" in the namespace "{self.namespace}"'
            )
            return _status(403, "Forbidden", message)
        return _status(status, "InternalError", "Internal error occurred: injected by the test")

    def _list(self, namespace: str) -> dict[str, Any]:
        with self._lock:
            found = self._secret is not None and namespace == self.namespace
            return {
                "kind": "SecretList",
                "apiVersion": "v1",
                "metadata": {"resourceVersion": str(self._version)},
                "items": [self._secret] if found else [],
            }

    def _serve_watch(self, handler: _Handler, request: ApiRequest, namespace: str) -> None:
        since = int(request.resource_version or 0)
        timeout = float(request.query.get("timeoutSeconds", 3600))
        stream = _Stream(bookmarks=request.query.get("allowWatchBookmarks") == "true")
        with self._lock:
            gone = self._watches_to_expire > 0
            self._watches_to_expire -= gone
            if not gone and namespace == self.namespace:
                for version, event in self._history:
                    if version > since:
                        stream.actions.put(event)
                self._streams.append(stream)
            if self._closing:
                stream.actions.put(_DROP)
        try:
            handler.start_chunked()
            if gone:
                handler.send_chunk(_gone())
            else:
                self._stream_events(handler, stream, timeout)
            handler.end_chunked()
        except OSError:  # the client went away
            handler.close_connection = True
        finally:
            with self._lock:
                if stream in self._streams:
                    self._streams.remove(stream)

    def _stream_events(self, handler: _Handler, stream: _Stream, timeout: float) -> None:
        """Send events until the timeout (a normal end), an ERROR event, END, or DROP."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                action = stream.actions.get(timeout=max(deadline - time.monotonic(), 0))
            except queue.Empty:
                return
            if action == _END:
                return
            if action == _DROP:
                handler.drop()
                raise OSError("dropped on purpose")
            assert isinstance(action, dict)
            handler.send_chunk(action)
            if action["type"] == "ERROR":
                return  # the API server ends a watch after an ERROR event


def _status(code: int, reason: str, message: str) -> dict[str, Any]:
    return {
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Failure",
        "message": message,
        "reason": reason,
        "code": code,
    }


def _gone() -> dict[str, Any]:
    message = "too old resource version: 1 (2)"
    return {"type": "ERROR", "object": _status(410, "Expired", message)}


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    block_on_close = False  # _down joins the handler threads, with a deadline
    api: FakeKubeApi

    def process_request(self, request: Any, client_address: Any) -> None:
        with self.api._lock:
            self.api._connections.add(request)
        super().process_request(request, client_address)

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        with self.api._lock:
            self.api._handlers.append(threading.current_thread())
        super().process_request_thread(request, client_address)

    def handle_error(self, request: Any, client_address: Any) -> None:
        if not isinstance(sys.exc_info()[1], OSError):  # a client hanging up is normal
            super().handle_error(request, client_address)

    def shutdown_request(self, request: Any) -> None:
        with self.api._lock:
            self.api._connections.discard(request)
        super().shutdown_request(request)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive and chunked bodies, as the client expects
    server: _Server

    def do_GET(self) -> None:
        self.server.api.handle(self)

    def log_message(self, format: str, *args: Any) -> None:
        """Quiet: tests read `requests` instead."""

    def send_json(self, status: int, body: dict[str, Any]) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def start_chunked(self) -> None:
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()

    def send_chunk(self, event: dict[str, Any]) -> None:
        line = json.dumps(event).encode() + b"\n"
        self.wfile.write(f"{len(line):x}\r\n".encode() + line + b"\r\n")

    def end_chunked(self) -> None:
        self.wfile.write(b"0\r\n\r\n")

    def drop(self) -> None:
        """Half a chunk, then the socket closes: the body never ends."""
        self.wfile.write(b'40\r\n{"type": "MODI')
        self.close_connection = True
        self.connection.shutdown(socket.SHUT_RDWR)
