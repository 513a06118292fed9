"""The client side of each server's protocol: where to connect, when a connection counts as
joined, and what an offer looks like. Everything else in the client code is shared, so
that Rendezvous and the PeerJS server see the same load.

Rendezvous: `ws://host:port/webrtc/ws/<room>?token=<JWT>`; joined on `room_state`; an
offer is `{"type":"offer","payload":{"type":"offer","sdp":..,"target_user_id":..}}`.

PeerJS server (peer 1.x, its bin with the default `--path /` and `--key peerjs`):
`ws://host:port/peerjs?key=peerjs&id=<id>&token=<any>`; joined on `{"type":"OPEN"}`; an
offer is `{"type":"OFFER","dst":<id>,"payload":{..}}`, which it forwards to `dst` as is
with `"src"` added (it has no rooms: ids are global).
"""

from __future__ import annotations

import asyncio
import secrets
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

import orjson
from websockets.asyncio.client import ClientConnection, connect

from rendezvous.auth import mint_token

HOST = "127.0.0.1"
PEERJS_KEY = "peerjs"
OPEN_TIMEOUT_SECONDS = 10.0
JOIN_TIMEOUT_SECONDS = 10.0
TOKEN_TTL_SECONDS = 3600


class Dialect(StrEnum):
    """Which server the clients talk to."""

    RENDEZVOUS = "rendezvous"
    PEERJS = "peerjs"


@dataclass(frozen=True)
class Member:
    """One client connection's identity: its room (Rendezvous only) and token."""

    user_id: str
    room: str
    token: str


@dataclass(frozen=True)
class OfferTemplate:
    """An offer frame, pre-encoded but for its send time (`payload.sent_ns`)."""

    prefix: str
    suffix: str

    def frame(self, sent_ns: int) -> str:
        return f"{self.prefix}{sent_ns}{self.suffix}"


def offer_type(dialect: Dialect) -> str:
    """The `type` of a relayed offer, as the receiver sees it."""
    return "offer" if dialect is Dialect.RENDEZVOUS else "OFFER"


def offer_template(dialect: Dialect, target: str, sdp: str) -> OfferTemplate:
    """An offer to `target` carrying `sdp`; both servers get the same payload but for
    Rendezvous's `target_user_id` (PeerJS addresses it with `dst`)."""
    frame: dict[str, Any]
    if dialect is Dialect.RENDEZVOUS:
        payload = {"type": "offer", "sdp": sdp, "target_user_id": target, "sent_ns": -1}
        frame = {"type": "offer", "payload": payload}
    else:
        frame = {"type": "OFFER", "dst": target, "payload": {"type": "offer", "sdp": sdp}}
        frame["payload"]["sent_ns"] = -1
    prefix, suffix = orjson.dumps(frame).decode().split('"sent_ns":-1')
    return OfferTemplate(prefix + '"sent_ns":', suffix)


def url(dialect: Dialect, port: int, member: Member) -> str:
    if dialect is Dialect.RENDEZVOUS:
        return f"ws://{HOST}:{port}/webrtc/ws/{member.room}?token={member.token}"
    return f"ws://{HOST}:{port}/peerjs?key={PEERJS_KEY}&id={member.user_id}&token={member.token}"


def open_connection(
    dialect: Dialect, port: int, member: Member, *, source: str | None = None
) -> connect:
    """The WebSocket of `member`, from the loopback address `source` if given."""
    extra: dict[str, Any] = {} if source is None else {"local_addr": (source, 0)}
    return connect(
        url(dialect, port, member),
        compression=None,
        proxy=None,  # loopback only, whatever proxy the environment names
        ping_interval=None,  # the servers' own keepalive is what is measured
        open_timeout=OPEN_TIMEOUT_SECONDS,
        close_timeout=2,
        **extra,
    )


async def expect(connection: ClientConnection, kind: str) -> dict[str, Any]:
    """The next frame, which must be of `kind`."""
    frame: dict[str, Any] = orjson.loads(
        await asyncio.wait_for(connection.recv(), JOIN_TIMEOUT_SECONDS)
    )
    if frame["type"] != kind:
        raise RuntimeError(f"expected {kind}, got {str(frame)[:200]}")
    return frame


async def joined(dialect: Dialect, connection: ClientConnection) -> dict[str, Any]:
    """Wait for the frame that says the server has taken the member in, and return it."""
    return await expect(connection, "room_state" if dialect is Dialect.RENDEZVOUS else "OPEN")


async def await_partner(
    dialect: Dialect, connection: ClientConnection, partner: str, state: dict[str, Any]
) -> None:
    """Rendezvous: until `partner` is in the room, from `state` (the room_state) or a later
    user_joined, since targeting an absent user fails. PeerJS queues offers to an id that
    is not connected yet, so there is nothing to wait for."""
    if dialect is Dialect.PEERJS:
        return
    if partner not in {p["user_id"] for p in state["payload"]["participants"]}:
        await expect(connection, "user_joined")


def member(dialect: Dialect, *, user_id: str, room: str, secret: str) -> Member:
    """A member with a token its server takes: a JWT for `room` (Rendezvous), or any
    string (PeerJS, which only checks that a reconnecting id brings the same one)."""
    if dialect is Dialect.RENDEZVOUS:
        token = mint_token(key=secret, user_id=user_id, ttl_seconds=TOKEN_TTL_SECONDS, rooms=[room])
    else:
        token = secrets.token_hex(8)
    return Member(user_id=user_id, room=room, token=token)


def pairs(dialect: Dialect, count: int, *, secret: str, tag: str) -> list[tuple[Member, Member]]:
    """`count` pairs, each alone in a room of its own; `tag` keeps runs' names apart."""
    made = []
    for index in range(count):
        room = f"{tag}-{index}"
        first, second = (
            member(dialect, user_id=f"{room}-{side}", room=room, secret=secret) for side in "ab"
        )
        made.append((first, second))
    return made
