"""Delivery checks: every relayed message carries a probe (room, sending and receiving
connection, sequence number on that stream, send time); every one sent is expected once,
in order, in its room, from its sender, within a deadline. Presence events expected from
a join or a leave are ticked off the same way. A `Tally` counts what happened, for the
summary and the exit code; a `Ledger` holds one room's expectations.

Pure Python, no gevent: the caller supplies the clock and does the waiting."""

from __future__ import annotations

import enum
import time
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

PROBE = "probe"  # the payload field the suite adds to every message it sends


class Verdict(enum.StrEnum):
    DELIVERED = "delivered"
    REORDERED = "reordered"  # arrived after a later message of the same stream
    DUPLICATED = "duplicated"  # arrived twice
    MISROUTED = "misrouted"  # wrong room, recipient, sender or type; or never sent
    LATE = "late"  # arrived after its deadline, when it was already counted lost
    UNEXPECTED = "unexpected"  # a presence event no join or leave called for


# Tally categories; those in PROBLEMS fail the run.
EXPECTED = "expected"  # messages sent, and presence events due
DELIVERED = "delivered"
LOST = "lost"
LATE = "late"
REORDERED = "reordered"
DUPLICATED = "duplicated"
MISROUTED = "misrouted"
UNEXPECTED_EVENT = "unexpected_event"
SERVER_ERROR = "server_error"
UNEXPECTED_CLOSE = "unexpected_close"
JOIN_FAILED = "join_failed"
CONFIG_FAILED = "config_failed"
CLIENT_ERROR = "client_error"  # the suite's own failure (a bug, or its senders stalled)
ROOMS = "rooms"  # room sessions run, by size
SESSIONS = "sessions"  # by outcome: completed, aborted, abandoned (stopped midway)
CATEGORIES = (
    EXPECTED,
    DELIVERED,
    LOST,
    LATE,
    REORDERED,
    DUPLICATED,
    MISROUTED,
    UNEXPECTED_EVENT,
    SERVER_ERROR,
    UNEXPECTED_CLOSE,
    JOIN_FAILED,
    CONFIG_FAILED,
    CLIENT_ERROR,
    ROOMS,
    SESSIONS,
)
PROBLEMS = (
    LOST,
    REORDERED,
    DUPLICATED,
    MISROUTED,
    UNEXPECTED_EVENT,
    SERVER_ERROR,
    UNEXPECTED_CLOSE,
    JOIN_FAILED,
    CONFIG_FAILED,
    CLIENT_ERROR,
)
_VERDICT_CATEGORY = {
    Verdict.DELIVERED: DELIVERED,
    Verdict.REORDERED: REORDERED,
    Verdict.DUPLICATED: DUPLICATED,
    Verdict.MISROUTED: MISROUTED,
    Verdict.LATE: LATE,
    Verdict.UNEXPECTED: UNEXPECTED_EVENT,
}


class Tally:
    """Counts by category and key (a message type, an error code, a room size). One per
    process; in a distributed run each worker sends its increments to the master."""

    def __init__(self) -> None:
        self.counts: dict[str, Counter[str]] = {name: Counter() for name in CATEGORIES}
        self._reported: dict[str, Counter[str]] = {name: Counter() for name in CATEGORIES}

    def add(self, category: str, key: str, n: int = 1) -> None:
        self.counts[category][key] += n

    def total(self, category: str) -> int:
        return sum(self.counts[category].values())

    def problems(self) -> int:
        return sum(self.total(name) for name in PROBLEMS)

    def as_dict(self) -> dict[str, dict[str, int]]:
        return {name: dict(sorted(counts.items())) for name, counts in self.counts.items()}

    def take_increments(self) -> dict[str, dict[str, int]]:
        """What was counted since the last call (the counts only grow)."""
        increments = {}
        for name, counts in self.counts.items():
            increments[name] = dict(counts - self._reported[name])
            self._reported[name] = counts.copy()
        return increments

    def merge(self, increments: Mapping[str, Mapping[str, int]]) -> None:
        for name, counts in increments.items():
            if name in self.counts:
                self.counts[name].update(counts)


@dataclass
class Pending:
    """A message or event expected at a connection."""

    kind: str  # message type, or user_joined / user_left
    receiver: str  # the receiving connection
    since: float  # when it was sent (messages) or its cause started (events)
    description: str


@dataclass(frozen=True)
class Outcome:
    verdict: Verdict
    kind: str
    latency_seconds: float | None
    detail: str


@dataclass
class _Stream:
    """One sender connection to one receiver connection."""

    next_seq: int = 0
    highest_received: int = -1
    received: set[int] = field(default_factory=set)


class Ledger:
    """One room's expectations. Connections are named `user#n` (the user's n-th join), so a
    rejoin starts fresh streams and nothing meant for the old connection counts for the new."""

    def __init__(
        self, room: str, tally: Tally, *, clock: Callable[[], float] = time.perf_counter
    ) -> None:
        self.room = room
        self.tally = tally
        self.clock = clock
        self._streams: dict[tuple[str, str], _Stream] = {}
        # Insertion order is send order: the first entry is always the oldest.
        self._pending: dict[tuple[str, ...], Pending] = {}
        self._lost: set[tuple[str, ...]] = set()

    @property
    def outstanding(self) -> int:
        return len(self._pending)

    def oldest(self) -> Pending | None:
        return next(iter(self._pending.values()), None)

    def stamp(self, kind: str, *, sender: str, sender_user: str, receiver: str) -> dict[str, Any]:
        """Register a message about to be sent; returns the probe to put in its payload."""
        stream = self._streams.setdefault((sender, receiver), _Stream())
        seq, stream.next_seq = stream.next_seq, stream.next_seq + 1
        now = self.clock()
        key = (sender, receiver, str(seq))
        self._pending[key] = Pending(kind, receiver, now, f"{kind} {sender} -> {receiver} #{seq}")
        self.tally.add(EXPECTED, kind)
        return {
            "room": self.room,
            "from": sender,
            "user": sender_user,
            "to": receiver,
            "seq": seq,
            "sent": now,
        }

    def withdraw(self, probe: Mapping[str, Any]) -> None:
        """Forget a stamped message that could not be sent after all."""
        key = (str(probe["from"]), str(probe["to"]), str(probe["seq"]))
        pending = self._pending.pop(key, None)
        if pending is not None:
            self.tally.counts[EXPECTED][pending.kind] -= 1

    def expect_event(self, kind: str, *, receiver: str, subject: str) -> None:
        """A presence event about user `subject` is due at connection `receiver`."""
        pending = Pending(kind, receiver, self.clock(), f"{kind} {subject} at {receiver}")
        self._pending[(kind, receiver, subject)] = pending
        self.tally.add(EXPECTED, kind)

    def message(self, frame: Mapping[str, Any], *, receiver: str, received: float) -> Outcome:
        """Check a relayed frame (offer, answer, ice_candidate) that reached `receiver`."""
        kind = str(frame.get("type"))
        payload = frame.get("payload")
        probe = payload.get(PROBE) if isinstance(payload, dict) else None
        if not isinstance(probe, dict):
            return self._count(Verdict.MISROUTED, kind, None, "no probe: not sent by this room")
        sender, seq = str(probe.get("from")), probe.get("seq")
        where = f"{kind} {sender} -> {probe.get('to')} #{seq}"
        if probe.get("room") != self.room or frame.get("room_id") != self.room:
            detail = f"{where}: room {frame.get('room_id')!r}, probe {probe.get('room')!r}"
            return self._count(Verdict.MISROUTED, kind, None, f"wrong room: {detail}")
        if probe.get("to") != receiver:
            detail = f"wrong recipient {receiver}: {where}"
            return self._count(Verdict.MISROUTED, kind, None, detail)
        if frame.get("sender_id") != probe.get("user"):
            detail = f"{where} has sender_id {frame.get('sender_id')!r}"
            return self._count(Verdict.MISROUTED, kind, None, f"wrong sender: {detail}")
        if not isinstance(seq, int):
            return self._count(Verdict.MISROUTED, kind, None, f"bad probe: {where}")
        stream = self._streams.get((sender, receiver))
        if stream is None or seq >= stream.next_seq:
            return self._count(Verdict.MISROUTED, kind, None, f"never sent: {where}")
        if seq in stream.received:
            return self._count(Verdict.DUPLICATED, kind, None, f"twice: {where}")
        stream.received.add(seq)
        key = (sender, receiver, str(seq))
        pending = self._pending.pop(key, None)
        if pending is None:  # in `_lost`: sent, received once, not pending
            self._lost.discard(key)
            return self._count(Verdict.LATE, kind, None, f"after its deadline: {where}")
        if pending.kind != kind:
            return self._count(Verdict.MISROUTED, kind, None, f"sent as {pending.kind}: {where}")
        latency = received - pending.since
        if seq < stream.highest_received:
            detail = f"{where} after #{stream.highest_received}"
            return self._count(Verdict.REORDERED, kind, latency, f"out of order: {detail}")
        stream.highest_received = seq
        return self._count(Verdict.DELIVERED, kind, latency, where)

    def event(self, kind: str, *, receiver: str, subject: str, received: float) -> Outcome:
        """Check a presence event (user_joined, user_left) about `subject` at `receiver`."""
        pending = self._pending.pop((kind, receiver, subject), None)
        if pending is None:
            return self._count(Verdict.UNEXPECTED, kind, None, f"{kind} {subject} at {receiver}")
        return self._count(Verdict.DELIVERED, kind, received - pending.since, pending.description)

    def expire(self, now: float, deadline_seconds: float) -> list[Pending]:
        """Count as lost, and return, what is still pending `deadline_seconds` after it was
        due; a message among them that arrives later counts as late."""
        expired = []
        while (oldest := self.oldest()) is not None and now - oldest.since >= deadline_seconds:
            key = next(iter(self._pending))
            del self._pending[key]
            self._lost.add(key)
            self.tally.add(LOST, oldest.kind)
            expired.append(oldest)
        return expired

    def expire_all(self) -> list[Pending]:
        """Count everything still pending as lost (the session could not wait any more)."""
        return self.expire(float("inf"), 0)

    def abandon(self) -> int:
        """Forget what is pending without counting it (the run stopped this room midway)."""
        count = len(self._pending)
        self._pending.clear()
        return count

    def _count(self, verdict: Verdict, kind: str, latency: float | None, detail: str) -> Outcome:
        self.tally.add(_VERDICT_CATEGORY[verdict], kind)
        return Outcome(verdict, kind, latency, detail)
