"""An OTLP/HTTP trace sink for the benchmarks: it answers every `POST /v1/traces` with an
empty ExportTraceServiceResponse, as a collector does, and counts requests, bytes and
spans by name; `GET /stats` returns the counts as JSON.

    .venv/bin/python loadtest/otlp_sink.py --port 4318 [--max-seconds 900]

It listens on 127.0.0.1 only and exits on SIGTERM or SIGINT, or by itself after
`--max-seconds`. bench_relay.py runs it as a process of its own, so decoding the spans
costs neither the servers nor the benchmark's measuring process.
"""

from __future__ import annotations

import argparse
import gzip
import signal
import sys
import threading
import zlib
from collections import Counter
from collections.abc import Sequence
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import orjson
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)

HOST = "127.0.0.1"
TRACES_PATH = "/v1/traces"
STATS_PATH = "/stats"
DEFAULT_MAX_SECONDS = 900.0
_EMPTY_RESPONSE = ExportTraceServiceResponse().SerializeToString()


class Counts:
    """What the sink received; the handler threads add to it under its lock."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.requests = 0
        self.bytes = 0  # request bodies as sent (compressed, if they were)
        self.undecodable = 0
        self.spans: Counter[str] = Counter()

    def add(self, size: int, names: Sequence[str] | None) -> None:
        with self._lock:
            self.requests += 1
            self.bytes += size
            if names is None:
                self.undecodable += 1
            else:
                self.spans.update(names)

    def as_json(self) -> bytes:
        with self._lock:
            return orjson.dumps(
                {
                    "requests": self.requests,
                    "bytes": self.bytes,
                    "undecodable": self.undecodable,
                    "spans": dict(self.spans),
                }
            )


def span_names(body: bytes, encoding: str) -> list[str] | None:
    """The name of every span in an export request, or None if it does not decode."""
    try:
        if encoding == "gzip":
            body = gzip.decompress(body)
        elif encoding == "deflate":
            body = zlib.decompress(body)
        request = ExportTraceServiceRequest.FromString(body)
    except (OSError, zlib.error, ValueError):  # protobuf's DecodeError is a ValueError
        return None
    return [
        span.name
        for resource in request.resource_spans
        for scope in resource.scope_spans
        for span in scope.spans
    ]


def make_handler(counts: Counts) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"  # keep-alive, as between an SDK and a collector

        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
            if self.path != TRACES_PATH:
                self._answer(404, b"", "text/plain")
                return
            counts.add(len(body), span_names(body, self.headers.get("Content-Encoding", "")))
            self._answer(200, _EMPTY_RESPONSE, "application/x-protobuf")

        def do_GET(self) -> None:
            if self.path != STATS_PATH:
                self._answer(404, b"", "text/plain")
                return
            self._answer(200, counts.as_json(), "application/json")

        def _answer(self, status: int, body: bytes, content_type: str) -> None:
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: Any) -> None:
            """Silent: a line per export would cost the sink more than the export."""

    return Handler


class SinkServer(ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request: Any, client_address: Any) -> None:
        """A reset is an exporter's process exiting with its keep-alive connection open:
        expected at the end of every run, so not worth a traceback in the sink's log."""
        if not isinstance(sys.exc_info()[1], ConnectionResetError):
            super().handle_error(request, client_address)


def serve(port: int, max_seconds: float) -> None:
    """Serve on HOST:`port` until SIGTERM/SIGINT or `max_seconds`, whichever comes first."""
    stopping = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda _signum, _frame: stopping.set())
    server = SinkServer((HOST, port), make_handler(Counts()))
    thread = threading.Thread(target=server.serve_forever, name="otlp-sink", daemon=True)
    thread.start()
    print(f"otlp_sink: listening on http://{HOST}:{port}{TRACES_PATH}", flush=True)
    if not stopping.wait(max_seconds):
        print(f"otlp_sink: stopping after --max-seconds {max_seconds:g}", flush=True)
    server.shutdown()
    server.server_close()
    thread.join()


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--port", type=int, required=True, help="port on 127.0.0.1")
    parser.add_argument(
        "--max-seconds",
        type=float,
        default=DEFAULT_MAX_SECONDS,
        help=f"exit by itself after this long ({DEFAULT_MAX_SECONDS:g})",
    )
    args = parser.parse_args(argv)
    if args.max_seconds <= 0:
        parser.error("--max-seconds must be positive")
    serve(args.port, args.max_seconds)
    return 0


if __name__ == "__main__":
    sys.exit(main())
