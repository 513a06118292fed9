"""The command: check what the run needs, run the 1-instance phase and the N-instance
phase, each on a fresh deployment, and write the report. Bounded by a total deadline;
Ctrl-C, SIGTERM or a failure stop everything it started."""

from __future__ import annotations

import argparse
import importlib.metadata
import importlib.util
import logging
import secrets
import shlex
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path

from loadtest.bench_relay import Child
from loadtest.scaleout.balancer import nginx_program, source_addresses
from loadtest.scaleout.deadline import Deadline
from loadtest.scaleout.driving import LoadPlan
from loadtest.scaleout.results import PhaseResult

# Per phase, on top of the locust run and its stop timeout: starting the deployment,
# workers connecting, the suite's last CSV pass and summary, stopping.
PHASE_SPARE_SECONDS = 90.0
INSTALL_HINT = "pip install -e '.[load]'"


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m loadtest.scaleout",
        description="Run the locust suite against Redis + 1 instance, then Redis + N "
        "instances behind nginx (ip_hash), on 127.0.0.1, and write a report.",
    )
    parser.add_argument("--instances", type=int, default=3, help="N, the second phase (3)")
    parser.add_argument("--users", type=int, default=30, help="locust users = calls at once (30)")
    parser.add_argument("--spawn-rate", type=float, default=10.0, help="users started/s (10)")
    parser.add_argument("--seconds", type=int, default=60, help="locust run time per phase (60)")
    parser.add_argument(
        "--stop-timeout",
        type=int,
        default=20,
        help="seconds the calls in progress get to end after the run time (20)",
    )
    parser.add_argument(
        "--workers",
        type=int,
        default=0,
        help="0: locust in one process; K: a master and K worker processes (0)",
    )
    parser.add_argument(
        "--addresses-per-instance",
        type=int,
        default=8,
        help="client source addresses (127.0.n.1) that ip_hash sends to each instance (8)",
    )
    parser.add_argument(
        "--out", type=Path, help="output directory (default out/scaleout-<UTC time>)"
    )
    parser.add_argument(
        "--deadline",
        type=float,
        help="total seconds the run may take, then it stops everything and fails "
        f"(default: per phase, run time + stop timeout + {PHASE_SPARE_SECONDS:g})",
    )
    args = parser.parse_args(argv)
    for name in ("instances", "users", "seconds", "addresses_per_instance"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be at least 1")
    if args.workers < 0 or args.stop_timeout < 0 or args.spawn_rate <= 0:
        parser.error("--workers and --stop-timeout must not be negative, --spawn-rate positive")
    return args


def missing_requirements() -> list[str]:
    """What the run cannot do without, each with how to get it."""
    missing = []
    for module, why in (("matplotlib", "the plots"), ("locust", "the load")):
        if importlib.util.find_spec(module) is None:
            missing.append(f"{module} ({why}): {INSTALL_HINT}")
    if shutil.which("redis-server") is None:
        missing.append("redis-server: apt-get install redis-server")
    try:
        nginx_program()
    except RuntimeError:
        missing.append("nginx: apt-get install nginx")
    return missing


def versions() -> dict[str, str]:
    found = {"locust": importlib.metadata.version("locust")}
    # nginx prints its version on stderr: "nginx version: nginx/1.22.1".
    result = subprocess.run(
        [nginx_program(), "-v"], capture_output=True, text=True, timeout=10, check=False
    )
    found["nginx"] = result.stderr.strip().rsplit("/", 1)[-1] or "?"
    return found


def announce(child: Child) -> None:
    where = f", 127.0.0.1:{child.port}" if child.port else ""
    print(f"  started {child.name}: pid {child.pid}{where}", flush=True)


def describe(phase: PhaseResult) -> None:
    totals = phase.totals
    print(
        f"  locust exit {phase.locust_returncode}; expected {totals.get('expected', '?')}, "
        f"delivered {totals.get('delivered', '?')}, lost {totals.get('lost', '?')}, "
        f"reordered {totals.get('reordered', '?')}",
        flush=True,
    )
    for instance in phase.instances:
        cost = instance.cpu_us_per_relayed
        print(
            f"  {instance.name}: {instance.handshakes} handshakes, "
            f"{instance.metrics.relayed_total:,.0f} relayed, {instance.cpu_seconds:.2f} s CPU"
            + (f" = {cost:,.1f} µs per relayed message" if cost else ""),
            flush=True,
        )


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="scaleout: %(message)s")
    missing = missing_requirements()
    if missing:
        print("scaleout: missing:\n  " + "\n  ".join(missing), file=sys.stderr)
        return 2
    # Imported only now: matplotlib may be missing, which is reported above.
    from loadtest.scaleout import reporting
    from loadtest.scaleout.running import run_phase

    # A SIGTERM unwinds like Ctrl-C, so that whatever the run started is stopped too.
    signal.signal(signal.SIGTERM, _exit_on_signal)
    started = datetime.now(UTC)
    out: Path = args.out or Path("out") / f"scaleout-{started:%Y%m%d-%H%M%S}"
    out = out.resolve()  # the processes run in their own directories: absolute paths
    out.mkdir(parents=True, exist_ok=True)
    counts = [1, args.instances] if args.instances > 1 else [1]
    per_phase = args.seconds + args.stop_timeout + PHASE_SPARE_SECONDS
    deadline = Deadline(args.deadline or per_phase * len(counts))
    try:
        addresses = source_addresses(args.addresses_per_instance, args.instances)
    except ValueError as exc:
        print(f"scaleout: {exc}", file=sys.stderr)
        return 2
    plan = LoadPlan(
        users=args.users,
        spawn_rate=args.spawn_rate,
        seconds=args.seconds,
        stop_timeout=args.stop_timeout,
        workers=args.workers,
        source_addresses=addresses,
    )
    found = versions()
    secret = secrets.token_urlsafe(48)  # the instances' key, handed to locust alone
    phases: list[PhaseResult] = []
    error = None
    print(f"scaleout: output in {out}, deadline {deadline.seconds:g} s", flush=True)
    for count in counts:
        print(f"phase: {count} instance{'s' if count > 1 else ''}", flush=True)
        begun = time.monotonic()
        try:
            phase = run_phase(
                count,
                plan,
                secret=secret,
                directory=out / f"phase-{count}",
                deadline=deadline,
                announce=announce,
            )
        except RuntimeError as exc:  # a process failed to start, or the deadline passed
            error = str(exc)
            print(f"scaleout: {error} (logs in {out / f'phase-{count}'})", file=sys.stderr)
            break
        except (KeyboardInterrupt, SystemExit):  # Ctrl-C or SIGTERM: no report
            print("scaleout: interrupted; stopped everything it started", file=sys.stderr)
            raise
        phases.append(phase)
        found["redis-server"] = phase.redis_version
        describe(phase)
        print(f"  stopped everything ({time.monotonic() - begun:.0f} s)", flush=True)
    info = reporting.RunInfo(
        command=shlex.join(["python", "-m", "loadtest.scaleout", *(argv or sys.argv[1:])]),
        started=f"{started:%Y-%m-%d %H:%M:%S} UTC",
        plan=plan,
        instances=args.instances,
        versions=found,
        error=error,
    )
    report = reporting.write(phases, info, out)
    ok = reporting.passed(phases, info)
    print(f"scaleout: {'PASSED' if ok else 'FAILED'}; report: {report}", flush=True)
    return 0 if ok else 1


def _exit_on_signal(signum: int, frame: object) -> None:
    sys.exit(128 + signum)
