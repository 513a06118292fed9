"""The locust suite's delivery checks, fed by hand: what they call delivered, lost, out of
order, duplicated or misrouted (the smoke runs show them against a real service)."""

from __future__ import annotations

from typing import Any

from loadtest.signaling.delivery import Ledger, Tally, Verdict

ROOM = "room-1"


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def make_ledger() -> tuple[Ledger, Tally, Clock]:
    tally, clock = Tally(), Clock()
    return Ledger(ROOM, tally, clock=clock), tally, clock


def relayed(probe: dict[str, Any], kind: str = "offer", **overrides: Any) -> dict[str, Any]:
    """The frame the service relays for a message stamped with `probe`."""
    frame = {
        "type": kind,
        "payload": {"type": kind, "sdp": "v=0\r\n", "probe": probe},
        "sender_id": probe["user"],
        "room_id": ROOM,
    }
    frame.update(overrides)
    return frame


def stamp(ledger: Ledger, kind: str = "offer") -> dict[str, Any]:
    return ledger.stamp(kind, sender="alice#1", sender_user="alice", receiver="bob#1")


def test_messages_in_order_are_delivered_with_their_latency() -> None:
    ledger, tally, clock = make_ledger()
    probes = [stamp(ledger), stamp(ledger, "ice_candidate")]
    clock.now += 0.25
    first = ledger.message(relayed(probes[0]), receiver="bob#1", received=clock.now)
    second = ledger.message(
        relayed(probes[1], "ice_candidate"), receiver="bob#1", received=clock.now
    )
    assert (first.verdict, second.verdict) == (Verdict.DELIVERED, Verdict.DELIVERED)
    assert first.latency_seconds == 0.25
    assert ledger.outstanding == 0
    assert tally.problems() == 0
    assert tally.as_dict()["delivered"] == {"ice_candidate": 1, "offer": 1}


def test_a_message_overtaken_by_a_later_one_is_out_of_order() -> None:
    ledger, tally, clock = make_ledger()
    probes = [stamp(ledger) for _ in range(3)]
    verdicts = [
        ledger.message(relayed(probes[i]), receiver="bob#1", received=clock.now).verdict
        for i in (0, 2, 1)
    ]
    assert verdicts == [Verdict.DELIVERED, Verdict.DELIVERED, Verdict.REORDERED]
    assert tally.total("reordered") == 1
    assert tally.problems() == 1


def test_a_message_received_twice_is_duplicated() -> None:
    ledger, tally, clock = make_ledger()
    frame = relayed(stamp(ledger))
    ledger.message(frame, receiver="bob#1", received=clock.now)
    again = ledger.message(frame, receiver="bob#1", received=clock.now)
    assert again.verdict is Verdict.DUPLICATED
    assert tally.total("duplicated") == 1


def test_wrong_room_recipient_sender_or_type_is_misrouted() -> None:
    ledger, tally, clock = make_ledger()
    probe = stamp(ledger)
    wrong = [
        (relayed(probe, room_id="room-2"), "bob#1"),
        (relayed({**probe, "room": "room-2"}), "bob#1"),
        (relayed(probe), "bob#2"),  # bob's next connection: not the one it was sent to
        (relayed(probe, sender_id="mallory"), "bob#1"),
        (relayed(probe, "answer"), "bob#1"),
        (relayed({**probe, "seq": 7}), "bob#1"),  # never sent
        ({"type": "offer", "payload": {"type": "offer"}, "room_id": ROOM}, "bob#1"),
    ]
    for frame, receiver in wrong:
        outcome = ledger.message(frame, receiver=receiver, received=clock.now)
        assert outcome.verdict is Verdict.MISROUTED, (frame, outcome)
    assert tally.total("misrouted") == len(wrong)
    assert tally.total("delivered") == 0


def test_what_misses_its_deadline_is_lost_and_later_late() -> None:
    ledger, tally, clock = make_ledger()
    early = stamp(ledger)
    clock.now += 1
    stamp(ledger)
    ledger.expect_event("user_joined", receiver="carol#1", subject="alice")
    assert ledger.expire(clock.now + 3.9, 5) == []  # 4.9 s after the first was sent
    assert [p.kind for p in ledger.expire(clock.now + 4, 5)] == ["offer"]
    expired = ledger.expire(clock.now + 5, 5)
    assert [p.kind for p in expired] == ["offer", "user_joined"]
    assert ledger.outstanding == 0
    late = ledger.message(relayed(early), receiver="bob#1", received=clock.now + 6)
    assert late.verdict is Verdict.LATE
    assert tally.total("lost") == 3
    assert tally.total("late") == 1
    assert tally.problems() == 3  # late is already counted as lost


def test_presence_events_are_ticked_off_once() -> None:
    ledger, tally, clock = make_ledger()
    ledger.expect_event("user_left", receiver="bob#1", subject="alice")
    clock.now += 0.01
    left = ledger.event("user_left", receiver="bob#1", subject="alice", received=clock.now)
    again = ledger.event("user_left", receiver="bob#1", subject="alice", received=clock.now)
    assert left.verdict is Verdict.DELIVERED
    assert left.latency_seconds is not None and abs(left.latency_seconds - 0.01) < 1e-9
    assert again.verdict is Verdict.UNEXPECTED
    assert tally.total("unexpected_event") == 1


def test_a_withdrawn_message_is_neither_expected_nor_lost() -> None:
    ledger, tally, _ = make_ledger()
    ledger.withdraw(stamp(ledger))
    assert ledger.outstanding == 0
    assert tally.total("expected") == 0


def test_a_distributed_run_adds_up_each_workers_increments_once() -> None:
    worker, master = Tally(), Tally()
    worker.add("delivered", "offer", 3)
    master.merge(worker.take_increments())
    worker.add("delivered", "offer", 2)
    worker.add("lost", "answer")
    master.merge(worker.take_increments())
    master.merge(worker.take_increments())  # nothing new
    assert master.as_dict()["delivered"] == {"offer": 5}
    assert master.problems() == 1
