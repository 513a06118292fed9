"""Tracing overhead on the relay path: runs bench_relay.py with `--tracing off`, `unsampled`
and `sampled` in turn, `--rounds` times, and prints every run and the medians per mode.

    .venv/bin/python loadtest/bench_tracing.py [--rounds 3] [--json PATH] [bench_relay options]

Any other option goes to every bench_relay.py run as is (`--seconds 5`, `--redis`,
`--pairs 50` ...). Each round runs the three modes in a rotated order, so that no mode is
always the one that runs first or last; on a shared machine the spread between rounds
shows how far to trust a difference. Each run is a bench_relay.py process of its own,
which starts and stops its own servers (and Redis and OTLP sink) on 127.0.0.1.
"""

from __future__ import annotations

import argparse
import os
import shlex
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson

BENCH_RELAY = Path(__file__).with_name("bench_relay.py")
MODES = ("off", "unsampled", "sampled")
# On top of the run's own length: start-up (servers, Redis, sink, clients) and shutdown.
RUN_SPARE_SECONDS = 180.0
# After SIGTERM, how long a bench_relay.py run gets to stop what it started before SIGKILL.
STOP_TIMEOUT_SECONDS = 20.0
# Span names (rendezvous.telemetry.spans) and their short forms in the table.
SPAN_COLUMNS = (
    ("rendezvous.relay", "relay"),
    ("rendezvous.publish", "publish"),
    ("rendezvous.deliver", "deliver"),
)


@dataclass(frozen=True)
class Run:
    """One bench_relay.py run: its round, its mode and the figures it wrote (`--json`)."""

    round: int
    mode: str
    result: dict[str, Any]

    def figure(self, name: str) -> float:
        value = self.result[name]
        return float("nan") if value is None else float(value)

    @property
    def spans(self) -> dict[str, int] | None:
        sink = self.result["sink"]
        return None if sink is None else dict(sink["spans"])

    @property
    def missing(self) -> str:
        """Per-message spans missing at the sink, "!" if a server logged its queue full."""
        sink, missing = self.result["sink"], self.result["spans_missing"]
        if sink is None or missing is None:
            return "-"
        return f"{missing:,}{'!' if sink['queue_full_warnings'] else ''}"

    def per_offer(self) -> str:
        """Spans the sink received per offer the clients sent, for each per-message span."""
        spans = self.spans
        if spans is None:
            return "-"
        offers = max(int(self.result["offers_sent"]), 1)
        expected = SPAN_COLUMNS if self.result["redis"] else SPAN_COLUMNS[:1]
        return " ".join(f"{short} {spans.get(name, 0) / offers:.3f}" for name, short in expected)


def run_once(
    options: Sequence[str], mode: str, *, directory: Path, timeout: float
) -> dict[str, Any] | str:
    """One bench_relay.py run: the figures it wrote, or its command and output if it failed."""
    json_path = directory / f"run-{time.monotonic_ns()}.json"
    argv = [sys.executable, str(BENCH_RELAY), *options, "--tracing", mode, "--json", str(json_path)]
    process = subprocess.Popen(
        argv,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,  # Ctrl-C reaches us only; we stop it with one SIGTERM
    )
    try:
        output, _ = process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        output = f"bench_tracing: no result within {timeout:g}s\n"
    finally:
        # On SIGTERM it stops what it started (also when we are interrupted); SIGKILL if stuck.
        if process.poll() is None:
            process.terminate()
            try:
                process.wait(STOP_TIMEOUT_SECONDS)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
    if process.returncode != 0 or not json_path.exists():
        return f"{shlex.join(argv)}\nexited with code {process.returncode}\n{output}"
    result: dict[str, Any] = orjson.loads(json_path.read_bytes())
    return result


def rotated(round_index: int) -> tuple[str, ...]:
    shift = round_index % len(MODES)
    return MODES[shift:] + MODES[:shift]


def print_table(runs: Sequence[Run], options: Sequence[str], rounds: int) -> None:
    first = runs[0].result
    where = "two instances via Redis" if first["redis"] else "single instance, memory backend"
    print()
    print("Tracing overhead on the relay path")
    print(f"  bench_relay.py {shlex.join(options) or '(defaults)'}, {rounds} round(s)")
    print(
        f"  {where}, {first['pairs']} pairs, {first['seconds']:g} s windows, {os.cpu_count()} CPUs"
    )
    print()
    header = (
        f"{'round':>6}  {'mode':<9}  {'msg/s':>8}  {'p50 ms':>6}  {'p99 ms':>6}  "
        f"{'server µs/msg':>13}  {'spans':>8}  {'missing':>7}  spans per offer sent"
    )
    print(header)
    for run in runs:
        spans = run.spans
        print(
            f"{run.round:>6}  {run.mode:<9}  {run.figure('messages_per_second'):>8,.0f}  "
            f"{run.figure('latency_p50_ms'):>6.2f}  {run.figure('latency_p99_ms'):>6.2f}  "
            f"{run.figure('server_cpu_us_per_message'):>13.1f}  "
            f"{'-' if spans is None else f'{sum(spans.values()):,}':>8}  "
            f"{run.missing:>7}  {run.per_offer()}"
        )
    print()
    print(
        f"{'median':>6}  {'mode':<9}  {'msg/s':>8} {'vs off':>6}  {'p50 ms':>6}  {'p99 ms':>6}  "
        f"{'server µs/msg':>13} {'vs off':>14}"
    )
    medians = summarize(runs)
    base = medians.get("off")
    for mode, median in medians.items():
        rate, cost = median["messages_per_second"], median["server_cpu_us_per_message"]
        rate_change = cost_change = ""
        if base is not None and mode != "off":
            rate_change = f"{rate / base['messages_per_second'] - 1:+.0%}"
            extra = cost - base["server_cpu_us_per_message"]
            cost_change = f"{extra:+.1f} ({cost / base['server_cpu_us_per_message'] - 1:+.0%})"
        line = (
            f"{'':>6}  {mode:<9}  {rate:>8,.0f} {rate_change:>6}  "
            f"{median['latency_p50_ms']:>6.2f}  {median['latency_p99_ms']:>6.2f}  "
            f"{cost:>13.1f} {cost_change:>14}"
        )
        print(line.rstrip())
    print()
    print("  msg/s: offers relayed per second in the window (closed loop: bounded by the machine)")
    print("  p50/p99: one-way latency, client to client; server µs/msg: CPU of the server")
    print("    process(es), all threads (the span exporter's too), per relayed offer")
    print("  spans: what the OTLP sink received over the whole run (warm-up and drain too);")
    print("    spans per offer sent: when sampled, each offer the clients sent should give one")
    print("    relay span (and with --redis one publish and one deliver span);")
    print("    missing: those the sink never received (0 when unsampled: none are expected);")
    print("    ! = a server logged that its batch span processor's queue was full (it dropped)")
    print("  The machine is shared: compare the rounds before trusting a difference, and")
    print("  prefer server µs/msg, which depends less on the other processes than msg/s.")


def summarize(runs: Sequence[Run]) -> dict[str, dict[str, float]]:
    """The median of each figure per mode, the modes in MODES order."""
    names = (
        "messages_per_second",
        "latency_p50_ms",
        "latency_p99_ms",
        "server_cpu_us_per_message",
    )
    medians: dict[str, dict[str, float]] = {}
    for mode in MODES:
        of_mode = [run for run in runs if run.mode == mode]
        if of_mode:
            medians[mode] = {
                name: statistics.median(run.figure(name) for run in of_mode) for name in names
            }
    return medians


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0] if __doc__ else None,
        epilog="Any other option goes to bench_relay.py.",
    )
    parser.add_argument("--rounds", type=int, default=3, help="rounds of the three modes (3)")
    parser.add_argument("--json", type=Path, help="also write every run and the medians here")
    args, options = parser.parse_known_args(argv)
    if args.rounds < 1:
        parser.error("--rounds must be at least 1")
    if any(option.split("=")[0] in ("--tracing", "--json") for option in options):
        parser.error("--tracing is what this script varies; --json is its own")
    # A SIGTERM unwinds like Ctrl-C, so that the run in progress is stopped too.
    signal.signal(signal.SIGTERM, lambda signum, _frame: sys.exit(128 + signum))
    timeout = RUN_SPARE_SECONDS + _seconds(options)
    runs: list[Run] = []
    with tempfile.TemporaryDirectory(prefix="bench-tracing-") as directory:
        for round_index in range(args.rounds):
            for mode in rotated(round_index):
                print(f"round {round_index + 1}/{args.rounds}: {mode} ...", end=" ", flush=True)
                outcome = run_once(options, mode, directory=Path(directory), timeout=timeout)
                if isinstance(outcome, str):
                    print("failed")
                    print(outcome, file=sys.stderr)
                    return 1
                run = Run(round_index + 1, mode, outcome)
                runs.append(run)
                print(
                    f"{run.figure('messages_per_second'):,.0f} msg/s, "
                    f"{run.figure('server_cpu_us_per_message'):.1f} µs/msg"
                )
    print_table(runs, options, args.rounds)
    if args.json is not None:
        document = {
            "bench_relay_options": list(options),
            "rounds": args.rounds,
            "cpus": os.cpu_count(),
            "runs": [{"round": r.round, "mode": r.mode, **r.result} for r in runs],
            "medians": summarize(runs),
        }
        args.json.write_bytes(orjson.dumps(document, option=orjson.OPT_INDENT_2) + b"\n")
    return 0


def _seconds(options: Sequence[str]) -> float:
    """The warm-up and window the runs will use, to bound each run's wait."""
    known = argparse.ArgumentParser(add_help=False)
    known.add_argument("--seconds", type=float, default=10.0)
    known.add_argument("--warmup", type=float, default=2.0)
    parsed, _ = known.parse_known_args(options)
    return float(parsed.seconds) + float(parsed.warmup)


if __name__ == "__main__":
    sys.exit(main())
