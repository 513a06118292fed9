"""The bench's `redis` part (`python -m loadtest.bench --only redis`): redis-benchmark's
CSV parsed, its options parsed and refused, and a real quick run against the redis-server
and subscribers it starts: every case measured, every subscriber still subscribed and
drained, the JSON written, and nothing it started left running, also after SIGTERM."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from loadtest.bench import cli, publishing
from loadtest.bench.publishing import PublishFigures

from tests.support.process import interrupt_when_ready, require_program

ROOT = Path(__file__).resolve().parents[2]
RUN_TIMEOUT_SECONDS = 60.0  # hard bound on one quick run; it takes ~3 s
STOP_TIMEOUT_SECONDS = 30.0  # after SIGTERM: subscribers 5 s, redis-server 10 s at most
GONE_TIMEOUT_SECONDS = 5.0
SUBSCRIBERS = 3

CSV_7 = (
    '"test","rps","avg_latency_ms","min_latency_ms","p50_latency_ms","p95_latency_ms",'
    '"p99_latency_ms","max_latency_ms"\n'
    '"PUBLISH bench-publish","584795.31","1.021","0.184","0.895","1.983","2.247","2.455"\n'
)


def test_csv_gives_the_rate_and_latencies() -> None:
    line = publishing.parse_csv(CSV_7)
    assert line.requests_per_second == pytest.approx(584795.31)
    assert line.latency_p50_ms == pytest.approx(0.895)
    assert line.latency_p99_ms == pytest.approx(2.247)
    # redis-benchmark before 6.2: one row, no header, no latencies.
    old = publishing.parse_csv('"PUBLISH bench-publish","35000.00"\n')
    assert old.requests_per_second == 35000.0
    assert old.latency_p50_ms is old.latency_p99_ms is None


@pytest.mark.parametrize(
    "text",
    [
        "",
        CSV_7.splitlines()[0] + "\n",  # a header without a row
        CSV_7 + CSV_7.splitlines()[1] + "\n",  # two rows
        '"test","rps"\n"PUBLISH x","-nan"\n',
        '"test","rps"\n"PUBLISH x","0.00"\n',
        '"test","rps"\n"PUBLISH x","fast"\n',
    ],
)
def test_csv_without_one_positive_rate_is_refused(text: str) -> None:
    with pytest.raises(ValueError):
        publishing.parse_csv(text)


def test_publish_options_have_quick_and_full_defaults() -> None:
    full = cli.parse_args(["--only", "redis"]).publish
    assert (full.payload_bytes, full.pipelined_requests, full.unpipelined_requests) == (
        1200,
        200_000,
        50_000,
    )
    assert (full.rounds, full.clients) == (3, 50)
    quick = cli.parse_args(["--only", "redis", "--quick", "--publish-bytes", "64"]).publish
    assert (quick.payload_bytes, quick.requests(16), quick.requests(1), quick.rounds) == (
        64,
        50_000,
        10_000,
        1,
    )
    assert "redis" in cli.parse_args([]).parts  # a default run includes it


@pytest.mark.parametrize(
    "args",
    [
        ["--publish-requests", "5"],
        ["--publish-requests", "5,6,7"],
        ["--publish-requests", "0,10"],
        ["--publish-bytes", "0"],
        ["--publish-rounds", "0"],
        ["--only", "redis,nothing"],
    ],
)
def test_bad_publish_options_are_refused(args: list[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        cli.parse_args(args)
    assert exited.value.code == 2


def _figures(rate: float, cpu: float, after: int, delivered: float | None) -> PublishFigures:
    return PublishFigures(
        command="PUBLISH",
        subscribers=3,
        pipeline=16,
        clients=50,
        requests=1000,
        payload_bytes=1200,
        requests_per_second=rate,
        latency_p50_ms=None,
        latency_p99_ms=1.0,
        delivered_per_second=delivered,
        subscriber_buffer_peak_bytes=int(rate),
        redis_cpu_seconds=cpu,
        redis_cpu_seconds_per_1k=cpu,
        subscribers_after=after,
    )


def test_median_of_rounds_takes_each_figure_and_the_fewest_subscribers() -> None:
    rounds = [_figures(10, 0.3, 3, 9), _figures(30, 0.1, 2, None), _figures(20, 0.2, 3, 7)]
    middle = publishing.median(rounds)
    assert middle.requests_per_second == 20
    assert middle.redis_cpu_seconds == pytest.approx(0.2)
    assert middle.redis_cpu_seconds_per_1k == pytest.approx(0.2)  # per 1,000 of 1,000
    assert middle.delivered_per_second == 8  # of the rounds that have one
    assert middle.latency_p50_ms is None
    assert middle.subscriber_buffer_peak_bytes == 20
    assert middle.subscribers_after == 2


def test_missing_redis_benchmark_fails_with_what_to_install(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(RuntimeError, match="apt-get install redis-tools"):
        publishing.require_programs()


# Real runs: the bench as a user runs it, in a process of its own.


def _bench(*args: str) -> list[str]:
    require_program("redis-benchmark", package="redis-tools")
    require_program("redis-server", package="redis-server")
    return [sys.executable, "-m", "loadtest.bench", "--only", "redis", *args]


def _alive(pid: int) -> bool:
    """Running (a zombie has exited)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        return False
    return state != "Z"


def _name(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/comm").read_text().strip()
    except FileNotFoundError:
        return "?"


def _descendants(pid: int) -> set[int]:
    parents: dict[int, int] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except (FileNotFoundError, ProcessLookupError):
            continue
        parents[int(stat.parent.name)] = int(fields[1])
    found: set[int] = set()
    frontier = {pid}
    while frontier:
        frontier = {child for child, parent in parents.items() if parent in frontier} - found
        found |= frontier
    return found


def _still_running(pids: set[int]) -> list[int]:
    """The pids still running after a short grace (init reaps the orphans)."""
    deadline = time.monotonic() + GONE_TIMEOUT_SECONDS
    while (alive := sorted(p for p in pids if _alive(p))) and time.monotonic() < deadline:
        time.sleep(0.05)
    return alive


def test_quick_run_measures_every_case_with_subscribers_drained(tmp_path: Path) -> None:
    report = tmp_path / "bench.json"
    argv = _bench("--quick", "--publish-requests", "20000,4000", "--json", str(report))
    result = subprocess.run(
        argv,
        cwd=ROOT,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=RUN_TIMEOUT_SECONDS,
        check=False,
    )
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-6000:]
    assert "Redis PUBLISH: redis-benchmark" in output, output
    assert "installing peer" not in output and "peerjs  " not in output, output
    run: dict[str, Any] = json.loads(report.read_text())["redis"]
    figures = run["figures"]
    cases = {(f["command"], f["subscribers"], f["pipeline"]) for f in figures}
    assert cases == {
        (command, subscribers, pipeline)
        for command in run["commands"]
        for subscribers in (0, SUBSCRIBERS)
        for pipeline in (16, 1)
    }, figures
    assert "PUBLISH" in run["commands"], run
    for f in figures:
        assert f["requests"] == (20000 if f["pipeline"] == 16 else 4000), f
        assert f["payload_bytes"] == 1200 and f["clients"] == 50, f
        assert f["requests_per_second"] > 0 and f["redis_cpu_seconds"] >= 0, f
        if f["subscribers"]:
            # Every subscriber stayed and read everything: the run waited for it.
            assert f["subscribers_after"] == SUBSCRIBERS, f
            assert 0 < f["delivered_per_second"] <= f["requests_per_second"], f
        else:
            assert f["delivered_per_second"] is None, f
    assert sum(f["redis_cpu_seconds"] for f in figures) > 0, figures
    started = {run["redis_pid"], *run["subscriber_pids"]}
    assert len(started) == 1 + SUBSCRIBERS, run
    assert _still_running(started) == [], run


def test_sigterm_stops_redis_the_subscribers_and_redis_benchmark(tmp_path: Path) -> None:
    # Requests enough that it is still publishing when the signal comes.
    argv = _bench("--publish-requests", "100000000,100000000", "--publish-rounds", "1")
    returncode, output, started = interrupt_when_ready(
        argv,
        cwd=ROOT,
        ready=lambda line: line.startswith("redis: redis-server"),
        settle_seconds=1,  # redis-benchmark is running by now
        ready_timeout=RUN_TIMEOUT_SECONDS,
        stop_timeout=STOP_TIMEOUT_SECONDS,
        before_signal=lambda pid: {child: _name(child) for child in _descendants(pid)},
    )
    assert returncode == 128 + signal.SIGTERM, output
    names = sorted(started.values())
    assert {"redis-server", "redis-benchmark"} <= set(names), (names, output)
    assert len(started) >= 2 + SUBSCRIBERS, (names, output)  # and the subscribers
    assert _still_running(set(started)) == [], (names, output)
