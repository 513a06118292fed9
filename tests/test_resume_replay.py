"""What a resumed session is replayed, from a held participant's numbered buffer: frames
above the client's last `seq` once and in order, `missed` when some of them are gone.
(Pure logic; the same rules over real sockets are in tests/test_resume.py.)"""

from __future__ import annotations

from rendezvous.backends.base import Member
from rendezvous.protocol import ErrorCode, SignalingError
from rendezvous.resuming import HeldPeer, Replay, replay_after, replay_stored

FRAMES = [b'{"n":%d}' % n for n in range(5, 11)]  # numbered 5..10


def test_frames_after_the_clients_last_seq_are_replayed_in_order() -> None:
    assert replay_after(FRAMES, last=10, after=7) == Replay(7, FRAMES[3:], missed=False)


def test_a_client_that_saw_everything_gets_nothing_and_nothing_is_missed() -> None:
    assert replay_after(FRAMES, last=10, after=10) == Replay(10, [], missed=False)
    assert replay_after(FRAMES, last=10, after=99) == Replay(10, [], missed=False)


def test_frames_already_dropped_from_the_buffer_make_it_missed() -> None:
    assert replay_after(FRAMES, last=10, after=4) == Replay(4, FRAMES, missed=False)
    assert replay_after(FRAMES, last=10, after=2) == Replay(4, FRAMES, missed=True)


async def test_a_held_peer_numbers_on_and_drops_the_oldest_past_its_bounds() -> None:
    member = Member("alice", "Alice", "s1")
    held = HeldPeer(member, frames=FRAMES, last_seq=10, max_messages=4, max_bytes=1 << 20)
    assert held.frames == type(held.frames)(FRAMES[2:])  # 7..10: the ring's bound applies
    held.deliver(b'{"n":11}')
    assert (held.last_seq, held.frames[0]) == (11, b'{"n":8}')
    # Without last_seq: what came since the drop; the client's last (10) is still there.
    assert held.replay(None) == Replay(10, [b'{"n":11}'], missed=False)
    assert held.replay(6).missed and held.replay(7).frames[0] == b'{"n":8}'


async def test_a_held_peer_bounds_bytes_too() -> None:
    held = HeldPeer(Member("a", "A", "s"), frames=[], last_seq=1, max_messages=100, max_bytes=20)
    for _ in range(2, 8):
        held.deliver(b"x" * 8)
    assert len(held.frames) == 2 and held.last_seq == 7
    assert held.replay(1).missed


async def test_a_drain_does_not_end_a_hold_but_a_kick_does() -> None:
    held = HeldPeer(Member("a", "A", "s"), frames=[], last_seq=1, max_messages=8, max_bytes=64)
    held.close(SignalingError(ErrorCode.SERVER_DRAINING, "draining"))
    assert not held.ended.is_set()
    held.close(SignalingError(ErrorCode.KICKED, "kicked"))
    assert held.ended.is_set()


STORED = [(seq, b'{"n":%d}' % seq) for seq in range(3, 9)]  # a holder's stream: 3..8


def test_a_stored_buffer_replays_after_the_clients_last_seq() -> None:
    assert replay_stored(STORED, after=5, last=8) == Replay(5, [f for _, f in STORED[3:]], False)


def test_a_holder_that_never_answered_makes_it_missed_whatever_is_stored() -> None:
    assert replay_stored(STORED, after=5, last=None) == Replay(
        5, [f for _, f in STORED[3:]], missed=True
    )
    assert replay_stored([], after=5, last=None) == Replay(5, [], missed=True)


def test_a_hole_in_the_stream_keeps_only_the_unbroken_tail() -> None:
    holed = STORED[:2] + STORED[3:]  # 5 never reached the store
    assert replay_stored(holed, after=3, last=8) == Replay(5, [f for _, f in STORED[3:]], True)
    # Frames the holder numbered but never stored: the sequence goes on after them.
    assert replay_stored(STORED, after=5, last=10) == Replay(10, [], missed=True)
