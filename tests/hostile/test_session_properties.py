"""A live session fed hostile frames: one real server, two members (`a`, the attacker, and
`b`, its peer) in one room, and hypothesis choosing what `a` sends next: arbitrary text,
arbitrary JSON, near-valid frames, huge numbers, deep nesting (up to 10,000 levels),
duplicate keys, binary frames, invalid UTF-8 and oversize frames. Floods are driven
separately, since the rate limit would otherwise decide every later outcome.

For every frame: `a` gets exactly its defined outcome (DESIGN section 3: a pong, an
error, or a close with its code), `b` gets a relayed frame exactly once or nothing at all,
the server logs no ERROR and no traceback, and the hub, the backend and the connection
count still say that exactly `a` and `b` are in the room. A frame that closes the
connection is followed by a reconnect, and the run goes on.

The expected outcome of a text frame that fits the limit comes from `parse_client_frame`
itself, whose own properties are in test_parser_properties.py: here the question is
whether the session, the hub and the socket layer keep what the parser decided."""

from __future__ import annotations

import contextlib
import itertools
import json
import random
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from typing import Any

import pytest
import websockets
from hypothesis import event, example, given, settings
from hypothesis import strategies as st

from rendezvous.limits import ABUSE_DROPPED_FRAMES
from rendezvous.protocol import MessageType, SignalingError, parse_client_frame
from tests.hostile.conftest import (
    BASE_SETTINGS,
    ErrorRecorder,
    LoopThread,
    eventually,
    recording_errors,
    server_in_thread,
)
from tests.hostile.frames import (
    PEER,
    ROOM,
    SELF,
    nest,
    valid_frames,
    wire_texts,
)
from tests.support.client import Client, joined
from tests.support.server import RunningServer, running_server
from tests.support.server import test_settings as settings_with
from tests.support.tokens import token

MAX_MESSAGE_BYTES = 65536  # the default
# The WebSocket layer takes frames up to 4x the limit, so those still get an error frame.
WS_FRAME_LIMIT_BYTES = 4 * MAX_MESSAGE_BYTES
CONSISTENT_WITHIN_SECONDS = 5.0
MARKER = "hostile-marker"  # longer than any key the strategies draw


@dataclass(frozen=True)
class Probe:
    """One frame `a` sends: text (a str, or bytes sent as a text frame: invalid UTF-8),
    or a binary frame."""

    data: str | bytes
    text: bool = True

    def __repr__(self) -> str:  # a 300 KiB frame would drown a failure report
        data = repr(self.data)
        shown = data if len(data) <= 300 else f"{data[:300]}... ({len(self.data)} long)"
        return f"Probe({shown}, text={self.text})"


# What `a` must see (and `b`, for a relay).


@dataclass(frozen=True)
class Pong:
    payload: dict[str, Any]


@dataclass(frozen=True)
class Refused:
    code: str


@dataclass(frozen=True)
class Relayed:
    to: str
    kind: str
    payload: dict[str, Any]


@dataclass(frozen=True)
class Closed:
    code: int
    error: str | None  # the error frame that may precede the close


Outcome = Pong | Refused | Relayed | Closed


def expected_outcome(probe: Probe) -> Outcome:
    if not probe.text:
        return Refused("invalid_message")
    if isinstance(probe.data, bytes):
        try:
            text = probe.data.decode()
        except UnicodeDecodeError:
            return Closed(1007, None)
    else:
        text = probe.data
    size = len(text.encode())
    if size > WS_FRAME_LIMIT_BYTES:
        return Closed(1009, None)
    if size > MAX_MESSAGE_BYTES:
        return Closed(1009, "message_too_large")
    try:
        kind, payload = parse_client_frame(text, room_id=ROOM)
    except SignalingError as error:
        if error.close_code is not None:
            return Closed(int(error.close_code), error.code.value)
        return Refused(error.code.value)
    if kind is MessageType.PING:
        return Pong(payload)
    target = payload.get("target_user_id")
    if target is None or target == PEER:
        return Relayed(PEER, kind.value, payload)
    if target == SELF:  # a target is delivered to, even when it is the sender
        return Relayed(SELF, kind.value, payload)
    return Refused("target_not_found")


def describe(outcome: Outcome) -> str:
    if isinstance(outcome, Refused):
        return f"refused {outcome.code}"
    if isinstance(outcome, Closed):
        return f"closed {outcome.code}"
    if isinstance(outcome, Relayed):
        return f"relayed {outcome.kind} to {outcome.to}"
    return "pong"


# Probes.

_INVALID_UTF8 = [
    b"\xff",
    b"\xc3\x28",
    b"\xc0\xaf",
    b"\xed\xa0\x80",
    b"\xf4\x90\x80\x80",
    b"\xe2\x82",
]


@st.composite
def invalid_utf8(draw: st.DrawFn) -> Probe:
    bad = draw(st.sampled_from(_INVALID_UTF8))
    return Probe(b'{"type": "ping", "payload": {"s": "' + bad + b'"}}', text=True)


def _oversize(size: int, char: str) -> Probe:
    padding = char * (size // len(char.encode()) + 1)
    return Probe(json.dumps({"type": "ping", "payload": {"pad": padding}}, ensure_ascii=False))


oversize = st.builds(
    _oversize,
    st.sampled_from([MAX_MESSAGE_BYTES, 2 * MAX_MESSAGE_BYTES, WS_FRAME_LIMIT_BYTES + 1]),
    st.sampled_from(["x", "é", "😀"]),
)

probes = (
    wire_texts.map(Probe)
    | valid_frames.map(lambda valid: Probe(valid.text))
    | st.binary(max_size=200).map(lambda data: Probe(data, text=False))
    | invalid_utf8()
    | oversize
)


# The room, driven on the server's loop.


async def frames_until(
    client: Client, last: Callable[[dict[str, Any]], bool]
) -> list[dict[str, Any]]:
    """Every frame before the first one `last` accepts (which is read and dropped)."""
    frames = []
    while not last(frame := await client.recv()):
        frames.append(frame)
    return frames


async def frames_until_closed(client: Client) -> list[dict[str, Any]]:
    frames = []
    with contextlib.suppress(websockets.ConnectionClosed):
        while True:
            frames.append(await client.recv())
    return frames


class LiveRoom:
    """`b` stays joined throughout; `a` rejoins whenever a frame closes it."""

    def __init__(self, server: RunningServer) -> None:
        self.server = server
        self._stack = contextlib.AsyncExitStack()
        self._a_stack = contextlib.AsyncExitStack()
        self._markers = itertools.count()
        self.a: Client
        self.b: Client

    async def open(self) -> None:
        self.b, _ = await self._stack.enter_async_context(
            joined(self.server.ws_url(ROOM, token(PEER)))
        )
        await self._join_a()

    async def close(self) -> None:
        await self._a_stack.aclose()
        await self._stack.aclose()

    async def _join_a(self) -> None:
        self.a, state = await self._a_stack.enter_async_context(
            joined(self.server.ws_url(ROOM, token(SELF)))
        )
        assert {p["user_id"] for p in state["payload"]["participants"]} == {SELF, PEER}
        assert (await self.b.expect("user_joined"))["payload"]["user_id"] == SELF

    async def send(self, probe: Probe) -> None:
        if isinstance(probe.data, bytes) and probe.text:
            await self.a.connection.send(probe.data, text=True)
        else:
            await self.a.connection.send(probe.data)

    async def step(self, probe: Probe) -> None:
        expected = expected_outcome(probe)
        await self.send(probe)
        if isinstance(expected, Closed):
            await self._closed(expected)
        else:
            await self._answered(expected)
        await eventually("a and b alone in the room", self.consistent, CONSISTENT_WITHIN_SECONDS)

    async def _closed(self, expected: Closed) -> None:
        frames = await frames_until_closed(self.a)
        assert self.a.connection.close_code == expected.code, (expected, frames)
        errors = [frame["payload"]["code"] for frame in frames]
        assert errors in ([], [expected.error]), (expected, frames)
        left = await self.b.expect("user_left")
        assert left["payload"]["user_id"] == SELF, left
        await self._a_stack.aclose()
        await self._join_a()

    async def _answered(self, expected: Outcome) -> None:
        """Marker frames after the probe bound what it caused: one sender's frames are
        handled, and reach each receiver, in order."""
        n = next(self._markers)
        await self.a.send({"type": "ping", "payload": {MARKER: n}})
        marker_offer = {"type": "offer", "sdp": "v=0", "target_user_id": PEER, MARKER: n}
        await self.a.send({"type": "offer", "payload": marker_offer})
        to_a = await frames_until(
            self.a, lambda f: f["type"] == "pong" and f["payload"] == {MARKER: n}
        )
        to_b = await frames_until(
            self.b, lambda f: f["type"] == "offer" and f["payload"].get(MARKER) == n
        )
        if isinstance(expected, Pong):
            assert [(f["type"], f["payload"]) for f in to_a] == [("pong", expected.payload)]
            assert to_b == []
        elif isinstance(expected, Refused):
            assert [(f["type"], f["payload"]["code"]) for f in to_a] == [("error", expected.code)]
            assert to_b == []
        else:
            assert isinstance(expected, Relayed)
            relayed = to_b if expected.to == PEER else to_a
            others = to_a if expected.to == PEER else to_b
            assert others == []
            assert len(relayed) == 1, relayed
            frame = relayed[0]
            assert (frame["type"], frame["sender_id"], frame["room_id"]) == (
                expected.kind,
                SELF,
                ROOM,
            ), frame
            assert frame["payload"] == expected.payload

    async def consistent(self) -> bool:
        services = self.server.services
        hub = services.hub
        local = sorted((room, peer.member.user_id) for room, peer in hub.local_members())
        present = {member.user_id for member in await services.backend.members(ROOM)}
        return (
            hub.room_count() == 1
            and local == [(ROOM, SELF), (ROOM, PEER)]
            and services.connections == 2
            and present == {SELF, PEER}
        )


@dataclass
class Harness:
    thread: LoopThread
    room: LiveRoom
    errors: ErrorRecorder

    def check(self, probe: Probe) -> None:
        event(describe(expected_outcome(probe)))  # the mix shows in --hypothesis-show-statistics
        self.thread.run(self.room.step(probe))
        assert self.errors.take() == []


@pytest.fixture
def harness() -> Iterator[Harness]:
    # Rate limiting would refuse frames once the run outgrows the burst; the flood test
    # below covers it.
    settings = settings_with(rate_limit_per_second=100_000, rate_limit_burst=100_000)
    with recording_errors() as errors, server_in_thread(settings) as (thread, server):
        room = LiveRoom(server)
        thread.run(room.open())
        try:
            yield Harness(thread, room, errors)
        finally:
            thread.run(room.close())
        assert errors.take() == []


@settings(BASE_SETTINGS, max_examples=500)
@given(probe=probes)
@example(probe=Probe(nest(10_000, "[")))
@example(probe=Probe('{"type":"ping","payload":{"deep":' + nest(300, "[") + "}}"))
@example(probe=Probe(b'{"type": "ping", "payload": "\xff\xfe"}', text=True))
@example(probe=Probe(b'{"type": "ping"}', text=False))
@example(probe=Probe("x" * (MAX_MESSAGE_BYTES + 1)))
@example(
    probe=Probe(
        '{"type":"ice_candidate","payload":{"candidate":"c","sdpMLineIndex":' + str(2**64) + "}}"
    )
)
def test_every_frame_gets_its_defined_outcome_and_the_room_stays_consistent(
    harness: Harness, probe: Probe
) -> None:
    harness.check(probe)


# Floods: rate_limited, then the abuse close.


def junk(rng: random.Random) -> str | bytes:
    """A frame of any sort the rate limit must refuse before reading it."""
    frames: list[str | bytes] = [
        '{"type": "offer", "payload": ',
        json.dumps({"type": "offer", "payload": {"type": "offer", "sdp": "v=0"}}),
        json.dumps({"type": "ping", "payload": {"n": rng.random()}}),
        json.dumps({"type": "stats", "payload": {}}),
        nest(rng.choice([10, 300, 10_000]), "["),
        '{"type":"ping","payload":{"n":' + "9" * 400 + "}}",
        rng.randbytes(rng.randrange(1, 64)),
    ]
    return rng.choice(frames)


@contextlib.asynccontextmanager
async def flooded_room() -> AsyncIterator[tuple[RunningServer, Client, Client]]:
    settings = settings_with(
        rate_limit_per_second=0.001, rate_limit_burst=5, send_queue_max_messages=4096
    )
    async with (
        running_server(settings) as server,
        joined(server.ws_url(ROOM, token(PEER))) as (b, _),
        joined(server.ws_url(ROOM, token(SELF))) as (a, _),
    ):
        assert (await b.expect("user_joined"))["payload"]["user_id"] == SELF
        yield server, a, b


async def test_a_flood_is_rate_limited_then_closed_as_abuse() -> None:
    """Five frames fit the burst and are relayed once each; each junk frame after them is
    refused with rate_limited whatever it holds (the token is taken before the frame is
    read); past ABUSE_DROPPED_FRAMES drops the connection closes 1008 and `b` sees `a`
    leave; `a` can rejoin, and nothing was logged as an error."""
    rng = random.Random(10)
    with recording_errors() as errors:
        async with flooded_room() as (server, a, b):
            for n in range(5):
                offer = {"type": "offer", "sdp": f"sdp-{n}", "target_user_id": PEER}
                await a.send({"type": "offer", "payload": offer})
            for n in range(5):
                assert (await b.expect("offer"))["payload"]["sdp"] == f"sdp-{n}"
            for _ in range(ABUSE_DROPPED_FRAMES):
                await a.connection.send(junk(rng))
            for _ in range(ABUSE_DROPPED_FRAMES):
                await a.expect_error("rate_limited")
            await b.expect_silence(0.3)
            assert a.connection.state is websockets.State.OPEN
            await a.connection.send(junk(rng))
            await a.expect_error("rate_limited")
            await a.expect_close(1008)
            assert (await b.expect("user_left"))["payload"]["user_id"] == SELF
            async with joined(server.ws_url(ROOM, token(SELF))) as (_, state):
                assert state["payload"]["participant_count"] == 2
                assert (await b.expect("user_joined"))["payload"]["user_id"] == SELF
        assert errors.take() == []
