"""A latency histogram kept in plain numbers on the per-message path (no lock, no label
lookup), turned into Prometheus samples only when /metrics is scraped. Its own module so
that backends can time their work without depending on the metrics registry."""

from __future__ import annotations

from bisect import bisect_left

from prometheus_client.utils import floatToGoString

# Signaling latency: a relay within an instance takes tens of microseconds, one through
# Redis around a millisecond; seconds mean a stalled loop or a backlog.
RELAY_LATENCY_BUCKETS_SECONDS = (
    0.0001,
    0.00025,
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
)
# Backend publish: a Redis round trip on loopback takes 50-500 microseconds, so one
# bucket below the relay's.
PUBLISH_LATENCY_BUCKETS_SECONDS = (0.00005, *RELAY_LATENCY_BUCKETS_SECONDS)


class LatencyHistogram:
    """A latency histogram in plain numbers, rendered at scrape time by a collector."""

    __slots__ = ("bounds", "buckets", "sum")

    def __init__(self, bounds: tuple[float, ...]) -> None:
        self.bounds = bounds  # upper bounds, ascending
        self.buckets = [0] * (len(bounds) + 1)  # per bucket, not cumulative; the last is +Inf
        self.sum = 0.0

    def observe(self, seconds: float) -> None:
        # bisect_left: a value equal to a bound belongs to that bound's bucket (le).
        self.buckets[bisect_left(self.bounds, seconds)] += 1
        self.sum += seconds

    @property
    def count(self) -> int:
        return sum(self.buckets)

    def cumulative(self) -> list[tuple[str, float]]:
        """The buckets as Prometheus has them: (`le`, observations up to it)."""
        bounds = [*map(floatToGoString, self.bounds), "+Inf"]
        cumulative, running = [], 0
        for bound, count in zip(bounds, self.buckets, strict=True):
            running += count
            cumulative.append((bound, float(running)))
        return cumulative
