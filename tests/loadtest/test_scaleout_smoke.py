"""The scale-out runner (`python -m loadtest.scaleout`) in its smoke form (CI): N=2, a
locust master and one worker, a few users for a few seconds, against the real thing it
starts (redis-server, two `rendezvous serve`, nginx with ip_hash). It must pass both
phases with nothing lost or reordered, spread the clients over both instances, write
the report, its PNG plots and the collected files, and leave nothing it started running,
also when it is stopped by SIGTERM. Plus the runner's pure parts, without processes."""

from __future__ import annotations

import json
import os
import signal
import struct
import subprocess
import sys
from pathlib import Path
from typing import Any

from loadtest.scaleout.balancer import ip_hash_index, source_addresses, upstream_counts
from loadtest.scaleout.plotting import windowed_rates
from loadtest.scaleout.results import InstanceResult, PhaseResult
from loadtest.scaleout.scraping import InstanceMetrics

from tests.support import nginx as test_nginx
from tests.support.process import interrupt_when_ready

ROOT = Path(__file__).resolve().parents[2]
RUN_TIMEOUT_SECONDS = 100.0  # hard bound on one run; the smoke run takes ~35 s
STOP_TIMEOUT_SECONDS = 30.0  # after SIGTERM: the runner stops servers within 10 s each
# Short calls, so that each user gets through several in a few seconds (the locust smoke
# test's); the runner passes RENDEZVOUS_* tunables through to the suite.
SMOKE_TUNABLES = {
    "RENDEZVOUS_ROOM_SIZES": "2:1,4:1",
    "RENDEZVOUS_THINK_SECONDS": "0.1-0.3",
    "RENDEZVOUS_HOLD_SECONDS": "0.1-0.3",
    "RENDEZVOUS_CHURN_PROBABILITY": "1",
    "RENDEZVOUS_REJOIN_PAUSE_SECONDS": "0.1-0.2",
    "RENDEZVOUS_TRICKLE_GAP_MS": "0-5",
}
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def _runner(out: Path, *args: str) -> tuple[list[str], dict[str, str]]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RENDEZVOUS_", "LOCUST_"))}
    env.update(SMOKE_TUNABLES)
    argv = [sys.executable, "-m", "loadtest.scaleout", "--out", str(out), *args]
    return argv, env


def _alive(pid: int) -> bool:
    """Running (a zombie has exited; the runner's children are reaped by init once the
    runner is gone)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        return False
    return state != "Z"


def _announced_pids(output: str) -> dict[str, int]:
    """`started NAME: pid N...` lines of the runner's output."""
    pids = {}
    for line in output.splitlines():
        if line.strip().startswith("started "):
            name, rest = line.strip()[len("started ") :].split(": pid ", 1)
            pids[name] = int(rest.split(",")[0])
    return pids


def _png_size(path: Path) -> tuple[int, int]:
    data = path.read_bytes()
    assert data.startswith(PNG_SIGNATURE), path
    width, height = struct.unpack(">II", data[16:24])  # the IHDR chunk comes first
    return width, height


def test_runner_passes_both_phases_spreads_clients_and_writes_the_report(
    tmp_path: Path,
) -> None:
    out = tmp_path / "report"
    argv, env = _runner(
        out,
        "--instances", "2", "--workers", "1", "--users", "4", "--spawn-rate", "4",
        "--seconds", "4", "--stop-timeout", "10", "--addresses-per-instance", "4",
    )  # fmt: skip
    result = subprocess.run(
        argv,
        cwd=ROOT,
        env=env,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=RUN_TIMEOUT_SECONDS,
        check=False,
    )
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-6000:]
    results: dict[str, Any] = json.loads((out / "results.json").read_text())
    assert results["passed"] is True, results
    phases = results["phases"]
    assert [phase["instances"] for phase in phases] == [1, 2], phases

    for phase in phases:
        assert phase["ok"] is True and phase["problems"] == [], phase
        assert phase["locust_returncode"] == 0, phase
        totals = phase["totals"]
        assert totals["lost"] == totals["reordered"] == totals["duplicated"] == 0, totals
        assert totals["expected"] == totals["delivered"] > 0, totals
        relay = [r for r in phase["requests"] if r["name"] == "relay"]
        assert {r["type"] for r in relay} == {"offer", "answer", "ice_candidate"}, relay
        assert all(r["failures"] == 0 for r in phase["requests"]), phase["requests"]
        # What the instances relayed is what the clients checked, one request each.
        assert phase["relayed"] == sum(r["requests"] for r in relay), phase

    # The spread: nginx sent WebSockets to both instances, and both relayed messages.
    spread = phases[1]["per_instance"]
    assert [i["name"] for i in spread] == ["instance 1", "instance 2"], spread
    for instance in spread:
        assert instance["handshakes"] > 0, spread
        assert instance["relayed"] > 0 and instance["handled"] > 0, spread
        assert instance["cpu_seconds"] > 0 and instance["cpu_us_per_relayed"] > 0, spread
    # Pairs straddle the two instances: messages went through Redis.
    assert sum(instance["published"] for instance in spread) > 0, spread

    report = (out / "report.md").read_text()
    assert "**PASSED.**" in report, report
    assert "| **lost** | 0 | 0 |" in report, report
    assert "| **reordered** | 0 | 0 |" in report, report
    assert "throughput cannot scale here" in report, report
    assert "CPU µs per relayed message" in report, report
    assert "*Extrapolated, not measured:*" in report, report
    for png in ("latency.png", "throughput.png"):
        assert f"]({png})" in report, report
        width, height = _png_size(out / png)
        assert width > 500 and height > 500, (png, width, height)
    for number, count in ((1, 1), (2, 2)):
        phase_dir = out / f"phase-{number}"
        for name in ("stats", "stats_history", "failures"):
            assert (phase_dir / "locust" / f"locust_{name}.csv").stat().st_size > 0, name
        assert json.loads((phase_dir / "locust" / "summary.json").read_text())["ok"] is True
        for index in range(1, count + 1):
            for label in ("before", "after"):
                metrics = phase_dir / "metrics" / f"instance-{index}-{label}.txt"
                assert "rendezvous_connections" in metrics.read_text(), metrics

    pids = {name: pid for phase in phases for name, pid in phase["pids"].items()}
    assert {"redis-server", "nginx", "locust master", "locust worker 1"} <= set(pids), pids
    assert _announced_pids(result.stdout), result.stdout
    assert [name for name, pid in pids.items() if _alive(pid)] == [], pids


def test_sigterm_stops_everything_the_runner_started(tmp_path: Path) -> None:
    argv, env = _runner(tmp_path / "report", "--instances", "2", "--users", "2", "--seconds", "60")
    returncode, output, _ = interrupt_when_ready(
        argv,
        cwd=ROOT,
        env=env,
        # Until locust runs: by then Redis, the instance and nginx are up too.
        ready=lambda line: "started locust" in line,
        settle_seconds=2,  # calls in progress
        ready_timeout=RUN_TIMEOUT_SECONDS,
        stop_timeout=STOP_TIMEOUT_SECONDS,
    )
    assert returncode == 128 + signal.SIGTERM, output
    assert "interrupted; stopped everything" in output, output
    pids = _announced_pids(output)
    assert {"redis-server", "instance 1", "nginx", "locust"} <= set(pids), output
    assert [name for name, pid in pids.items() if _alive(pid)] == [], output


# The runner's parts that need no process.


def test_source_addresses_give_each_instance_as_many_by_nginx_ip_hash() -> None:
    addresses = source_addresses(5, 3)
    assert len(addresses) == len(set(addresses)) == 15
    assert all(a.startswith("127.0.") and a.endswith(".1") for a in addresses)
    # The runner's copy of the hash agrees with the tests' (tests/support/nginx.py),
    # which tests/scaleout checks against a real nginx.
    shares = [test_nginx.ip_hash_index(a, 3) for a in addresses]
    assert sorted(shares) == [0] * 5 + [1] * 5 + [2] * 5
    assert all(ip_hash_index(a, 3) == test_nginx.ip_hash_index(a, 3) for a in addresses)


def test_nginx_access_log_counts_handshakes_by_the_upstream_that_took_them(
    tmp_path: Path,
) -> None:
    log = tmp_path / "access.log"
    log.write_text(
        '127.0.1.1 101 "GET /webrtc/ws/a HTTP/1.1" upstream=127.0.0.1:8001 upstream_status=101\n'
        '127.0.2.1 101 "GET /webrtc/ws/b HTTP/1.1" upstream=127.0.0.1:8002 upstream_status=101\n'
        # A draining instance's 503 sent it on: the second upstream took it.
        '127.0.3.1 101 "GET /webrtc/ws/c HTTP/1.1" upstream=127.0.0.1:8001, 127.0.0.1:8002 '
        "upstream_status=503, 101\n"
        '127.0.1.1 200 "GET /webrtc/config HTTP/1.1" upstream=127.0.0.1:8001 upstream_status=200\n'
    )
    assert upstream_counts(log, [8001, 8002]) == [1, 2]
    assert upstream_counts(tmp_path / "none.log", [8001]) == [0]


def test_a_phase_fails_on_lost_messages_or_an_instance_left_without_load(
    tmp_path: Path,
) -> None:
    def instance(name: str, relayed: float, handshakes: int) -> InstanceResult:
        metrics = InstanceMetrics(relayed={"offer": relayed}, handled=relayed)
        return InstanceResult(name, 1, 1, metrics, 1.0, handshakes, 1.0)

    clean = {"ok": True, "problems": 0, "totals": {"delivered": 10, "lost": 0}}
    phase = PhaseResult(2, tmp_path, locust_returncode=0, summary=clean)
    phase.instances = [instance("instance 1", 5, 3), instance("instance 2", 5, 2)]
    assert phase.ok and phase.problems() == []

    phase.instances[1] = instance("instance 2", 0, 0)
    assert any("instance 2 served no load" in p for p in phase.problems()), phase.problems()

    lost = {"ok": False, "problems": 1, "totals": {"delivered": 9, "lost": 1}}
    failed = PhaseResult(1, tmp_path, locust_returncode=1, summary=lost)
    failed.instances = [instance("instance 1", 9, 3)]
    assert failed.problems() == [
        "locust exited with status 1",
        "the suite counted 1 problem(s)",
    ]


def test_metrics_are_read_from_the_instances_exposition() -> None:
    text = (
        "rendezvous_connections 3.0\n"
        'rendezvous_messages_total{type="offer",outcome="ok"} 4.0\n'
        'rendezvous_messages_total{type="offer",outcome="rate_limited"} 1.0\n'
        'rendezvous_messages_relayed_total{type="offer"} 4.0\n'
        'rendezvous_messages_relayed_total{type="answer"} 2.0\n'
        "rendezvous_backend_publish_seconds_count 6.0\n"
    )
    after = InstanceMetrics.parse(text)
    assert (after.connections, after.handled, after.refused, after.published) == (3, 4, 1, 6)
    before = InstanceMetrics(relayed={"offer": 1.0}, handled=1.0)
    delta = after.since(before)
    assert delta.relayed_total == 5 and delta.handled == 3 and delta.connections == 3


def test_rates_are_taken_over_a_sliding_window() -> None:
    # A distributed locust's counts reach the master in steps every 3 s.
    times = [0.0, 1.0, 2.0, 3.0, 4.0, 5.0, 6.0]
    totals = [0.0, 0.0, 0.0, 30.0, 30.0, 30.0, 60.0]
    assert windowed_rates(times, totals, 3.0) == ([3.0, 4.0, 5.0, 6.0], [10.0] * 4)
