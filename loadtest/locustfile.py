"""Locust suite for Rendezvous: every locust user is one call (a room of 2 or more members,
mesh: each newcomer offers to everyone already there), over real WebSockets, with
browser-sized SDP and trickled ICE candidates, churn, and /webrtc/config fetches.

    locust -f loadtest/locustfile.py --headless -u 20 -r 5 -t 60s \\
        --host http://127.0.0.1:8000 --csv out/run

Each relayed message is reported as a request of its type (`offer`, `answer`,
`ice_candidate`) named `relay`, its response time the one-way latency from the sender's
send to the receiver's receipt (both in the same process); joins are `room_state` /
`join`, presence events `user_joined` / `user_left` named `presence`. A message lost,
out of order, duplicated or misrouted, a server error frame or a dropped connection is a
failure; the suite also counts them itself, prints the counts at the end, writes them to
`--summary-json`, and exits 1 if any. loadtest/README.md ("Locust suite") lists every
tunable."""

from __future__ import annotations

import itertools
import json
import logging
import os
import random
import secrets
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

# Importable from any working directory: the suite's modules live in this repository.
_ROOT = str(Path(__file__).resolve().parent.parent)
if _ROOT not in sys.path:
    sys.path.insert(0, _ROOT)

import gevent  # noqa: E402
from locust import User, events, task  # noqa: E402
from locust.env import Environment  # noqa: E402
from locust.event import EventHook  # noqa: E402
from locust.runners import MasterRunner, WorkerRunner  # noqa: E402
from locust.stats import CSV_STATS_INTERVAL_SEC  # noqa: E402

from loadtest.signaling import delivery  # noqa: E402
from loadtest.signaling.calling import Call  # noqa: E402
from loadtest.signaling.connections import Sources  # noqa: E402
from loadtest.signaling.finishing import Finisher  # noqa: E402
from loadtest.signaling.options import (  # noqa: E402
    Endpoint,
    OptionError,
    Span,
    SuiteOptions,
    parse_list,
    parse_positive,
    parse_probability,
    parse_room_sizes,
)

log = logging.getLogger("rendezvous.loadtest")

# One count of everything the checks saw, per process; a distributed run's master adds up
# its workers' (loadtest/signaling/finishing.py).
TALLY = delivery.Tally()

# (flag, environment variable, default, help); the flag's value wins over the variable.
_TUNABLES = (
    (
        "--ws-urls",
        "RENDEZVOUS_WS_URLS",
        "",
        "instances, comma-separated (http or ws URLs); "
        "a room's members are spread over them in turn. Default: --host",
    ),
    (
        "--source-addresses",
        "RENDEZVOUS_SOURCE_ADDRESSES",
        "",
        "local addresses to connect "
        "from, comma-separated, taken in turn (e.g. 127.0.1.1,127.0.2.1 behind nginx ip_hash)",
    ),
    (
        "--room-sizes",
        "RENDEZVOUS_ROOM_SIZES",
        "2:3,3:1,4:1,6:1",
        "room size mix, SIZE:WEIGHT,... (2 = a pair; more = a mesh group)",
    ),
    ("--think-seconds", "RENDEZVOUS_THINK_SECONDS", "1-3", "pause between a user's calls"),
    (
        "--hold-seconds",
        "RENDEZVOUS_HOLD_SECONDS",
        "1-3",
        "how long a call stays up once negotiated (again after a rejoin)",
    ),
    (
        "--churn-probability",
        "RENDEZVOUS_CHURN_PROBABILITY",
        "0.5",
        "chance that a member leaves a call and rejoins it",
    ),
    (
        "--rejoin-pause-seconds",
        "RENDEZVOUS_REJOIN_PAUSE_SECONDS",
        "0.5-1.5",
        "pause between that leave and the rejoin",
    ),
    ("--sdp-bytes", "RENDEZVOUS_SDP_BYTES", "2000-6000", "size of each offer and answer"),
    (
        "--candidates",
        "RENDEZVOUS_CANDIDATES",
        "5-15",
        "ICE candidates trickled each way per peer (then end-of-candidates)",
    ),
    ("--trickle-gap-ms", "RENDEZVOUS_TRICKLE_GAP_MS", "0-20", "pause before each candidate"),
    (
        "--deadline-seconds",
        "RENDEZVOUS_DEADLINE_SECONDS",
        "5",
        "a message or event not received within this is lost; also the connect and join timeout",
    ),
    (
        "--summary-json",
        "RENDEZVOUS_SUMMARY_JSON",
        "",
        "write the checks' counts here at the end (JSON)",
    ),
)

_suite: SuiteOptions | None = None
_sources = Sources(())


def _add_arguments(parser: Any, **_: Any) -> None:
    parser.add_argument(
        "--jwt-secret",
        env_var="RENDEZVOUS_JWT_SECRET",
        default="",
        include_in_web_ui=False,  # never shown
        help="HS256 key the service checks tokens with (default: $JWT_SECRET_KEY)",
    )
    for flag, variable, default, text in _TUNABLES:
        parser.add_argument(flag, env_var=variable, default=default, help=text)


def _on_init(environment: Environment, **_: Any) -> None:
    global _suite, _sources
    parsed = environment.parsed_options
    if parsed is None:  # used as a library: nothing to configure from
        return
    users_here = not isinstance(environment.runner, MasterRunner)
    try:
        _suite = _options(parsed, users_here=users_here, own_secret="")
    except OptionError as exc:
        raise SystemExit(f"loadtest/locustfile.py: {exc}") from None
    _sources = Sources(_suite.source_addresses)
    Finisher(environment, TALLY)


def _on_test_start(environment: Environment, **_: Any) -> None:
    """A worker gets the master's flags with the start of the run: apply them, keeping its
    own signing key unless the master gave one."""
    global _suite, _sources
    parsed = environment.parsed_options
    if not isinstance(environment.runner, WorkerRunner) or parsed is None or _suite is None:
        return
    try:
        _suite = _options(parsed, users_here=True, own_secret=_suite.secret)
    except OptionError as exc:
        log.error("loadtest/locustfile.py: the master's options: %s; keeping this worker's", exc)
        return
    _sources = Sources(_suite.source_addresses)


def _options(parsed: Any, *, users_here: bool, own_secret: str) -> SuiteOptions:
    secret = parsed.jwt_secret or own_secret or os.environ.get("JWT_SECRET_KEY", "")
    if users_here and not secret:  # a master only adds up its workers' results
        raise OptionError("no signing key: set RENDEZVOUS_JWT_SECRET (or --jwt-secret)")
    return SuiteOptions(
        secret=secret,
        ws_urls=tuple(Endpoint.parse(url) for url in parse_list(parsed.ws_urls)),
        source_addresses=parse_list(parsed.source_addresses),
        room_sizes=parse_room_sizes(parsed.room_sizes),
        think_seconds=Span.parse("think seconds", parsed.think_seconds),
        hold_seconds=Span.parse("hold seconds", parsed.hold_seconds),
        churn_probability=parse_probability("churn probability", parsed.churn_probability),
        rejoin_pause_seconds=Span.parse("rejoin pause seconds", parsed.rejoin_pause_seconds),
        sdp_bytes=Span.parse("sdp bytes", parsed.sdp_bytes),
        candidates=Span.parse("candidates", parsed.candidates),
        trickle_gap_ms=Span.parse("trickle gap ms", parsed.trickle_gap_ms),
        deadline_seconds=parse_positive("deadline seconds", parsed.deadline_seconds),
    )


def _configured() -> SuiteOptions:
    if _suite is None:
        raise RuntimeError("the suite's options were never parsed (locust's init event)")
    return _suite


def _summarise(environment: Environment, **_: Any) -> None:
    if isinstance(environment.runner, WorkerRunner):
        return  # its counts went to the master
    if environment.parsed_options and environment.parsed_options.csv_prefix:
        # locust rewrites its CSVs once a second, not at exit: one more pass, so that they
        # hold the requests of the last second too (the failures of a last settle).
        gevent.sleep(CSV_STATS_INTERVAL_SEC * 1.5)
    totals = {name: TALLY.total(name) for name in delivery.CATEGORIES}
    problems = TALLY.problems()
    log.info(
        "Rendezvous checks: %s",
        ", ".join(f"{name.replace('_', ' ')} {count}" for name, count in totals.items()),
    )
    if problems:
        log.error("Rendezvous checks failed: %d problem(s): %s", problems, _problem_counts())
        environment.process_exit_code = 1
    summary_path = environment.parsed_options and environment.parsed_options.summary_json
    if summary_path:
        summary = {"ok": problems == 0, "problems": problems, "totals": totals}
        summary["counts"] = TALLY.as_dict()
        path = Path(summary_path)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(summary, indent=2) + "\n")


def _problem_counts() -> dict[str, dict[str, int]]:
    return {name: TALLY.as_dict()[name] for name in delivery.PROBLEMS if TALLY.total(name)}


def _listen(hook: EventHook, listener: Callable[..., None]) -> None:
    hook.add_listener(listener)  # type: ignore[no-untyped-call]  # locust leaves it unannotated


_listen(events.init_command_line_parser, _add_arguments)
_listen(events.init, _on_init)
_listen(events.test_start, _on_test_start)
_listen(events.quitting, _summarise)


class _RoomNames:
    """Room ids unique across processes and runs: `lt-<pid>-<random>-<n>` (computed after
    a `--processes` fork, so each worker has its own)."""

    def __init__(self) -> None:
        self._pid = -1
        self._prefix = ""
        self._numbers = itertools.count()

    def next(self) -> str:
        if self._pid != os.getpid():
            self._pid = os.getpid()
            self._prefix = f"lt-{self._pid:x}-{secrets.token_hex(3)}"
        return f"{self._prefix}-{next(self._numbers)}"


_rooms = _RoomNames()


class SignalingRoom(User):
    """One locust user = one call at a time: join, negotiate, hold, churn, leave, think."""

    def __init__(self, environment: Environment) -> None:
        super().__init__(environment)
        self.rng = random.Random()  # seeded from os.urandom, per user

    def wait_time(self) -> float:
        return _configured().think_seconds.draw(self.rng)

    @task
    def call(self) -> None:
        options = _configured()
        Call(
            room=_rooms.next(),
            size=options.draw_room_size(self.rng),
            endpoints=options.endpoints(self.host or self.environment.host),
            options=options,
            tally=TALLY,
            report=self.environment.events.request.fire,
            sources=_sources,
            rng=self.rng,
            clock=time.perf_counter,
        ).run()
