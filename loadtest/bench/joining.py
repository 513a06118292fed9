"""Join latency: from opening a new connection to the frame that says the member is in
(`room_state` for Rendezvous; `OPEN` for PeerJS, which has no rooms), at a paced rate
(open loop). Each join is a new user joining a room that already has a few members; it
leaves (closes) at once, so the room stays the same size and its members see every join
and leave. The latency covers TCP connect, the WebSocket upgrade, the token check and
the join; the client stamps the start when it begins connecting."""

from __future__ import annotations

import array
import asyncio
import contextlib
import time
from collections import Counter
from dataclasses import dataclass, field
from multiprocessing.connection import Connection

import orjson
from websockets.asyncio.client import ClientConnection

from loadtest.bench.clients import client_pool, instruction, report_errors, sleep_until
from loadtest.bench.dialects import Dialect, Member, member, open_connection
from loadtest.bench.servers import Target
from loadtest.bench.stats import percentiles_ms
from loadtest.bench_relay import cpu_seconds

ROOMS = 10
RESIDENTS_PER_ROOM = 3
RESIDENTS_READY_TIMEOUT_SECONDS = 60.0
# After the last scheduled join, how long the joins still in progress get.
JOIN_GRACE_SECONDS = 15.0


@dataclass(frozen=True)
class JoinJob:
    dialect: Dialect
    port: int
    residents: list[Member]
    joiners: list[Member]
    rate: float


@dataclass
class JoinReport:
    latencies_ns: bytes = b""
    failures: Counter[str] = field(default_factory=Counter)
    started: int = 0
    span_ns: int = 0  # from the first join's start to the last's
    max_lag_ns: int = 0  # how late the client started a join, at worst


async def _until_joined(dialect: Dialect, connection: ClientConnection) -> None:
    """Until the frame that says the member is in; others before it (a concurrent join
    in the same room) are skipped."""
    kind = "room_state" if dialect is Dialect.RENDEZVOUS else "OPEN"
    async for text in connection:
        if orjson.loads(text)["type"] == kind:
            return
    raise RuntimeError(f"closed before {kind}")


async def _join_once(job: JoinJob, joiner: Member, latencies: array.array[int]) -> None:
    began = time.perf_counter_ns()
    async with open_connection(job.dialect, job.port, joiner) as connection:
        await _until_joined(job.dialect, connection)
        latencies.append(time.perf_counter_ns() - began)


async def _drain(connection: ClientConnection) -> None:
    """A resident reads whatever comes (the joins and leaves), so that nothing backs up."""
    async for _ in connection:
        pass


async def _run(job: JoinJob, pipe: Connection) -> None:
    report = JoinReport()
    latencies = array.array("q")
    async with contextlib.AsyncExitStack() as stack:
        drains = []
        for resident in job.residents:
            connection = await stack.enter_async_context(
                open_connection(job.dialect, job.port, resident)
            )
            await _until_joined(job.dialect, connection)
            drains.append(asyncio.create_task(_drain(connection)))
        pipe.send(("ready",))
        start_ns = await instruction(pipe)
        interval_ns = 1e9 / job.rate
        joins = []
        first = last = 0
        for index, joiner in enumerate(job.joiners):
            due = start_ns + int(index * interval_ns)
            await sleep_until(due)
            now = time.perf_counter_ns()
            first, last = first or now, now
            report.max_lag_ns = max(report.max_lag_ns, now - due)
            joins.append(asyncio.create_task(_join_once(job, joiner, latencies)))
        report.started = len(joins)
        report.span_ns = last - first
        done, pending = await asyncio.wait(joins, timeout=JOIN_GRACE_SECONDS)
        for task in pending:
            task.cancel()
            report.failures["not joined in time"] += 1
        for task in done:
            error = task.exception()
            if error is not None:
                report.failures[type(error).__name__] += 1
        for task in drains:
            if task.done():  # a resident was dropped before the end
                error = task.exception()
                report.failures[f"resident {type(error).__name__ if error else 'closed'}"] += 1
            task.cancel()
    report.latencies_ns = latencies.tobytes()
    pipe.send(("done", report))


def run_joins(job: JoinJob, pipe: Connection) -> None:
    """Entry point of the client process."""
    report_errors(pipe, _run(job, pipe))


# The parent's side.


@dataclass(frozen=True)
class JoinFigures:
    target: str
    rate: float  # offered, joins per second
    seconds: float
    started: int
    joined: int
    failures: dict[str, int]
    achieved_per_second: float  # joins that succeeded, per second of the schedule
    latency_p50_ms: float | None
    latency_p99_ms: float | None
    latency_max_ms: float | None
    client_max_lag_ms: float  # how late the client started a join, at worst
    server_cpu_ms_per_join: float | None  # the server's CPU over the joins, per join


def measure(target: Target, *, rate: float, seconds: float, secret: str) -> JoinFigures:
    dialect, server = target.kind.dialect, target.server
    residents = [
        member(dialect, user_id=f"resident-{room}-{index}", room=f"room-{room}", secret=secret)
        for room in range(ROOMS)
        for index in range(RESIDENTS_PER_ROOM)
    ]
    joiners = [
        member(dialect, user_id=f"joiner-{index}", room=f"room-{index % ROOMS}", secret=secret)
        for index in range(max(round(rate * seconds), 1))
    ]
    job = JoinJob(dialect, server.port, residents, joiners, rate)
    with client_pool(run_joins, [job]) as pool:
        pool.receive("ready", RESIDENTS_READY_TIMEOUT_SECONDS)
        start_ns = time.perf_counter_ns() + 500_000_000  # time for the client to get it
        pool.send(start_ns)
        cpu_begin = cpu_seconds(server.pid)
        (report,) = pool.receive("done", seconds + JOIN_GRACE_SECONDS + 30)
        cpu = cpu_seconds(server.pid) - cpu_begin
    latencies = array.array("q")
    latencies.frombytes(report.latencies_ns)
    p50, p99, top = percentiles_ms(latencies, (50, 99, 100))
    joined = len(latencies)
    span_seconds = report.span_ns / 1e9 + 1 / rate  # the last join's slot counts
    return JoinFigures(
        target=target.kind,
        rate=rate,
        seconds=seconds,
        started=report.started,
        joined=joined,
        failures=dict(report.failures),
        achieved_per_second=joined / span_seconds,
        latency_p50_ms=p50,
        latency_p99_ms=p99,
        latency_max_ms=top,
        client_max_lag_ms=report.max_lag_ns / 1e6,
        server_cpu_ms_per_join=cpu * 1000 / joined if joined else None,
    )
