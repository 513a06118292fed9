"""Prometheus metrics, one registry per app so that several apps can share a process."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, generate_latest
from prometheus_client.metrics import MetricWrapperBase


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

    def render(self) -> bytes:
        return generate_latest(self.registry)
