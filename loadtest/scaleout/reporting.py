"""The run's report: report.md (the verdict, what ran, the checks' counts, the spread over
the instances, CPU per message per instance, latency; what is measured and what is
extrapolated), the plots beside it, and results.json with the same figures."""

from __future__ import annotations

import json
import os
import platform
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from loadtest.scaleout import plotting
from loadtest.scaleout.driving import LoadPlan
from loadtest.scaleout.results import RUNNER, PhaseResult

NONE = "-"  # a figure that does not apply or is missing
LATENCY_PNG = "latency.png"
THROUGHPUT_PNG = "throughput.png"
# The suite's counts shown for each phase: (summary key, what the report calls it).
CHECKS = (
    ("expected", "expected (messages sent + presence events due)"),
    ("delivered", "delivered"),
    ("lost", "**lost**"),
    ("reordered", "**reordered**"),
    ("duplicated", "duplicated"),
    ("misrouted", "misrouted"),
    ("late", "late (arrived after being counted lost)"),
    ("unexpected_event", "unexpected presence events"),
    ("server_error", "server error frames"),
    ("unexpected_close", "connections dropped"),
    ("join_failed", "failed joins"),
    ("config_failed", "failed /webrtc/config fetches"),
    ("client_error", "suite errors"),
)


@dataclass(frozen=True)
class RunInfo:
    """What the report says about the run as a whole."""

    command: str
    started: str  # ISO 8601, UTC
    plan: LoadPlan
    instances: int
    versions: dict[str, str]  # program -> version
    error: str | None = None  # why the run stopped before its end, if it did


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        return platform.processor() or "?"
    return platform.processor() or "?"


def _plural(count: int, word: str) -> str:
    return f"{count} {word}{'' if count == 1 else 's'}"


def _ms(value: float | None) -> str:
    return NONE if value is None else f"{value:.0f}"  # locust keeps whole ms below 100


def _us(value: float | None) -> str:
    return NONE if value is None else f"{value:,.1f}"


def _count(value: object) -> str:
    return f"{value:,}" if isinstance(value, int) else NONE


def _share(seconds: float, window: float) -> str:
    return f"{seconds / window:.0%}" if window > 0 else NONE


def write(phases: Sequence[PhaseResult], info: RunInfo, directory: Path) -> Path:
    """Write the plots, report.md and results.json into `directory`; report.md's path."""
    if phases:
        plotting.plot_latency(phases, directory / LATENCY_PNG)
        plotting.plot_throughput(phases, directory / THROUGHPUT_PNG)
    report = directory / "report.md"
    report.write_text(markdown(phases, info, directory))
    (directory / "results.json").write_text(json.dumps(as_json(phases, info), indent=2) + "\n")
    return report


def passed(phases: Sequence[PhaseResult], info: RunInfo) -> bool:
    expected = 2 if info.instances > 1 else 1
    return info.error is None and len(phases) == expected and all(p.ok for p in phases)


def markdown(phases: Sequence[PhaseResult], info: RunInfo, directory: Path) -> str:
    out: list[str] = []
    cores = os.cpu_count() or 0
    top = phases[-1] if phases else None
    n = info.instances
    out += [
        "# Rendezvous scale-out run",
        "",
        f"{info.started} · `{info.command}`",
        "",
    ]
    if passed(phases, info):
        spread = top.instance_count if top else 0
        out += [
            f"**PASSED.** With 1 instance and with {n}, every message and presence event the "
            "suite expected was delivered, in order, exactly once, to the right member: "
            "**0 lost, 0 reordered**. nginx spread the clients over all "
            f"{_plural(spread, 'instance')} (see *Spread*).",
        ]
    else:
        out.append("**FAILED.**")
        if info.error:
            out.append(f"The run stopped early: {info.error}")
        for phase in phases:
            for problem in phase.problems():
                out.append(f"- {_plural(phase.instance_count, 'instance')}: {problem}")
    out += [
        "",
        f"> **This machine has {cores} CPU cores.** The {_plural(n, 'instance')}, Redis, nginx "
        "and the load generator all share them, so throughput cannot scale here: more "
        "instances only add processes competing for the same cores. What this run proves is "
        f"correctness at N = {n} (messages crossing instances through Redis arrive, in order, "
        "once) and what each message costs each process in CPU. Figures marked "
        "*extrapolated* are computed from those costs; they were not measured.",
        "",
    ]
    out += _setup(phases, info)
    out += _checks(phases)
    for phase in phases:
        out += _spread(phase)
    out += _latency(phases)
    out += [
        "## Plots",
        "",
        f"![Latency percentiles over time]({LATENCY_PNG})",
        "",
        f"![Throughput over time]({THROUGHPUT_PNG})",
        "",
    ]
    out += _extrapolation(phases, cores)
    out += _reading(phases, directory)
    return "\n".join(out) + "\n"


def _setup(phases: Sequence[PhaseResult], info: RunInfo) -> list[str]:
    plan, versions = info.plan, info.versions
    generator = (
        "one process"
        if plan.workers == 0
        else f"a master and {_plural(plan.workers, 'worker')} (distributed)"
    )
    tunables = {k: v for k, v in os.environ.items() if k.startswith("RENDEZVOUS_")}
    tunables_text = (
        ", ".join(f"`{k}={v}`" for k, v in sorted(tunables.items()))
        or "the suite's defaults (loadtest/README.md, *Locust suite*)"
    )
    first, last = plan.source_addresses[0], plan.source_addresses[-1]
    phase_names = " and ".join(_plural(p.instance_count, "instance") for p in phases)
    return [
        "## Setup",
        "",
        "| | |",
        "|---|---|",
        f"| machine | {os.cpu_count()} CPUs ({cpu_model()}), Python {platform.python_version()} |",
        f"| phases | {phase_names or 'none completed'}, each on a fresh deployment |",
        f"| service | `rendezvous serve` per instance, Redis backend: redis-server "
        f"{versions.get('redis-server', '?')} of its own (no persistence); rate limit raised "
        "out of the way; no STUN |",
        f"| balancer | nginx {versions.get('nginx', '?')}, `ip_hash`, WebSocket "
        "`Upgrade`/`Connection` headers, `proxy_next_upstream error timeout http_503` |",
        f"| load | locust {versions.get('locust', '?')} ({generator}), headless: "
        f"{plan.users} users spawned at {plan.spawn_rate:g}/s, {plan.seconds} s per phase, "
        f"then up to {plan.stop_timeout} s for the calls in progress to end |",
        f"| suite | loadtest/locustfile.py: {tunables_text} |",
        f"| clients | {len(plan.source_addresses)} source addresses, {first} … {last} "
        "(distinct /24s, as many hashed to each instance of the last phase) |",
        "",
    ]


def _checks(phases: Sequence[PhaseResult]) -> list[str]:
    names = [_plural(p.instance_count, "instance") for p in phases]
    out = [
        "## Correctness: the suite's checks",
        "",
        "Every relayed message carries a probe that its receiver checks (loadtest/README.md, "
        "*Locust suite*).",
        "",
        "| | " + " | ".join(names) + " |",
        "|---|" + "---:|" * len(phases),
    ]
    for key, label in CHECKS:
        out.append(f"| {label} | " + " | ".join(_count(p.totals.get(key)) for p in phases) + " |")
    sessions = []
    for phase in phases:
        counts = (phase.summary or {}).get("counts", {}).get("sessions", {})
        sessions.append(", ".join(f"{k} {v}" for k, v in sorted(counts.items())) or NONE)
    out.append("| calls (by outcome) | " + " | ".join(sessions) + " |")
    failures = [next((s.failures for s in p.stats if s.name == "Aggregated"), 0) for p in phases]
    out.append("| locust failures (all requests) | " + " | ".join(map(str, failures)) + " |")
    codes = [str(p.locust_returncode) for p in phases]
    out.append("| locust exit status | " + " | ".join(codes) + " |")
    out.append("")
    return out


def _spread(phase: PhaseResult) -> list[str]:
    window = phase.seconds
    title = _plural(phase.instance_count, "instance")
    out = [
        f"## Spread and CPU per message: {title}",
        "",
        f"Over the locust run ({window:.0f} s, including the calls' wind-down). *Relayed*: "
        "messages queued for a member connected to that instance "
        "(`rendezvous_messages_relayed_total`), wherever the sender was; *frames handled*: "
        'client frames it accepted (`rendezvous_messages_total{outcome="ok"}`); '
        "*published*: what it sent through Redis. CPU from `/proc/<pid>/stat` (user + "
        "system, all threads). The CPU per relayed message is all-in: joins, presence, "
        "`/webrtc/config`, idle timers and the runner's own scrape of /metrics once a second "
        "are spread over the messages relayed, so at a low message rate those fixed costs "
        "dominate it.",
        "",
        "| process | WebSocket handshakes (nginx) | peak connections | frames handled | "
        "relayed | published | CPU s | of a core | CPU µs per relayed message |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    relayed = phase.relayed
    for i in phase.instances:
        m = i.metrics
        out.append(
            f"| {i.name} (pid {i.pid}) | {i.handshakes:,} | {i.peak_connections:.0f} | "
            f"{m.handled:,.0f} | {m.relayed_total:,.0f} | {m.published:,.0f} | "
            f"{i.cpu_seconds:.2f} | {_share(i.cpu_seconds, window)} | "
            f"{_us(i.cpu_us_per_relayed)} |"
        )
    cpu_all = sum(i.cpu_seconds for i in phase.instances)
    per_message = cpu_all * 1e6 / relayed if relayed else None
    out.append(
        f"| **all instances** | {sum(i.handshakes for i in phase.instances):,} | | "
        f"{sum(i.metrics.handled for i in phase.instances):,.0f} | {relayed:,.0f} | "
        f"{sum(i.metrics.published for i in phase.instances):,.0f} | {cpu_all:.2f} | "
        f"{_share(cpu_all, window)} | {_us(per_message)} |"
    )
    labels = {"locust": "locust (the load generator)", RUNNER: "the runner (its scrapes)"}
    for name, seconds in phase.cpu_seconds.items():
        label = labels.get(name, name)
        cost = seconds * 1e6 / relayed if relayed else None
        out.append(
            f"| {label} | | | | | | {seconds:.2f} | {_share(seconds, window)} | {_us(cost)} |"
        )
    total = sum(s.requests for s in phase.stats if s.name == "Aggregated")
    rate = relayed / window if window > 0 else 0.0
    out += [
        "",
        f"{relayed:,.0f} messages relayed in {window:.0f} s = {rate:,.0f} per second on "
        f"average; locust made {total:,} requests ({phase.relay_requests:,} of them relayed "
        "messages, one per delivery it checked).",
    ]
    if phase.machine_seconds > 0:
        others = max(phase.machine_busy_seconds - phase.own_cpu_seconds, 0.0)
        out.append(
            f"The whole machine ({os.cpu_count()} cores) was "
            f"{phase.machine_busy_seconds / phase.machine_seconds:.0%} busy over the run: "
            f"{phase.machine_busy_seconds:.1f} core-seconds, {phase.own_cpu_seconds:.1f} of "
            f"them this run's processes and **{others:.1f} anything else**: other jobs on the "
            "machine, and kernel time charged to no process (part of the loopback traffic's). "
            "Other jobs make the latencies noisier; the CPU per message is each process's own."
        )
    if phase.failed_scrapes:
        out.append(f"{phase.failed_scrapes} scrapes of /metrics failed during the run.")
    out.append("")
    return out


def _latency(phases: Sequence[PhaseResult]) -> list[str]:
    out = [
        "## Latency (locust, whole run, ms)",
        "",
        "Relayed messages: one-way, sender's send to receiver's receipt, one clock (the "
        "clients' own scheduling included); joins: connect + handshake to `room_state`. "
        "Locust keeps response times under 100 ms to the whole millisecond.",
        "",
        "| request | " + " | ".join(_plural(p.instance_count, "instance") for p in phases) + " |",
        "|---|" + "---|" * len(phases),
    ]
    labels: list[str] = []
    for phase in phases:
        for stats in phase.stats:
            if stats.label not in labels:
                labels.append(stats.label)
    labels.sort(key=lambda label: label == "Aggregated")  # the total last
    for label in labels:
        cells = []
        for phase in phases:
            row = next((s for s in phase.stats if s.label == label), None)
            cells.append(
                NONE
                if row is None
                else f"{row.requests:,} req, {row.failures} failed; p50 {_ms(row.p50_ms)} · "
                f"p95 {_ms(row.p95_ms)} · p99 {_ms(row.p99_ms)} · max {_ms(row.max_ms)}"
            )
        out.append(f"| {label} | " + " | ".join(cells) + " |")
    out.append("")
    return out


def _extrapolation(phases: Sequence[PhaseResult], cores: int) -> list[str]:
    if not phases or not phases[-1].relayed:
        return []
    top = phases[-1]
    n = top.instance_count
    per_instance = [i.cpu_us_per_relayed for i in top.instances if i.cpu_us_per_relayed]
    instance_us = sum(i.cpu_seconds for i in top.instances) * 1e6 / top.relayed
    redis_us = top.cpu_seconds.get("redis-server", 0.0) * 1e6 / top.relayed
    out = [
        "## What carries over, and what is extrapolated",
        "",
        "Measured here: the CPU each process spent per relayed message (tables above). "
        f"With {n} instances a message whose sender and receiver are on different "
        "instances costs both (a publish on one, a delivery on the other), so the cost per "
        "message of all instances together is above the single instance's. These costs are "
        "the suite's whole mix (joins, `/webrtc/config`, presence, messages trickled one at "
        "a time); `bench_relay.py` and `python -m loadtest.bench` measure the relay path "
        "alone.",
        "",
    ]
    if len(phases) > 1 and phases[0].relayed:
        single = sum(i.cpu_seconds for i in phases[0].instances) * 1e6 / phases[0].relayed
        out.append(
            f"- Measured: {single:,.1f} µs of instance CPU per relayed message with 1 "
            f"instance, {instance_us:,.1f} µs with {n} (all instances together); per instance "
            f"with {n}: " + ", ".join(f"{us:,.1f} µs" for us in per_instance) + "."
        )
    out += [
        f"- *Extrapolated, not measured:* at {instance_us:,.1f} µs per message, {n} "
        f"instances each given its own core would relay about "
        f"{n * 1e6 / instance_us:,.0f} messages/s together, if the load kept the same mix "
        "and nothing else bound first. This machine's "
        f"{cores} cores cannot show it.",
    ]
    if redis_us:
        out.append(
            f"- *Extrapolated, not measured:* Redis spent {redis_us:,.1f} µs per relayed "
            f"message here; one Redis core would then carry about {1e6 / redis_us:,.0f} "
            "messages/s, the point past which more instances need Redis Cluster shards. "
            "`redis-benchmark` gives its PUBLISH ceiling directly."
        )
    out.append("")
    return out


def _reading(phases: Sequence[PhaseResult], directory: Path) -> list[str]:
    out = [
        "## How to read this",
        "",
        "- **Correctness** is the suite's own count: *lost* and *reordered* must be 0, and "
        "*expected* equal to *delivered*. Locust's failures count the same problems per "
        "request type (`locust/locust_failures.csv` of each phase).",
        "- **Spread**: nginx's `ip_hash` places a client by the first three octets of its "
        "address; every instance should show handshakes and relayed messages. The split is "
        "by address, not by load, so it is uneven when few calls run.",
        "- **CPU per relayed message** is the figure that carries to a bigger machine; the "
        "rates and latencies here are bounded by this machine's cores, shared by every "
        "process (the load generator included: if it is near a whole core per process, it "
        "is the bottleneck, and `--workers` gives it more).",
        "- **Plots**: latency percentiles are locust's rolling ~10 s window over all "
        "requests (relayed messages are most of them); the throughput panel's lines per "
        "instance come from each instance's /metrics, once a second.",
        "",
        "## Files",
        "",
    ]
    for phase in phases:
        relative = phase.directory.relative_to(directory)
        out.append(
            f"- `{relative}/`: `locust/` (locust_stats.csv, locust_stats_history.csv, "
            "locust_failures.csv, locust_exceptions.csv, summary.json, the locust logs), "
            "`metrics/` (each instance's /metrics before and after), `deployment/` (the "
            "instances', Redis's and nginx's logs, nginx.conf and access.log)"
        )
    out += ["- `results.json`: the figures of this report", ""]
    return out


def as_json(phases: Sequence[PhaseResult], info: RunInfo) -> dict[str, Any]:
    return {
        "passed": passed(phases, info),
        "error": info.error,
        "command": info.command,
        "started": info.started,
        "cpus": os.cpu_count(),
        "versions": info.versions,
        "plan": {
            "users": info.plan.users,
            "spawn_rate": info.plan.spawn_rate,
            "seconds": info.plan.seconds,
            "stop_timeout": info.plan.stop_timeout,
            "workers": info.plan.workers,
            "source_addresses": list(info.plan.source_addresses),
        },
        "phases": [_phase_json(phase) for phase in phases],
    }


def _phase_json(phase: PhaseResult) -> dict[str, Any]:
    return {
        "instances": phase.instance_count,
        "ok": phase.ok,
        "problems": phase.problems(),
        "seconds": phase.seconds,
        "locust_returncode": phase.locust_returncode,
        "totals": phase.totals,
        "relayed": phase.relayed,
        "cpu_seconds": phase.cpu_seconds,
        "machine_busy_seconds": phase.machine_busy_seconds,
        "machine_seconds": phase.machine_seconds,
        "pids": phase.pids,
        "per_instance": [
            {
                "name": i.name,
                "pid": i.pid,
                "port": i.port,
                "handshakes": i.handshakes,
                "peak_connections": i.peak_connections,
                "handled": i.metrics.handled,
                "relayed": i.metrics.relayed_total,
                "relayed_by_type": dict(i.metrics.relayed),
                "published": i.metrics.published,
                "cpu_seconds": i.cpu_seconds,
                "cpu_us_per_relayed": i.cpu_us_per_relayed,
            }
            for i in phase.instances
        ],
        "requests": [
            {
                "type": s.type,
                "name": s.name,
                "requests": s.requests,
                "failures": s.failures,
                "p50_ms": s.p50_ms,
                "p95_ms": s.p95_ms,
                "p99_ms": s.p99_ms,
                "max_ms": s.max_ms,
            }
            for s in phase.stats
        ],
    }
