"""OpenTelemetry tracing, configured only from the standard `OTEL_*` variables.

Tracing is on only when an OTLP endpoint is set or `OTEL_TRACES_EXPORTER` names an
exporter: the SDK's own default would export to localhost:4318 from every pod. Off, no
SDK is imported, no provider or thread exists, FastAPI is not instrumented, and
`Tracing.tracer` is the API's no-op tracer.
"""

from __future__ import annotations

import asyncio
import logging
import os
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from opentelemetry import trace

from rendezvous import __version__
from rendezvous.settings import ConfigError
from rendezvous.telemetry.logging import redact
from rendezvous.telemetry.spans import SignalingSpans

if TYPE_CHECKING:
    from fastapi import FastAPI
    from opentelemetry.sdk.trace import SpanProcessor, TracerProvider
    from opentelemetry.sdk.trace.export import SpanExporter
    from opentelemetry.sdk.trace.sampling import Sampler

log = logging.getLogger(__name__)

# What this module acts on (the README lists them); the SDK reads the rest itself.
VARIABLES = (
    "OTEL_EXPORTER_OTLP_ENDPOINT",
    "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
    "OTEL_EXPORTER_OTLP_PROTOCOL",
    "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL",
    "OTEL_TRACES_EXPORTER",
    "OTEL_SERVICE_NAME",
    "OTEL_RESOURCE_ATTRIBUTES",
    "OTEL_TRACES_SAMPLER",
    "OTEL_TRACES_SAMPLER_ARG",
    "OTEL_SDK_DISABLED",
)
DEFAULT_SERVICE_NAME = "rendezvous"
EXPORTERS = ("otlp", "console")
PROTOCOLS = ("http/protobuf", "grpc")
SAMPLERS = (
    "always_on",
    "always_off",
    "traceidratio",
    "parentbased_always_on",
    "parentbased_always_off",
    "parentbased_traceidratio",
)
DEFAULT_SAMPLER = "parentbased_always_on"
# Part of the drain deadline's shutdown reserve (serving.SHUTDOWN_RESERVE_SECONDS): a
# collector that is down must not hold the exit for the exporter's 10 s timeout.
FLUSH_SECONDS = 0.5
# Span attributes that may carry the request's query string, and so a `?token=`.
_URL_ATTRIBUTES = ("http.url", "url.full", "url.query", "http.target")
# Probes and scrapes: every few seconds from each kubelet and Prometheus, never a question
# a trace answers (regexes searched in the URL without its query).
_UNTRACED_URLS = "/healthz$,/readyz$,/metrics$"
# Request headers never captured in clear, even when an operator opts in to header capture
# (OTEL_INSTRUMENTATION_HTTP_CAPTURE_HEADERS_SERVER_REQUEST): tokens ride in them.
_SANITIZED_HEADERS = ["authorization", "cookie", "sec-websocket-protocol", ".*token.*"]


@dataclass(frozen=True, slots=True)
class TracingConfig:
    """What the `OTEL_*` variables ask for; `exporters` empty means tracing is off."""

    exporters: tuple[str, ...]
    protocol: str
    sampler: str
    sampler_ratio: float

    @property
    def enabled(self) -> bool:
        return bool(self.exporters)

    @property
    def root_ratio(self) -> float:
        """The fraction of traces started here that are sampled (a relayed frame starts one)."""
        root = self.sampler.removeprefix("parentbased_")
        return {"always_on": 1.0, "always_off": 0.0}.get(root, self.sampler_ratio)


def read_tracing_config(environ: Mapping[str, str] | None = None) -> TracingConfig:
    """Validate the `OTEL_*` variables this service acts on; ConfigError in one line.

    The SDK reads the rest itself (endpoint, headers, timeout, resource attributes)."""
    env = os.environ if environ is None else environ

    def get(name: str) -> str:
        return env.get(name, "").strip()

    named = tuple(n.strip().lower() for n in get("OTEL_TRACES_EXPORTER").split(",") if n.strip())
    for name in named:
        if name not in (*EXPORTERS, "none"):
            raise ConfigError(
                f"OTEL_TRACES_EXPORTER: unknown exporter {name!r} (expected otlp, console or none)"
            )
    if "none" in named and len(named) > 1:
        raise ConfigError("OTEL_TRACES_EXPORTER: 'none' cannot be combined with an exporter")
    endpoint = get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT") or get("OTEL_EXPORTER_OTLP_ENDPOINT")
    exporters = named or (("otlp",) if endpoint else ())
    if exporters == ("none",) or get("OTEL_SDK_DISABLED").lower() == "true":
        exporters = ()

    protocol_variable = (
        "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL"
        if get("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL")
        else "OTEL_EXPORTER_OTLP_PROTOCOL"
    )
    protocol = get(protocol_variable).lower() or "http/protobuf"
    if protocol not in PROTOCOLS:
        raise ConfigError(
            f"{protocol_variable}: unsupported protocol {protocol!r} "
            "(expected http/protobuf or grpc)"
        )

    sampler = get("OTEL_TRACES_SAMPLER").lower() or DEFAULT_SAMPLER
    if sampler not in SAMPLERS:
        raise ConfigError(
            f"OTEL_TRACES_SAMPLER: unknown sampler {sampler!r} "
            f"(expected one of {', '.join(SAMPLERS)})"
        )
    ratio = 1.0
    if sampler.endswith("traceidratio") and get("OTEL_TRACES_SAMPLER_ARG"):
        text = get("OTEL_TRACES_SAMPLER_ARG")
        try:
            ratio = float(text)
        except ValueError:
            ratio = -1.0
        if not 0.0 <= ratio <= 1.0:
            raise ConfigError(
                f"OTEL_TRACES_SAMPLER_ARG: expected a ratio from 0 to 1 (got {text!r})"
            )
    return TracingConfig(
        exporters=exporters, protocol=protocol, sampler=sampler, sampler_ratio=ratio
    )


class Tracing:
    """The app's tracing: `tracer` for the service's own spans (a no-op when `enabled` is
    false). One per app, with its own provider, so several apps in a process share nothing."""

    def __init__(
        self,
        *,
        tracer: trace.Tracer,
        provider: TracerProvider | None = None,
        exporters: Sequence[SpanExporter] = (),
        relay_ratio: float = 0.0,
    ) -> None:
        self.enabled = provider is not None
        self.tracer = tracer
        self.relay_ratio = relay_ratio
        self.provider = provider
        self.exporters: tuple[SpanExporter, ...] = tuple(exporters)
        self._processors: list[SpanProcessor] = []

    def spans(self, *, bus: str) -> SignalingSpans:
        """The service's own spans, `bus` naming the backend in publish/deliver spans."""
        return SignalingSpans(
            self.tracer, enabled=self.enabled, bus=bus, relay_ratio=self.relay_ratio
        )

    @classmethod
    def disabled(cls) -> Tracing:
        return cls(tracer=trace.NoOpTracer())

    def start(self) -> None:
        """Begin exporting (the batch processor's thread starts here, with the app)."""
        if self.provider is None or self._processors:
            return
        from opentelemetry.sdk.trace.export import BatchSpanProcessor

        for exporter in self.exporters:
            processor = BatchSpanProcessor(exporter)
            self.provider.add_span_processor(processor)
            self._processors.append(processor)

    async def shutdown(self) -> None:
        """Flush what is queued and stop, waiting at most FLUSH_SECONDS."""
        if self.provider is None:
            return
        # The SDK's shutdown blocks (up to 30 s when the collector is down): run it on a
        # daemon thread, which never holds the process's exit, and wait for it bounded.
        stopping = threading.Thread(
            target=self.provider.shutdown, name="rendezvous.tracing.shutdown", daemon=True
        )
        stopping.start()
        await asyncio.to_thread(stopping.join, FLUSH_SECONDS)
        if stopping.is_alive():
            log.warning("traces not flushed within %.1fs; the rest is dropped", FLUSH_SECONDS)


def setup_tracing(
    app: FastAPI, *, instance_id: str, config: TracingConfig | None = None
) -> Tracing:
    """Build the app's tracing from the environment and instrument `app` when it is on."""
    config = config or read_tracing_config()
    if not config.enabled:
        return Tracing.disabled()
    from opentelemetry.instrumentation.fastapi import FastAPIInstrumentor
    from opentelemetry.metrics import NoOpMeterProvider
    from opentelemetry.sdk.resources import (
        SERVICE_INSTANCE_ID,
        SERVICE_NAME,
        SERVICE_VERSION,
        OTELResourceDetector,
        Resource,
    )
    from opentelemetry.sdk.trace import TracerProvider

    # OTEL_SERVICE_NAME, then OTEL_RESOURCE_ATTRIBUTES' service.name, then ours.
    detected = OTELResourceDetector().detect().attributes.get(SERVICE_NAME)
    resource = Resource.create(
        {
            SERVICE_NAME: str(detected or DEFAULT_SERVICE_NAME),
            SERVICE_INSTANCE_ID: instance_id,
            SERVICE_VERSION: __version__,
        }
    )
    provider = TracerProvider(resource=resource, sampler=_sampler(config))
    FastAPIInstrumentor.instrument_app(
        app,
        tracer_provider=provider,
        meter_provider=NoOpMeterProvider(),  # metrics are Prometheus's, at /metrics
        server_request_hook=_redact_url_attributes,
        excluded_urls=_UNTRACED_URLS,
        http_capture_headers_sanitize_fields=_SANITIZED_HEADERS,
        exclude_spans=["receive", "send"],  # one span per frame would swamp the trace
    )
    tracer = provider.get_tracer("rendezvous", __version__)
    return Tracing(
        tracer=tracer,
        provider=provider,
        exporters=_exporters(config),
        relay_ratio=config.root_ratio,
    )


def _sampler(config: TracingConfig) -> Sampler:
    from opentelemetry.sdk.trace import sampling

    from rendezvous.telemetry.sampling import RelaysPresampled

    ratio = sampling.TraceIdRatioBased(config.sampler_ratio)
    root: Sampler = {
        "always_on": sampling.ALWAYS_ON,
        "always_off": sampling.ALWAYS_OFF,
        "traceidratio": ratio,
    }[config.sampler.removeprefix("parentbased_")]
    chosen = sampling.ParentBased(root) if config.sampler.startswith("parentbased_") else root
    return RelaysPresampled(chosen)


def _exporters(config: TracingConfig) -> list[SpanExporter]:
    exporters: list[SpanExporter] = []
    for name in config.exporters:
        if name == "console":
            from opentelemetry.sdk.trace.export import ConsoleSpanExporter

            exporters.append(ConsoleSpanExporter())
        elif config.protocol == "grpc":
            from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import (
                OTLPSpanExporter as GrpcExporter,
            )

            exporters.append(GrpcExporter())
        else:
            from opentelemetry.exporter.otlp.proto.http.trace_exporter import (
                OTLPSpanExporter as HttpExporter,
            )

            exporters.append(HttpExporter())
    return exporters


def _redact_url_attributes(span: trace.Span, scope: dict[str, Any]) -> None:
    """The WebSocket URL carries `?token=`: rewrite every URL attribute the instrumentation
    set from the query string before the span can be exported."""
    if not span.is_recording():
        return
    attributes: Mapping[str, Any] = getattr(span, "attributes", None) or {}
    for key in _URL_ATTRIBUTES:
        value = attributes.get(key)
        if isinstance(value, str):
            cleaned = redact(value)
            if cleaned != value:
                span.set_attribute(key, cleaned)
