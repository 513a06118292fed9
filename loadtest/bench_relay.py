"""Relay benchmark: N pairs of clients ping-pong targeted offers through one real
`rendezvous serve` and print relayed messages/s, one-way latency p50/p99 and the server's
CPU microseconds per relayed message (from the server process's own accounting).

    .venv/bin/python loadtest/bench_relay.py [--pairs 20 --seconds 10 --sdp-bytes 1024]

With `--redis`, it starts its own redis-server and two instances sharing it, and puts the
two members of every pair on different instances, so every offer crosses Redis; it then
also prints the CPU of each instance and of redis-server.

With `--tracing unsampled|sampled`, the servers export traces over OTLP/HTTP to a sink the
benchmark starts (loadtest/otlp_sink.py), with the sampler always_off (the cost of the
instrumentation alone) or always_on (every frame traced and exported); it then prints
what the sink received. `--json PATH` also writes the figures; bench_tracing.py compares
the three modes over several rounds.

Everything runs on 127.0.0.1; the run stops by itself and always stops what it started.
The clients run in their own process(es), so the servers' CPU figures are their own.
"""

from __future__ import annotations

import argparse
import array
import asyncio
import contextlib
import functools
import http.client
import multiprocessing
import os
import secrets
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Coroutine, Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from multiprocessing.connection import Connection, wait
from multiprocessing.process import BaseProcess
from pathlib import Path
from typing import Any

import orjson
from websockets.asyncio.client import ClientConnection, connect

from rendezvous.auth import mint_token
from rendezvous.telemetry.spans import DELIVER, PUBLISH, RELAY

HOST = "127.0.0.1"
SERVER_START_TIMEOUT_SECONDS = 20.0
REDIS_START_TIMEOUT_SECONDS = 10.0
CLIENTS_READY_TIMEOUT_SECONDS = 60.0
# After SIGTERM, how long the processes the benchmark started get to exit before SIGKILL.
STOP_TIMEOUT_SECONDS = 10.0
POLL_SECONDS = 0.05
LOG_TAIL_CHARACTERS = 4000
# After the window, how long in-flight offers get to come home before the clients hang up.
DRAIN_GRACE_SECONDS = 1.0
TOKEN_TTL_SECONDS = 3600
# High enough never to drop a frame: this measures relaying, not the rate limiter.
UNLIMITED_RATE = "1000000000"
SINK_START_TIMEOUT_SECONDS = 10.0
SINK_SCRIPT = Path(__file__).with_name("otlp_sink.py")
# What the sink gets on top of the run's own length before it exits by itself.
SINK_SPARE_SECONDS = 300.0
# The warning the SDK's BatchSpanProcessor logs when its queue is full and it drops spans;
# its logger lets the same warning through at most once per 20 s, so it says that spans
# were dropped, not how many (spans missing at the sink say that).
QUEUE_FULL_LOG = "Queue full, dropping"


class TracingMode(StrEnum):
    """What the servers' OTEL_* variables ask for (`--tracing`)."""

    OFF = "off"  # no OTEL_* variable: tracing disabled, the baseline
    UNSAMPLED = "unsampled"  # exporting to the sink, but no span sampled (always_off)
    SAMPLED = "sampled"  # every span sampled and exported (always_on)


SAMPLERS = {TracingMode.UNSAMPLED: "always_off", TracingMode.SAMPLED: "always_on"}


@dataclass(frozen=True)
class BenchConfig:
    pairs: int
    seconds: float
    warmup_seconds: float
    sdp_bytes: int
    window: int
    client_processes: int
    port: int
    redis: bool
    tracing: TracingMode = TracingMode.OFF
    json_path: Path | None = None


@dataclass(frozen=True)
class PairSpec:
    """One pair: two users alone in their own room, each with a token for it."""

    room: str
    users: tuple[str, str]
    tokens: tuple[str, str]


@dataclass(frozen=True)
class ClientJob:
    ports: tuple[int, int]  # the servers that the first and the second members join
    pairs: list[PairSpec]
    sdp_bytes: int
    window: int


@dataclass
class ClientReport:
    """What one client process saw; latencies are nanoseconds, for offers received in the
    measured window."""

    received_in_window: int = 0
    sent_total: int = 0
    received_total: int = 0
    latencies_ns: bytes = b""
    unexpected: Counter[str] = field(default_factory=Counter)
    cpu_seconds: float = 0.0


# The offers.


def make_sdp(size: int) -> str:
    """A data-channel offer as a browser writes it, padded to exactly `size` bytes."""
    lines = [
        "v=0",
        f"o=- {secrets.randbelow(10**18)} 2 IN IP4 127.0.0.1",
        "s=-",
        "t=0 0",
        "a=group:BUNDLE 0",
        "a=extmap-allow-mixed",
        "a=msid-semantic: WMS",
        "m=application 9 UDP/DTLS/SCTP webrtc-datachannel",
        "c=IN IP4 0.0.0.0",
        "a=ice-ufrag:" + secrets.token_hex(2),
        "a=ice-pwd:" + secrets.token_hex(12),
        "a=ice-options:trickle",
        "a=fingerprint:sha-256 " + ":".join(f"{b:02X}" for b in secrets.token_bytes(32)),
        "a=setup:actpass",
        "a=mid:0",
        "a=sctp-port:5000",
        "a=max-message-size:262144",
    ]
    sdp = "".join(line + "\r\n" for line in lines)
    padding = "a=x-bench-padding:"
    missing = size - len(sdp) - len(padding) - 2
    if missing < 0:  # smaller than a real offer: cut it (the server does not parse SDP)
        return sdp[:size]
    return sdp + padding + "x" * missing + "\r\n"


@dataclass(frozen=True)
class OfferTemplate:
    """An offer frame to `target`, pre-encoded but for its send time (`sent_ns`)."""

    prefix: str
    suffix: str

    @classmethod
    def to(cls, target: str, sdp: str) -> OfferTemplate:
        payload = {"type": "offer", "sdp": sdp, "target_user_id": target, "sent_ns": -1}
        text = orjson.dumps({"type": "offer", "payload": payload}).decode()
        prefix, suffix = text.split('"sent_ns":-1')
        return cls(prefix + '"sent_ns":', suffix)

    def frame(self, sent_ns: int) -> str:
        return f"{self.prefix}{sent_ns}{self.suffix}"


# The client process: it owns every connection of its pairs.


class Bouncer:
    """One client connection: sends back an offer for every offer it receives, stamped with
    the send time; records one-way latency for offers that arrive inside the window."""

    def __init__(
        self, connection: ClientConnection, reply: OfferTemplate, report: ClientReport
    ) -> None:
        self._connection = connection
        self._reply = reply
        self._report = report
        self.latencies = array.array("q")

    async def send(self) -> None:
        await self._connection.send(self._reply.frame(time.perf_counter_ns()))
        self._report.sent_total += 1

    async def run(self, *, begin_ns: int, end_ns: int, serve: int) -> None:
        for _ in range(serve):
            await self.send()
        report, latencies, clock = self._report, self.latencies, time.perf_counter_ns
        async for text in self._connection:
            now = clock()
            frame = orjson.loads(text)
            if frame["type"] != "offer":
                code = frame["payload"].get("code") if frame["type"] == "error" else None
                report.unexpected[f"{frame['type']}:{code}" if code else frame["type"]] += 1
                continue
            report.received_total += 1
            if begin_ns <= now < end_ns:
                report.received_in_window += 1
                latencies.append(now - frame["payload"]["sent_ns"])
            if now < end_ns:
                await self.send()


async def _expect(connection: ClientConnection, kind: str) -> dict[str, Any]:
    frame: dict[str, Any] = orjson.loads(await asyncio.wait_for(connection.recv(), 10))
    if frame["type"] != kind:
        raise RuntimeError(f"expected {kind}, got {frame}")
    return frame


async def _drive(job: ClientJob, pipe: Connection) -> ClientReport:
    report = ClientReport()
    sdp = make_sdp(job.sdp_bytes)
    async with contextlib.AsyncExitStack() as stack:
        bouncers: list[tuple[Bouncer, int]] = []
        for pair in job.pairs:
            first, second = [
                await stack.enter_async_context(_connect(port, pair.room, token))
                for port, token in zip(job.ports, pair.tokens, strict=True)
            ]
            a_user, b_user = pair.users
            # Each member learns of the other once: from its room_state, or else from a
            # user_joined. With --redis the two joins race (one on each instance), so
            # either member may be the one that joined second.
            for connection, other in ((first, b_user), (second, a_user)):
                state = await _expect(connection, "room_state")
                if other not in {p["user_id"] for p in state["payload"]["participants"]}:
                    await _expect(connection, "user_joined")
            # The first member opens `window` exchanges; the second only answers.
            bouncers.append((Bouncer(first, OfferTemplate.to(b_user, sdp), report), job.window))
            bouncers.append((Bouncer(second, OfferTemplate.to(a_user, sdp), report), 0))
        pipe.send(("ready",))
        begin_ns, end_ns = await asyncio.to_thread(pipe.recv)
        tasks = [
            asyncio.create_task(bouncer.run(begin_ns=begin_ns, end_ns=end_ns, serve=serve))
            for bouncer, serve in bouncers
        ]
        await _sleep_until_async(begin_ns)
        cpu_begin = time.process_time()
        await _sleep_until_async(end_ns)
        report.cpu_seconds = time.process_time() - cpu_begin
        await asyncio.sleep(DRAIN_GRACE_SECONDS)
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
    latencies = array.array("q")
    for bouncer, _ in bouncers:
        latencies.extend(bouncer.latencies)
    report.latencies_ns = latencies.tobytes()
    return report


def _connect(port: int, room: str, token: str) -> connect:
    return connect(
        f"ws://{HOST}:{port}/webrtc/ws/{room}?token={token}",
        compression=None,
        proxy=None,  # loopback only, whatever proxy the environment names
        ping_interval=None,
        open_timeout=10,
        close_timeout=2,
    )


async def _sleep_until_async(instant_ns: int) -> None:
    await asyncio.sleep(max(instant_ns - time.perf_counter_ns(), 0) / 1e9)


def run_clients(job: ClientJob, pipe: Connection) -> None:
    """Entry point of a client process: connect, report ready, run the window, report."""
    drive: Coroutine[Any, Any, ClientReport] = _drive(job, pipe)
    with asyncio.Runner(loop_factory=_loop_factory()) as runner:
        pipe.send(("done", runner.run(drive)))


def _loop_factory() -> Callable[[], asyncio.AbstractEventLoop] | None:
    try:
        import uvloop  # installed with uvicorn[standard]; the server runs on it too
    except ImportError:
        return None
    return uvloop.new_event_loop


# The processes the clients talk to: the server(s), and with --redis their redis-server.


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((HOST, 0))
        port: int = sock.getsockname()[1]
        return port


@dataclass(frozen=True)
class Child:
    """A process the benchmark started, listening on `port`, its output in `log_path`."""

    name: str
    port: int
    process: subprocess.Popen[bytes]
    log_path: Path

    @classmethod
    def start(
        cls, name: str, argv: Sequence[str], *, port: int, directory: Path, env: dict[str, str]
    ) -> Child:
        log_path = directory / f"{name.replace(' ', '-')}.log"
        with log_path.open("wb") as log:
            process = subprocess.Popen(
                argv,
                env=env,
                cwd=directory,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        return cls(name, port, process, log_path)

    @property
    def pid(self) -> int:
        return self.process.pid

    def wait_until(self, what: str, check: Callable[[], bool], timeout: float) -> None:
        """Poll `check` until it holds (an OSError counts as not yet) while the process runs."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"{self.name}: exited with code {self.process.returncode}")
            with contextlib.suppress(OSError):  # not listening yet
                if check():
                    return
            time.sleep(POLL_SECONDS)
        raise RuntimeError(f"{self.name}: not {what} within {timeout}s")

    def log_tail(self) -> str:
        return self.log_path.read_text(errors="replace")[-LOG_TAIL_CHARACTERS:]


def stop(children: Sequence[Child]) -> None:
    """SIGTERM to all at once, then SIGKILL to any still running after STOP_TIMEOUT_SECONDS."""
    for child in children:
        if child.process.poll() is None:
            child.process.terminate()  # a server drains (no clients are left) and exits
    deadline = time.monotonic() + STOP_TIMEOUT_SECONDS
    for child in children:
        try:
            child.process.wait(max(deadline - time.monotonic(), 0))
        except subprocess.TimeoutExpired:
            child.process.kill()
            child.process.wait()


@dataclass
class Deployment:
    """What the benchmark started: the servers, where the first and the second member of
    every pair connect (the same one, or one each), the Redis they share, if any, and the
    OTLP sink they export to, if tracing is on."""

    servers: list[Child] = field(default_factory=list)
    redis: Child | None = None
    redis_version: str = ""
    sink: Child | None = None

    @property
    def ports(self) -> tuple[int, int]:
        return self.servers[0].port, self.servers[-1].port

    @property
    def children(self) -> list[Child]:
        others = [child for child in (self.redis, self.sink) if child is not None]
        return [*self.servers, *others]

    def stop(self) -> None:
        # The servers first: they would reconnect to their Redis, and flush to the sink.
        stop(self.servers)
        stop([child for child in (self.redis, self.sink) if child is not None])


def server_environment(secret: str) -> dict[str, str]:
    """This machine's environment without any Rendezvous setting, plus the benchmark's."""
    ours = ("WEBRTC_", "JWT_", "REDIS_", "OTEL_")
    env = {k: v for k, v in os.environ.items() if not k.startswith(ours) and k != "DEBUG"}
    env.update(
        JWT_SECRET_KEY=secret,
        WEBRTC_STUN_URLS="",
        WEBRTC_RATE_LIMIT_PER_SECOND=UNLIMITED_RATE,
        WEBRTC_RATE_LIMIT_BURST=UNLIMITED_RATE,
    )
    return env


def tracing_environment(mode: TracingMode, sink_port: int) -> dict[str, str]:
    """The OTEL_* variables of `mode`, exporting to the sink; the batch processor's
    OTEL_BSP_* are left to the SDK's defaults, which are what users get."""
    if mode is TracingMode.OFF:
        return {}
    return {
        "OTEL_EXPORTER_OTLP_ENDPOINT": f"http://{HOST}:{sink_port}",
        "OTEL_EXPORTER_OTLP_PROTOCOL": "http/protobuf",
        "OTEL_TRACES_SAMPLER": SAMPLERS[mode],
        # The exporter's HTTP client honours *_proxy variables: keep it on loopback.
        "NO_PROXY": HOST,
        "no_proxy": HOST,
    }


def start_sink(directory: Path, max_seconds: float) -> Child:
    """loadtest/otlp_sink.py on a free loopback port; it exits by itself after `max_seconds`."""
    port = free_port()
    argv = [sys.executable, str(SINK_SCRIPT), "--port", str(port)]
    argv += ["--max-seconds", f"{max_seconds:g}"]
    return Child.start("otlp sink", argv, port=port, directory=directory, env=dict(os.environ))


@dataclass(frozen=True)
class SinkReport:
    """What the OTLP sink received over the whole run (warm-up and drain included), and
    how often the servers' batch span processors logged that their queue was full."""

    requests: int
    bytes: int
    undecodable: int
    spans: dict[str, int]
    queue_full_warnings: int

    @property
    def total(self) -> int:
        return sum(self.spans.values())


def sink_report(sink: Child, servers: Sequence[Child]) -> SinkReport:
    """Once the servers have exited (and so flushed): the sink's counts, and the queue-full
    warnings in their logs."""
    connection = http.client.HTTPConnection(HOST, sink.port, timeout=5)
    try:
        connection.request("GET", "/stats")
        response = connection.getresponse()
        if response.status != 200:
            raise RuntimeError(f"{sink.name}: GET /stats answered {response.status}")
        stats = orjson.loads(response.read())
    finally:
        connection.close()
    warnings = sum(
        server.log_path.read_text(errors="replace").count(QUEUE_FULL_LOG) for server in servers
    )
    return SinkReport(
        requests=stats["requests"],
        bytes=stats["bytes"],
        undecodable=stats["undecodable"],
        spans=dict(sorted(stats["spans"].items())),
        queue_full_warnings=warnings,
    )


def start_server(name: str, port: int, env: dict[str, str], directory: Path) -> Child:
    command = Path(sys.executable).with_name("rendezvous")
    argv = [str(command), "serve", "--host", HOST, "--port", str(port)]
    return Child.start(name, argv, port=port, directory=directory, env=env)


def http_ok(port: int, path: str) -> bool:
    connection = http.client.HTTPConnection(HOST, port, timeout=1)
    try:
        connection.request("GET", path)
        return connection.getresponse().status == 200
    finally:
        connection.close()


def start_redis(directory: Path) -> Child:
    """redis-server on a free loopback port, without persistence, in `directory`."""
    program = shutil.which("redis-server")
    if program is None:
        raise RuntimeError("--redis needs redis-server (apt-get install redis-server)")
    port = free_port()
    argv = [program, "--port", str(port), "--bind", HOST, "--dir", str(directory)]
    argv += ["--save", "", "--appendonly", "no", "--daemonize", "no", "--logfile", ""]
    return Child.start("redis-server", argv, port=port, directory=directory, env=dict(os.environ))


def redis_ready(redis: Child) -> str:
    """Wait (bounded) until a started redis-server answers PING; return its version."""
    redis.wait_until(
        "answering PING",
        lambda: redis_command(redis.port, "PING") == "PONG",
        REDIS_START_TIMEOUT_SECONDS,
    )
    info = redis_command(redis.port, "INFO", "server").splitlines()
    return next((line.split(":", 1)[1] for line in info if line.startswith("redis_version:")), "?")


def redis_command(port: int, *args: str) -> str:
    """One command, for the two the benchmark sends (PING, INFO): a simple or bulk reply."""
    request = f"*{len(args)}\r\n" + "".join(f"${len(arg)}\r\n{arg}\r\n" for arg in args)
    with (
        socket.create_connection((HOST, port), timeout=1) as sock,
        sock.makefile("rb") as replies,
    ):
        sock.sendall(request.encode())
        line = replies.readline()
        if line.startswith(b"+"):
            return line[1:].decode().strip()
        if line.startswith(b"$"):
            return replies.read(int(line[1:])).decode()
    raise RuntimeError(f"redis-server replied {line!r} to {args[0]}")


def start_deployment(
    config: BenchConfig, *, secret: str, directory: Path, deployment: Deployment
) -> None:
    """Start the servers (and Redis, and the OTLP sink) into `deployment`, which the caller
    stops in any case, and wait until they take joins."""
    env = server_environment(secret)
    if config.tracing is not TracingMode.OFF:
        lifetime = 2 * SERVER_START_TIMEOUT_SECONDS + CLIENTS_READY_TIMEOUT_SECONDS
        lifetime += config.warmup_seconds + config.seconds + SINK_SPARE_SECONDS
        sink = deployment.sink = start_sink(directory, lifetime)
        sink.wait_until(
            "answering", functools.partial(http_ok, sink.port, "/stats"), SINK_START_TIMEOUT_SECONDS
        )
        env.update(tracing_environment(config.tracing, sink.port))
    if not config.redis:
        deployment.servers.append(start_server("server", config.port, env, directory))
        probe = "/healthz"
    else:
        redis = deployment.redis = start_redis(directory)
        deployment.redis_version = redis_ready(redis)
        env["REDIS_URL"] = f"redis://{HOST}:{redis.port}/0"
        for number, port in enumerate((config.port, free_port()), start=1):
            deployment.servers.append(start_server(f"instance {number}", port, env, directory))
        probe = "/readyz"  # joins are refused until the backend is connected
    for server in deployment.servers:
        server.wait_until(
            "ready" if config.redis else "healthy",
            functools.partial(http_ok, server.port, probe),
            SERVER_START_TIMEOUT_SECONDS,
        )


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process (all its threads), from /proc/<pid>/stat."""
    stat = Path(f"/proc/{pid}/stat").read_text()
    fields = stat.rsplit(")", 1)[1].split()  # the command name may contain spaces
    utime, stime = int(fields[11]), int(fields[12])  # fields 14 and 15 of proc(5)
    return (utime + stime) / os.sysconf("SC_CLK_TCK")


# The run.


def pair_specs(count: int, secret: str) -> list[PairSpec]:
    specs = []
    for index in range(count):
        room = f"bench-{index}"
        users = (f"bench-{index}-a", f"bench-{index}-b")
        tokens = tuple(
            mint_token(key=secret, user_id=user, ttl_seconds=TOKEN_TTL_SECONDS, rooms=[room])
            for user in users
        )
        specs.append(PairSpec(room=room, users=users, tokens=(tokens[0], tokens[1])))
    return specs


def _receive_all(
    pipes: Sequence[Connection],
    processes: Sequence[BaseProcess],
    kind: str,
    timeout: float,
) -> list[Any]:
    """One message of `kind` from every client process, or an error naming what failed."""
    results: dict[int, Any] = {}
    deadline = time.monotonic() + timeout
    while len(results) < len(pipes):
        waiting = [i for i in range(len(pipes)) if i not in results]
        ready = wait(
            [pipes[i] for i in waiting] + [processes[i].sentinel for i in waiting],
            max(deadline - time.monotonic(), 0),
        )
        if not ready:
            raise RuntimeError(f"client processes did not report {kind!r} within {timeout}s")
        for i in waiting:
            if pipes[i].poll():
                message = pipes[i].recv()
                if message[0] != kind:
                    raise RuntimeError(f"client process {i} sent {message[0]!r}")
                results[i] = message[1] if len(message) > 1 else None
            elif not processes[i].is_alive():
                raise RuntimeError(
                    f"client process {i} exited with code {processes[i].exitcode} (see above)"
                )
    return [results[i] for i in range(len(pipes))]


@dataclass(frozen=True)
class BenchResult:
    """One run's figures, as printed; `--json` writes them."""

    tracing: TracingMode
    redis: bool
    pairs: int
    seconds: float
    relayed: int  # offers delivered to their target inside the window
    messages_per_second: float
    latency_p50_ms: float | None  # None: nothing was relayed inside the window
    latency_p99_ms: float | None
    server_cpu_us_per_message: float | None  # all the instances together
    cpu_seconds: dict[str, float]  # over the window, of each process the benchmark started
    client_cpu_cores: float
    offers_sent: int  # over the whole run: what the servers relayed, a relay span each
    lost: int
    unexpected: dict[str, int]
    sink: SinkReport | None  # None: tracing off, no sink
    spans_expected: int | None  # per-message spans a sampled run exports: see message_spans
    spans_missing: int | None  # of those, the ones the sink never received


def message_spans(*, redis: bool) -> tuple[str, ...]:
    """The spans every relayed offer gives when sampled: its relay, and across instances
    its publish and its delivery."""
    return (RELAY, PUBLISH, DELIVER) if redis else (RELAY,)


def run(config: BenchConfig) -> BenchResult:
    secret = secrets.token_urlsafe(48)
    specs = pair_specs(config.pairs, secret)
    context = multiprocessing.get_context("spawn")
    processes: list[BaseProcess] = []
    deployment = Deployment()
    with tempfile.TemporaryDirectory(prefix="bench-relay-") as directory:
        try:
            start_deployment(
                config, secret=secret, directory=Path(directory), deployment=deployment
            )
            pipes = []
            for i in range(config.client_processes):
                job = ClientJob(
                    deployment.ports,
                    specs[i :: config.client_processes],
                    config.sdp_bytes,
                    config.window,
                )
                ours, theirs = context.Pipe()
                process = context.Process(
                    target=run_clients, args=(job, theirs), name="bench-clients", daemon=True
                )
                process.start()
                processes.append(process)
                pipes.append(ours)
            _receive_all(pipes, processes, "ready", CLIENTS_READY_TIMEOUT_SECONDS)
            begin_ns = time.perf_counter_ns() + int(config.warmup_seconds * 1e9)
            end_ns = begin_ns + int(config.seconds * 1e9)
            for pipe in pipes:
                pipe.send((begin_ns, end_ns))
            _sleep_until(begin_ns)
            cpu_begin = {child.name: cpu_seconds(child.pid) for child in deployment.children}
            _sleep_until(end_ns)
            cpu_end = {child.name: cpu_seconds(child.pid) for child in deployment.children}
            reports: list[ClientReport] = _receive_all(
                pipes, processes, "done", DRAIN_GRACE_SECONDS + 30
            )
            cpu = {name: cpu_end[name] - cpu_begin[name] for name in cpu_begin}
            # The servers flush their spans as they exit: only then is the sink's count whole.
            stop(deployment.servers)
            sink = None
            if deployment.sink is not None:
                sink = sink_report(deployment.sink, deployment.servers)
            result = summarize(config, deployment, reports, cpu, sink)
            print_results(config, deployment, result)
            if config.json_path is not None:
                config.json_path.write_bytes(
                    orjson.dumps(result, option=orjson.OPT_INDENT_2) + b"\n"
                )
            return result
        except BaseException:
            for child in deployment.children:
                print(
                    f"--- {child.name} log (last {LOG_TAIL_CHARACTERS} characters) ---\n"
                    f"{child.log_tail()}",
                    file=sys.stderr,
                )
            raise
        finally:
            for client in processes:
                client.join(5)
                if client.is_alive():
                    client.kill()
                    client.join()
            deployment.stop()


def _sleep_until(instant_ns: int) -> None:
    time.sleep(max(instant_ns - time.perf_counter_ns(), 0) / 1e9)


def summarize(
    config: BenchConfig,
    deployment: Deployment,
    reports: list[ClientReport],
    cpu: Mapping[str, float],
    sink: SinkReport | None,
) -> BenchResult:
    """`cpu`: the CPU seconds of each of `deployment.children`, by name, over the window."""
    relayed = sum(r.received_in_window for r in reports)
    latencies = array.array("q")
    for report in reports:
        latencies.frombytes(report.latencies_ns)
    unexpected: Counter[str] = Counter()
    for report in reports:
        unexpected.update(report.unexpected)
    offers_sent = sum(r.sent_total for r in reports)
    expected = missing = None
    if sink is not None:
        names = message_spans(redis=config.redis)
        each = offers_sent if config.tracing is TracingMode.SAMPLED else 0  # spans of a name
        expected = each * len(names)
        missing = sum(max(each - sink.spans.get(name, 0), 0) for name in names)
    p50 = p99 = per_message = None
    if relayed:
        p50, p99 = (cut / 1e6 for cut in _percentiles(latencies))
        server_cpu = sum(cpu[server.name] for server in deployment.servers)
        per_message = server_cpu * 1e6 / relayed
    return BenchResult(
        tracing=config.tracing,
        redis=config.redis,
        pairs=config.pairs,
        seconds=config.seconds,
        relayed=relayed,
        messages_per_second=relayed / config.seconds,
        latency_p50_ms=p50,
        latency_p99_ms=p99,
        server_cpu_us_per_message=per_message,
        cpu_seconds=dict(cpu),
        client_cpu_cores=sum(r.cpu_seconds for r in reports) / config.seconds,
        offers_sent=offers_sent,
        lost=sum(r.sent_total - r.received_total for r in reports),
        unexpected=dict(unexpected),
        sink=sink,
        spans_expected=expected,
        spans_missing=missing,
    )


def print_results(config: BenchConfig, deployment: Deployment, result: BenchResult) -> None:
    frame_bytes = len(OfferTemplate.to("bench-0-b", make_sdp(config.sdp_bytes)).frame(10**15))
    cpu = result.cpu_seconds
    server_cpu = [cpu[server.name] for server in deployment.servers]
    redis, sink = deployment.redis, deployment.sink

    print("Rendezvous relay benchmark")
    if redis is None:
        (server,) = deployment.servers
        print(
            f"  server      rendezvous serve, pid {server.pid}, {HOST}:{server.port}, "
            "memory backend"
        )
        placement = "one room each"
    else:
        for server, members in zip(deployment.servers, ("first", "second"), strict=True):
            print(
                f"  {server.name:<10}  rendezvous serve, pid {server.pid}, {HOST}:{server.port}, "
                f"redis backend ({members} members)"
            )
        print(
            f"  redis       redis-server {deployment.redis_version}, pid {redis.pid}, "
            f"{HOST}:{redis.port}, no persistence"
        )
        placement = "one room each, one member per instance"
    if sink is None:
        print("  tracing     off (no OTEL_* variable)")
    else:
        print(
            f"  tracing     {config.tracing}: sampler {SAMPLERS[config.tracing]}, OTLP/HTTP to "
            f"otlp_sink.py (pid {sink.pid}, {HOST}:{sink.port}), batch processor defaults"
        )
    print(
        f"  clients     {config.pairs} pairs ({placement}) in {config.client_processes} "
        f"process(es), {config.window} offers in flight per pair"
    )
    print(f"  offers      targeted, SDP {config.sdp_bytes} bytes, frame ~{frame_bytes} bytes")
    print(
        f"  window      {config.seconds:g} s measured after a {config.warmup_seconds:g} s warm-up"
    )
    print(f"  machine     {os.cpu_count()} CPUs, Python {sys.version.split()[0]}")
    relayed = result.relayed
    if result.latency_p50_ms is None or result.latency_p99_ms is None:
        print("  no offer was relayed inside the window")
        return
    print(f"  relayed     {relayed} offers = {result.messages_per_second:,.0f} messages/s")
    print(
        f"  latency     one-way p50 {result.latency_p50_ms:.2f} ms, "
        f"p99 {result.latency_p99_ms:.2f} ms"
    )

    def cpu_line(label: str, seconds: float, note: str = "") -> None:
        print(
            f"  {label:<10}  {seconds:.2f} s ({seconds / config.seconds:.0%} of a core) = "
            f"{seconds * 1e6 / relayed:.1f} µs per relayed message{note}"
        )

    if redis is None:
        cpu_line("server CPU", server_cpu[0])
    else:
        cpu_line("server CPU", sum(server_cpu), ", both instances")
        for server, seconds in zip(deployment.servers, server_cpu, strict=True):
            cpu_line(server.name, seconds)
        cpu_line("redis CPU", cpu[redis.name])
    if sink is not None:
        cpu_line("sink CPU", cpu[sink.name])
    print(f"  client CPU  {result.client_cpu_cores:.0%} of a core (all client processes)")
    print(f"  lost        {result.lost} (sent but never received)")
    if result.unexpected:
        print(f"  unexpected  {result.unexpected}")
    if result.sink is not None:
        print_spans(result, result.sink)


def print_spans(result: BenchResult, sink: SinkReport) -> None:
    """What the sink received over the whole run, against the offers the servers relayed."""
    names = ", ".join(f"{name} {count}" for name, count in sink.spans.items()) or "none"
    print(
        f"  spans       {sink.total} in {sink.requests} export requests "
        f"({sink.bytes / 1e6:.1f} MB) over the whole run: {names}"
    )
    if sink.undecodable:
        print(f"  spans       {sink.undecodable} export requests did not decode")
    offers = max(result.offers_sent, 1)
    coverage = ", ".join(
        f"{name} {sink.spans.get(name, 0) / offers:.1%}"
        for name in message_spans(redis=result.redis)
    )
    print(
        f"  per offer   of the {result.offers_sent} the clients sent in the whole run: {coverage}"
    )
    print(
        f"  missing     {result.spans_missing} of {result.spans_expected} per-message spans; "
        f"queue-full warnings in the servers' logs: {sink.queue_full_warnings} "
        "(the SDK logs it at most once per 20 s)"
    )


def _percentiles(latencies: array.array[int]) -> tuple[float, float]:
    cuts = statistics.quantiles(latencies, n=100, method="inclusive")
    return cuts[49], cuts[98]


def parse_args(argv: Sequence[str] | None) -> BenchConfig:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--pairs", type=int, default=20, help="client pairs (default 20)")
    parser.add_argument("--seconds", type=float, default=10.0, help="measured window (10)")
    parser.add_argument("--warmup", type=float, default=2.0, help="warm-up before it (2)")
    parser.add_argument("--sdp-bytes", type=int, default=1024, help="SDP size (1024)")
    parser.add_argument("--window", type=int, default=4, help="offers in flight per pair (4)")
    parser.add_argument(
        "--client-processes", type=int, default=1, help="processes running the clients (1)"
    )
    parser.add_argument(
        "--port", type=int, default=0, help="server port, the first's with --redis (a free one)"
    )
    parser.add_argument(
        "--redis",
        action="store_true",
        help="two instances sharing a redis-server of their own, one member of each pair on each",
    )
    parser.add_argument(
        "--tracing",
        choices=[mode.value for mode in TracingMode],
        default=TracingMode.OFF.value,
        help="off (no OTEL_*), unsampled (exporting, sampler always_off) or sampled "
        "(always_on), to an OTLP/HTTP sink the benchmark starts (off)",
    )
    parser.add_argument("--json", type=Path, help="also write the figures to this JSON file")
    args = parser.parse_args(argv)
    for name in ("pairs", "window", "client_processes"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be at least 1")
    if args.seconds <= 0 or args.warmup < 0 or args.sdp_bytes < 1:
        parser.error("--seconds must be positive, --warmup not negative, --sdp-bytes at least 1")
    return BenchConfig(
        pairs=args.pairs,
        seconds=args.seconds,
        warmup_seconds=args.warmup,
        sdp_bytes=args.sdp_bytes,
        window=args.window,
        client_processes=min(args.client_processes, args.pairs),
        port=args.port or free_port(),
        redis=args.redis,
        tracing=TracingMode(args.tracing),
        json_path=args.json,
    )


def main(argv: Sequence[str] | None = None) -> int:
    # A SIGTERM unwinds like Ctrl-C, so that whatever the run started is stopped too.
    signal.signal(signal.SIGTERM, _exit_on_signal)
    try:
        run(parse_args(argv))
    except RuntimeError as exc:  # the server or a client failed; the details are above
        print(f"bench_relay: {exc}", file=sys.stderr)
        return 1
    return 0


def _exit_on_signal(signum: int, frame: object) -> None:
    sys.exit(128 + signum)


if __name__ == "__main__":
    sys.exit(main())
