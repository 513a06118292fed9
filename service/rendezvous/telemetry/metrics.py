"""Prometheus metrics, one registry per app so that several apps can share a process."""

from __future__ import annotations

from collections.abc import Iterator

from prometheus_client import CollectorRegistry, Counter, Gauge, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.metrics import MetricWrapperBase
from prometheus_client.registry import Collector

from rendezvous.backends.base import Backend


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
        self._messages = Counter(
            "rendezvous_messages",
            "Client frames by type and outcome",
            ["type", "outcome"],
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
        self._children: dict[tuple[str, ...], MetricWrapperBase] = {}

    def message(self, kind: str, outcome: str) -> None:
        key = ("m", kind, outcome)
        child = self._children.get(key)
        if child is None:
            child = self._children[key] = self._messages.labels(kind, outcome)
        child.inc()  # type: ignore[attr-defined]

    def error(self, code: str) -> None:
        key = ("e", code)
        child = self._children.get(key)
        if child is None:
            child = self._children[key] = self._errors.labels(code)
        child.inc()  # type: ignore[attr-defined]

    def watch_backend(self, backend: Backend) -> None:
        """Report the backend's link: read at scrape time, so the backend stays unaware."""
        self.registry.register(_BackendCollector(backend))

    def render(self) -> bytes:
        return generate_latest(self.registry)


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
