"""The relay measurement: pairs of clients exchange targeted offers through a target, in
one of two loads, with the same client code for every server.

- saturation (closed loop, as bench_relay.py): the first member of each pair sends
  `window` offers and each member answers every offer it receives with one back, so
  `window` offers are always in flight per pair and the rate is as high as the server
  (and the machine) allows.
- fixed load (open loop): both members of every pair send offers at a paced rate, `rate`
  per second over all pairs, whatever comes back; the latency is that of a server that
  is not saturated, and the CPU per message that of a steady load.

Every offer carries its send time (`payload.sent_ns`, `time.perf_counter_ns`) and its
receiver is in the same process, so the one-way latency is exact.
"""

from __future__ import annotations

import array
import asyncio
import contextlib
import secrets
import statistics
import time
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from multiprocessing.connection import Connection
from typing import Any

import orjson
from websockets.asyncio.client import ClientConnection

from loadtest.bench.clients import client_pool, instruction, report_errors, sleep_until
from loadtest.bench.dialects import (
    Dialect,
    Member,
    OfferTemplate,
    await_partner,
    joined,
    offer_template,
    offer_type,
    open_connection,
    pairs,
)
from loadtest.bench.servers import Target
from loadtest.bench.stats import percentiles_ms
from loadtest.bench_relay import cpu_seconds, make_sdp

CLIENTS_READY_TIMEOUT_SECONDS = 60.0
# After the window, how long in-flight offers get to come home before the clients hang up.
DRAIN_GRACE_SECONDS = 1.0
PACE_SLEEP_SECONDS = 0.001


class Load(StrEnum):
    SATURATION = "saturation"  # closed loop
    FIXED = "fixed"  # open loop, paced


@dataclass(frozen=True)
class RelaySettings:
    pairs: int
    seconds: float
    warmup_seconds: float
    sdp_bytes: int
    window: int  # offers in flight per pair, saturation
    rate: float  # offers per second over all pairs, fixed load
    client_processes: int


@dataclass(frozen=True)
class RelayJob:
    """One client process's share: its pairs and, at fixed load, its share of the rate."""

    dialect: Dialect
    load: Load
    ports: tuple[int, int]  # where the first and the second members connect
    pairs: list[tuple[Member, Member]]
    sdp_bytes: int
    window: int
    rate: float


@dataclass
class RelayReport:
    """What one client process saw; latencies (ns) of offers received inside the window."""

    sent_total: int = 0
    received_total: int = 0
    sent_in_window: int = 0
    received_in_window: int = 0
    latencies_ns: bytes = b""
    unexpected: Counter[str] = field(default_factory=Counter)
    cpu_seconds: float = 0.0


class Peer:
    """One client connection: it sends offers to its partner, stamped with their send
    time, and records the one-way latency of the offers it receives inside the window."""

    def __init__(
        self, connection: ClientConnection, offer: OfferTemplate, kind: str, report: RelayReport
    ) -> None:
        self._connection = connection
        self._offer = offer
        self._kind = kind
        self._report = report
        self.latencies = array.array("q")
        self.begin_ns = self.end_ns = 0

    async def send(self) -> None:
        now = time.perf_counter_ns()
        await self._connection.send(self._offer.frame(now))
        self._report.sent_total += 1
        if self.begin_ns <= now < self.end_ns:
            self._report.sent_in_window += 1

    async def receive(self, *, bounce: bool) -> None:
        """Until cancelled; with `bounce`, answer every offer with one back until the end."""
        report, latencies, clock = self._report, self.latencies, time.perf_counter_ns
        begin_ns, end_ns, kind = self.begin_ns, self.end_ns, self._kind
        async for text in self._connection:
            now = clock()
            frame = orjson.loads(text)
            if frame["type"] != kind:
                report.unexpected[_label(frame)] += 1
                continue
            report.received_total += 1
            if begin_ns <= now < end_ns:
                report.received_in_window += 1
                latencies.append(now - frame["payload"]["sent_ns"])
            if bounce and now < end_ns:
                await self.send()


def _label(frame: dict[str, Any]) -> str:
    """`error:rate_limited` (Rendezvous), `ERROR:<msg>` or `EXPIRE` (PeerJS)."""
    payload = frame.get("payload")
    detail = payload.get("code") or payload.get("msg") if isinstance(payload, dict) else None
    return f"{frame['type']}:{detail}" if detail else str(frame["type"])


async def _pace(peers: list[Peer], rate: float, start_ns: int, end_ns: int) -> None:
    """Send `rate` offers per second in turn from `peers`, on schedule from `start_ns` to
    `end_ns`. The sends due are made at once, then the pacer sleeps until the next one is
    due, but at least PACE_SLEEP_SECONDS (the loop's timers have a 1 ms grain)."""
    interval_ns = 1e9 / rate
    sent = 0
    while True:
        now = time.perf_counter_ns()
        due = start_ns + int(sent * interval_ns)
        while due <= now and due < end_ns:
            await peers[sent % len(peers)].send()
            sent += 1
            due = start_ns + int(sent * interval_ns)
        if due >= end_ns:
            return
        await asyncio.sleep(max((due - now) / 1e9, PACE_SLEEP_SECONDS))


async def _drive(job: RelayJob, pipe: Connection) -> None:
    report = RelayReport()
    sdp = make_sdp(job.sdp_bytes)
    kind = offer_type(job.dialect)
    peers: list[Peer] = []
    async with contextlib.AsyncExitStack() as stack:
        for pair in job.pairs:
            connections = [
                await stack.enter_async_context(open_connection(job.dialect, port, member))
                for port, member in zip(job.ports, pair, strict=True)
            ]
            states = [await joined(job.dialect, connection) for connection in connections]
            for connection, state, partner in zip(connections, states, reversed(pair), strict=True):
                await await_partner(job.dialect, connection, partner.user_id, state)
                peers.append(
                    Peer(
                        connection, offer_template(job.dialect, partner.user_id, sdp), kind, report
                    )
                )
        pipe.send(("ready",))
        begin_ns, end_ns = await instruction(pipe)
        start_ns = time.perf_counter_ns()
        for peer in peers:
            peer.begin_ns, peer.end_ns = begin_ns, end_ns
        bounce = job.load is Load.SATURATION
        tasks = [asyncio.create_task(peer.receive(bounce=bounce)) for peer in peers]
        if bounce:
            for first in peers[::2]:
                for _ in range(job.window):
                    await first.send()
        else:
            tasks.append(asyncio.create_task(_pace(peers, job.rate, start_ns, end_ns)))
        await sleep_until(begin_ns)
        cpu_begin = time.process_time()
        await sleep_until(end_ns)
        report.cpu_seconds = time.process_time() - cpu_begin
        await asyncio.sleep(DRAIN_GRACE_SECONDS)
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
    latencies = array.array("q")
    for peer in peers:
        latencies.extend(peer.latencies)
    report.latencies_ns = latencies.tobytes()
    pipe.send(("done", report))


def run_clients(job: RelayJob, pipe: Connection) -> None:
    """Entry point of a client process."""
    report_errors(pipe, _drive(job, pipe))


# The parent's side.


@dataclass(frozen=True)
class RelayFigures:
    """One target under one load, as printed; `--json` writes them."""

    target: str
    load: Load
    seconds: float
    offered_per_second: float  # offers the clients sent inside the window, per second
    relayed: int  # offers delivered to their target inside the window
    messages_per_second: float
    latency_p50_ms: float | None  # None: nothing was relayed inside the window
    latency_p99_ms: float | None
    cpu_seconds: dict[str, float]  # over the window, of each process of the target
    server_cpu_seconds: float  # the relaying processes together (both instances for (b))
    server_cpu_seconds_per_1k: float | None  # per 1,000 relayed messages
    client_cpu_cores: float
    lost: int  # sent but never received, over the whole run
    unexpected: dict[str, int]
    round: int | None = None  # the round it was measured in; None: the median of rounds

    def cpu_per_1k(self, name: str) -> float | None:
        """CPU seconds of one process per 1,000 relayed messages."""
        return self.cpu_seconds[name] * 1000 / self.relayed if self.relayed else None


def median(rounds: Sequence[RelayFigures]) -> RelayFigures:
    """Each figure's median over the rounds of one target and load (lost and unexpected
    frames: their sums), so that one round disturbed by other work on the machine does
    not decide the comparison."""

    def mid(values: Iterable[float | None]) -> float | None:
        present = [v for v in values if v is not None]
        return statistics.median(present) if present else None

    def mid_of(get: Callable[[RelayFigures], float]) -> float:
        return statistics.median(get(f) for f in rounds)

    unexpected: Counter[str] = Counter()
    for f in rounds:
        unexpected.update(f.unexpected)
    first = rounds[0]
    return RelayFigures(
        target=first.target,
        load=first.load,
        seconds=first.seconds,
        offered_per_second=mid_of(lambda f: f.offered_per_second),
        relayed=round(mid_of(lambda f: f.relayed)),
        messages_per_second=mid_of(lambda f: f.messages_per_second),
        latency_p50_ms=mid(f.latency_p50_ms for f in rounds),
        latency_p99_ms=mid(f.latency_p99_ms for f in rounds),
        cpu_seconds={
            name: statistics.median(f.cpu_seconds[name] for f in rounds)
            for name in first.cpu_seconds
        },
        server_cpu_seconds=mid_of(lambda f: f.server_cpu_seconds),
        server_cpu_seconds_per_1k=mid(f.server_cpu_seconds_per_1k for f in rounds),
        client_cpu_cores=mid_of(lambda f: f.client_cpu_cores),
        lost=sum(f.lost for f in rounds),
        unexpected=dict(unexpected),
    )


def measure(
    target: Target, settings: RelaySettings, load: Load, *, secret: str, round_number: int
) -> RelayFigures:
    """Connect the pairs to `target`, run the load for warm-up plus window, and sum up."""
    dialect = target.kind.dialect
    tag = f"{load}-{secrets.token_hex(3)}"
    all_pairs = pairs(dialect, settings.pairs, secret=secret, tag=tag)
    processes = min(settings.client_processes, settings.pairs)
    jobs = []
    for index in range(processes):
        share = all_pairs[index::processes]
        jobs.append(
            RelayJob(
                dialect=dialect,
                load=load,
                ports=target.ports,
                pairs=share,
                sdp_bytes=settings.sdp_bytes,
                window=settings.window,
                rate=settings.rate * len(share) / settings.pairs,
            )
        )
    with client_pool(run_clients, jobs) as pool:
        pool.receive("ready", CLIENTS_READY_TIMEOUT_SECONDS)
        begin_ns = time.perf_counter_ns() + int(settings.warmup_seconds * 1e9)
        end_ns = begin_ns + int(settings.seconds * 1e9)
        pool.send((begin_ns, end_ns))
        _sleep_until(begin_ns)
        cpu_begin = {child.name: cpu_seconds(child.pid) for child in target.children}
        _sleep_until(end_ns)
        cpu_end = {child.name: cpu_seconds(child.pid) for child in target.children}
        reports: list[RelayReport] = pool.receive("done", DRAIN_GRACE_SECONDS + 30)
    cpu = {name: cpu_end[name] - cpu_begin[name] for name in cpu_begin}
    return _summarize(target, settings, load, reports, cpu, round_number)


def _sleep_until(instant_ns: int) -> None:
    time.sleep(max(instant_ns - time.perf_counter_ns(), 0) / 1e9)


def _summarize(
    target: Target,
    settings: RelaySettings,
    load: Load,
    reports: list[RelayReport],
    cpu: Mapping[str, float],
    round_number: int,
) -> RelayFigures:
    relayed = sum(r.received_in_window for r in reports)
    latencies = array.array("q")
    unexpected: Counter[str] = Counter()
    for report in reports:
        latencies.frombytes(report.latencies_ns)
        unexpected.update(report.unexpected)
    p50, p99 = percentiles_ms(latencies, (50, 99))
    server_cpu = sum(cpu[server.name] for server in target.servers)
    return RelayFigures(
        target=target.kind,
        load=load,
        seconds=settings.seconds,
        offered_per_second=sum(r.sent_in_window for r in reports) / settings.seconds,
        relayed=relayed,
        messages_per_second=relayed / settings.seconds,
        latency_p50_ms=p50,
        latency_p99_ms=p99,
        cpu_seconds=dict(cpu),
        server_cpu_seconds=server_cpu,
        server_cpu_seconds_per_1k=server_cpu * 1000 / relayed if relayed else None,
        client_cpu_cores=sum(r.cpu_seconds for r in reports) / settings.seconds,
        lost=sum(r.sent_total - r.received_total for r in reports),
        unexpected=dict(unexpected),
        round=round_number,
    )
