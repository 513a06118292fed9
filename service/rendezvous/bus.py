"""What travels on a room channel between instances: a small routing header, then the
client frame exactly as it will be sent, so no instance re-encodes a relayed message.
(A backend never hands an instance its own publishes back: no origin travels here.)"""

from __future__ import annotations

import enum
from dataclasses import dataclass

import orjson


class BusKind(enum.StrEnum):
    RELAY = "m"
    JOINED = "j"
    LEFT = "l"
    # Session resume across instances: the resuming instance asks the holder for a held
    # session (TAKE, which it hears too, to know where it falls among the others'
    # messages); the holder stops holding it, stores what it buffered, and says GIVEN.
    TAKE = "t"
    GIVEN = "g"


@dataclass(frozen=True, slots=True)
class BusMessage:
    """`user_id` is the sender of a relay, or the member a join/leave event is about."""

    kind: BusKind
    user_id: str
    frame: bytes  # the client frame as it goes on the wire
    target: str | None = None  # relay only: deliver to this member alone
    relay_type: str = ""  # relay only: the frame's type, for metrics without parsing it
    sent_at: float = 0.0  # relay only: unix time the sender's instance relayed it
    traceparent: str = ""  # relay only: W3C trace context of the publish span, if sampled
    session_id: str = ""  # events, TAKE and GIVEN
    username: str = ""
    reason: str = ""
    seq: int = 0  # GIVEN: the last seq the holder numbered
    dropped_at: int = 0  # GIVEN: the last seq sent before the socket dropped


class BusDecodeError(ValueError):
    pass


def encode_bus(message: BusMessage) -> bytes:
    header: dict[str, object] = {"k": message.kind.value, "u": message.user_id}
    if message.target is not None:
        header["t"] = message.target
    if message.kind is BusKind.RELAY:
        header.update(y=message.relay_type, a=message.sent_at)
        if message.traceparent:
            header["p"] = message.traceparent
    else:
        header.update(s=message.session_id, n=message.username, r=message.reason)
        if message.kind is BusKind.GIVEN:
            header.update(q=message.seq, d=message.dropped_at)
    return orjson.dumps(header) + b"\n" + message.frame


def decode_bus(data: bytes) -> BusMessage:
    head, newline, frame = data.partition(b"\n")
    try:
        if not newline:
            raise ValueError("no frame after the header")
        header = orjson.loads(head)
        return BusMessage(
            kind=BusKind(header["k"]),
            user_id=header["u"],
            frame=frame,
            target=header.get("t"),
            relay_type=header.get("y", ""),
            sent_at=header.get("a", 0.0),
            traceparent=_text(header.get("p", "")),
            session_id=header.get("s", ""),
            username=header.get("n", ""),
            reason=header.get("r", ""),
            seq=_int(header.get("q", 0)),
            dropped_at=_int(header.get("d", 0)),
        )
    except (ValueError, KeyError, TypeError) as exc:
        raise BusDecodeError(f"undecodable bus message: {exc}") from exc


def _int(value: object) -> int:
    if type(value) is not int:
        raise TypeError(f"expected an integer, got {type(value).__name__}")
    return value


def _text(value: object) -> str:
    if not isinstance(value, str):
        raise TypeError(f"expected a string, got {type(value).__name__}")
    return value
