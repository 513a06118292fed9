"""Frame parsing and building, without a socket."""

from __future__ import annotations

import json

import pytest

from rendezvous.backends.base import BackendUnavailableError
from rendezvous.protocol import (
    CLOSE_CODES,
    ErrorCode,
    MessageType,
    SignalingError,
    encode,
    error_frame,
    is_valid_room_id,
    parse_client_frame,
)


def _parse(frame: object, room: str = "r1") -> tuple[MessageType, dict[str, object]]:
    return parse_client_frame(json.dumps(frame), room_id=room)


def _code(frame: object) -> ErrorCode:
    with pytest.raises(SignalingError) as raised:
        _parse(frame)
    return raised.value.code


@pytest.mark.parametrize("room", ["a", "room-1", "A" * 64, "0-0"])
def test_valid_room_ids(room: str) -> None:
    assert is_valid_room_id(room)


@pytest.mark.parametrize("room", ["", "a" * 65, "a_b", "a b", "a/b", "é", "a\n", "..", "a.b"])
def test_room_ids_are_validated_not_rewritten(room: str) -> None:
    assert not is_valid_room_id(room)


def test_offer_passes_as_sent() -> None:
    payload = {"type": "offer", "sdp": "v=0", "target_user_id": "b", "extra": 1}
    assert _parse({"type": "offer", "payload": payload}) == (MessageType.OFFER, payload)


def test_browser_session_description_is_accepted() -> None:
    # What `JSON.stringify({type: 'answer', payload: answer})` sends for an RTCSessionDescription.
    kind, payload = _parse({"type": "answer", "payload": {"type": "answer", "sdp": "v=0"}})
    assert kind is MessageType.ANSWER
    assert payload == {"type": "answer", "sdp": "v=0"}


def test_candidate_gets_both_spellings() -> None:
    _, payload = _parse(
        {"type": "ice_candidate", "payload": {"candidate": "c", "sdpMid": "0", "sdpMLineIndex": 0}}
    )
    assert payload["sdp_mid"] == payload["sdpMid"] == "0"
    assert payload["sdp_m_line_index"] == payload["sdpMLineIndex"] == 0


def test_end_of_candidates_needs_no_mid() -> None:
    _, payload = _parse({"type": "ice_candidate", "payload": {"candidate": ""}})
    assert payload["candidate"] == ""


def test_ping_payload_defaults_to_an_empty_object() -> None:
    assert _parse({"type": "ping"}) == (MessageType.PING, {})


@pytest.mark.parametrize(
    "frame",
    [
        [],
        "offer",
        {"payload": {}},
        {"type": 5},
        {"type": "offer"},
        {"type": "offer", "payload": []},
        {"type": "offer", "payload": {"type": "answer", "sdp": "v=0"}},
        {"type": "offer", "payload": {"type": "offer", "sdp": ""}},
        {"type": "offer", "payload": {"type": "offer", "sdp": "v=0", "target_user_id": 7}},
        {"type": "offer", "payload": {"type": "offer", "sdp": "v=0"}, "room_id": "other"},
        {"type": "ice_candidate", "payload": {"candidate": "c"}},
        {"type": "ice_candidate", "payload": {"candidate": None, "sdpMid": "0"}},
        {"type": "ice_candidate", "payload": {"candidate": "c", "sdpMid": 0}},
        {"type": "ice_candidate", "payload": {"candidate": "c", "sdpMLineIndex": "0"}},
        {"type": "ice_candidate", "payload": {"candidate": "c", "sdpMLineIndex": -1}},
        {"type": "ice_candidate", "payload": {"candidate": "c", "sdpMid": "0", "sdp_mid": "1"}},
        {"type": "ping", "payload": "x"},
    ],
)
def test_malformed_frames_are_invalid_messages(frame: object) -> None:
    assert _code(frame) is ErrorCode.INVALID_MESSAGE


def test_not_json_is_an_invalid_message() -> None:
    with pytest.raises(SignalingError) as raised:
        parse_client_frame("{nope", room_id="r1")
    assert raised.value.code is ErrorCode.INVALID_MESSAGE
    assert raised.value.close_code is None


@pytest.mark.parametrize(
    "kind", ["chat", "room_state", "user_joined", "user_left", "error", "pong"]
)
def test_unknown_and_server_only_types_are_unsupported(kind: str) -> None:
    assert _code({"type": kind, "payload": {}}) is ErrorCode.UNSUPPORTED_TYPE


def test_encode_sets_sender_room_and_utc_timestamp() -> None:
    frame = json.loads(encode(MessageType.USER_JOINED, {"user_id": "u"}, room_id="r1"))
    assert frame["sender_id"] == "server"
    assert frame["room_id"] == "r1"
    assert frame["timestamp"].endswith("Z")
    assert len(frame["timestamp"]) == len("2024-01-01T00:00:00.000Z")


def test_error_frames_carry_code_and_message() -> None:
    error = SignalingError(ErrorCode.ROOM_FULL, "full")
    frame = json.loads(error_frame(error, room_id="r1"))
    assert frame["type"] == "error"
    assert frame["payload"] == {"code": "room_full", "message": "full"}
    assert error.close_code == 1008


def test_every_fatal_code_has_its_design_close_code() -> None:
    expected = {
        "message_too_large": 1009,
        "unauthorized": 1008,
        "forbidden_room": 1008,
        "room_full": 1008,
        "server_busy": 1013,
        "session_replaced": 4001,
        "slow_consumer": 1013,
        "server_draining": 1012,
        "internal_error": 1011,
        "kicked": 4002,  # the admin API's (README "Admin API")
        "room_closed": 4003,
        "resume_failed": 4004,  # a refused `?resume=` (README "Session resume")
    }
    assert {code.value: int(close) for code, close in CLOSE_CODES.items()} == expected
    # backend_unavailable closes 1013 only for a refused join; a frame is just dropped.
    assert ErrorCode.BACKEND_UNAVAILABLE not in CLOSE_CODES
    join = BackendUnavailableError().to_signaling(refuses_join=True)
    assert join.close_code == 1013
    assert BackendUnavailableError().to_signaling().close_code is None
