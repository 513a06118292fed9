"""What one phase measured: locust's CSVs and the suite's summary, read back; each
instance's metrics over the phase, CPU and share of the connections; the verdict."""

from __future__ import annotations

import csv
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from loadtest.scaleout.scraping import InstanceMetrics, Sample

# Locust's percentile columns the report reads (response times in ms).
PERCENTILES = ("50%", "95%", "99%")
RELAY_NAME = "relay"  # the Name of every relayed message type's requests
RUNNER = "runner"  # this process, in PhaseResult.cpu_seconds (its scrapes and sampling)


def _number(text: str | None) -> float | None:
    if text is None or text in ("", "N/A"):
        return None
    return float(text)


def _rows(path: Path) -> list[dict[str, str]]:
    if not path.exists():
        return []
    with path.open(newline="") as file:
        return list(csv.DictReader(file))


@dataclass(frozen=True)
class RequestStats:
    """One row of locust's `_stats.csv`: a request type over the whole run."""

    type: str
    name: str
    requests: int
    failures: int
    p50_ms: float | None
    p95_ms: float | None
    p99_ms: float | None
    max_ms: float | None

    @property
    def label(self) -> str:
        return f"{self.type} / {self.name}" if self.type else self.name

    @classmethod
    def read(cls, path: Path) -> list[RequestStats]:
        return [
            cls(
                type=row["Type"],
                name=row["Name"],
                requests=int(row["Request Count"]),
                failures=int(row["Failure Count"]),
                p50_ms=_number(row.get("50%")),
                p95_ms=_number(row.get("95%")),
                p99_ms=_number(row.get("99%")),
                max_ms=_number(row.get("Max Response Time")),
            )
            for row in _rows(path)
        ]


@dataclass(frozen=True)
class HistoryPoint:
    """One second of locust's `_stats_history.csv` (written with `--csv-full-history`):
    for all requests (`Aggregated`), the percentiles over the last ~10 s (locust's
    rolling window) and the running totals; and the total of relayed messages checked."""

    at: float  # Unix seconds (whole: locust truncates them)
    users: int
    requests: int  # so far, all request types
    relayed: int  # so far, relayed messages (every type named `relay`)
    p50_ms: float | None
    p95_ms: float | None
    p99_ms: float | None

    @classmethod
    def read(cls, path: Path) -> list[HistoryPoint]:
        rows = _rows(path)
        relayed: dict[str, int] = {}
        for row in rows:
            if row["Name"] == RELAY_NAME:
                stamp = row["Timestamp"]
                relayed[stamp] = relayed.get(stamp, 0) + int(row["Total Request Count"])
        return [
            cls(
                at=float(row["Timestamp"]),
                users=int(row["User Count"]),
                requests=int(row["Total Request Count"]),
                relayed=relayed.get(row["Timestamp"], 0),
                p50_ms=_number(row["50%"]),
                p95_ms=_number(row["95%"]),
                p99_ms=_number(row["99%"]),
            )
            for row in rows
            if row["Name"] == "Aggregated"
        ]


@dataclass(frozen=True)
class InstanceResult:
    """One instance over a phase."""

    name: str
    pid: int
    port: int
    metrics: InstanceMetrics  # the counters' increase over the phase
    cpu_seconds: float
    handshakes: int  # WebSocket handshakes nginx passed to it (its access log)
    peak_connections: float  # the most open WebSockets in one sample of its /metrics

    @property
    def cpu_us_per_relayed(self) -> float | None:
        relayed = self.metrics.relayed_total
        return self.cpu_seconds * 1e6 / relayed if relayed else None


@dataclass
class PhaseResult:
    """One phase: N instances behind nginx, loaded by locust."""

    instance_count: int
    directory: Path
    started_at: float = 0.0  # locust's start and end, Unix seconds
    ended_at: float = 0.0
    locust_returncode: int | None = None
    summary: dict[str, Any] | None = None  # the suite's --summary-json
    stats: list[RequestStats] = field(default_factory=list)
    history: list[HistoryPoint] = field(default_factory=list)
    failures: list[dict[str, str]] = field(default_factory=list)
    instances: list[InstanceResult] = field(default_factory=list)
    # redis-server, nginx, locust (all its processes), the runner
    cpu_seconds: dict[str, float] = field(default_factory=dict)
    machine_busy_seconds: float = 0.0  # core-seconds every process on the machine used
    machine_seconds: float = 0.0  # core-seconds that passed (busy or idle)
    redis_version: str = "?"
    samples: list[Sample] = field(default_factory=list)
    failed_scrapes: int = 0
    pids: dict[str, int] = field(default_factory=dict)  # every process the phase started

    @property
    def seconds(self) -> float:
        return self.ended_at - self.started_at

    @property
    def totals(self) -> dict[str, Any]:
        return dict(self.summary["totals"]) if self.summary else {}

    @property
    def relayed(self) -> float:
        return sum(instance.metrics.relayed_total for instance in self.instances)

    @property
    def own_cpu_seconds(self) -> float:
        """CPU of every process of this run: instances, Redis, nginx, locust, runner."""
        return sum(i.cpu_seconds for i in self.instances) + sum(self.cpu_seconds.values())

    @property
    def relay_requests(self) -> int:
        return sum(s.requests for s in self.stats if s.name == RELAY_NAME)

    def read_locust(self, stats: Path, history: Path, failures: Path, summary: Path) -> None:
        self.stats = RequestStats.read(stats)
        self.history = HistoryPoint.read(history)
        self.failures = _rows(failures)
        self.summary = json.loads(summary.read_text()) if summary.exists() else None

    def problems(self) -> list[str]:
        """Why this phase failed; empty when it passed."""
        found = []
        if self.locust_returncode != 0:
            found.append(f"locust exited with status {self.locust_returncode}")
        if self.summary is None:
            found.append("the suite wrote no summary")
        elif not self.summary.get("ok"):
            found.append(f"the suite counted {self.summary.get('problems')} problem(s)")
        totals = self.totals
        if totals and totals.get("delivered", 0) == 0:
            found.append("no message was delivered")
        for instance in self.instances:
            if instance.metrics.relayed_total == 0 or instance.handshakes == 0:
                found.append(
                    f"{instance.name} served no load ({instance.handshakes} handshakes, "
                    f"{instance.metrics.relayed_total:.0f} messages relayed): no spread"
                )
            if instance.metrics.publish_dropped:
                found.append(
                    f"{instance.name} dropped {instance.metrics.publish_dropped:.0f} "
                    "publishes on a broken Redis link"
                )
        return found

    @property
    def ok(self) -> bool:
        return not self.problems()
