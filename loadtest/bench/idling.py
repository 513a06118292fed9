"""Memory per idle connection: the server's RSS before and after N joined connections that
then stay idle (N/2 rooms of 2; for PeerJS, N ids), divided by N.

The connections come from several client processes (asyncio + websockets, a few thousand
each), every process from a loopback source address of its own (127.1.x.y), so that
ephemeral ports never run short whatever the runs before left in TIME_WAIT. A warm-up of
a few connections, opened and closed before the "before" figure, keeps the server's
one-off allocations (imports, first-use caches) out of the per-connection figure.
"""

from __future__ import annotations

import asyncio
import itertools
import math
import time
from collections import Counter
from dataclasses import dataclass
from multiprocessing.connection import Connection
from pathlib import Path

from websockets.asyncio.client import ClientConnection

from loadtest.bench.clients import client_pool, instruction, report_errors
from loadtest.bench.dialects import Dialect, Member, joined, open_connection, pairs
from loadtest.bench.servers import Target

CONNECTIONS_PER_PROCESS = 2500
HANDSHAKES_IN_FLIGHT_PER_PROCESS = 50
WARMUP_PAIRS = 10
# After the connections are opened (or the warm-up's closed), before RSS is read.
SETTLE_SECONDS = 2.0
WARMUP_TIMEOUT_SECONDS = 60.0
# Opening is bounded: a base plus this long per connection (far more than it takes).
OPEN_SECONDS_PER_CONNECTION = 0.02
_source_numbers = itertools.count()


@dataclass(frozen=True)
class IdleJob:
    dialect: Dialect
    port: int
    members: list[Member]
    warmup: list[Member]
    source: str  # the loopback address the connections come from


@dataclass(frozen=True)
class OpenReport:
    opened: int
    failures: dict[str, int]
    seconds: float


async def _hold(job: IdleJob, pipe: Connection) -> None:
    for member in job.warmup:
        async with open_connection(job.dialect, job.port, member, source=job.source) as ws:
            await joined(job.dialect, ws)
    pipe.send(("warmed",))
    await instruction(pipe)
    connections: list[ClientConnection] = []
    opened = 0
    failures: Counter[str] = Counter()
    handshakes = asyncio.Semaphore(HANDSHAKES_IN_FLIGHT_PER_PROCESS)

    async def join(member: Member) -> None:
        nonlocal opened
        async with handshakes:
            try:
                connection = await open_connection(job.dialect, job.port, member, source=job.source)
                connections.append(connection)
                await joined(job.dialect, connection)
                opened += 1
            except (OSError, TimeoutError, RuntimeError) as exc:
                failures[type(exc).__name__] += 1

    began = time.perf_counter()
    await asyncio.gather(*(join(member) for member in job.members))
    seconds = time.perf_counter() - began
    pipe.send(("ready", OpenReport(opened=opened, failures=dict(failures), seconds=seconds)))
    await instruction(pipe)
    for connection in connections:  # no close handshakes: the server is stopped next
        connection.transport.abort()
    pipe.send(("done",))


def hold_idle(job: IdleJob, pipe: Connection) -> None:
    """Entry point of a client process."""
    report_errors(pipe, _hold(job, pipe))


# The parent's side.


@dataclass(frozen=True)
class MemoryFigures:
    target: str
    connections: int  # asked for
    opened: int  # joined and held
    failures: dict[str, int]
    rss_before_bytes: int
    rss_after_bytes: int
    bytes_per_connection: float | None
    open_seconds: float  # the slowest client process's
    client_processes: int


def rss_bytes(pid: int) -> int:
    """Resident set size of a process, from /proc/<pid>/status."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(f"no VmRSS for pid {pid}")


def measure(target: Target, connections: int, *, secret: str) -> MemoryFigures:
    """Open `connections` joined connections to `target` (fresh: nothing else on it),
    hold them idle, and read its RSS."""
    dialect, server = target.kind.dialect, target.server
    rooms = pairs(dialect, connections // 2, secret=secret, tag="idle")
    warmup = [m for pair in pairs(dialect, WARMUP_PAIRS, secret=secret, tag="warm") for m in pair]
    processes = math.ceil(2 * len(rooms) / CONNECTIONS_PER_PROCESS)
    jobs = []
    for index in range(processes):
        number = next(_source_numbers)
        jobs.append(
            IdleJob(
                dialect=dialect,
                port=server.port,
                # Whole rooms per process: a room's two members come from the same one.
                members=[m for pair in rooms[index::processes] for m in pair],
                warmup=warmup if index == 0 else [],
                source=f"127.1.{number // 250}.{number % 250 + 1}",
            )
        )
    timeout = 60 + 2 * len(rooms) * OPEN_SECONDS_PER_CONNECTION
    with client_pool(hold_idle, jobs) as pool:
        pool.receive("warmed", WARMUP_TIMEOUT_SECONDS)
        time.sleep(SETTLE_SECONDS)
        before = rss_bytes(server.pid)
        pool.send("go")
        reports: list[OpenReport] = pool.receive("ready", timeout)
        time.sleep(SETTLE_SECONDS)
        after = rss_bytes(server.pid)
        pool.send("close")
        pool.receive("done", 60)
    opened = sum(r.opened for r in reports)
    failures: Counter[str] = Counter()
    for report in reports:
        failures.update(report.failures)
    return MemoryFigures(
        target=target.kind,
        connections=2 * len(rooms),
        opened=opened,
        failures=dict(failures),
        rss_before_bytes=before,
        rss_after_bytes=after,
        bytes_per_connection=(after - before) / opened if opened else None,
        open_seconds=max(r.seconds for r in reports),
        client_processes=processes,
    )
