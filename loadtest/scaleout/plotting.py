"""The report's PNG plots (matplotlib's object API on the Agg canvas: no display, no
pyplot state), one panel per phase, time in seconds since locust started, each panel
titled with its phase's lost/reordered counts:

- latency.png: locust's p50/p95/p99 of all requests over its rolling ~10 s window, and
  the running users;
- throughput.png: what locust counted per second (all requests, and the relayed
  messages it checked) and what each instance relayed per second by its /metrics, which
  shows how nginx spread the load. Rates are over a sliding RATE_WINDOW_SECONDS: a
  distributed locust's workers report to their master every 3 s.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from matplotlib.artist import Artist
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.ticker import FixedLocator, FuncFormatter, NullFormatter

from loadtest.scaleout.results import PhaseResult

PANEL_SIZE_INCHES = (11.0, 3.4)
DPI = 110
PERCENTILE_STYLES = (("p50", "tab:blue"), ("p95", "tab:orange"), ("p99", "tab:red"))
RATE_WINDOW_SECONDS = 3.0
# Latency ticks (ms) on the log axis: plain numbers, not powers of ten.
LATENCY_TICKS_MS = (0.5, 1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000, 10000)
INSTANCE_COLOURS = ("tab:blue", "tab:orange", "tab:green", "tab:red", "tab:purple")


def phase_title(phase: PhaseResult) -> str:
    count = phase.instance_count
    return f"{count} instance{'s' if count > 1 else ''} behind nginx (ip_hash)"


def checks_line(phase: PhaseResult) -> str:
    totals = phase.totals
    if not totals:
        return "no summary from the suite"
    return (
        f"lost {totals.get('lost', '?')} · reordered {totals.get('reordered', '?')} · "
        f"duplicated {totals.get('duplicated', '?')} · misrouted {totals.get('misrouted', '?')}"
        f" of {totals.get('expected', 0):,} expected"
    )


def _titles(axes: Axes, phase: PhaseResult) -> None:
    axes.set_title(phase_title(phase), loc="left", fontsize=10)
    colour = "darkgreen" if phase.ok else "darkred"
    axes.set_title(checks_line(phase), loc="right", fontsize=9, color=colour)


def _figure(phases: Sequence[PhaseResult], title: str) -> tuple[Figure, list[Axes]]:
    width, height = PANEL_SIZE_INCHES
    figure = Figure(figsize=(width, height * len(phases) + 0.8), dpi=DPI, layout="constrained")
    figure.suptitle(title)
    axes = figure.subplots(len(phases), 1, sharex=True, squeeze=False)
    return figure, [row[0] for row in axes]


def _legend(figure: Figure, axes: Sequence[Axes]) -> None:
    """One legend for the figure, below the panels: every label once."""
    seen: dict[str, Artist] = {}
    for each in axes:
        handles, labels = each.get_legend_handles_labels()
        for handle, label in zip(handles, labels, strict=True):
            seen.setdefault(label, handle)
    figure.legend(list(seen.values()), list(seen), loc="outside lower center", ncols=4)


def plot_latency(phases: Sequence[PhaseResult], path: Path) -> None:
    figure, panels = _figure(
        phases, "Latency of all locust requests (mostly relayed messages), rolling ~10 s window"
    )
    every: list[Axes] = []
    for axes, phase in zip(panels, phases, strict=True):
        # Locust writes 0 for a percentile with no response in its window yet: no point.
        points = [p for p in phase.history if p.p50_ms and p.p95_ms and p.p99_ms]
        times = [p.at - phase.started_at for p in points]
        for label, colour in PERCENTILE_STYLES:
            values = [getattr(p, f"{label}_ms") for p in points]
            axes.plot(times, values, label=label, color=colour, linewidth=1.6)
        axes.set_yscale("log")
        axes.yaxis.set_major_locator(FixedLocator(LATENCY_TICKS_MS))
        axes.yaxis.set_major_formatter(FuncFormatter(lambda value, _: f"{value:g}"))
        axes.yaxis.set_minor_formatter(NullFormatter())
        axes.set_ylabel("ms (log scale)")
        axes.grid(True, which="major", alpha=0.3)
        _titles(axes, phase)
        users = axes.twinx()
        users.plot(
            [p.at - phase.started_at for p in phase.history],
            [p.users for p in phase.history],
            color="grey", linestyle="--", linewidth=1, label="users (right axis)",
        )  # fmt: skip
        users.set_ylabel("users", color="grey")
        users.set_ylim(bottom=0)
        every += [axes, users]
    # One scale for every phase, so that their latencies compare at a glance.
    values = [
        value
        for phase in phases
        for p in phase.history
        for value in (p.p50_ms, p.p99_ms)
        if value and p.p50_ms and p.p95_ms and p.p99_ms
    ]
    if values:
        for axes in panels:
            axes.set_ylim(*_tick_range(min(values), max(values)))
    panels[-1].set_xlabel("seconds since locust started")
    _legend(figure, every)
    figure.savefig(path)


def _tick_range(low: float, high: float) -> tuple[float, float]:
    """The latency ticks below `low` and above `high`, so that both ends of the axis are
    labelled and no line runs along an edge."""
    below = [tick for tick in LATENCY_TICKS_MS if tick < low]
    above = [tick for tick in LATENCY_TICKS_MS if tick > high]
    return (below[-1] if below else low), (above[0] if above else high)


def plot_throughput(phases: Sequence[PhaseResult], path: Path) -> None:
    figure, panels = _figure(
        phases,
        f"Throughput per second ({RATE_WINDOW_SECONDS:g} s sliding window): locust's counts, "
        "and each instance's /metrics",
    )
    for axes, phase in zip(panels, phases, strict=True):
        history = phase.history
        times = [p.at - phase.started_at for p in history]
        axes.plot(
            *windowed_rates(times, [p.requests for p in history]),
            color="grey", linewidth=1.5, label="locust: all requests",
        )  # fmt: skip
        axes.plot(
            *windowed_rates(times, [p.relayed for p in history]),
            color="black", linewidth=2, label="locust: relayed messages checked",
        )  # fmt: skip
        for index, instance in enumerate(phase.instances):
            stamps, totals = [], []
            for sample in phase.samples:
                metrics = sample.instances[index]
                if metrics is not None:
                    stamps.append(sample.at - phase.started_at)
                    totals.append(metrics.relayed_total)
            colour = INSTANCE_COLOURS[index % len(INSTANCE_COLOURS)]
            axes.plot(
                *windowed_rates(stamps, totals),
                color=colour, linewidth=1.3, label=f"{instance.name}: relayed (/metrics)",
            )  # fmt: skip
        if len(phase.instances) > 1:
            stamps, totals = [], []
            for sample in phase.samples:
                if all(sample.instances):
                    stamps.append(sample.at - phase.started_at)
                    totals.append(sum(m.relayed_total for m in sample.instances if m))
            axes.plot(
                *windowed_rates(stamps, totals),
                color="tab:brown", linestyle=":", linewidth=1.8,
                label="all instances: relayed (/metrics)",
            )  # fmt: skip
        axes.set_ylabel("per second")
        axes.set_ylim(bottom=0)
        axes.grid(True, alpha=0.3)
        _titles(axes, phase)
    panels[-1].set_xlabel("seconds since locust started")
    _legend(figure, panels)
    figure.savefig(path)


def windowed_rates(
    times: Sequence[float], totals: Sequence[float], window: float = RATE_WINDOW_SECONDS
) -> tuple[list[float], list[float]]:
    """Per-second rates of a running total over the last `window` seconds, at each point
    that has a full window behind it."""
    xs: list[float] = []
    rates: list[float] = []
    start = 0
    for i, now in enumerate(times):
        while start + 1 < i and times[start + 1] <= now - window:
            start += 1
        elapsed = now - times[start]
        if elapsed >= window:
            xs.append(now)
            rates.append((totals[i] - totals[start]) / elapsed)
    return xs, rates
