"""The wire protocol: message types, error and close codes, frame parsing and building."""

from __future__ import annotations

import enum
import re
import time
from collections.abc import Iterable
from datetime import UTC, datetime
from typing import Any

import orjson

ROOM_ID_PATTERN = re.compile(r"[A-Za-z0-9-]{1,64}")
# orjson reads up to 1024 levels of nesting but writes at most 254, and the server
# re-encodes every payload it accepts (pong, relay): one nested deeper than signaling ever
# needs is refused on the way in, not failed on the way out.
MAX_PAYLOAD_DEPTH = 32
SERVER_SENDER_ID = "server"


class MessageType(enum.StrEnum):
    OFFER = "offer"
    ANSWER = "answer"
    ICE_CANDIDATE = "ice_candidate"
    PING = "ping"
    STATS = "stats"  # a call-quality report: recorded, never relayed (rendezvous.stats)
    PONG = "pong"
    ROOM_STATE = "room_state"
    USER_JOINED = "user_joined"
    USER_LEFT = "user_left"
    ERROR = "error"


RELAYED_TYPES = frozenset({MessageType.OFFER, MessageType.ANSWER, MessageType.ICE_CANDIDATE})
_CLIENT_TYPES = {t.value: t for t in (*RELAYED_TYPES, MessageType.PING, MessageType.STATS)}
_SERVER_ONLY_TYPES = frozenset(t.value for t in MessageType) - _CLIENT_TYPES.keys()


class LeaveReason(enum.StrEnum):
    LEFT = "left"
    TIMEOUT = "timeout"
    REPLACED = "replaced"
    KICKED = "kicked"  # an admin removed the member (DELETE .../participants/{user_id})
    # An admin closed the room: on the bus only. Nobody is told of the others' departure,
    # since everyone gets the `room_closed` error (N members would otherwise get N-1 frames
    # each, enough to overflow their send queues in a big room).
    ROOM_CLOSED = "room_closed"


class CloseCode(enum.IntEnum):
    NORMAL = 1000
    SERVICE_RESTART = 1012
    POLICY_VIOLATION = 1008
    MESSAGE_TOO_BIG = 1009
    INTERNAL_ERROR = 1011
    TRY_AGAIN_LATER = 1013
    SESSION_REPLACED = 4001
    KICKED = 4002
    ROOM_CLOSED = 4003
    RESUME_FAILED = 4004


class ErrorCode(enum.StrEnum):
    INVALID_MESSAGE = "invalid_message"
    UNSUPPORTED_TYPE = "unsupported_type"
    MESSAGE_TOO_LARGE = "message_too_large"
    RATE_LIMITED = "rate_limited"
    TARGET_NOT_FOUND = "target_not_found"
    UNAUTHORIZED = "unauthorized"
    FORBIDDEN_ROOM = "forbidden_room"
    FORBIDDEN = "forbidden"  # HTTP only: the token lacks the role a route needs
    ROOM_FULL = "room_full"
    BACKEND_UNAVAILABLE = "backend_unavailable"
    SERVER_BUSY = "server_busy"
    SESSION_REPLACED = "session_replaced"
    SLOW_CONSUMER = "slow_consumer"
    SERVER_DRAINING = "server_draining"
    INTERNAL_ERROR = "internal_error"
    KICKED = "kicked"  # an admin removed this participant from the room
    ROOM_CLOSED = "room_closed"  # an admin closed the room
    NOT_FOUND = "not_found"  # HTTP only: an admin route's room or participant is not there
    RESUME_FAILED = "resume_failed"  # a resume token refused: unknown, expired or foreign


# What each code does to the connection; absent means the frame is dropped and it stays open.
# backend_unavailable is absent: it drops a frame, but a refused join closes 1013 (explicitly).
CLOSE_CODES: dict[ErrorCode, CloseCode] = {
    ErrorCode.MESSAGE_TOO_LARGE: CloseCode.MESSAGE_TOO_BIG,
    ErrorCode.UNAUTHORIZED: CloseCode.POLICY_VIOLATION,
    ErrorCode.FORBIDDEN_ROOM: CloseCode.POLICY_VIOLATION,
    ErrorCode.ROOM_FULL: CloseCode.POLICY_VIOLATION,
    ErrorCode.SERVER_BUSY: CloseCode.TRY_AGAIN_LATER,
    ErrorCode.SESSION_REPLACED: CloseCode.SESSION_REPLACED,
    ErrorCode.SLOW_CONSUMER: CloseCode.TRY_AGAIN_LATER,
    ErrorCode.SERVER_DRAINING: CloseCode.SERVICE_RESTART,
    ErrorCode.INTERNAL_ERROR: CloseCode.INTERNAL_ERROR,
    ErrorCode.KICKED: CloseCode.KICKED,
    ErrorCode.ROOM_CLOSED: CloseCode.ROOM_CLOSED,
    ErrorCode.RESUME_FAILED: CloseCode.RESUME_FAILED,
}


class SignalingError(Exception):
    """A rejected frame or join; carries the wire error code and, if fatal, the close code."""

    def __init__(
        self, code: ErrorCode, message: str, *, close_code: CloseCode | None = None
    ) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.close_code = close_code if close_code is not None else CLOSE_CODES.get(code)


def invalid(message: str) -> SignalingError:
    return SignalingError(ErrorCode.INVALID_MESSAGE, message)


def is_valid_room_id(room_id: str) -> bool:
    return ROOM_ID_PATTERN.fullmatch(room_id) is not None


class _Clock:
    """ISO 8601 UTC timestamps with milliseconds, formatted at most once per millisecond."""

    __slots__ = ("_ms", "_text")

    def __init__(self) -> None:
        self._ms = -1
        self._text = ""

    def now(self) -> str:
        ms = time.time_ns() // 1_000_000
        if ms != self._ms:
            stamp = datetime.fromtimestamp(ms / 1000, UTC)
            self._ms, self._text = ms, stamp.isoformat(timespec="milliseconds")[:-6] + "Z"
        return self._text


timestamp = _Clock().now


def encode(kind: str, payload: Any, *, room_id: str, sender_id: str = SERVER_SENDER_ID) -> bytes:
    """One outbound frame, UTF-8 encoded as it goes on the wire (and on the bus): the
    server always sets sender, room and time."""
    frame = {
        "type": kind,
        "payload": payload,
        "sender_id": sender_id,
        "room_id": room_id,
        "timestamp": timestamp(),
    }
    return orjson.dumps(frame)


def with_seq(frame: bytes, seq: int) -> bytes:
    """`frame` (an encoded JSON object) with a top-level `seq`, spliced in as it is
    written: one frame's bytes go to many recipients, each with a sequence of its own."""
    return b'%b,"seq":%d}' % (frame[:-1], seq)


def error_frame(error: SignalingError, *, room_id: str) -> bytes:
    payload = {"code": error.code.value, "message": error.message}
    return encode(MessageType.ERROR, payload, room_id=room_id)


def parse_client_frame(text: str, *, room_id: str) -> tuple[MessageType, dict[str, Any]]:
    """Parse and validate one client frame; return its type and (normalised) payload."""
    try:
        frame = orjson.loads(text)
    except orjson.JSONDecodeError:
        raise invalid("frame is not valid JSON") from None
    if type(frame) is not dict:
        raise invalid("frame must be a JSON object")
    name = frame.get("type")
    kind = _CLIENT_TYPES.get(name) if type(name) is str else None
    if kind is None:
        if type(name) is not str:
            raise invalid("'type' must be a string")
        what = "server-only" if name in _SERVER_ONLY_TYPES else "unknown"
        raise SignalingError(ErrorCode.UNSUPPORTED_TYPE, f"{what} message type {name[:64]!r}")
    claimed_room = frame.get("room_id")
    if claimed_room is not None and claimed_room != room_id:
        raise invalid("'room_id' differs from the room of this connection")
    payload = frame.get("payload")
    _check_depth(text, payload)
    if kind is MessageType.PING:
        return kind, {} if payload is None else _object(payload)
    payload = _object(payload)
    target = payload.get("target_user_id")
    if target is not None and type(target) is not str:
        raise invalid("'target_user_id' must be a string")
    if kind is MessageType.STATS:
        return kind, payload  # its fields are rendezvous.stats' to check
    if kind is MessageType.ICE_CANDIDATE:
        _normalise_candidate(payload)
    else:
        _check_description(kind, payload)
    return kind, payload


def _check_depth(text: str, payload: object) -> None:
    # Only a text with that many brackets can nest that deep: ordinary frames skip the walk.
    if text.count("{") + text.count("[") <= MAX_PAYLOAD_DEPTH:
        return
    if _deeper_than(payload, MAX_PAYLOAD_DEPTH):
        raise invalid(f"'payload' is nested deeper than {MAX_PAYLOAD_DEPTH} levels")


def _deeper_than(value: object, limit: int) -> bool:
    """Whether `value` nests objects and arrays more than `limit` levels deep (a loop, not
    recursion: the input may be 1,000 levels deep)."""
    stack = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if type(item) is dict:
            children: Iterable[object] = item.values()
        elif type(item) is list:
            children = item
        else:
            continue
        if depth > limit:
            return True
        stack.extend((child, depth + 1) for child in children)
    return False


def _object(payload: object) -> dict[str, Any]:
    if type(payload) is not dict:
        raise invalid("'payload' must be a JSON object")
    return payload


def _check_description(kind: MessageType, payload: dict[str, Any]) -> None:
    if payload.get("type") != kind.value:
        raise invalid(f"'payload.type' must be {kind.value!r}")
    sdp = payload.get("sdp")
    if type(sdp) is not str or not sdp:
        raise invalid("'payload.sdp' must be a non-empty string")


def _normalise_candidate(payload: dict[str, Any]) -> None:
    """Accept either spelling and relay both, so browsers and SEED.md's Python read it as is."""
    candidate = payload.get("candidate")
    if type(candidate) is not str:
        raise invalid("'payload.candidate' must be a string ('' ends the candidates)")
    mid = _either(payload, "sdpMid", "sdp_mid", str)
    index = _either(payload, "sdpMLineIndex", "sdp_m_line_index", int)
    if candidate and mid is None and index is None:
        raise invalid("a candidate needs 'sdpMid' or 'sdpMLineIndex'")
    if index is not None and index < 0:
        raise invalid("'sdpMLineIndex' must not be negative")
    payload["sdpMid"] = payload["sdp_mid"] = mid
    payload["sdpMLineIndex"] = payload["sdp_m_line_index"] = index
    fragment = payload.get("usernameFragment")
    if fragment is not None and type(fragment) is not str:
        raise invalid("'payload.usernameFragment' must be a string")


def _either(payload: dict[str, Any], camel: str, snake: str, kind: type) -> Any:
    value = payload.get(camel)
    other = payload.get(snake)
    if value is None:
        value = other
    elif other is not None and other != value:
        raise invalid(f"'{camel}' and '{snake}' disagree")
    if value is not None and type(value) is not kind:
        raise invalid(f"'{camel}' must be {'a string' if kind is str else 'an integer'}")
    return value
