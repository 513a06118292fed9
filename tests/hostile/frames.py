"""Hypothesis strategies for hostile client frames, shared by the parser and live-session
properties: valid frames (with what the parser must make of them), arbitrary JSON and
text, near-valid frames with one field mutated, deep nesting, huge numbers, duplicate
keys written as raw text, binary frames and invalid UTF-8."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from hypothesis import strategies as st

ROOM = "hostile"
PEER = "b"  # the other member of the room in the live tests
SELF = "a"  # the member that sends the hostile frames

# Text a real client can send: any Unicode scalar value (no lone surrogates, which no
# UTF-8 text frame can carry).
wire_text = st.text(alphabet=st.characters(codec="utf-8"), max_size=40)
# A Python str the parser may be handed directly, lone surrogates included.
any_text = st.text(max_size=60)

json_scalars = (
    st.none()
    | st.booleans()
    | st.integers()  # unbounded: beyond 64 bits too
    | st.floats(allow_nan=False, allow_infinity=False)
    | wire_text
)
json_values = st.recursive(
    json_scalars,
    lambda children: (
        st.lists(children, max_size=4)
        | st.dictionaries(
            st.text(alphabet=st.characters(codec="utf-8"), max_size=8), children, max_size=4
        )
    ),
    max_leaves=16,
)

targets = st.sampled_from([PEER, SELF, "nobody", ""]) | wire_text
frame_types = (
    st.sampled_from(
        ["offer", "answer", "ice_candidate", "ping", "pong", "room_state", "error", "user_left"]
    )
    | wire_text
)
_extras = st.dictionaries(
    st.sampled_from(["extra", "media", "x-note", "bundle"]), json_values, max_size=2
)


@dataclass(frozen=True)
class ValidFrame:
    """A frame the protocol accepts, and the payload the parser must return for it."""

    frame: dict[str, Any]
    kind: str
    payload: dict[str, Any]

    @property
    def text(self) -> str:
        return json.dumps(self.frame)


@st.composite
def _envelope(draw: st.DrawFn, kind: str, payload: dict[str, Any] | None) -> dict[str, Any]:
    """The frame around a payload, with the fields the server overwrites or checks."""
    frame: dict[str, Any] = {"type": kind}
    if payload is not None:
        frame["payload"] = payload
    if draw(st.booleans()):
        frame["room_id"] = draw(st.sampled_from([ROOM, None]))
    if draw(st.booleans()):
        frame["sender_id"] = draw(json_values)  # the server sets its own
    if draw(st.booleans()):
        frame["timestamp"] = draw(json_values)
    return frame


@st.composite
def descriptions(draw: st.DrawFn) -> ValidFrame:
    kind = draw(st.sampled_from(["offer", "answer"]))
    payload: dict[str, Any] = {"type": kind, "sdp": draw(wire_text.filter(bool))}
    payload.update(draw(_extras))
    target = draw(st.none() | targets)
    if target is not None:
        payload["target_user_id"] = target
    return ValidFrame(draw(_envelope(kind, dict(payload))), kind, payload)


@st.composite
def candidates(draw: st.DrawFn) -> ValidFrame:
    """Either spelling of each field (or both, agreeing); a candidate needs a mid or an
    index unless it is the end-of-candidates marker ("")."""
    candidate = draw(st.just("") | wire_text)
    mid = draw(st.none() | wire_text)
    index = draw(st.none() | st.integers(min_value=0, max_value=2**63 - 1))
    if candidate and mid is None and index is None:
        mid = "0"
    sent: dict[str, Any] = {"candidate": candidate}
    for camel, snake, value in (
        ("sdpMid", "sdp_mid", mid),
        ("sdpMLineIndex", "sdp_m_line_index", index),
    ):
        if value is None:  # absent, or null under either name or both
            for name in draw(st.sampled_from([(), (camel,), (snake,), (camel, snake)])):
                sent[name] = None
        else:  # one name, or both agreeing, or one of them null (the other counts)
            layouts: list[dict[str, object]] = [{camel: value}, {snake: value}]
            layouts += [{camel: value, snake: value}]
            layouts += [{camel: value, snake: None}, {camel: None, snake: value}]
            sent.update(draw(st.sampled_from(layouts)))
    if draw(st.booleans()):
        sent["usernameFragment"] = draw(wire_text)
    target = draw(st.none() | targets)
    if target is not None:
        sent["target_user_id"] = target
    sent.update(draw(_extras))
    expected = {**sent, "sdpMid": mid, "sdp_mid": mid}
    expected.update(sdpMLineIndex=index, sdp_m_line_index=index)
    return ValidFrame(draw(_envelope("ice_candidate", dict(sent))), "ice_candidate", expected)


@st.composite
def pings(draw: st.DrawFn) -> ValidFrame:
    payload = draw(st.none() | st.dictionaries(wire_text, json_values, max_size=4))
    expected = {} if payload is None else payload
    return ValidFrame(draw(_envelope("ping", payload)), "ping", dict(expected))


valid_frames = descriptions() | candidates() | pings()


@st.composite
def near_valid_frames(draw: st.DrawFn) -> str:
    """A valid frame with one field (of the envelope or the payload) deleted or replaced
    by an arbitrary JSON value."""
    frame = json.loads(draw(valid_frames).text)
    payload = frame.get("payload")
    holder = payload if isinstance(payload, dict) and payload and draw(st.booleans()) else frame
    key = draw(st.sampled_from(sorted(holder)))
    if draw(st.booleans()):
        del holder[key]
    else:
        holder[key] = draw(json_values)
    return json.dumps(frame)


def nest(depth: int, opener: str, inner: str = "0") -> str:
    closer = "]" if opener == "[" else "}"
    return opener * depth + inner + closer * depth


@st.composite
def deeply_nested_frames(draw: st.DrawFn) -> str:
    """Nesting from shallow to 10,000 levels, as the whole frame or inside one field."""
    depth = draw(
        st.sampled_from([2, 32, 33, 64, 100, 252, 253, 254, 255, 256, 300, 1000, 1023, 1024])
        | st.integers(min_value=1, max_value=1100)
        | st.just(10_000)
    )
    opener = draw(st.sampled_from(["[", '{"k":']))
    value = nest(depth, opener)
    where = draw(st.sampled_from(["frame", "ping", "offer", "candidate", "target"]))
    if where == "frame":
        return value
    if where == "ping":
        return f'{{"type":"ping","payload":{{"deep":{value}}}}}'
    if where == "offer":
        return f'{{"type":"offer","payload":{{"type":"offer","sdp":"v=0","x":{value}}}}}'
    if where == "candidate":
        return f'{{"type":"ice_candidate","payload":{{"candidate":"c","sdpMid":{value}}}}}'
    return f'{{"type":"answer","payload":{{"type":"answer","sdp":"v=0","target_user_id":{value}}}}}'


huge_numbers = st.sampled_from(
    [
        str(2**63 - 1),
        str(2**63),
        str(2**64 - 1),
        str(2**64),
        str(-(2**63)),
        str(-(2**63) - 1),
        "1" + "0" * 400,
        "-" + "9" * 400,
        "1e308",
        "1e309",
        "-1e400",
        "1e-400",
        "0." + "0" * 300 + "1",
        "123456789012345678901234567890.5e10",
    ]
) | st.integers().map(str)


@st.composite
def frames_with_huge_numbers(draw: st.DrawFn) -> str:
    number = draw(huge_numbers)
    return draw(
        st.sampled_from(
            [
                f'{{"type":"ice_candidate","payload":{{"candidate":"c","sdpMLineIndex":{number}}}}}',
                f'{{"type":"ice_candidate","payload":{{"candidate":"","sdp_m_line_index":{number}}}}}',
                f'{{"type":"ping","payload":{{"n":{number}}}}}',
                f'{{"type":"offer","payload":{{"type":"offer","sdp":"v=0","n":[{number}]}}}}',
                f'{{"type":{number},"payload":{{}}}}',
                number,
            ]
        )
    )


def _raw_object(pairs: list[tuple[str, str]]) -> str:
    return "{" + ",".join(f"{json.dumps(key)}:{value}" for key, value in pairs) + "}"


@st.composite
def frames_with_duplicate_keys(draw: st.DrawFn) -> str:
    """Raw JSON text where a key may appear more than once, in the envelope and in the
    payload: JSON leaves it to the parser; ours, like Python's, keeps the last."""
    payload_keys = st.sampled_from(
        ["type", "sdp", "candidate", "sdpMid", "sdp_mid", "sdpMLineIndex", "target_user_id"]
    )
    payload_values = st.sampled_from(
        ['"offer"', '"answer"', '"v=0"', '"0"', "0", "1", "null", '"b"', '""', "[]", "{}"]
    )
    payload = _raw_object(draw(st.lists(st.tuples(payload_keys, payload_values), max_size=8)))
    frame_keys = st.sampled_from(["type", "payload", "room_id"])
    frame_values = st.sampled_from(
        ['"offer"', '"answer"', '"ice_candidate"', '"ping"', f'"{ROOM}"', '"other"', "null"]
    )
    pairs = draw(st.lists(st.tuples(frame_keys, frame_values | st.just(payload)), max_size=6))
    return _raw_object(pairs)


hostile_texts = (
    any_text
    | json_values.map(json.dumps)
    | st.dictionaries(st.sampled_from(["type", "payload", "room_id"]), json_values).map(json.dumps)
    | st.fixed_dictionaries({"type": frame_types, "payload": json_values}).map(json.dumps)
    | near_valid_frames()
    | deeply_nested_frames()
    | frames_with_huge_numbers()
    | frames_with_duplicate_keys()
)
# What a real client can put in a text frame (no lone surrogates).
wire_texts = hostile_texts.filter(lambda text: _encodable(text))


def _encodable(text: str) -> bool:
    try:
        text.encode()
    except UnicodeEncodeError:
        return False
    return True
