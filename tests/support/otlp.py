"""A real OTLP/HTTP trace receiver on 127.0.0.1, built on `opentelemetry-proto`: it decodes
each ExportTraceServiceRequest the service's exporter posts and keeps the spans."""

from __future__ import annotations

import asyncio
import gzip
import threading
import time
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue
from opentelemetry.proto.trace.v1.trace_pb2 import Span, Status

from tests.support.process import Component

WAIT_SECONDS = 10.0
TRACES_PATH = "/v1/traces"


@dataclass(frozen=True)
class ReceivedSpan:
    """One span as the collector saw it; ids in lower-case hex ("" for no parent)."""

    trace_id: str
    span_id: str
    parent_span_id: str
    name: str
    kind: str  # "SERVER", "INTERNAL", ...
    attributes: dict[str, Any]
    resource: dict[str, Any]
    status_code: str = "UNSET"
    status_message: str = ""
    events: list[str] = field(default_factory=list)
    event_attributes: list[dict[str, Any]] = field(default_factory=list)
    links: list[tuple[str, str]] = field(default_factory=list)  # (trace_id, span_id)


class OtlpReceiver(Component):
    """`with OtlpReceiver() as receiver:` (or `async with`); export to `receiver.endpoint`
    (the value for OTEL_EXPORTER_OTLP_ENDPOINT)."""

    def __init__(self) -> None:
        self.spans: list[ReceivedSpan] = []
        self.requests = 0
        self._lock = threading.Lock()
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    @property
    def port(self) -> int:
        assert self._server is not None, "not started"
        return int(self._server.server_address[1])

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def received(self) -> list[ReceivedSpan]:
        with self._lock:
            return list(self.spans)

    async def wait_for(
        self, predicate: Callable[[list[ReceivedSpan]], bool], timeout: float = WAIT_SECONDS
    ) -> list[ReceivedSpan]:
        """Wait (bounded) until `predicate(spans so far)` holds; return the spans."""
        deadline = time.monotonic() + timeout
        while not predicate(spans := self.received()):
            if time.monotonic() > deadline:
                raise AssertionError(f"spans never matched; got {[s.name for s in spans]}")
            await asyncio.sleep(0.02)
        return spans

    def _up(self) -> None:
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                encoding = self.headers.get("Content-Encoding", "")
                if encoding == "gzip":
                    body = gzip.decompress(body)
                elif encoding == "deflate":
                    body = zlib.decompress(body)
                if self.path != TRACES_PATH:
                    self.send_error(404)
                    return
                receiver._collect(ExportTraceServiceRequest.FromString(body))
                answer = ExportTraceServiceResponse().SerializeToString()
                self.send_response(200)
                self.send_header("Content-Type", "application/x-protobuf")
                self.send_header("Content-Length", str(len(answer)))
                self.end_headers()
                self.wfile.write(answer)

            def log_message(self, format: str, *args: Any) -> None:
                pass  # the test's output stays the test's

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(
            target=self._server.serve_forever, name="otlp-receiver", daemon=True
        )
        self._thread.start()

    def _down(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
        if self._thread is not None:
            self._thread.join(WAIT_SECONDS)

    def _collect(self, request: ExportTraceServiceRequest) -> None:
        spans = [
            _span(span, resource=_attributes(resource_spans.resource.attributes))
            for resource_spans in request.resource_spans
            for scope_spans in resource_spans.scope_spans
            for span in scope_spans.spans
        ]
        with self._lock:
            self.requests += 1
            self.spans.extend(spans)


def _span(span: Span, *, resource: dict[str, Any]) -> ReceivedSpan:
    return ReceivedSpan(
        trace_id=span.trace_id.hex(),
        span_id=span.span_id.hex(),
        parent_span_id=span.parent_span_id.hex(),
        name=span.name,
        kind=Span.SpanKind.Name(span.kind).removeprefix("SPAN_KIND_"),
        attributes=_attributes(span.attributes),
        resource=resource,
        status_code=Status.StatusCode.Name(span.status.code).removeprefix("STATUS_CODE_"),
        status_message=span.status.message,
        events=[event.name for event in span.events],
        event_attributes=[_attributes(event.attributes) for event in span.events],
        links=[(link.trace_id.hex(), link.span_id.hex()) for link in span.links],
    )


def _attributes(pairs: Any) -> dict[str, Any]:
    return {pair.key: _value(pair.value) for pair in pairs if isinstance(pair, KeyValue)}


def _value(value: AnyValue) -> Any:
    kind = value.WhichOneof("value")
    if kind is None:
        return None
    if kind == "array_value":
        return [_value(v) for v in value.array_value.values]
    if kind == "kvlist_value":
        return _attributes(value.kvlist_value.values)
    return getattr(value, kind)
