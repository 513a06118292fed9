"""Prometheus metrics, one registry per app so that several apps can share a process.

The per-message metrics stay cheap: label children are bound once and reused, and what
is counted per relayed or published message (deliveries, relay and publish latency) is
kept in plain numbers (`LatencyHistogram`) rendered at scrape time, free of
prometheus_client's per-increment lock. Every update and every scrape runs on the event
loop's thread.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

from prometheus_client import CollectorRegistry, Counter, Gauge, generate_latest
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.metrics import MetricWrapperBase
from prometheus_client.registry import Collector

from rendezvous.backends.base import Backend
from rendezvous.protocol import RELAYED_TYPES
from rendezvous.stats import CallQuality
from rendezvous.telemetry.histogram import RELAY_LATENCY_BUCKETS_SECONDS, LatencyHistogram


class RelayStats(LatencyHistogram):
    """Deliveries and relay latency of one message type."""

    __slots__ = ("delivered",)

    def __init__(self) -> None:
        super().__init__(RELAY_LATENCY_BUCKETS_SECONDS)
        self.delivered = 0

    def record(self, deliveries: int, seconds: float) -> None:
        """One relayed message, queued for `deliveries` sockets `seconds` after receipt."""
        self.delivered += deliveries
        self.observe(seconds)


class Metrics:
    """The counters the hub and sessions bump; label children are bound once and reused."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        registry = self.registry
        self.connections = Gauge(
            "rendezvous_connections", "Open signaling WebSockets", registry=registry
        )
        self.rooms = Gauge(
            "rendezvous_rooms", "Rooms with a participant on this instance", registry=registry
        )
        self.participants = Gauge(
            "rendezvous_participants", "Participants joined on this instance", registry=registry
        )
        # Read at scrape time from the hub (app.py binds it): held for a resume right now.
        self.held = Gauge(
            "rendezvous_held_participants",
            "Participants whose socket dropped, held on this instance for a resume",
            registry=registry,
        )
        resumes = Counter(
            "rendezvous_resumes",
            "Resumes asked of this instance, by outcome",
            ["outcome"],
            registry=registry,
        )
        self.resumed = resumes.labels("resumed")  # every frame after last_seq replayed
        self.resumed_missing = resumes.labels("missed")  # resumed, some frames were gone
        self.resume_refused = resumes.labels("refused")  # resume_failed
        # Every client frame's outcome: counted in plain numbers (the per-message path),
        # rendered at scrape time by _MessagesCollector.
        self._ok: dict[str, int] = {}  # by type: handled
        self._outcomes: dict[tuple[str, str], int] = {}  # by (type, outcome): refused
        registry.register(_MessagesCollector(self._ok, self._outcomes))
        registry.register(_TasksCollector())
        self._dropped = Counter(
            "rendezvous_messages_dropped",
            "Messages dropped, by type and reason (a refused client frame, or one recipient)",
            ["type", "reason"],
            registry=registry,
        )
        self.rate_limited = Counter(
            "rendezvous_rate_limited",
            "Client frames refused by the rate limit",
            registry=registry,
        )
        self.slow_consumer_disconnects = Counter(
            "rendezvous_slow_consumer_disconnects",
            "Sessions disconnected for not reading fast enough",
            registry=registry,
        )
        self._errors = Counter(
            "rendezvous_errors", "Error frames sent, by code", ["code"], registry=registry
        )
        self.policy_generation = Gauge(
            "rendezvous_policy_generation",
            "Policy versions applied (0: the environment's values alone)",
            registry=registry,
        )
        self.policy_rejected = Counter(
            "rendezvous_policy_rejected",
            "Policy file versions refused as invalid",
            registry=registry,
        )
        # By relayed type (a StrEnum member finds its plain-string key, and vice versa).
        self.relays: dict[str, RelayStats] = {kind.value: RelayStats() for kind in RELAYED_TYPES}
        registry.register(_RelayCollector(self.relays))
        # What clients report of their calls (`stats` frames), also in plain numbers.
        self.call_quality = CallQuality()
        registry.register(_CallQualityCollector(self.call_quality))
        self._children: dict[tuple[str, ...], MetricWrapperBase] = {}

    def message_ok(self, kind: str) -> None:
        """A client frame handled; the per-message path: no key built, no lock taken."""
        counts = self._ok
        counts[kind] = counts.get(kind, 0) + 1

    def message(self, kind: str, outcome: str) -> None:
        key = (kind, outcome)
        self._outcomes[key] = self._outcomes.get(key, 0) + 1

    def refused(self, kind: str, code: str) -> None:
        """A client frame refused with error `code`: counted as its outcome and as a drop."""
        self.message(kind, code)
        self.dropped(kind, code)
        if code == "rate_limited":
            self.rate_limited.inc()

    def dropped(self, kind: str, reason: str) -> None:
        self._child(self._dropped, ("d", kind, reason)).inc()  # type: ignore[attr-defined]

    def error(self, code: str) -> None:
        self._child(self._errors, ("e", code)).inc()  # type: ignore[attr-defined]

    def _child(self, metric: MetricWrapperBase, key: tuple[str, ...]) -> MetricWrapperBase:
        child = self._children.get(key)
        if child is None:
            child = self._children[key] = metric.labels(*key[1:])
        return child

    def watch_backend(self, backend: Backend) -> None:
        """Report the backend's link: read at scrape time, so the backend stays unaware."""
        self.registry.register(_BackendCollector(backend))

    def render(self) -> bytes:
        return generate_latest(self.registry)


class _TasksCollector(Collector):
    """The asyncio tasks alive in the process at scrape time: sessions' writers, the
    backend's listeners and upkeep. After a churn it must come back to its baseline."""

    def collect(self) -> Iterator[GaugeMetricFamily]:
        try:
            count = len(asyncio.all_tasks())
        except RuntimeError:  # rendered outside the event loop (a test, a tool): none to see
            return
        yield GaugeMetricFamily("rendezvous_asyncio_tasks", "asyncio tasks alive", value=count)


class _MessagesCollector(Collector):
    def __init__(self, ok: dict[str, int], outcomes: dict[tuple[str, str], int]) -> None:
        self._ok = ok
        self._outcomes = outcomes

    def collect(self) -> Iterator[Metric]:
        totals: dict[tuple[str, str], int] = {}
        for kind, count in self._ok.items():
            key = (str(kind), "ok")
            totals[key] = totals.get(key, 0) + count
        for (kind, outcome), count in self._outcomes.items():
            key = (str(kind), str(outcome))
            totals[key] = totals.get(key, 0) + count
        family = CounterMetricFamily(
            "rendezvous_messages", "Client frames by type and outcome", labels=["type", "outcome"]
        )
        for labels, count in sorted(totals.items()):
            family.add_metric(list(labels), count)
        yield family


class _RelayCollector(Collector):
    def __init__(self, relays: dict[str, RelayStats]) -> None:
        self._relays = relays

    def collect(self) -> Iterator[Metric]:
        delivered = CounterMetricFamily(
            "rendezvous_messages_relayed",
            "Messages queued for a recipient's socket on this instance, by type",
            labels=["type"],
        )
        latency = HistogramMetricFamily(
            "rendezvous_relay_latency_seconds",
            "From a frame's receipt (on any instance) to its queueing for the recipients here",
            labels=["type"],
        )
        for kind, stats in sorted(self._relays.items()):
            delivered.add_metric([kind], stats.delivered)
            latency.add_metric([kind], stats.cumulative(), sum_value=stats.sum)
        yield delivered
        yield latency


class _CallQualityCollector(Collector):
    """No room and no user label: a call's figures are pooled with every other call's."""

    def __init__(self, quality: CallQuality) -> None:
        self._quality = quality

    def collect(self) -> Iterator[Metric]:
        quality = self._quality
        reports = CounterMetricFamily(
            "rendezvous_call_stats_reports",
            "Call-quality reports recorded, by the type of the candidate pair in use",
            labels=["candidate_pair"],
        )
        for pair, count in quality.reports.items():
            reports.add_metric([pair], count)
        yield reports
        for name, documentation, histogram in (
            ("rendezvous_call_rtt_seconds", "Round-trip time clients report", quality.rtt),
            ("rendezvous_call_jitter_seconds", "Jitter clients report", quality.jitter),
            (
                "rendezvous_call_packet_loss_ratio",
                "Fraction of packets lost, as clients report it",
                quality.packet_loss,
            ),
            (
                "rendezvous_call_bitrate_kbps",
                "Bitrate clients report, in kilobits per second",
                quality.bitrate,
            ),
        ):
            yield HistogramMetricFamily(
                name, documentation, buckets=histogram.cumulative(), sum_value=histogram.sum
            )


class _BackendCollector(Collector):
    def __init__(self, backend: Backend) -> None:
        self._backend = backend

    def collect(self) -> Iterator[Metric]:
        backend = self._backend
        yield GaugeMetricFamily(
            "rendezvous_backend_up", "Whether the shared backend is reachable", value=backend.ready
        )
        yield CounterMetricFamily(
            "rendezvous_backend_reconnects",
            "Reconnection attempts to the shared backend",
            value=backend.reconnects,
        )
        yield CounterMetricFamily(
            "rendezvous_backend_publish_dropped",
            "Messages lost on a broken link to the shared backend",
            value=backend.dropped_publishes,
        )
        latency = backend.publish_latency
        yield HistogramMetricFamily(
            "rendezvous_backend_publish_seconds",
            "From a message's queueing for the shared backend to its acknowledgement",
            buckets=latency.cumulative(),
            sum_value=latency.sum,
        )
