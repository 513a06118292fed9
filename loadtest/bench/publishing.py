"""Redis's ceiling for the room bus: how many `PUBLISH` (and `SPUBLISH`, Redis 7+) of a
signaling-sized payload one redis-server takes, pipelined and not, with no subscriber and
with three. `redis-benchmark` publishes; a redis-server of the part's own, on a free
127.0.0.1 port, takes it; the subscribers are processes that read everything they are
sent and throw it away (a subscriber that did not read would make Redis buffer, and
finally drop it). Everything started is stopped however the part ends."""

from __future__ import annotations

import contextlib
import csv
import io
import math
import shutil
import statistics
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from enum import StrEnum
from multiprocessing.process import BaseProcess
from pathlib import Path

import redis
import redis.retry
from redis.backoff import NoBackoff

from loadtest.bench import subscribing
from loadtest.bench_relay import HOST, Child, cpu_seconds, redis_ready, start_redis, stop

CLIENTS = 50  # redis-benchmark's -c (its default too)
PIPELINES = (16, 1)  # -P: pipelined, then one request at a time per client
SUBSCRIBERS = 3
CHANNEL = "bench-publish"  # what the subscribers listen to
# The 0-subscriber runs publish here: the subscribers stay connected (idle) throughout, so
# that they are started and checked once, and whatever stops the run stops them too.
UNHEARD_CHANNEL = "bench-publish-unheard"
SHARDED_PUBSUB_MAJOR = 7  # SPUBLISH/SSUBSCRIBE came with Redis 7.0
BENCHMARK_TIMEOUT_SECONDS = 300.0  # redis-benchmark retries forever if Redis is gone
VERSION_TIMEOUT_SECONDS = 30.0
SUBSCRIBE_TIMEOUT_SECONDS = 20.0  # includes the spawned interpreters' start
DRAIN_TIMEOUT_SECONDS = 30.0
CONTROL_TIMEOUT_SECONDS = 5.0
POLL_SECONDS = 0.01
STDERR_TAIL_CHARACTERS = 2000


class Command(StrEnum):
    PUBLISH = "PUBLISH"
    SPUBLISH = "SPUBLISH"

    @property
    def subscribe(self) -> str:
        return "SUBSCRIBE" if self is Command.PUBLISH else "SSUBSCRIBE"

    @property
    def numsub(self) -> tuple[str, str]:
        """The command that counts a channel's subscribers."""
        return ("PUBSUB", "NUMSUB" if self is Command.PUBLISH else "SHARDNUMSUB")


@dataclass(frozen=True)
class PublishSettings:
    payload_bytes: int
    pipelined_requests: int  # -n of the -P 16 runs
    unpipelined_requests: int  # -n of the -P 1 runs
    rounds: int = 1  # of all the cases, in turn; the medians are reported
    clients: int = CLIENTS

    def requests(self, pipeline: int) -> int:
        return self.pipelined_requests if pipeline > 1 else self.unpipelined_requests


@dataclass(frozen=True)
class BenchmarkLine:
    """What `redis-benchmark --csv` reports for one command."""

    requests_per_second: float
    latency_p50_ms: float | None
    latency_p99_ms: float | None


def parse_csv(text: str) -> BenchmarkLine:
    """The result row of `redis-benchmark --csv` for one command: a header and one row
    (Redis 6.2+), or one `"test","rps"` row (older, without latencies)."""
    rows = [row for row in csv.reader(io.StringIO(text)) if row]
    if rows and rows[0][:2] == ["test", "rps"]:
        header, rows = rows[0], rows[1:]
    else:
        header = ["test", "rps"]
    if len(rows) != 1 or len(rows[0]) < 2:
        raise ValueError(f"not one result row from redis-benchmark --csv: {text!r}")
    named = dict(zip(header, rows[0], strict=False))
    rate = float(named["rps"])
    if not math.isfinite(rate) or rate <= 0:
        raise ValueError(f"redis-benchmark reported {named['rps']!r} requests/s")
    return BenchmarkLine(
        requests_per_second=rate,
        latency_p50_ms=_optional(named.get("p50_latency_ms")),
        latency_p99_ms=_optional(named.get("p99_latency_ms")),
    )


def _optional(text: str | None) -> float | None:
    if text is None:
        return None
    value = float(text)
    return value if math.isfinite(value) else None


@dataclass(frozen=True)
class PublishFigures:
    command: str
    subscribers: int
    pipeline: int
    clients: int
    requests: int
    payload_bytes: int
    requests_per_second: float
    latency_p50_ms: float | None
    latency_p99_ms: float | None
    # From redis-benchmark's start until every subscriber had read everything (None: 0).
    delivered_per_second: float | None
    # The largest output buffer Redis held for one subscriber, sampled every POLL_SECONDS.
    subscriber_buffer_peak_bytes: int
    redis_cpu_seconds: float  # over the same span as delivered_per_second
    redis_cpu_seconds_per_1k: float
    subscribers_after: int  # still subscribed once the run was delivered


@dataclass
class PublishRun:
    """What the part started and measured; its JSON is the bench's "redis"."""

    settings: PublishSettings
    redis_version: str = ""
    benchmark_version: str = ""
    redis_port: int = 0
    redis_pid: int = 0
    subscriber_pids: list[int] = field(default_factory=list)
    commands: list[str] = field(default_factory=list)
    figures: list[PublishFigures] = field(default_factory=list)  # medians over the rounds
    rounds: list[PublishFigures] = field(default_factory=list)  # every round's, in order
    skipped: list[str] = field(default_factory=list)


@dataclass
class Stand:
    """The running redis-server, its subscribers and a control connection to it."""

    program: str
    server: Child
    control: redis.Redis
    subscribers: list[BaseProcess]
    settings: PublishSettings


def require_programs() -> str:
    """redis-benchmark's path; fails with what to install when it or redis-server is missing."""
    program = shutil.which("redis-benchmark")
    if program is None or shutil.which("redis-server") is None:
        raise RuntimeError(
            "the redis part needs redis-benchmark and redis-server "
            "(Debian: apt-get install redis-tools redis-server)"
        )
    return program


def benchmark_version(program: str) -> str:
    output = subprocess.run(
        [program, "--version"],
        capture_output=True,
        text=True,
        timeout=VERSION_TIMEOUT_SECONDS,
        check=False,
    ).stdout.split()
    return output[1] if len(output) > 1 else "?"


def sharded_pubsub(version: str) -> bool:
    major = version.split(".", 1)[0]
    return major.isdigit() and int(major) >= SHARDED_PUBSUB_MAJOR


@contextlib.contextmanager
def running(run: PublishRun, directory: Path) -> Iterator[Stand]:
    """Start redis-server and the subscribers, filling in `run`'s versions and pids; wait
    until every subscriber is subscribed; stop them all however the block ends."""
    program = require_programs()
    run.benchmark_version = benchmark_version(program)
    server = start_redis(directory)
    subscribers: list[BaseProcess] = []
    try:
        run.redis_version = redis_ready(server)
        run.redis_port, run.redis_pid = server.port, server.pid
        commands = [c for c in Command if c is Command.PUBLISH or sharded_pubsub(run.redis_version)]
        run.commands = [str(c) for c in commands]
        if Command.SPUBLISH not in commands:
            run.skipped.append(f"SPUBLISH: needs Redis {SHARDED_PUBSUB_MAJOR}+")
        subscribers = subscribing.start(
            SUBSCRIBERS,
            port=server.port,
            subscribe=[c.subscribe for c in commands],
            channel=CHANNEL,
        )
        run.subscriber_pids = [p.pid for p in subscribers if p.pid is not None]
        with _control(server.port) as control:
            # The runs are bounded, and so are the buffers; Redis's default (32 MiB) would
            # drop a subscriber mid-run: it writes a client at most 64 KiB per call, about
            # once per turn of its loop, while a turn can take in 50 clients x 16 publishes.
            control.config_set("client-output-buffer-limit", "pubsub 0 0 0")
            stand = Stand(program, server, control, subscribers, run.settings)
            for command in commands:
                _wait_subscribed(stand, command)
            yield stand
    except redis.RedisError as exc:  # a control call, here or in measure()
        raise RuntimeError(f"redis part: {type(exc).__name__}: {exc}") from exc
    finally:
        subscribing.stop(subscribers)
        stop([server])


@contextlib.contextmanager
def _control(port: int) -> Iterator[redis.Redis]:
    # RESP2, short timeouts, no retries: a control call must fail fast on a dead server.
    client = redis.Redis(
        host=HOST,
        port=port,
        protocol=2,
        socket_timeout=CONTROL_TIMEOUT_SECONDS,
        socket_connect_timeout=CONTROL_TIMEOUT_SECONDS,
        retry=redis.retry.Retry(NoBackoff(), 0),
        decode_responses=True,
    )
    try:
        yield client
    finally:
        client.close()


def _subscribed(stand: Stand, command: Command) -> int:
    control = stand.control
    numsub = control.pubsub_numsub if command is Command.PUBLISH else control.pubsub_shardnumsub
    reply = numsub(CHANNEL)
    if not isinstance(reply, list):  # the typing's async case; this client is not
        raise TypeError(f"{' '.join(command.numsub)} answered {reply!r}")
    return int(reply[0][1])


def _poll(stand: Stand, what: str, check: Callable[[], bool], timeout: float) -> None:
    """Poll `check` until it holds, while the subscribers and Redis run (bounded)."""
    deadline = time.monotonic() + timeout
    while not check():
        dead = [p.pid for p in stand.subscribers if not p.is_alive()]
        if dead:
            raise RuntimeError(f"subscriber process(es) {dead} exited")
        if stand.server.process.poll() is not None:
            raise RuntimeError(f"redis-server exited with code {stand.server.process.returncode}")
        if time.monotonic() > deadline:
            raise RuntimeError(f"redis part: {what} not within {timeout:g} s")
        time.sleep(POLL_SECONDS)


def _wait_subscribed(stand: Stand, command: Command) -> None:
    count = len(stand.subscribers)
    _poll(
        stand,
        f"{count} subscribers on {CHANNEL} ({' '.join(command.numsub)})",
        lambda: _subscribed(stand, command) == count,
        SUBSCRIBE_TIMEOUT_SECONDS,
    )


def _drained(stand: Stand) -> bool:
    """Redis holds nothing more for any subscriber: they have read all they were sent (a
    dropped subscriber fails the poll: its process exits)."""
    clients = stand.control.client_list(_type="pubsub")
    return len(clients) == len(stand.subscribers) and all(
        c["obl"] == "0" and c["oll"] == "0" for c in clients
    )


def _buffered(stand: Stand) -> int:
    """The largest output buffer Redis holds for a subscriber now, in bytes."""
    clients = stand.control.client_list(_type="pubsub")
    return max((int(c["omem"]) + int(c["obl"]) for c in clients), default=0)


def _benchmark(stand: Stand, argv: Sequence[str], *, watch: bool) -> tuple[str, int]:
    """Run redis-benchmark (bounded: it retries forever if Redis is gone) and return its
    output; meanwhile, if `watch`, sample the subscribers' buffers for their peak."""
    peak = 0
    deadline = time.monotonic() + BENCHMARK_TIMEOUT_SECONDS
    with tempfile.TemporaryFile() as payload:  # -x: the last argument comes from stdin
        payload.write(b"x" * stand.settings.payload_bytes)
        payload.seek(0)
        process = subprocess.Popen(
            argv, stdin=payload, stdout=subprocess.PIPE, stderr=subprocess.PIPE
        )
    try:
        while process.poll() is None:
            if time.monotonic() > deadline:
                raise RuntimeError(
                    f"redis-benchmark did not finish within {BENCHMARK_TIMEOUT_SECONDS:g} s"
                )
            if watch:
                peak = max(peak, _buffered(stand))
            time.sleep(POLL_SECONDS)
        out, err = process.communicate()
    except BaseException:  # Ctrl-C, SIGTERM, a failed sample: never leave it running
        process.kill()
        process.communicate()
        raise
    if process.returncode != 0:
        tail = err.decode(errors="replace")[-STDERR_TAIL_CHARACTERS:]
        raise RuntimeError(f"redis-benchmark exited with code {process.returncode}: {tail}")
    return out.decode(errors="replace"), peak


def cases(commands: Sequence[str]) -> list[tuple[Command, bool, int]]:
    """(command, to the subscribed channel?, pipeline) in the order they run."""
    return [
        (Command(command), subscribed, pipeline)
        for subscribed in (False, True)
        for command in commands
        for pipeline in PIPELINES
    ]


def measure(stand: Stand, command: Command, *, subscribed: bool, pipeline: int) -> PublishFigures:
    """One redis-benchmark run of `command` to the subscribed channel (or to one nobody
    listens to); Redis's CPU until the subscribers have read it all."""
    settings = stand.settings
    requests = settings.requests(pipeline)
    channel = CHANNEL if subscribed else UNHEARD_CHANNEL
    argv = [
        stand.program,
        *("-h", HOST, "-p", str(stand.server.port)),
        *("-c", str(settings.clients), "-n", str(requests), "-P", str(pipeline)),
        "--csv",
        "-x",  # the payload, the last argument, from stdin (no argv size limit)
        str(command),
        channel,
    ]
    before = cpu_seconds(stand.server.pid)
    began = time.monotonic()
    output, peak = _benchmark(stand, argv, watch=subscribed)
    if subscribed:
        _poll(stand, "subscribers drained", lambda: _drained(stand), DRAIN_TIMEOUT_SECONDS)
    elapsed = time.monotonic() - began
    cpu = cpu_seconds(stand.server.pid) - before
    try:
        line = parse_csv(output)
    except ValueError as exc:
        raise RuntimeError(str(exc)) from exc
    return PublishFigures(
        command=str(command),
        subscribers=len(stand.subscribers) if subscribed else 0,
        pipeline=pipeline,
        clients=settings.clients,
        requests=requests,
        payload_bytes=settings.payload_bytes,
        requests_per_second=line.requests_per_second,
        latency_p50_ms=line.latency_p50_ms,
        latency_p99_ms=line.latency_p99_ms,
        delivered_per_second=requests / elapsed if subscribed else None,
        subscriber_buffer_peak_bytes=peak,
        redis_cpu_seconds=cpu,
        redis_cpu_seconds_per_1k=cpu * 1000 / requests,
        subscribers_after=_subscribed(stand, command) if subscribed else 0,
    )


def median(rounds: Sequence[PublishFigures]) -> PublishFigures:
    """Each figure's median over the rounds of one case (subscribers still subscribed
    after: the fewest), so that one round disturbed by other work does not decide it."""

    def mid(values: Iterable[float | None]) -> float | None:
        present = [v for v in values if v is not None]
        return statistics.median(present) if present else None

    cpu = statistics.median(f.redis_cpu_seconds for f in rounds)
    return replace(
        rounds[0],
        requests_per_second=statistics.median(f.requests_per_second for f in rounds),
        latency_p50_ms=mid(f.latency_p50_ms for f in rounds),
        latency_p99_ms=mid(f.latency_p99_ms for f in rounds),
        delivered_per_second=mid(f.delivered_per_second for f in rounds),
        subscriber_buffer_peak_bytes=round(
            statistics.median(f.subscriber_buffer_peak_bytes for f in rounds)
        ),
        redis_cpu_seconds=cpu,
        redis_cpu_seconds_per_1k=cpu * 1000 / rounds[0].requests,
        subscribers_after=min(f.subscribers_after for f in rounds),
    )
