"""Random clients for the churn test: each worker visits a random room on a random
instance as a random user, trades offers, answers and candidates with whoever is there,
and ends the visit by leaving cleanly or by vanishing (the TCP connection aborted, no
close frame). Every frame a client receives is checked against the protocol; what
happened is tallied in `Tally` for the test to judge."""

from __future__ import annotations

import asyncio
import collections
import contextlib
import json
import random
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import websockets
from websockets.asyncio.client import ClientConnection

from tests.support.instances import Instance
from tests.support.tokens import token

ROOMS = tuple(f"churn-{n}" for n in range(4))
# Fewer users than workers x rooms: the same user now and then joins a room it is already
# in (on another instance, say), which replaces its older session.
USERS = tuple(f"user-{n}" for n in range(12))
OPEN_TIMEOUT_SECONDS = 10.0  # two instances and Redis share two busy cores
FIRST_FRAME_TIMEOUT_SECONDS = 10.0
MAX_FRAMES_PER_VISIT = 8
MAX_PAUSE_SECONDS = 0.15
MAX_STAY_SECONDS = 1.5
RETRY_PAUSE_SECONDS = (0.1, 0.3)
SDP = "v=0\r\no=- 1 2 IN IP4 127.0.0.1\r\ns=-\r\nt=0 0\r\n"

SERVER_TYPES = {"user_joined", "user_left", "offer", "answer", "ice_candidate", "pong", "error"}
# Error codes a well-behaved client can meet under churn and Redis blips; anything else
# (internal_error above all) fails the test.
EXPECTED_ERRORS = {"target_not_found", "backend_unavailable", "session_replaced"}
# A join refused while Redis is away, or replaced by the same user's newer join before it
# was admitted.
EXPECTED_JOIN_REFUSALS = {"backend_unavailable", "session_replaced"}
# Close codes the server may end a visit with: a replaced session (4001), a join or a
# frame refused while Redis is away (1013).
EXPECTED_CLOSES = {1000, 1013, 4001}


@dataclass
class Tally:
    """What the workers did and saw."""

    counts: collections.Counter[str] = field(default_factory=collections.Counter)
    problems: list[str] = field(default_factory=list)

    def add(self, what: str) -> None:
        self.counts[what] += 1

    def problem(self, what: str) -> None:
        if len(self.problems) < 50:  # enough to diagnose; a flood of them says the same
            self.problems.append(what)


async def worker(
    number: int,
    *,
    instances: Sequence[Instance],
    until: float,
    tally: Tally,
    seed: int,
) -> None:
    """Visit after visit until the loop's clock passes `until`."""
    rng = random.Random(seed * 1000 + number)
    loop = asyncio.get_running_loop()
    while loop.time() < until:
        instance = rng.choice(instances)
        room, user = rng.choice(ROOMS), rng.choice(USERS)
        try:
            await _visit(instance.ws_url(room, token(user)), room, user, rng, tally)
        except websockets.ConnectionClosed:
            tally.add("join ended by the server")
        except websockets.InvalidHandshake as exc:
            tally.problem(f"handshake refused on {instance}: {exc!r}")
        except TimeoutError:
            tally.add("visit timed out")


async def _visit(url: str, room: str, user: str, rng: random.Random, tally: Tally) -> None:
    tally.add("visits")
    async with websockets.connect(
        url, open_timeout=OPEN_TIMEOUT_SECONDS, close_timeout=2, proxy=None
    ) as ws:
        first = json.loads(await asyncio.wait_for(ws.recv(), FIRST_FRAME_TIMEOUT_SECONDS))
        if first["type"] == "error":
            _refused(first, tally)
            await asyncio.sleep(rng.uniform(*RETRY_PAUSE_SECONDS))  # as a real client backs off
            return
        if first["type"] != "room_state":
            tally.problem(f"first frame {first}")
            return
        tally.add("joined")
        others = [p["user_id"] for p in first["payload"]["participants"] if p["user_id"] != user]
        reader = asyncio.create_task(_read(ws, room, tally), name=f"churn-reader:{user}")
        try:
            for _ in range(rng.randrange(MAX_FRAMES_PER_VISIT + 1)):
                await ws.send(json.dumps(_message(rng, others)))
                tally.add("frames sent")
                await asyncio.sleep(rng.uniform(0, MAX_PAUSE_SECONDS))
            await asyncio.sleep(rng.uniform(0, MAX_STAY_SECONDS))
        except websockets.ConnectionClosed:
            tally.add("visit ended by the server")
        finally:
            vanish = rng.random() < 0.4
            if vanish:
                tally.add("vanished")
                ws.transport.abort()  # no close frame: the server sees the TCP connection end
            else:
                tally.add("left")
                await ws.close()
            await reader
        _judge_close(ws, tally, vanished=vanish)


def _refused(frame: dict[str, Any], tally: Tally) -> None:
    code = frame["payload"]["code"]
    tally.add(f"join refused: {code}")
    if code not in EXPECTED_JOIN_REFUSALS:
        tally.problem(f"join refused with {frame}")


def _judge_close(ws: ClientConnection, tally: Tally, *, vanished: bool) -> None:
    """1006 (no close frame) is what vanishing looks like from this side."""
    code = ws.close_code
    tally.add(f"closed {code}")
    if code not in EXPECTED_CLOSES and not (vanished and code == 1006):
        tally.problem(f"closed with {code} ({ws.close_reason!r})")


async def _read(ws: ClientConnection, room: str, tally: Tally) -> None:
    """Check each frame until the connection ends."""
    with contextlib.suppress(websockets.ConnectionClosed):
        async for text in ws:
            frame = json.loads(text)
            kind = frame.get("type")
            if kind not in SERVER_TYPES or frame.get("room_id") != room:
                tally.problem(f"unexpected frame {frame}")
                continue
            tally.add(f"received {kind}")
            if kind == "error":
                code = frame["payload"]["code"]
                tally.add(f"error {code}")
                if code not in EXPECTED_ERRORS:
                    tally.problem(f"error frame {frame}")


def _message(rng: random.Random, others: list[str]) -> dict[str, Any]:
    """An offer, answer, candidate, end-of-candidates or ping; targeted at a member seen
    at join time (who may have left since) or broadcast."""
    target = rng.choice(others) if others and rng.random() < 0.7 else None
    kind = rng.choice(["offer", "answer", "ice_candidate", "ice_candidate", "ping"])
    if kind == "ping":
        return {"type": "ping", "payload": {"n": rng.randrange(1000)}}
    if kind == "ice_candidate":
        candidate = (
            ""
            if rng.random() < 0.2
            else f"candidate:{rng.randrange(9)} 1 udp 1 127.0.0.1 9 typ host"
        )
        payload: dict[str, Any] = {"candidate": candidate, "sdpMid": "0", "sdpMLineIndex": 0}
    else:
        payload = {"type": kind, "sdp": SDP}
    if target is not None:
        payload["target_user_id"] = target
    return {"type": kind, "payload": payload}
