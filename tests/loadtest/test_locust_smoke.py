"""The locust suite's smoke form (CI): loadtest/locustfile.py run headless for a few
seconds, as a subprocess (gevent's monkey-patching stays out of pytest), against real
`rendezvous serve` processes. It must pass cleanly against a healthy service, one
instance or two sharing a Redis, and fail (exit status, locust's failures and its own
counts) when the service refuses the offers."""

from __future__ import annotations

import asyncio
import csv
import json
import os
import re
import signal
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from tests.support.instances import instance_env, running_instances
from tests.support.process import serving
from tests.support.redis import RedisServer
from tests.support.tokens import TEST_SECRET

LOCUSTFILE = Path(__file__).resolve().parents[2] / "loadtest" / "locustfile.py"
LOCUST_TIMEOUT_SECONDS = 60.0  # hard bound on one run; a run takes ~5-10 s
# Short calls, so that each user gets through several in a few seconds; pairs and groups
# of four; every call churns.
SMOKE_TUNABLES = {
    "RENDEZVOUS_ROOM_SIZES": "2:1,4:1",
    "RENDEZVOUS_THINK_SECONDS": "0.1-0.3",
    "RENDEZVOUS_HOLD_SECONDS": "0.1-0.3",
    "RENDEZVOUS_CHURN_PROBABILITY": "1",
    "RENDEZVOUS_REJOIN_PAUSE_SECONDS": "0.1-0.2",
    "RENDEZVOUS_SDP_BYTES": "2000-6000",
    "RENDEZVOUS_CANDIDATES": "5-15",
    "RENDEZVOUS_TRICKLE_GAP_MS": "0-5",
    "RENDEZVOUS_DEADLINE_SECONDS": "5",
}
RELAYED = [("offer", "relay"), ("answer", "relay"), ("ice_candidate", "relay")]
EVERY_REQUEST = [
    *RELAYED,
    ("GET", "/webrtc/config"),
    ("room_state", "join"),
    ("user_joined", "presence"),
    ("user_left", "presence"),
]


@dataclass
class LocustRun:
    returncode: int
    output: str
    stats: dict[tuple[str, str], dict[str, str]]  # (Type, Name) -> the CSV row
    failures: list[dict[str, str]]
    exceptions: list[dict[str, str]]
    summary: dict[str, Any]

    def requests(self, key: tuple[str, str]) -> int:
        return int(self.stats[key]["Request Count"]) if key in self.stats else 0

    def failed(self, key: tuple[str, str]) -> int:
        return int(self.stats[key]["Failure Count"]) if key in self.stats else 0

    def explain(self) -> str:
        return f"exit {self.returncode}\n{self.output[-6000:]}"


async def run_locust(
    tmp_path: Path,
    host: str,
    *,
    users: int,
    seconds: int,
    locust_args: tuple[str, ...] = (),
    **variables: str,
) -> LocustRun:
    """Run the suite headless against `host`; `variables` override SMOKE_TUNABLES."""
    out = tmp_path / "locust"
    out.mkdir()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RENDEZVOUS_", "LOCUST_"))}
    env.update(SMOKE_TUNABLES)
    env.update(RENDEZVOUS_JWT_SECRET=TEST_SECRET, RENDEZVOUS_SUMMARY_JSON=str(out / "summary.json"))
    env.update(variables)
    argv = [
        sys.executable, "-m", "locust", "-f", str(LOCUSTFILE), "--headless",
        "-u", str(users), "-r", str(users), "-t", f"{seconds}s",
        "--stop-timeout", "20",  # users finish the call they are in
        "--csv", str(out / "smoke"), "--only-summary", "--host", host, *locust_args,
    ]  # fmt: skip
    returncode, output = await asyncio.to_thread(_run_bounded, argv, cwd=tmp_path, env=env)
    summary_path = out / "summary.json"
    assert summary_path.exists(), f"no summary written (exit {returncode})\n{output[-6000:]}"
    return LocustRun(
        returncode=returncode,
        output=output,
        stats={(r["Type"], r["Name"]): r for r in _rows(out / "smoke_stats.csv")},
        failures=_rows(out / "smoke_failures.csv"),
        exceptions=_rows(out / "smoke_exceptions.csv"),
        summary=json.loads(summary_path.read_text()),
    )


def _run_bounded(argv: list[str], *, cwd: Path, env: dict[str, str]) -> tuple[int, str]:
    """Run locust in its own process group (with --processes it forks workers), and end
    the whole group if it overruns; its exit status and output."""
    process = subprocess.Popen(
        argv,
        cwd=cwd,  # no locust.conf or pyproject.toml of ours is read
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    try:
        output, _ = process.communicate(timeout=LOCUST_TIMEOUT_SECONDS)
    except subprocess.TimeoutExpired as exc:
        os.killpg(process.pid, signal.SIGKILL)
        output, _ = process.communicate()
        message = f"locust ran over {LOCUST_TIMEOUT_SECONDS} s:\n{output[-6000:]}"
        raise AssertionError(message) from exc
    return process.returncode, output


def _rows(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as file:
        return list(csv.DictReader(file))


def assert_clean(run: LocustRun, *, room_sizes: set[str]) -> None:
    """Every kind of request happened, none failed, and the suite's own counts agree;
    calls of each of `room_sizes` ran."""
    assert run.returncode == 0, run.explain()
    for key in EVERY_REQUEST:
        assert run.requests(key) > 0, (key, run.explain())
        assert run.failed(key) == 0, (key, run.explain())
    assert run.failed(("", "Aggregated")) == 0, run.explain()
    assert run.failures == [], run.explain()
    assert run.exceptions == [], run.explain()
    summary = run.summary
    assert summary["ok"] is True and summary["problems"] == 0, summary
    totals = summary["totals"]
    assert totals["lost"] == totals["reordered"] == totals["duplicated"] == 0, totals
    assert totals["expected"] == totals["delivered"] > 0, totals
    counts = summary["counts"]
    assert room_sizes <= set(counts["rooms"]) <= {"2", "4"}, counts["rooms"]
    sessions = counts["sessions"]
    assert sessions.get("completed", 0) > 0, sessions
    assert set(sessions) <= {"completed", "abandoned"}, sessions
    # Every call started was counted to its end, also those of a distributed run's workers.
    assert sum(sessions.values()) == sum(counts["rooms"].values()), counts


async def test_suite_passes_against_one_instance(tmp_path: Path) -> None:
    env = instance_env(tmp_path)
    async with serving(env=env, log_dir=tmp_path / "serve") as served:
        run = await run_locust(tmp_path, served.http, users=6, seconds=4)
    # ~20 calls, each a pair or a group of four at even odds: both kinds ran.
    assert_clean(run, room_sizes={"2", "4"})


async def test_suite_passes_across_two_instances_sharing_redis(
    tmp_path: Path, redis_server: RedisServer
) -> None:
    """Each room's members are spread over both instances (RENDEZVOUS_WS_URLS), so every
    relayed message of a pair crosses Redis; both instances deliver some. Locust runs
    distributed (a master and two worker processes), whose counts must all reach the
    master."""
    env = instance_env(tmp_path, redis_url=redis_server.url)
    async with running_instances(2, env=env, log_dir=tmp_path) as instances:
        urls = ",".join(instance.http for instance in instances)
        run = await run_locust(
            tmp_path,
            instances[0].http,
            users=4,
            seconds=4,
            locust_args=("--processes", "2"),
            RENDEZVOUS_WS_URLS=urls,
        )
        async with httpx.AsyncClient(timeout=5) as http:
            metrics = [(await http.get(f"{i.http}/metrics")).text for i in instances]
    assert_clean(run, room_sizes=set())  # fewer calls: maybe all of one size
    for text in metrics:
        assert _relayed(text, "offer") > 0, text
        assert _relayed(text, "ice_candidate") > 0, text


def _relayed(metrics: str, kind: str) -> float:
    match = re.search(rf'^rendezvous_messages_relayed_total{{type="{kind}"}} (\S+)$', metrics, re.M)
    return float(match.group(1)) if match else 0.0


async def test_suite_fails_when_the_service_refuses_offers(tmp_path: Path) -> None:
    """Offers over WEBRTC_MAX_MESSAGE_BYTES (1 KiB, the lowest allowed) are refused with
    message_too_large and a 1009 close: never delivered. The run must say so. (Offers stay
    under 4 KiB: beyond 4x the limit the WebSocket layer closes without the error frame.)"""
    env = instance_env(tmp_path, WEBRTC_MAX_MESSAGE_BYTES="1024")
    async with serving(env=env, log_dir=tmp_path / "serve") as served:
        run = await run_locust(
            tmp_path,
            served.http,
            users=2,
            seconds=2,
            RENDEZVOUS_SDP_BYTES="2000-3000",
            RENDEZVOUS_DEADLINE_SECONDS="1.5",
        )
    assert run.returncode != 0, run.explain()
    assert run.failed(("offer", "relay")) > 0, run.explain()
    assert run.failed(("error", "message_too_large")) > 0, run.explain()
    assert "MessageLost" in {row["Error"].split("(")[0] for row in run.failures}, run.failures
    summary = run.summary
    assert summary["ok"] is False, summary
    assert summary["counts"]["lost"].get("offer", 0) > 0, summary
    assert summary["counts"]["server_error"].get("message_too_large", 0) > 0, summary
    assert "Rendezvous checks failed" in run.output, run.explain()
