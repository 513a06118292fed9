"""The provider's sampler when tracing is on (imported only then: it needs the SDK).

Relay spans are sampled by the service before they are started (`SignalingSpans.relay`
draws `relay_ratio`), so the provider takes every one it is handed; every other span
goes to the sampler `OTEL_TRACES_SAMPLER` names."""

from __future__ import annotations

from collections.abc import Sequence

from opentelemetry.context import Context
from opentelemetry.sdk.trace.sampling import ALWAYS_ON, Sampler, SamplingResult
from opentelemetry.trace import Link, SpanKind
from opentelemetry.trace.span import TraceState
from opentelemetry.util.types import Attributes

from rendezvous.telemetry.spans import RELAY


class RelaysPresampled(Sampler):
    def __init__(self, others: Sampler) -> None:
        self._others = others

    def should_sample(
        self,
        parent_context: Context | None,
        trace_id: int,
        name: str,
        kind: SpanKind | None = None,
        attributes: Attributes = None,
        links: Sequence[Link] | None = None,
        trace_state: TraceState | None = None,
    ) -> SamplingResult:
        sampler = ALWAYS_ON if name == RELAY else self._others
        return sampler.should_sample(
            parent_context, trace_id, name, kind, attributes, links, trace_state
        )

    def get_description(self) -> str:
        return f"RelaysPresampled{{{self._others.get_description()}}}"
