"""Properties of `rendezvous.protocol.parse_client_frame`, the one door every client frame
goes through: whatever text it is handed, it returns a client message type and a payload
the server can relay, or raises SignalingError with a protocol error code; no other
exception ever escapes. Valid frames come out as sent (ICE payloads with both spellings)."""

from __future__ import annotations

import json
from typing import Any

import orjson
import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from rendezvous.protocol import (
    MAX_PAYLOAD_DEPTH,
    ErrorCode,
    MessageType,
    SignalingError,
    encode,
    parse_client_frame,
)
from tests.hostile.conftest import BASE_SETTINGS
from tests.hostile.frames import (
    ROOM,
    ValidFrame,
    any_text,
    candidates,
    deeply_nested_frames,
    frames_with_duplicate_keys,
    frames_with_huge_numbers,
    hostile_texts,
    json_values,
    near_valid_frames,
    nest,
    valid_frames,
)

CLIENT_TYPES = {MessageType.OFFER, MessageType.ANSWER, MessageType.ICE_CANDIDATE, MessageType.PING}
PROPERTY_SETTINGS = settings(BASE_SETTINGS, max_examples=300)

Outcome = tuple[MessageType, dict[str, Any]] | ErrorCode


def outcome(text: str) -> Outcome:
    """What the parser makes of `text`; any exception but SignalingError propagates and
    fails the property."""
    try:
        kind, payload = parse_client_frame(text, room_id=ROOM)
    except SignalingError as error:
        assert isinstance(error.code, ErrorCode), error
        assert error.message, error
        return error.code
    check_accepted(kind, payload)
    return kind, payload


def check_accepted(kind: MessageType, payload: dict[str, Any]) -> None:
    """What every accepted frame guarantees the session and the hub."""
    assert kind in CLIENT_TYPES, kind
    assert type(payload) is dict, payload
    # The server re-encodes the payload (pong, relay): that must never fail, and what a
    # recipient decodes must be what was accepted.
    frame = orjson.loads(encode(kind, payload, room_id=ROOM, sender_id="a"))
    assert frame["payload"] == payload
    if kind is MessageType.PING:
        return
    target = payload.get("target_user_id")
    assert target is None or type(target) is str, payload
    if kind is MessageType.ICE_CANDIDATE:
        assert type(payload["candidate"]) is str, payload
        assert payload["sdpMid"] == payload["sdp_mid"], payload
        assert payload["sdpMid"] is None or type(payload["sdpMid"]) is str, payload
        index = payload["sdpMLineIndex"]
        assert index == payload["sdp_m_line_index"], payload
        assert index is None or (type(index) is int and index >= 0), payload
        assert not payload["candidate"] or payload["sdpMid"] is not None or index is not None
    else:
        assert payload["type"] == kind.value, payload
        assert type(payload["sdp"]) is str and payload["sdp"], payload


# Whatever it is handed: a defined outcome.


@PROPERTY_SETTINGS
@given(any_text)
@example("")
@example("\ud800")  # a lone surrogate, as a str can hold
@example("\x00")
@example("null")
@example('{"type": "ping", "payload": null}')
def test_arbitrary_text_gets_a_defined_outcome(text: str) -> None:
    outcome(text)


@PROPERTY_SETTINGS
@given(json_values)
def test_arbitrary_json_values_get_a_defined_outcome(value: object) -> None:
    result = outcome(json.dumps(value))
    if not isinstance(value, dict):
        assert result is ErrorCode.INVALID_MESSAGE


@PROPERTY_SETTINGS
@given(hostile_texts)
def test_hostile_text_gets_a_defined_outcome(text: str) -> None:
    outcome(text)


@PROPERTY_SETTINGS
@given(near_valid_frames())
def test_a_valid_frame_with_one_field_mutated_gets_a_defined_outcome(text: str) -> None:
    outcome(text)


@PROPERTY_SETTINGS
@given(frames_with_huge_numbers())
def test_huge_numbers_get_a_defined_outcome(text: str) -> None:
    outcome(text)


@PROPERTY_SETTINGS
@given(deeply_nested_frames())
@example(nest(10_000, "["))
@example('{"type":"ping","payload":{"deep":' + nest(300, "[") + "}}")
def test_deep_nesting_gets_a_defined_outcome(text: str) -> None:
    outcome(text)


@pytest.mark.parametrize(
    "template",
    [
        '{"type":"ping","payload":{"deep":%s}}',
        '{"type":"offer","payload":{"type":"offer","sdp":"v=0","x":%s}}',
    ],
    ids=["ping", "offer"],
)
def test_nesting_up_to_the_limit_is_accepted_and_one_more_level_refused(template: str) -> None:
    """The payload object is the first level; what it holds nests the rest."""
    accepted = outcome(template % nest(MAX_PAYLOAD_DEPTH - 1, "["))
    assert not isinstance(accepted, ErrorCode), accepted
    assert outcome(template % nest(MAX_PAYLOAD_DEPTH, "[")) is ErrorCode.INVALID_MESSAGE


@pytest.mark.parametrize("depth", [254, 300, 1000, 1022])
@pytest.mark.parametrize(
    "template",
    [
        '{"type":"ping","payload":{"deep":%s}}',
        '{"type":"offer","payload":{"type":"offer","sdp":"v=0","x":%s}}',
    ],
    ids=["ping", "offer"],
)
def test_a_payload_too_deep_to_relay_is_an_invalid_message(template: str, depth: int) -> None:
    """Deeper than the server could re-encode (orjson writes at most 254 levels, reads
    1024): refused as invalid_message, not accepted and then failed on relay."""
    assert outcome(template % nest(depth, "[")) is ErrorCode.INVALID_MESSAGE


@PROPERTY_SETTINGS
@given(frames_with_duplicate_keys())
def test_duplicate_keys_mean_what_the_last_one_says(text: str) -> None:
    """The raw text and its normalised form (Python's json: the last duplicate wins) get
    the same outcome."""
    assert outcome(text) == outcome(json.dumps(json.loads(text)))


# Valid frames round-trip.


@PROPERTY_SETTINGS
@given(valid_frames)
def test_a_valid_frame_comes_out_as_sent(valid: ValidFrame) -> None:
    assert outcome(valid.text) == (MessageType(valid.kind), valid.payload)


@PROPERTY_SETTINGS
@given(candidates())
def test_an_ice_candidate_comes_out_with_both_spellings(valid: ValidFrame) -> None:
    result = outcome(valid.text)
    assert not isinstance(result, ErrorCode), result
    _, payload = result
    assert {"sdpMid", "sdp_mid", "sdpMLineIndex", "sdp_m_line_index"} <= payload.keys()
    assert payload["sdpMid"] == payload["sdp_mid"]
    assert payload["sdpMLineIndex"] == payload["sdp_m_line_index"]


@PROPERTY_SETTINGS
@given(valid_frames, st.text(min_size=1, max_size=10))
def test_a_room_id_other_than_the_path_room_is_refused(valid: ValidFrame, room: str) -> None:
    frame = {**valid.frame, "room_id": room}
    expected = outcome(valid.text) if room == ROOM else ErrorCode.INVALID_MESSAGE
    assert outcome(json.dumps(frame)) == expected
