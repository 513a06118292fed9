"""Locust, headless, against nginx: the suite in loadtest/locustfile.py, in one process or
as a master and K workers (all on 127.0.0.1), writing its CSVs (with the full history:
every request type's rolling percentiles, once a second) and the suite's summary JSON
into the phase's directory."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from loadtest.bench_relay import HOST, Child, free_port, stop
from loadtest.scaleout.deadline import Deadline

LOCUSTFILE = Path(__file__).resolve().parents[1] / "locustfile.py"
CSV_PREFIX = "locust"
# How long a master waits for its workers to connect before it gives up.
WORKERS_CONNECT_SECONDS = 30
# After the master exits, how long its workers get to follow before they are stopped.
WORKERS_EXIT_SECONDS = 15.0
# What the runner sets for the suite itself; any other RENDEZVOUS_* tunable of the
# caller's environment reaches the suite as it is (loadtest/README.md, "Locust suite").
RUNNER_VARIABLES = (
    "RENDEZVOUS_JWT_SECRET",
    "RENDEZVOUS_WS_URLS",
    "RENDEZVOUS_SOURCE_ADDRESSES",
    "RENDEZVOUS_SUMMARY_JSON",
)


@dataclass(frozen=True)
class LoadPlan:
    """What locust runs in each phase."""

    users: int
    spawn_rate: float
    seconds: int
    stop_timeout: int
    workers: int  # 0: users run in locust's own process; K: a master and K workers
    source_addresses: tuple[str, ...]


@dataclass
class LocustRun:
    """One locust run's processes and, once it ended, its exit status and files."""

    directory: Path
    children: list[Child] = field(default_factory=list)
    started_at: float = 0.0  # time.time()
    ended_at: float = 0.0
    returncode: int | None = None

    def file(self, suffix: str) -> Path:
        """`stats`, `stats_history`, `failures` or `exceptions`: locust's CSV of that name."""
        return self.directory / f"{CSV_PREFIX}_{suffix}.csv"

    @property
    def summary_path(self) -> Path:
        return self.directory / "summary.json"

    def stop(self) -> None:
        stop(self.children)


def environment(plan: LoadPlan, *, secret: str, summary: Path) -> dict[str, str]:
    """The caller's environment without locust's, OpenTelemetry's or the runner's own
    variables, plus the signing key, the source addresses and the summary's path."""
    ours = ("LOCUST_", "OTEL_")
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(ours) and k not in RUNNER_VARIABLES and k != "JWT_SECRET_KEY"
    }
    env.update(
        RENDEZVOUS_JWT_SECRET=secret,
        RENDEZVOUS_SOURCE_ADDRESSES=",".join(plan.source_addresses),
        RENDEZVOUS_SUMMARY_JSON=str(summary),
    )
    return env


def start(run: LocustRun, plan: LoadPlan, *, host: str, secret: str) -> None:
    """Start locust (the master and its workers) into `run`, which the caller stops."""
    run.directory.mkdir(parents=True, exist_ok=True)
    env = environment(plan, secret=secret, summary=run.summary_path)
    base = [sys.executable, "-m", "locust", "-f", str(LOCUSTFILE), "--loglevel", "INFO"]
    headless = [
        "--headless", "-u", str(plan.users), "-r", f"{plan.spawn_rate:g}",
        "-t", f"{plan.seconds}s", "--stop-timeout", str(plan.stop_timeout),
        "--csv", str(run.directory / CSV_PREFIX), "--csv-full-history",
        "--only-summary", "--host", host,
    ]  # fmt: skip
    run.started_at = time.time()
    # cwd is the run's directory, so that no locust.conf of the caller's is read.
    if plan.workers == 0:
        run.children.append(_start("locust", [*base, *headless], run.directory, env, port=0))
        return
    port = free_port()
    master = [
        "--master", "--master-bind-host", HOST, "--master-bind-port", str(port),
        "--expect-workers", str(plan.workers),
        "--expect-workers-max-wait", str(WORKERS_CONNECT_SECONDS),
    ]  # fmt: skip
    run.children.append(
        _start("locust master", [*base, *headless, *master], run.directory, env, port=port)
    )
    worker = ["--worker", "--master-host", HOST, "--master-port", str(port)]
    for number in range(1, plan.workers + 1):
        name = f"locust worker {number}"
        run.children.append(_start(name, [*base, *worker], run.directory, env, port=port))


def _start(name: str, argv: list[str], directory: Path, env: dict[str, str], *, port: int) -> Child:
    return Child.start(name, argv, port=port, directory=directory, env=env)


def wait(run: LocustRun, deadline: Deadline) -> int:
    """Wait for the run to end by itself (within the deadline); its exit status. Workers
    still running once their master has gone are stopped (and the run counts as failed)."""
    first, *workers = run.children
    while first.process.poll() is None:
        try:
            first.process.wait(min(deadline.remaining("the locust run"), 1.0))
        except subprocess.TimeoutExpired:
            continue
    status = first.process.returncode
    late = time.monotonic() + WORKERS_EXIT_SECONDS
    for worker in workers:
        try:
            code = worker.process.wait(max(late - time.monotonic(), 0.0))
        except subprocess.TimeoutExpired:
            code = 1  # stopped below
        status = status or code
    run.stop()  # any worker left
    run.ended_at = time.time()
    run.returncode = status
    return status
