"""The printed tables, the ratios to PeerJS and the issue's targets (figures, not tests)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

from loadtest.bench.idling import MemoryFigures
from loadtest.bench.joining import JoinFigures
from loadtest.bench.publishing import PublishRun
from loadtest.bench.relaying import Load, RelayFigures, RelaySettings
from loadtest.bench.servers import TargetKind
from loadtest.bench_relay import HOST

GIB = 1024**3
MIB = 1024**2
TARGET_CROSS_INSTANCE_P50_MS = 1.0
TARGET_CONNECTIONS = 10_000
TARGET_RSS_BYTES = GIB
TARGET_JOIN_P99_MS = 50.0
TARGET_JOIN_RATE = 100.0


def label(target: str) -> str:
    return TargetKind(target).label


def _ratio(value: float | None, reference: float | None) -> float | None:
    if value is None or reference is None or reference == 0:
        return None
    return value / reference


def _times(ratio: float | None) -> str:
    return "-" if ratio is None else f"{ratio:.2f}x"


def number(value: float | None, spec: str) -> str:
    return "-" if value is None else format(value, spec)


RATIO_FIGURES: dict[str, Callable[[RelayFigures], float | None]] = {
    "messages_per_second": lambda f: f.messages_per_second,
    "latency_p50_ms": lambda f: f.latency_p50_ms,
    "latency_p99_ms": lambda f: f.latency_p99_ms,
    "server_cpu_seconds_per_1k": lambda f: f.server_cpu_seconds_per_1k,
}


def relay_ratios(figures: Sequence[RelayFigures]) -> dict[str, dict[str, dict[str, float | None]]]:
    """Each target's figures over PeerJS's under the same load in the same run."""
    ratios: dict[str, dict[str, dict[str, float | None]]] = {}
    for load in Load:
        reference = _find(figures, TargetKind.PEERJS, load)
        if reference is None:
            continue
        ratios[str(load)] = {
            str(f.target): {
                name: _ratio(get(f), get(reference)) for name, get in RATIO_FIGURES.items()
            }
            for f in figures
            if f.load is load
        }
    return ratios


def _find(figures: Sequence[RelayFigures], target: TargetKind, load: Load) -> RelayFigures | None:
    return next((f for f in figures if f.target == target and f.load is load), None)


def print_relay(
    figures: Sequence[RelayFigures],
    rounds: Sequence[RelayFigures],
    settings: RelaySettings,
    round_count: int,
    frame_bytes: int,
) -> None:
    """`figures`: the medians over the rounds; `rounds`: every round's."""
    ratios = relay_ratios(figures)
    medians = f", medians of {round_count} rounds" if round_count > 1 else ""
    print(
        f"\nRelay: {settings.pairs} pairs (a room each), targeted offers with an SDP of "
        f"{settings.sdp_bytes} bytes (frame ~{frame_bytes} bytes), {settings.seconds:g} s "
        f"measured after {settings.warmup_seconds:g} s of warm-up{medians}, "
        f"{settings.client_processes} client process(es)"
    )
    print(
        "server CPU = user + system of the relaying process(es), /proc/<pid>/stat; "
        "ratios are over PeerJS's figure in this run"
    )
    header = (
        f"  {'target':<26}{'offered/s':>10}{'msg/s':>9}{'/PeerJS':>8}{'p50 ms':>8}"
        f"{'/PeerJS':>8}{'p99 ms':>8}{'/PeerJS':>8}{'CPU s/1k msg':>13}{'/PeerJS':>8}"
        f"{'clients':>8}{'lost':>6}"
    )
    for load in Load:
        rows = [f for f in figures if f.load is load]
        if not rows:
            continue
        if load is Load.SATURATION:
            print(f"saturation (closed loop, {settings.window} offers in flight per pair)")
        else:
            print(f"fixed load (open loop, {settings.rate:,.0f} offers/s offered, paced)")
        print(header)
        for f in rows:
            r = ratios.get(load, {}).get(f.target, {})
            print(
                f"  {label(f.target):<26}{f.offered_per_second:>10,.0f}"
                f"{f.messages_per_second:>9,.0f}{_times(r.get('messages_per_second')):>8}"
                f"{number(f.latency_p50_ms, '.2f'):>8}{_times(r.get('latency_p50_ms')):>8}"
                f"{number(f.latency_p99_ms, '.2f'):>8}{_times(r.get('latency_p99_ms')):>8}"
                f"{number(f.server_cpu_seconds_per_1k, '.4f'):>13}"
                f"{_times(r.get('server_cpu_seconds_per_1k')):>8}"
                f"{f.client_cpu_cores:>8.0%}{f.lost:>6}"
            )
            if f.unexpected:
                print(f"  {'':<26}unexpected frames: {f.unexpected}")
    if round_count > 1:
        print(f"by round, 1 to {round_count} (msg/s | p50 ms | CPU s/1k msg):")
        for f in figures:
            mine = [r for r in rounds if r.target == f.target and r.load is f.load]
            rates = " ".join(f"{r.messages_per_second:,.0f}" for r in mine)
            p50s = " ".join(number(r.latency_p50_ms, ".2f") for r in mine)
            cpus = " ".join(number(r.server_cpu_seconds_per_1k, ".4f") for r in mine)
            print(f"  {label(f.target):<26}{f.load:<11} {rates} | {p50s} | {cpus}")
    for f in figures:
        if f.target != TargetKind.RENDEZVOUS_REDIS:
            continue
        parts = [f"{name} {number(f.cpu_per_1k(name), '.4f')}" for name in sorted(f.cpu_seconds)]
        total = sum(f.cpu_seconds.values()) * 1000 / f.relayed if f.relayed else None
        print(
            f"  {label(f.target)}, {f.load}: CPU s/1k msg by process: {', '.join(parts)}; "
            f"all three {number(total, '.4f')}"
        )


def print_memory(figures: Sequence[MemoryFigures]) -> None:
    print(
        "\nMemory: joined idle connections (N/2 rooms of 2; PeerJS: N ids), RSS of the "
        "server process (/proc/<pid>/status VmRSS) before and after"
    )
    print(
        f"  {'target':<26}{'connections':>12}{'RSS before':>12}{'RSS after':>12}"
        f"{'per connection':>16}{'opened in':>11}{'client procs':>14}"
    )
    for f in figures:
        per = None if f.bytes_per_connection is None else f.bytes_per_connection / 1024
        print(
            f"  {label(f.target):<26}{f.opened:>12,}{f.rss_before_bytes / MIB:>8.1f} MiB"
            f"{f.rss_after_bytes / MIB:>8.1f} MiB{number(per, '.1f'):>12} KiB"
            f"{f.open_seconds:>9.1f} s{f.client_processes:>14}"
        )
        if f.failures or f.opened != f.connections:
            print(f"  {'':<26}{f.connections - f.opened} of {f.connections} failed: {f.failures}")


def print_join(figures: Sequence[JoinFigures]) -> None:
    if not figures:
        return
    first = figures[0]
    print(
        f"\nJoin: a new connection until room_state (PeerJS: until OPEN), "
        f"{first.rate:g} joins/s offered for {first.seconds:g} s (open loop), into rooms of "
        "3 members; each joiner leaves at once"
    )
    print(
        f"  {'target':<26}{'joins':>7}{'achieved/s':>11}{'p50 ms':>8}{'p99 ms':>8}"
        f"{'max ms':>8}{'failed':>7}{'client lag max':>16}{'server CPU ms/join':>20}"
    )
    for f in figures:
        print(
            f"  {label(f.target):<26}{f.joined:>7}{f.achieved_per_second:>11.1f}"
            f"{number(f.latency_p50_ms, '.2f'):>8}{number(f.latency_p99_ms, '.2f'):>8}"
            f"{number(f.latency_max_ms, '.2f'):>8}{f.started - f.joined:>7}"
            f"{f.client_max_lag_ms:>13.1f} ms{number(f.server_cpu_ms_per_join, '.2f'):>20}"
        )
        if f.failures:
            print(f"  {'':<26}failures: {f.failures}")


def print_publish(run: PublishRun) -> None:
    settings = run.settings
    medians = f", medians of {settings.rounds} rounds" if settings.rounds > 1 else ""
    print(
        f"\nRedis PUBLISH{medians}: redis-benchmark {run.benchmark_version}, "
        f"{settings.clients} clients (-c {settings.clients}), payloads of "
        f"{settings.payload_bytes} bytes, against a redis-server {run.redis_version} of its own "
        f"({HOST}:{run.redis_port}, no persistence, no limit on subscribers' output buffers)"
    )
    print(
        f"subscribers: {len(run.subscriber_pids)} processes subscribed to the channel, reading "
        "all they are sent (with 0, the channel published to has none); requests/s: "
        "redis-benchmark's, as the publishers got their replies; delivered/s: until every "
        "subscriber had read everything; peak buffer: the largest output buffer Redis held for "
        "a subscriber; redis CPU: user + system of redis-server over the same span"
    )
    print(
        f"  {'command':<10}{'subscribers':>12}{'pipeline':>9}{'requests':>10}"
        f"{'requests/s':>12}{'delivered/s':>12}{'peak buffer':>16}{'p50 ms':>8}{'p99 ms':>8}"
        f"{'redis CPU ms/1k':>16}"
    )
    for f in run.figures:
        peak = f"{f.subscriber_buffer_peak_bytes / MIB:.1f} MiB" if f.subscribers else "-"
        print(
            f"  {f.command:<10}{f.subscribers:>12}{f.pipeline:>9}{f.requests:>10,}"
            f"{f.requests_per_second:>12,.0f}{number(f.delivered_per_second, ',.0f'):>12}"
            f"{peak:>16}{number(f.latency_p50_ms, '.2f'):>8}"
            f"{number(f.latency_p99_ms, '.2f'):>8}{f.redis_cpu_seconds_per_1k * 1000:>16.2f}"
        )
        if f.subscribers_after != f.subscribers:
            print(f"  {'':<10}only {f.subscribers_after} of {f.subscribers} still subscribed after")
    if settings.rounds > 1:
        _print_publish_rounds(run)
    for note in run.skipped:
        print(f"  skipped: {note}")


def _print_publish_rounds(run: PublishRun) -> None:
    print(f"by round, 1 to {run.settings.rounds} (requests/s | delivered/s | redis CPU ms/1k):")
    for f in run.figures:
        case = (f.command, f.subscribers, f.pipeline)
        mine = [r for r in run.rounds if (r.command, r.subscribers, r.pipeline) == case]
        rates = " ".join(f"{r.requests_per_second:,.0f}" for r in mine)
        delivered = " ".join(number(r.delivered_per_second, ",.0f") for r in mine)
        cpus = " ".join(f"{r.redis_cpu_seconds_per_1k * 1000:.2f}" for r in mine)
        name = f"{f.command}, {f.subscribers} subscribers, -P {f.pipeline}"
        print(f"  {name:<32}{rates} | {delivered} | {cpus}")


@dataclass(frozen=True)
class TargetLine:
    """One of the issue's targets: what was measured against it, and whether it is met
    (None: not measured in this run)."""

    name: str
    met: bool | None
    figures: str


def targets(
    relay: Sequence[RelayFigures], memory: Sequence[MemoryFigures], join: Sequence[JoinFigures]
) -> list[TargetLine]:
    lines = []
    name = "server CPU per relayed message no worse than PeerJS's (memory backend)"
    for load in Load:
        ours = _find(relay, TargetKind.RENDEZVOUS, load)
        theirs = _find(relay, TargetKind.PEERJS, load)
        a = None if ours is None else ours.server_cpu_seconds_per_1k
        c = None if theirs is None else theirs.server_cpu_seconds_per_1k
        if a is None or c is None:
            lines.append(TargetLine(f"{name}, {load}", None, "not measured"))
            continue
        lines.append(
            TargetLine(
                f"{name}, {load}",
                a <= c,
                f"{a:.4f} vs {c:.4f} CPU s per 1k messages ({a / c:.2f}x)",
            )
        )
    name = f"cross-instance relay adds under {TARGET_CROSS_INSTANCE_P50_MS:g} ms at p50"
    single = _find(relay, TargetKind.RENDEZVOUS, Load.FIXED)
    cross = _find(relay, TargetKind.RENDEZVOUS_REDIS, Load.FIXED)
    if single and cross and single.latency_p50_ms is not None and cross.latency_p50_ms is not None:
        added = cross.latency_p50_ms - single.latency_p50_ms
        lines.append(
            TargetLine(
                name,
                added < TARGET_CROSS_INSTANCE_P50_MS,
                f"+{added:.2f} ms (p50 {cross.latency_p50_ms:.2f} vs {single.latency_p50_ms:.2f} ms"
                f" at {cross.offered_per_second:,.0f} offers/s, fixed load)",
            )
        )
    else:
        lines.append(TargetLine(name, None, "not measured (needs both at fixed load)"))
    name = f"{TARGET_CONNECTIONS:,} connections on one instance under 1 GiB RSS"
    ours_memory = [m for m in memory if m.target == TargetKind.RENDEZVOUS and m.opened]
    at_target = [m for m in ours_memory if m.opened >= TARGET_CONNECTIONS]
    if at_target:
        m = at_target[0]
        lines.append(
            TargetLine(
                name,
                m.rss_after_bytes < TARGET_RSS_BYTES,
                f"{m.rss_after_bytes / MIB:.0f} MiB with {m.opened:,} idle connections",
            )
        )
    elif ours_memory:
        m = max(ours_memory, key=lambda m: m.opened)
        per = m.bytes_per_connection or 0.0
        guess = m.rss_before_bytes + TARGET_CONNECTIONS * per
        lines.append(
            TargetLine(
                name,
                None,
                f"not measured; extrapolated from {m.opened:,}: {guess / MIB:.0f} MiB",
            )
        )
    else:
        lines.append(TargetLine(name, None, "not measured"))
    name = f"join p99 under {TARGET_JOIN_P99_MS:g} ms at {TARGET_JOIN_RATE:g} joins/s"
    ours_join = next((j for j in join if j.target == TargetKind.RENDEZVOUS), None)
    if ours_join is None or ours_join.latency_p99_ms is None:
        lines.append(TargetLine(name, None, "not measured"))
    else:
        lines.append(
            TargetLine(
                name,
                ours_join.latency_p99_ms < TARGET_JOIN_P99_MS,
                f"{ours_join.latency_p99_ms:.2f} ms at {ours_join.achieved_per_second:.1f} "
                f"joins/s achieved ({ours_join.rate:g} offered)",
            )
        )
    return lines


def print_targets(lines: Sequence[TargetLine]) -> None:
    print("\nTargets (issue 8; figures, not tests)")
    for line in lines:
        verdict = {True: "target met", False: "target missed", None: "not measured"}[line.met]
        print(f"  {verdict:<14} {line.name}: {line.figures}")
