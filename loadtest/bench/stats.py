"""Percentiles of latency samples."""

from __future__ import annotations

from collections.abc import Iterable, Sequence


def percentile(ordered: Sequence[float], q: float) -> float:
    """The q-th percentile of sorted samples, interpolated between the closest ranks (as
    `statistics.quantiles(method="inclusive")`)."""
    position = (len(ordered) - 1) * q / 100
    low = int(position)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


def percentiles_ms(samples_ns: Iterable[int], qs: Sequence[float]) -> list[float | None]:
    """The percentiles `qs` of nanosecond samples, in milliseconds; None without samples."""
    ordered = sorted(samples_ns)
    if not ordered:
        return [None for _ in qs]
    return [percentile(ordered, q) / 1e6 for q in qs]
