"""Rendezvous against the PeerJS server: relayed messages/s, one-way latency at a fixed
load and server CPU per 1,000 relayed messages for (a) Rendezvous alone, (b) Rendezvous
across two instances and Redis, (c) the PeerJS server (installed from npm into a cache
directory); memory per idle connection; join latency; and the ceiling of the Redis under
(b): `redis-benchmark` PUBLISH/SPUBLISH rates. Prints tables, the ratios to PeerJS and the
issue's targets, and writes JSON with `--json`.

    .venv/bin/python -m loadtest.bench [--quick] [--only relay,memory,join,redis] [--json PATH]

Everything runs on 127.0.0.1; every part is bounded in time, and whatever a part started
is stopped when it ends, fails, or the run gets Ctrl-C or SIGTERM.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.metadata
import os
import resource
import secrets
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson

from loadtest.bench import idling, joining, publishing, relaying
from loadtest.bench.dialects import Dialect, offer_template
from loadtest.bench.idling import MemoryFigures
from loadtest.bench.joining import JoinFigures
from loadtest.bench.publishing import PublishRun, PublishSettings
from loadtest.bench.relaying import Load, RelayFigures, RelaySettings
from loadtest.bench.report import (
    number,
    print_join,
    print_memory,
    print_publish,
    print_relay,
    print_targets,
    relay_ratios,
    targets,
)
from loadtest.bench.servers import (
    CONNECTION_MARGIN,
    PEERJS_CACHE,
    PEERJS_PACKAGE,
    PeerJS,
    TargetKind,
    install_peerjs,
    running,
)
from loadtest.bench_relay import HOST, make_sdp

PARTS = ("relay", "memory", "join", "redis")
TARGET_PARTS = ("relay", "memory", "join")  # the parts run against the targets
QUICK = {
    "seconds": 3.0,
    "warmup": 1.0,
    "rounds": 1,
    "join_seconds": 3.0,
    "connections": "1000",
    "publish_requests": "50000,10000",
    "publish_rounds": 1,
}
DEFAULTS = {
    "seconds": 5.0,
    "warmup": 1.0,
    "rounds": 3,
    "join_seconds": 10.0,
    "connections": "1000,10000",
    "publish_requests": "200000,50000",
    "publish_rounds": 3,
}
# File descriptors a client process needs besides its connections (pipes, the loop, logs).
CLIENT_FD_MARGIN = 200


@dataclass(frozen=True)
class Config:
    parts: tuple[str, ...]
    targets: tuple[TargetKind, ...]
    relay: RelaySettings
    relay_rounds: int
    connections: tuple[int, ...]
    join_rate: float
    join_seconds: float
    publish: PublishSettings
    peerjs_cache: Path
    json_path: Path | None


@dataclass
class Results:
    relay: list[RelayFigures] = field(default_factory=list)  # medians over the rounds
    relay_rounds: list[RelayFigures] = field(default_factory=list)
    memory: list[MemoryFigures] = field(default_factory=list)
    join: list[JoinFigures] = field(default_factory=list)
    redis: PublishRun | None = None


def service_revision() -> str:
    """The commit the service runs from, and whether service/ differs from it; read-only
    (GIT_OPTIONAL_LOCKS=0: git status does not refresh the index)."""
    repo = Path(__file__).resolve().parents[2]
    env = {**os.environ, "GIT_OPTIONAL_LOCKS": "0"}
    try:
        head, changed = (
            subprocess.run(
                ["git", "-C", str(repo), *command],
                capture_output=True,
                text=True,
                timeout=30,
                check=True,
                env=env,
            ).stdout
            for command in (["rev-parse", "--short", "HEAD"], ["status", "--porcelain", "service"])
        )
    except (OSError, subprocess.SubprocessError):
        return "unknown (not a git checkout?)"
    files = len(changed.splitlines())
    return f"git {head.strip()}" + (f" + uncommitted changes in {files} file(s)" if files else "")


def load_average() -> str:
    return " ".join(Path("/proc/loadavg").read_text().split()[:3])


def run(config: Config) -> Results:
    secret = secrets.token_urlsafe(48)
    results = Results()
    started_load = load_average()
    print("Rendezvous against the PeerJS server (loadtest/bench)")
    print(
        f"  machine   {os.cpu_count()} CPUs, load average {started_load} at start (a shared "
        f"machine: other work on its cores shows in every figure), Python "
        f"{sys.version.split()[0]}"
    )
    print(f"  service   service/ at {service_revision()}")
    websockets_version = importlib.metadata.version("websockets")
    print(
        f"  clients   asyncio + websockets {websockets_version} (uvloop), in processes of "
        "their own, on 127.0.0.1"
    )
    if "redis" in config.parts:
        publishing.require_programs()  # before the other parts' minutes, not after
    peerjs: PeerJS | None = None
    if TargetKind.PEERJS in config.targets and set(config.parts) & set(TARGET_PARTS):
        peerjs = install_peerjs(config.peerjs_cache)
        print(
            f"  peerjs    {PEERJS_PACKAGE}@{peerjs.version} (ws {peerjs.ws_version}) on node "
            f"{peerjs.node_version}, from {peerjs.directory}"
        )
    sys.stdout.flush()
    with tempfile.TemporaryDirectory(prefix="rendezvous-bench-") as temporary:
        directory = Path(temporary)
        if "relay" in config.parts:
            _relay(config, directory, secret, peerjs, results)
        if "memory" in config.parts:
            _memory(config, directory, secret, peerjs, results)
        if "join" in config.parts:
            _join(config, directory, secret, peerjs, results)
        if "redis" in config.parts:
            _redis(config, directory, results)
    lines = []
    if set(config.parts) & set(TARGET_PARTS):
        lines = targets(results.relay, results.memory, results.join)
        print_targets(lines)
    ended_load = load_average()
    print(f"\nload average {ended_load} at the end ({os.cpu_count()} CPUs)")
    if config.json_path is not None:
        document: dict[str, Any] = {
            "machine": {
                "cpus": os.cpu_count(),
                "load_average_start": started_load,
                "load_average_end": ended_load,
                "python": sys.version.split()[0],
            },
            "service": service_revision(),
            "peerjs": None
            if peerjs is None
            else {
                "package": PEERJS_PACKAGE,
                "version": peerjs.version,
                "ws": peerjs.ws_version,
                "node": peerjs.node_version,
            },
            "settings": config,
            "relay": results.relay,
            "relay_rounds": results.relay_rounds,
            "relay_ratios_to_peerjs": relay_ratios(results.relay),
            "memory": results.memory,
            "join": results.join,
            "redis": results.redis,
            "targets": lines,
        }
        config.json_path.write_bytes(
            orjson.dumps(document, option=orjson.OPT_INDENT_2, default=str) + b"\n"
        )
        print(f"figures written to {config.json_path}")
    return results


def _ms(value: float | None) -> str:
    return number(value, ".2f") + " ms"


def _workdir(directory: Path, name: str) -> Path:
    """A directory of its own per server start, for its logs."""
    path = directory / name
    path.mkdir()
    return path


def _relay(
    config: Config, directory: Path, secret: str, peerjs: PeerJS | None, results: Results
) -> None:
    """All the targets run side by side (idle but for the one measured); each round
    measures them in a rotated order, so that none is always first or last."""
    rounds = config.relay_rounds
    by_target: dict[tuple[TargetKind, Load], list[RelayFigures]] = {}
    with contextlib.ExitStack() as stack:
        started = []
        for kind in config.targets:
            workdir = _workdir(directory, f"relay-{kind}")
            target = stack.enter_context(
                running(kind, directory=workdir, secret=secret, peerjs=peerjs)
            )
            print(f"\nrelay, {kind.label}:", *target.description, sep="\n  ", flush=True)
            started.append(target)
        for index in range(1, rounds + 1):
            shift = (index - 1) % len(started)
            for target in started[shift:] + started[:shift]:
                for load in Load:
                    figures = relaying.measure(
                        target, config.relay, load, secret=secret, round_number=index
                    )
                    by_target.setdefault((target.kind, load), []).append(figures)
                    results.relay_rounds.append(figures)
                    print(
                        f"  round {index}/{rounds}, {target.kind.label}, {load}: "
                        f"{figures.messages_per_second:,.0f} msg/s, p50 "
                        f"{_ms(figures.latency_p50_ms)}, p99 {_ms(figures.latency_p99_ms)}, "
                        f"{number(figures.server_cpu_seconds_per_1k, '.4f')} CPU s/1k msg",
                        flush=True,
                    )
    results.relay = [
        relaying.median(by_target[kind, load]) for kind in config.targets for load in Load
    ]
    sdp = make_sdp(config.relay.sdp_bytes)
    frame = offer_template(Dialect.RENDEZVOUS, "fixed-000000-0-b", sdp).frame(10**15)
    print_relay(results.relay, results.relay_rounds, config.relay, rounds, len(frame))


def _memory(
    config: Config, directory: Path, secret: str, peerjs: PeerJS | None, results: Results
) -> None:
    kinds = [k for k in config.targets if k is not TargetKind.RENDEZVOUS_REDIS]
    for connections in config.connections:
        for kind in kinds:
            workdir = _workdir(directory, f"memory-{kind}-{connections}")
            with running(
                kind, directory=workdir, secret=secret, peerjs=peerjs, connections=connections
            ) as target:
                print(f"\nmemory, {kind.label}, {connections:,} connections:", flush=True)
                figures = idling.measure(target, connections, secret=secret)
                results.memory.append(figures)
                per = figures.bytes_per_connection
                print(
                    f"  {figures.opened:,} opened in {figures.open_seconds:.1f} s, "
                    f"{number(None if per is None else per / 1024, '.1f')} KiB per connection",
                    flush=True,
                )
    print_memory(results.memory)


def _join(
    config: Config, directory: Path, secret: str, peerjs: PeerJS | None, results: Results
) -> None:
    kinds = [k for k in config.targets if k is not TargetKind.RENDEZVOUS_REDIS]
    for kind in kinds:
        with running(
            kind, directory=_workdir(directory, f"join-{kind}"), secret=secret, peerjs=peerjs
        ) as target:
            print(f"\njoin, {kind.label}:", flush=True)
            figures = joining.measure(
                target, rate=config.join_rate, seconds=config.join_seconds, secret=secret
            )
            results.join.append(figures)
            print(
                f"  {figures.joined} joins, p50 {_ms(figures.latency_p50_ms)}, "
                f"p99 {_ms(figures.latency_p99_ms)}",
                flush=True,
            )
    print_join(results.join)


def _redis(config: Config, directory: Path, results: Results) -> None:
    run = results.redis = PublishRun(config.publish)
    with publishing.running(run, _workdir(directory, "redis")) as stand:
        print(
            f"\nredis: redis-server {run.redis_version}, pid {run.redis_pid}, "
            f"{HOST}:{run.redis_port}, no persistence; redis-benchmark "
            f"{run.benchmark_version}; subscribers: pids "
            f"{' '.join(str(pid) for pid in run.subscriber_pids)}",
            flush=True,
        )
        rounds = config.publish.rounds
        for index in range(1, rounds + 1):
            for command, subscribed, pipeline in publishing.cases(run.commands):
                figures = publishing.measure(
                    stand, command, subscribed=subscribed, pipeline=pipeline
                )
                run.rounds.append(figures)
                print(
                    f"  round {index}/{rounds}, {command}, {figures.subscribers} subscribers, "
                    f"-P {pipeline}: "
                    f"{figures.requests_per_second:,.0f} requests/s, "
                    f"{figures.redis_cpu_seconds_per_1k * 1000:.2f} ms redis CPU per 1k",
                    flush=True,
                )
    count = len(publishing.cases(run.commands))
    run.figures = [publishing.median(run.rounds[i::count]) for i in range(count)]
    print_publish(run)


def raise_file_limit(connections: Sequence[int]) -> None:
    """Lift this process's open-files limit to its hard limit; the servers and the client
    processes inherit it. The biggest run needs its connections plus a margin."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    needed = max(connections, default=0) + CONNECTION_MARGIN + CLIENT_FD_MARGIN
    if hard != resource.RLIM_INFINITY and hard < needed:
        raise RuntimeError(
            f"{max(connections):,} connections need an open-files limit of {needed:,}; the "
            f"hard limit is {hard:,} (raise it: ulimit -Hn, /etc/security/limits.conf)"
        )
    if soft != resource.RLIM_INFINITY and soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def _csv(text: str, choices: Sequence[str], option: str) -> tuple[str, ...]:
    items = tuple(item.strip() for item in text.split(",") if item.strip())
    unknown = [item for item in items if item not in choices]
    if unknown or not items:
        raise argparse.ArgumentTypeError(f"{option}: pick from {', '.join(choices)} (got {text!r})")
    return items


def _two_counts(text: str, option: str) -> tuple[int, int]:
    counts = tuple(int(n) for n in text.split(","))
    if len(counts) != 2:
        raise argparse.ArgumentTypeError(f"{option}: two counts, N,M (got {text!r})")
    return counts[0], counts[1]


def parse_args(argv: Sequence[str] | None) -> Config:
    parser = argparse.ArgumentParser(
        prog="python -m loadtest.bench",
        description=__doc__.split("\n\n")[0] if __doc__ else None,
    )
    add = parser.add_argument
    add("--only", default=",".join(PARTS), help="parts to run: relay,memory,join,redis (all)")
    add(
        "--targets",
        default=",".join(TargetKind),
        help="servers: rendezvous,rendezvous-redis,peerjs (all; memory and join skip "
        "rendezvous-redis)",
    )
    add(
        "--quick",
        action="store_true",
        help="relay: 1 round of 3 s windows; join: 3 s; memory: 1,000 connections; redis: 1 "
        "round of 50,000 and 10,000 requests",
    )
    add("--seconds", type=float, help="relay: measured window per load and round (5; quick 3)")
    add("--warmup", type=float, help="relay: warm-up before each window (1)")
    add("--rounds", type=int, help="relay: rounds over the targets, medians printed (3; quick 1)")
    add("--pairs", type=int, default=20, help="relay: client pairs (20)")
    add("--window", type=int, default=4, help="relay, saturation: offers in flight per pair (4)")
    add("--rate", type=float, default=2000.0, help="relay, fixed load: offers/s in all (2000)")
    add("--sdp-bytes", type=int, default=1024, help="relay: SDP size (1024)")
    add("--client-processes", type=int, default=1, help="relay: client processes (1)")
    add("--connections", help="memory: connection counts (1000,10000; quick 1000)")
    add("--join-rate", type=float, default=100.0, help="join: joins/s offered (100)")
    add("--join-seconds", type=float, help="join: how long (10; quick 3)")
    add("--publish-bytes", type=int, default=1200, help="redis: PUBLISH payload size (1200)")
    add(
        "--publish-requests",
        help="redis: requests per run, pipelined (-P 16),unpipelined (200000,50000; quick "
        "50000,10000)",
    )
    add("--publish-rounds", type=int, help="redis: rounds over the cases, medians (3; quick 1)")
    add("--peerjs-cache", type=Path, default=PEERJS_CACHE, help=f"npm prefix ({PEERJS_CACHE})")
    add("--json", type=Path, help="also write the figures to this JSON file")
    args = parser.parse_args(argv)
    preset = QUICK if args.quick else DEFAULTS
    for name, value in preset.items():
        if getattr(args, name) is None:
            setattr(args, name, value)
    try:
        parts = _csv(args.only, PARTS, "--only")
        kinds = tuple(TargetKind(k) for k in _csv(args.targets, list(TargetKind), "--targets"))
        connections = tuple(int(n) for n in str(args.connections).split(","))
        pipelined, unpipelined = _two_counts(args.publish_requests, "--publish-requests")
    except (argparse.ArgumentTypeError, ValueError) as exc:
        parser.error(str(exc))
    if (
        min(
            args.pairs,
            args.rounds,
            args.window,
            args.client_processes,
            args.sdp_bytes,
            *connections,
            args.publish_bytes,
            args.publish_rounds,
            pipelined,
            unpipelined,
        )
        < 1
    ):
        parser.error(
            "--pairs, --rounds, --window, --client-processes, --sdp-bytes, --connections, "
            "--publish-bytes, --publish-rounds, --publish-requests >= 1"
        )
    if min(args.seconds, args.rate, args.join_rate, args.join_seconds) <= 0 or args.warmup < 0:
        parser.error("durations and rates must be positive (--warmup may be 0)")
    return Config(
        parts=parts,
        targets=tuple(k for k in TargetKind if k in kinds),  # always (a), (b), (c) in order
        relay=RelaySettings(
            pairs=args.pairs,
            seconds=args.seconds,
            warmup_seconds=args.warmup,
            sdp_bytes=args.sdp_bytes,
            window=args.window,
            rate=args.rate,
            client_processes=args.client_processes,
        ),
        relay_rounds=args.rounds,
        connections=tuple(2 * (n // 2) or 2 for n in connections),  # whole rooms of 2
        join_rate=args.join_rate,
        join_seconds=args.join_seconds,
        publish=PublishSettings(
            payload_bytes=args.publish_bytes,
            pipelined_requests=pipelined,
            unpipelined_requests=unpipelined,
            rounds=args.publish_rounds,
        ),
        peerjs_cache=args.peerjs_cache,
        json_path=args.json,
    )


def main(argv: Sequence[str] | None = None) -> int:
    # A SIGTERM unwinds like Ctrl-C, so that whatever the run started is stopped too.
    signal.signal(signal.SIGTERM, _exit_on_signal)
    config = parse_args(argv)
    try:
        raise_file_limit(config.connections if "memory" in config.parts else ())
        began = time.monotonic()
        run(config)
    except RuntimeError as exc:  # a server or a client failed; the details are above
        print(f"loadtest.bench: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("loadtest.bench: interrupted; what it started is stopped", file=sys.stderr)
        return 130
    print(f"done in {time.monotonic() - began:.0f} s")
    return 0


def _exit_on_signal(signum: int, frame: object) -> None:
    sys.exit(128 + signum)
