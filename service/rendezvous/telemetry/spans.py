"""The service's own spans: a join, each relayed frame, its publish on the bus and its
delivery on another instance, which the W3C `traceparent` in the bus header joins into
one trace.

A WebSocket's SERVER span lasts as long as the connection, so a relayed frame starts a
trace of its own, linked to its connection's span: a trace per frame stays small and
complete, and the link leads from any relay back to its connection and join.

Attributes name the room, the members, the frame's type and size and the outcome; never
a token or a frame's body (but for a `stats` frame's checked figures, which are what it
is sent for, in a `rendezvous.stats` event). Callers on the per-message path check
`enabled` first, so with tracing off a frame costs one attribute test.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager
from random import random

from opentelemetry import trace
from opentelemetry.context import Context
from opentelemetry.trace import Link, Span, SpanKind, Status, StatusCode
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from rendezvous.protocol import SignalingError

JOIN = "rendezvous.join"
AUTH = "rendezvous.auth"
PRESENCE = "rendezvous.presence"
RELAY = "rendezvous.relay"
PUBLISH = "rendezvous.publish"
DELIVER = "rendezvous.deliver"
# An event, not a span: a `stats` frame already has its frame's span (a trace of its own),
# which the event joins. Events on the connection's span would pile up for the call's
# length and be cut at the SDK's event limit.
STATS_EVENT = "rendezvous.stats"

# Attribute names: OTel semantic conventions where one exists, `rendezvous.*` otherwise.
ROOM_ID = "rendezvous.room.id"
USER_ID = "rendezvous.user.id"  # the member joining
ROOM_CAPACITY = "rendezvous.room.capacity"
MESSAGE_TYPE = "rendezvous.message.type"
SENDER_ID = "rendezvous.sender.id"
TARGET_ID = "rendezvous.target.id"  # absent for a broadcast
DELIVERED = "rendezvous.delivered"  # sockets on this instance it was queued for
OUTCOME = "rendezvous.outcome"  # relayed, published, joined, pong, or an error code
BODY_SIZE = "messaging.message.body.size"
OPERATION_TYPE = "messaging.operation.type"  # publish | process
MESSAGING_SYSTEM = "messaging.system"
ERROR_TYPE = "error.type"
# A stats event's figures, named as on the wire; only those the report carried.
STATS_RTT_MS = "rendezvous.stats.rtt_ms"
STATS_JITTER_MS = "rendezvous.stats.jitter_ms"
STATS_PACKET_LOSS = "rendezvous.stats.packet_loss"
STATS_BITRATE_KBPS = "rendezvous.stats.bitrate_kbps"
STATS_CANDIDATE_PAIR = "rendezvous.stats.candidate_pair"

_NEW_TRACE = Context()  # no parent: a relayed frame is a trace's root
_PROPAGATOR = TraceContextTextMapPropagator()


class SignalingSpans:
    """Starts the service's spans with the app's tracer (a no-op one when tracing is off)."""

    def __init__(
        self, tracer: trace.Tracer, *, enabled: bool, bus: str = "", relay_ratio: float = 1.0
    ) -> None:
        self.enabled = enabled
        self._tracer = tracer
        self._relay_ratio = relay_ratio  # the fraction of client frames traced
        self._bus = bus  # messaging.system of publish/deliver spans: the backend's name

    # Joining: a join span under the connection's span, with auth and presence in it.

    def join(self, room_id: str) -> Span:
        """Started, not current: the caller makes it current where it does the work."""
        return self._tracer.start_span(JOIN, attributes={ROOM_ID: room_id})

    def auth(self) -> AbstractContextManager[Span]:
        return current(self._tracer.start_span(AUTH), end=True)

    def presence(self, room_id: str, capacity: int) -> AbstractContextManager[Span]:
        """Subscribing to the room and the backend's join, where capacity is checked."""
        attributes: dict[str, str | int] = {ROOM_ID: room_id, ROOM_CAPACITY: capacity}
        return current(self._tracer.start_span(PRESENCE, attributes=attributes), end=True)

    # The per-message spans.

    @staticmethod
    def links_to_current() -> tuple[Link, ...]:
        """A link to the current span (the WebSocket's SERVER span), for its relays."""
        context = trace.get_current_span().get_span_context()
        return (Link(context),) if context.is_valid else ()

    def relay(self, links: tuple[Link, ...]) -> Span | None:
        """The span of one client frame, or None when this frame is not sampled.

        The service draws the sample itself (`relay_ratio`, from OTEL_TRACES_SAMPLER and
        its argument), and the provider's sampler takes every relay span it is handed:
        a frame left out then costs one random draw, where the SDK would spend
        microseconds building a span that records nothing."""
        ratio = self._relay_ratio
        if ratio < 1.0 and (ratio <= 0.0 or random() >= ratio):
            return None
        return self._tracer.start_span(RELAY, context=_NEW_TRACE, kind=SpanKind.SERVER, links=links)

    @contextmanager
    def publish(self, room_id: str, relay_type: str) -> Iterator[str]:
        """A PRODUCER span under the current one (a sampled relay's); yields the
        `traceparent` to send with the message, or "" when the span is not sampled (the
        receiver then starts none)."""
        attributes = {
            ROOM_ID: room_id,
            MESSAGE_TYPE: relay_type,
            OPERATION_TYPE: "publish",
            MESSAGING_SYSTEM: self._bus,
        }
        with self._tracer.start_as_current_span(
            PUBLISH, kind=SpanKind.PRODUCER, attributes=attributes
        ) as span:
            if not span.get_span_context().trace_flags.sampled:
                yield ""
                return
            carrier: dict[str, str] = {}
            _PROPAGATOR.inject(carrier)
            yield carrier.get("traceparent", "")

    @contextmanager
    def deliver(
        self,
        room_id: str,
        *,
        traceparent: str,
        relay_type: str,
        sender: str,
        target: str | None,
    ) -> Iterator[Span]:
        """A CONSUMER span whose parent is the publishing instance's span."""
        parent = _PROPAGATOR.extract({"traceparent": traceparent})
        attributes = {
            ROOM_ID: room_id,
            MESSAGE_TYPE: relay_type,
            SENDER_ID: sender,
            OPERATION_TYPE: "process",
            MESSAGING_SYSTEM: self._bus,
        }
        if target is not None:
            attributes[TARGET_ID] = target
        with self._tracer.start_as_current_span(
            DELIVER, context=parent, kind=SpanKind.CONSUMER, attributes=attributes
        ) as span:
            yield span


@contextmanager
def current(span: Span, *, end: bool) -> Iterator[Span]:
    """Make a started span current (its children nest in it), ending it on exit if `end`.
    An exception leaving it fails the span; a SignalingError with its code."""
    with trace.use_span(
        span, end_on_exit=end, record_exception=False, set_status_on_exception=False
    ):
        try:
            yield span
        except SignalingError as error:
            mark_refused(span, error)
            raise
        except Exception as exc:
            span.record_exception(exc)
            span.set_status(Status(StatusCode.ERROR, type(exc).__name__))
            raise


def add_stats_event(
    span: Span,
    *,
    rtt_ms: float | None,
    jitter_ms: float | None,
    packet_loss: float | None,
    bitrate_kbps: float | None,
    candidate_pair: str | None,
) -> None:
    """A call-quality report on its frame's span: the figures only (whom they are about
    is the span's `rendezvous.target.id`)."""
    figures = {
        STATS_RTT_MS: rtt_ms,
        STATS_JITTER_MS: jitter_ms,
        STATS_PACKET_LOSS: packet_loss,
        STATS_BITRATE_KBPS: bitrate_kbps,
        STATS_CANDIDATE_PAIR: candidate_pair,
    }
    span.add_event(STATS_EVENT, {name: v for name, v in figures.items() if v is not None})


def mark_refused(span: Span, error: SignalingError) -> None:
    """Mark `span` failed with the error frame's code (which is also its outcome)."""
    code = error.code.value
    span.set_attribute(OUTCOME, code)
    span.set_attribute(ERROR_TYPE, code)
    span.record_exception(error)
    span.set_status(Status(StatusCode.ERROR, code))
