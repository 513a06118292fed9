"""What the instances and the other processes say about themselves while a phase runs:
each instance's /metrics (scraped before, every second during, and after the load), and
the CPU seconds of every process the runner started, from /proc/<pid>/stat."""

from __future__ import annotations

import http.client
import logging
import os
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families

from loadtest.bench_relay import HOST, Child, cpu_seconds

log = logging.getLogger("rendezvous.scaleout")

SCRAPE_TIMEOUT_SECONDS = 2.0
SAMPLE_INTERVAL_SECONDS = 1.0


def scrape(port: int) -> str:
    """The /metrics text of the instance on `port` (OSError or HTTPException if none)."""
    connection = http.client.HTTPConnection(HOST, port, timeout=SCRAPE_TIMEOUT_SECONDS)
    try:
        connection.request("GET", "/metrics")
        response = connection.getresponse()
        body = response.read().decode()
    finally:
        connection.close()
    if response.status != 200:
        raise http.client.HTTPException(f"GET /metrics on port {port} answered {response.status}")
    return body


@dataclass(frozen=True)
class InstanceMetrics:
    """The figures of one instance's /metrics the report uses; counters are totals since
    the instance started (or, after `since`, over an interval)."""

    connections: float = 0.0  # open WebSockets (a gauge)
    relayed: Mapping[str, float] = field(default_factory=dict)  # deliveries queued here, by type
    handled: float = 0.0  # client frames handled (outcome ok)
    refused: float = 0.0  # client frames refused (any other outcome)
    errors: float = 0.0  # error frames sent
    published: float = 0.0  # messages acknowledged by Redis
    publish_dropped: float = 0.0  # messages lost on a broken Redis link

    @property
    def relayed_total(self) -> float:
        return sum(self.relayed.values())

    @classmethod
    def parse(cls, text: str) -> InstanceMetrics:
        relayed: dict[str, float] = {}
        sums = {"handled": 0.0, "refused": 0.0, "errors": 0.0}
        single = {"connections": 0.0, "published": 0.0, "publish_dropped": 0.0}
        names = {
            "rendezvous_connections": "connections",
            "rendezvous_backend_publish_seconds_count": "published",
            "rendezvous_backend_publish_dropped_total": "publish_dropped",
        }
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                name, labels, value = sample.name, sample.labels, float(sample.value)
                if name == "rendezvous_messages_relayed_total":
                    relayed[labels["type"]] = value
                elif name == "rendezvous_messages_total":
                    sums["handled" if labels.get("outcome") == "ok" else "refused"] += value
                elif name == "rendezvous_errors_total":
                    sums["errors"] += value
                elif name in names:
                    single[names[name]] = value
        return cls(relayed=relayed, **sums, **single)

    def since(self, before: InstanceMetrics) -> InstanceMetrics:
        """The counters' increase from `before`; the gauge as it is now."""
        kinds = set(self.relayed) | set(before.relayed)
        return InstanceMetrics(
            connections=self.connections,
            relayed={k: self.relayed.get(k, 0.0) - before.relayed.get(k, 0.0) for k in kinds},
            handled=self.handled - before.handled,
            refused=self.refused - before.refused,
            errors=self.errors - before.errors,
            published=self.published - before.published,
            publish_dropped=self.publish_dropped - before.publish_dropped,
        )


def snapshot(instances: Sequence[Child], directory: Path, label: str) -> list[InstanceMetrics]:
    """Scrape every instance, keep each text as `<name>-<label>.txt` in `directory`."""
    directory.mkdir(parents=True, exist_ok=True)
    parsed = []
    for instance in instances:
        text = scrape(instance.port)
        (directory / f"{instance.name.replace(' ', '-')}-{label}.txt").write_text(text)
        parsed.append(InstanceMetrics.parse(text))
    return parsed


def tree_cpu_seconds(pid: int) -> float:
    """CPU seconds of a process and of its direct children (nginx's workers, which are
    not in their master's figure until it reaps them)."""
    total = cpu_seconds(pid)
    children = Path(f"/proc/{pid}/task/{pid}/children")
    if children.exists():
        for child in children.read_text().split():
            try:
                total += cpu_seconds(int(child))
            except FileNotFoundError:  # exited since the list was read
                continue
    return total


def machine_cpu_seconds() -> tuple[float, float]:
    """(busy, all) core-seconds of the whole machine since boot, from /proc/stat: what
    every process spent, this run's or not (idle and iowait are not busy)."""
    fields = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:9]]
    user, nice, system, idle, iowait, irq, softirq, steal = fields
    busy = user + nice + system + irq + softirq + steal
    ticks = os.sysconf("SC_CLK_TCK")
    return busy / ticks, (busy + idle + iowait) / ticks


@dataclass(frozen=True)
class Sample:
    """One second of a phase: when (`time.time()`), each instance's metrics (None: its
    scrape failed), and the CPU seconds so far of each process, by name."""

    at: float
    instances: tuple[InstanceMetrics | None, ...]
    cpu: Mapping[str, float]


class Sampler:
    """Scrapes the instances and reads every process's CPU once a second, in a thread,
    until `stop()`, which returns the samples (and raises what killed the thread)."""

    def __init__(
        self,
        instances: Sequence[Child],
        processes: Callable[[], Sequence[Child]],
        *,
        interval: float = SAMPLE_INTERVAL_SECONDS,
    ) -> None:
        self._instances = list(instances)
        self._processes = processes  # called each time: locust's appear after the start
        self._interval = interval
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._run, name="scaleout-sampler", daemon=True)
        self._error: BaseException | None = None
        self.samples: list[Sample] = []
        self.failed_scrapes = 0
        self.last_cpu: dict[str, float] = {}  # a process's last figure, also once it is gone

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> list[Sample]:
        self._stopping.set()
        self._thread.join()
        if self._error is not None:
            raise RuntimeError(f"the metrics sampler failed: {self._error!r}") from self._error
        return self.samples

    def _run(self) -> None:
        try:
            while True:
                self.samples.append(self._sample())
                if self._stopping.wait(self._interval):
                    return
        except Exception as exc:  # noqa: BLE001  # stop() raises it in the runner's thread
            self._error = exc

    def _sample(self) -> Sample:
        at = time.time()
        metrics: list[InstanceMetrics | None] = []
        for instance in self._instances:
            try:
                metrics.append(InstanceMetrics.parse(scrape(instance.port)))
            except (OSError, http.client.HTTPException) as exc:
                self.failed_scrapes += 1
                log.warning("%s: /metrics failed: %r", instance.name, exc)
                metrics.append(None)
        for process in self._processes():
            try:
                if process.name == "nginx":
                    self.last_cpu[process.name] = tree_cpu_seconds(process.pid)
                else:
                    self.last_cpu[process.name] = cpu_seconds(process.pid)
            except (FileNotFoundError, ProcessLookupError):  # exited and reaped
                continue
        return Sample(at=at, instances=tuple(metrics), cpu=dict(self.last_cpu))
