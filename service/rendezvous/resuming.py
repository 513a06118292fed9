"""Session resume: the tokens a joiner gets to come back to its session after a drop,
the participant held meanwhile, and what a resumed session is replayed.

A token is random and opaque; only its SHA-256 is stored (as the key of the backend's
resume record), so no instance needs a signing key to check one and a leaked store
holds nothing a client could present.
"""

from __future__ import annotations

import asyncio
import hashlib
import itertools
import logging
import secrets
from collections import deque
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

from rendezvous.backends.base import Backend, BackendError, Member
from rendezvous.protocol import ErrorCode, SignalingError

log = logging.getLogger(__name__)

RESUME_TOKEN_BYTES = 32
# A client's close with these codes is a leave (1001: a page unload); any other end of
# the socket, or none, is a drop, and the participant is held for its grace window.
LEAVE_CLOSE_CODES = frozenset({1000, 1001})


@runtime_checkable
class Numbered(Protocol):
    """A live session that numbers what it sends: when a resume overtakes its socket
    (dead, but not known to be yet), what it sent is replayed from here."""

    def sent(self) -> tuple[Sequence[bytes], int]:
        """The last frames queued for the peer (oldest first) and the newest one's seq."""


@dataclass(frozen=True, slots=True)
class ResumeRequest:
    """What a reconnecting client presented: `?resume=TOKEN&last_seq=N` (N optional)."""

    token: str
    last_seq: int | None


def mint_resume_token() -> tuple[str, str]:
    """A fresh token and the hash it is stored under."""
    token = secrets.token_urlsafe(RESUME_TOKEN_BYTES)
    return token, resume_hash(token)


def resume_hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


# Of a held participant's resume record, how long it outlives the grace: the holder's
# grace timer, not the record's TTL, decides the timeout (and announces it), so the record
# must still be there when the timer fires.
HOLD_MARGIN_SECONDS = 2.0


class HeldPeer:
    """A participant whose socket dropped, held for the grace window: it stays in its room
    (its peers see nothing), presence kept, and every frame for it is numbered on from the
    session's `seq` and kept, the oldest dropped past the send-queue bounds, for a resume."""

    def __init__(
        self,
        member: Member,
        *,
        frames: Iterable[bytes],
        last_seq: int,
        max_messages: int,
        max_bytes: int,
    ) -> None:
        self.member = member
        self._loop = asyncio.get_running_loop()
        self._max_messages = max(max_messages, 1)
        self._max_bytes = max_bytes
        self.frames: deque[bytes] = deque()
        self._bytes = 0
        self.stream: HeldStream | None = None  # the copy in the backend, once `store`d
        self.given = False  # handed over to a resume on another instance
        kept = list(frames)
        self.last_seq = last_seq - len(kept)  # numbered up to here; `deliver` counts on
        for frame in kept:
            self.deliver(frame)
        self.dropped_at_seq = last_seq  # what was sent before the drop ends here
        self.ended = asyncio.Event()  # kicked, replaced, its room closed, or reaped
        self.task: asyncio.Task[None] | None = None  # the grace timer (the hub's)

    def store(self, stream: HeldStream) -> None:
        """From now on copy every frame (those kept so far first) to `stream`."""
        self.stream = stream
        for offset, frame in enumerate(self.frames, self.last_seq - len(self.frames) + 1):
            stream.add(offset, frame)

    @property
    def last_seen(self) -> float:
        return self._loop.time()  # held: present for its grace, whatever its socket did

    def deliver(self, frame: bytes) -> str | None:
        frames = self.frames
        frames.append(frame)
        self._bytes += len(frame)
        self.last_seq += 1
        if self.stream is not None:
            self.stream.add(self.last_seq, frame)
        while len(frames) > 1 and (
            len(frames) > self._max_messages or self._bytes > self._max_bytes
        ):
            self._bytes -= len(frames.popleft())
        return None

    def close(self, error: SignalingError) -> None:
        if error.code is not ErrorCode.SERVER_DRAINING:  # a drain keeps holding it
            self.ended.set()

    def time_out(self) -> None:
        self.ended.set()  # reaped: its departure was announced already

    def replay(self, last_seq: int | None) -> Replay:
        """What a resume presenting `last_seq` gets (None: everything since the drop)."""
        after = self.dropped_at_seq if last_seq is None else last_seq
        return replay_after(self.frames, last=self.last_seq, after=after)


@dataclass(frozen=True, slots=True)
class Replay:
    """What a resumed session is sent first: `room_state` numbered `start_seq`, then
    `frames` numbered on from it; `missed`: frames after the client's last are lost."""

    start_seq: int
    frames: list[bytes]
    missed: bool


def replay_after(frames: Sequence[bytes], *, last: int, after: int) -> Replay:
    """The frames numbered above `after`, of `frames` numbered up to `last`."""
    first = last - len(frames) + 1
    after = max(min(after, last), 0)  # a client claiming more than was sent: nothing more
    if after + 1 < first:
        return Replay(first - 1, list(frames), missed=True)
    return Replay(after, list(itertools.islice(frames, after + 1 - first, None)), missed=False)


def nothing_to_replay(last_seq: int | None) -> Replay:
    """A resume whose holder's buffer is out of reach: the sequence goes on from the
    client's last frame, and it is told that frames may be lost."""
    return Replay(last_seq or 0, [], missed=True)


def replay_stored(
    stored: Sequence[tuple[int, bytes]], *, after: int | None, last: int | None
) -> Replay:
    """What a resume on another instance gets from the holder's stored buffer: `last`
    is the holder's last seq (None: it never answered, so frames may be lost); `after`
    the client's last seq (None: all that is stored)."""
    answered = last is not None
    if last is None:
        last = stored[-1][0] if stored else (after or 0)
    run: list[bytes] = []  # the unbroken run of seqs ending at `last`
    expected = last
    for seq, frame in reversed(stored):
        if seq != expected:
            break
        run.append(frame)
        expected -= 1
    run.reverse()
    if after is None:
        after = expected
    replay = replay_after(run, last=last, after=after)
    return Replay(replay.start_seq, replay.frames, replay.missed or not answered)


_WRITERS: set[asyncio.Task[None]] = set()  # every HeldStream writer until it finishes


class HeldStream:
    """Copies what a held participant is sent to the backend (a Redis Stream), so that
    another instance can replay it even if this one dies. One writer task per held
    participant, never one per frame; what waits is bounded as the buffer is."""

    def __init__(
        self,
        backend: Backend,
        room_id: str,
        session_id: str,
        *,
        max_entries: int,
        ttl_seconds: float,
    ) -> None:
        self._backend = backend
        self._room_id = room_id
        self._session_id = session_id
        self._max_entries = max(max_entries, 1)
        self._ttl = ttl_seconds
        self._pending: deque[tuple[int, bytes]] = deque(maxlen=self._max_entries)
        self._wake = asyncio.Event()
        self._closing = False
        self._task = asyncio.create_task(self._run(), name=f"rendezvous.held:{session_id}")
        # The loop keeps only a weak reference to a task: an abandoned (cancelled) writer
        # whose HeldStream is gone would be collected mid-cancel ("Task was destroyed but
        # it is pending!"). Held here until it has finished.
        _WRITERS.add(self._task)
        self._task.add_done_callback(_WRITERS.discard)

    def add(self, seq: int, frame: bytes) -> None:
        self._pending.append((seq, frame))
        self._wake.set()

    async def finish(self) -> None:
        """Write what is pending, then stop (the holder hands the session over)."""
        self._closing = True
        self._wake.set()
        await asyncio.shield(self._task)

    def abandon(self) -> None:
        """Stop at once: the hold ended here, nobody will read the stream."""
        self._task.cancel()

    async def _run(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            while self._pending:
                batch = list(self._pending)
                self._pending.clear()
                try:
                    await self._backend.keep_held(
                        self._room_id,
                        self._session_id,
                        batch,
                        max_entries=self._max_entries,
                        ttl_seconds=self._ttl,
                    )
                except BackendError as exc:  # lost: the taker will say `missed`
                    log.warning("could not store a held session's frames: %s", exc)
                except Exception:  # a bug: said loudly, and the stream goes on
                    log.exception("storing a held session's frames failed")
            if self._closing:
                return
