"""Call-quality reports: a client's `stats` frame (figures it read from `getStats()`),
checked field by field and recorded in plain numbers as low-cardinality metrics. A report
is never relayed and never answered, but for an error.

The bounds are sanity limits, not quality judgements: a figure past one comes from a
broken or hostile client, and the whole report is refused, so that one bad field cannot
slip the others into the histograms.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from rendezvous.protocol import invalid
from rendezvous.telemetry.histogram import LatencyHistogram

# A minute: ICE consent freshness gives a path up after 30 s without an answer, so a
# round trip or a jitter beyond it is not a measurement.
MAX_RTT_MS = 60_000.0
MAX_JITTER_MS = 60_000.0
# 10 Gbit/s: no browser sends a call at that rate; the bound only keeps sums sane.
MAX_BITRATE_KBPS = 10_000_000.0
CANDIDATE_PAIR_TYPES = ("host", "srflx", "prflx", "relay")
# The label of a report that names no candidate pair (ICE has not selected one yet).
UNKNOWN_CANDIDATE_PAIR = "unknown"

# Buckets: what a call feels like. Round trips under 150 ms are good, past 300 ms talk
# overlaps; jitter past 30 ms is audible; loss past 2-5 % shows in video; bitrates span
# an audio-only call to HD video.
RTT_BUCKETS_SECONDS = (0.01, 0.025, 0.05, 0.1, 0.15, 0.2, 0.3, 0.5, 1.0, 2.0, 5.0)
JITTER_BUCKETS_SECONDS = (0.001, 0.0025, 0.005, 0.01, 0.02, 0.03, 0.05, 0.1, 0.25, 0.5, 1.0)
# 0.0 has its own bucket (`le` is inclusive): a call with no loss at all is the news.
PACKET_LOSS_BUCKETS_RATIO = (0.0, 0.001, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5)
BITRATE_BUCKETS_KBPS = (32.0, 64.0, 128.0, 256.0, 512.0, 1000.0, 2000.0, 4000.0, 8000.0, 16000.0)


@dataclass(frozen=True, slots=True)
class StatsReport:
    """One valid report; a field the client left out (or sent as null) is None."""

    rtt_ms: float | None = None
    jitter_ms: float | None = None
    packet_loss: float | None = None
    bitrate_kbps: float | None = None
    candidate_pair: str | None = None
    target_user_id: str | None = None  # whom the figures are about; never a label


def parse_report(payload: Mapping[str, Any]) -> StatsReport:
    """The report in a `stats` payload; unknown fields are ignored, a bad one is an
    `invalid_message` SignalingError that names it."""
    target = payload.get("target_user_id")
    if target is not None and type(target) is not str:
        raise invalid("'payload.target_user_id' must be a string")
    return StatsReport(
        rtt_ms=_number(payload, "rtt_ms", MAX_RTT_MS),
        jitter_ms=_number(payload, "jitter_ms", MAX_JITTER_MS),
        packet_loss=_number(payload, "packet_loss", 1.0),
        bitrate_kbps=_number(payload, "bitrate_kbps", MAX_BITRATE_KBPS),
        candidate_pair=_candidate_pair(payload),
        target_user_id=target,
    )


def _number(payload: Mapping[str, Any], name: str, upper: float) -> float | None:
    value = payload.get(name)
    if value is None:
        return None
    # `type(...) in` rather than isinstance: a bool is an int to Python, not to JSON.
    if type(value) not in (int, float):
        raise invalid(f"'payload.{name}' must be a number")
    # Written so that NaN (every comparison false) fails too, as do both infinities.
    if not 0 <= value <= upper:
        raise invalid(f"'payload.{name}' must be between 0 and {upper:g}")
    return float(value)


def _candidate_pair(payload: Mapping[str, Any]) -> str | None:
    value = payload.get("candidate_pair")
    if value is None:
        return None
    if type(value) is not str or value not in CANDIDATE_PAIR_TYPES:
        raise invalid(f"'payload.candidate_pair' must be one of {', '.join(CANDIDATE_PAIR_TYPES)}")
    return value


class CallQuality:
    """Every report received here, in plain numbers (the per-message path: no lock, no
    label lookup), rendered at scrape time by the metrics' collector."""

    __slots__ = ("bitrate", "jitter", "packet_loss", "reports", "rtt")

    def __init__(self) -> None:
        self.rtt = LatencyHistogram(RTT_BUCKETS_SECONDS)
        self.jitter = LatencyHistogram(JITTER_BUCKETS_SECONDS)
        self.packet_loss = LatencyHistogram(PACKET_LOSS_BUCKETS_RATIO)
        self.bitrate = LatencyHistogram(BITRATE_BUCKETS_KBPS)
        # Every label value from the start: a rate() over a series born late misses its
        # first increase, and the relay-vs-direct ratio needs both sides.
        self.reports = dict.fromkeys((*CANDIDATE_PAIR_TYPES, UNKNOWN_CANDIDATE_PAIR), 0)

    def record(self, report: StatsReport) -> None:
        pair = report.candidate_pair or UNKNOWN_CANDIDATE_PAIR
        self.reports[pair] += 1
        if report.rtt_ms is not None:
            self.rtt.observe(report.rtt_ms / 1000)
        if report.jitter_ms is not None:
            self.jitter.observe(report.jitter_ms / 1000)
        if report.packet_loss is not None:
            self.packet_loss.observe(report.packet_loss)
        if report.bitrate_kbps is not None:
            self.bitrate.observe(report.bitrate_kbps)
