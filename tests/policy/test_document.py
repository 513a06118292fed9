"""The policy file as written (issue 5, acceptance 1): the issue's example is accepted,
every field keeps to its bounds, unknown fields are refused, and one bad version lists
every problem at once, each with its path, on one line."""

from __future__ import annotations

from typing import Any

import pytest
import yaml

from rendezvous.policy.document import EMPTY_POLICY, PolicyError, parse_policy

ISSUE_EXAMPLE = b"""\
ice:
  stun_urls: ["stun:stun.example.org:3478"]
  turn_urls: ["turn:turn.example.org:3478?transport=udp"]
  ice_transport_policy: all
  bundle_policy: balanced
  rtcp_mux_policy: require
rooms:
  max_participants: 50
  overrides:
    - match: "1on1-*"
      max_participants: 2
limits:
  max_message_bytes: 65536
allowed_origins: ["https://app.example.org"]
"""


def as_yaml(data: dict[str, Any]) -> bytes:
    return yaml.safe_dump(data).encode()


def errors_of(data: dict[str, Any] | bytes) -> list[str]:
    """The error lines parse_policy gives for `data` (a mapping, or raw bytes)."""
    text = data if isinstance(data, bytes) else as_yaml(data)
    with pytest.raises(PolicyError) as caught:
        parse_policy(text)
    assert str(caught.value) == "; ".join(caught.value.errors)
    return caught.value.errors


def test_the_issues_example_is_accepted_as_written() -> None:
    policy = parse_policy(ISSUE_EXAMPLE)
    assert policy.ice.stun_urls == ["stun:stun.example.org:3478"]
    assert policy.ice.turn_urls == ["turn:turn.example.org:3478?transport=udp"]
    assert (policy.ice.ice_transport_policy, policy.ice.bundle_policy) == ("all", "balanced")
    assert policy.ice.rtcp_mux_policy == "require"
    assert policy.rooms.max_participants == 50
    assert [(o.match, o.max_participants) for o in policy.rooms.overrides] == [("1on1-*", 2)]
    assert policy.limits.max_message_bytes == 65536
    assert policy.allowed_origins == ["https://app.example.org"]


def test_every_field_of_the_model_can_be_stated() -> None:
    full = {
        "ice": {
            "stun_urls": ["stun:127.0.0.1:3478", "stuns:127.0.0.1:5349"],
            "turn_urls": ["turn:127.0.0.1:3478?transport=tcp", "turns:127.0.0.1:5349"],
            "ice_transport_policy": "relay",
            "bundle_policy": "max-bundle",
            "rtcp_mux_policy": "negotiate",
        },
        "rooms": {
            "max_participants": 10000,
            "overrides": [
                {"match": "webinar-*", "max_participants": 500},
                {"match": "*", "max_participants": 1},
            ],
        },
        "limits": {
            "max_message_bytes": 1024,
            "rate_limit_per_second": 0.5,
            "rate_limit_burst": 1,
            "send_queue_max_messages": 1,
            "send_queue_max_bytes": 1024,
        },
        "allowed_origins": ["http://localhost:8080", "https://app.example.org"],
    }
    policy = parse_policy(as_yaml(full))
    assert policy.model_dump() == full


@pytest.mark.parametrize("text", [b"", b"\n", b"# nothing stated yet\n", b"---\n"])
def test_an_empty_file_states_nothing(text: bytes) -> None:
    assert parse_policy(text) == EMPTY_POLICY
    assert EMPTY_POLICY.ice.stun_urls is None and EMPTY_POLICY.allowed_origins is None
    assert EMPTY_POLICY.rooms.max_participants is None and EMPTY_POLICY.rooms.overrides == []
    assert EMPTY_POLICY.limits.max_message_bytes is None


def test_an_empty_section_states_nothing_in_it() -> None:
    assert parse_policy(b"ice: {}\nrooms: {}\nlimits: {}\n") == EMPTY_POLICY


# Bounds: (path in the file, a value just inside, a value just outside).
BOUNDS: list[tuple[str, Any, Any]] = [
    ("rooms.max_participants", 1, 0),
    ("rooms.max_participants", 10000, 10001),
    ("rooms.overrides[0].max_participants", 1, 0),
    ("rooms.overrides[0].max_participants", 10000, 10001),
    ("limits.max_message_bytes", 1024, 1023),
    ("limits.rate_limit_per_second", 0.001, 0),
    ("limits.rate_limit_per_second", 0.001, -1),
    ("limits.rate_limit_burst", 1, 0),
    ("limits.send_queue_max_messages", 1, 0),
    ("limits.send_queue_max_bytes", 1024, 1023),
    ("ice.ice_transport_policy", "relay", "none"),
    ("ice.bundle_policy", "max-compat", "max_compat"),
    ("ice.rtcp_mux_policy", "negotiate", "off"),
    ("ice.stun_urls[0]", "stun:127.0.0.1:3478", "http://127.0.0.1:3478"),
    ("ice.stun_urls[0]", "stuns:127.0.0.1", "stun:"),
    ("ice.turn_urls[0]", "turns:127.0.0.1:5349", "turn:has space"),
    ("allowed_origins[0]", "https://app.example.org:8443", "https://app.example.org/path"),
    ("allowed_origins[0]", "http://localhost", "ftp://files.example.org"),
    ("allowed_origins[0]", "http://localhost", "app.example.org"),
    ("rooms.overrides[0].match", "*", "**"),
    ("rooms.overrides[0].match", "1on1-*", "1on1_*"),
    ("rooms.overrides[0].match", "a" * 64, "a" * 65),
    ("rooms.overrides[0].match", "room-7", "*-suffix"),
    ("rooms.overrides[0].match", "team-*", "team-*-x"),
]


def document_with(path: str, value: Any) -> dict[str, Any]:
    """A policy mapping that sets `path` (dots and [0]) to `value`, and nothing else."""
    section, _, rest = path.partition(".")
    if section == "allowed_origins[0]":
        return {"allowed_origins": [value]}
    if rest.startswith("overrides[0]."):
        override = {"match": "r-*", "max_participants": 2}
        override[rest.removeprefix("overrides[0].")] = value
        return {"rooms": {"overrides": [override]}}
    if rest.endswith("[0]"):
        return {section: {rest[:-3]: [value]}}
    return {section: {rest: value}}


@pytest.mark.parametrize(("path", "inside", "outside"), BOUNDS, ids=[b[0] for b in BOUNDS])
def test_each_field_keeps_to_its_bounds(path: str, inside: Any, outside: Any) -> None:
    parse_policy(as_yaml(document_with(path, inside)))
    errors = errors_of(document_with(path, outside))
    assert len(errors) == 1, errors
    assert errors[0].startswith(f"{path}: "), errors


@pytest.mark.parametrize(
    ("data", "path"),
    [
        ({"ice": {"stun_url": ["stun:127.0.0.1"]}}, "ice.stun_url"),
        ({"rooms": {"max_participant": 3}}, "rooms.max_participant"),
        (
            {"rooms": {"overrides": [{"match": "a", "max_participants": 2, "x": 1}]}},
            "rooms.overrides[0].x",
        ),
        ({"limits": {"max_message_size": 2048}}, "limits.max_message_size"),
        ({"allowed_origin": ["https://app.example.org"]}, "allowed_origin"),
        ({"redis_url": "redis://127.0.0.1"}, "redis_url"),
    ],
)
def test_an_unknown_field_is_refused_by_its_path(data: dict[str, Any], path: str) -> None:
    # A typo must never pass silently: the value it meant to set would not apply.
    assert errors_of(data) == [f"{path}: Extra inputs are not permitted"]


def test_every_problem_is_listed_at_once_each_with_its_path() -> None:
    data = {
        "ice": {"stun_urls": ["stun:127.0.0.1", "http://nope"], "bundle_policy": "all"},
        "rooms": {
            "max_participants": 0,
            "overrides": [
                {"match": "ok-*", "max_participants": 2},
                {"match": "bad match", "max_participants": 0},
            ],
        },
        "limits": {"rate_limit_burst": 0, "typo": 1},
        "allowed_origins": ["app.example.org"],
    }
    errors = errors_of(data)
    paths = [line.partition(": ")[0] for line in errors]
    assert sorted(paths) == sorted(
        [
            "ice.stun_urls[1]",
            "ice.bundle_policy",
            "rooms.max_participants",
            "rooms.overrides[1].match",
            "rooms.overrides[1].max_participants",
            "limits.rate_limit_burst",
            "limits.typo",
            "allowed_origins[0]",
        ]
    )
    assert all("\n" not in line and line.partition(": ")[2] for line in errors), errors
    # The message says what is wanted, in words an operator can act on.
    assert "rooms.max_participants: Input should be greater than or equal to 1" in errors
    match_line = next(line for line in errors if line.startswith("rooms.overrides[1].match"))
    assert "optional final *" in match_line and "Value error" not in match_line


@pytest.mark.parametrize(
    ("data", "path"),
    [
        ({"ice": ["stun:127.0.0.1"]}, "ice"),
        ({"ice": {"stun_urls": "stun:127.0.0.1"}}, "ice.stun_urls"),
        ({"rooms": {"overrides": {"match": "a-*"}}}, "rooms.overrides"),
        ({"rooms": {"overrides": [{"max_participants": 2}]}}, "rooms.overrides[0].match"),
        ({"rooms": {"max_participants": "many"}}, "rooms.max_participants"),
        ({"allowed_origins": "https://app.example.org"}, "allowed_origins"),
    ],
)
def test_a_wrong_shape_is_refused_by_its_path(data: dict[str, Any], path: str) -> None:
    errors = errors_of(data)
    assert [line.partition(": ")[0] for line in errors] == [path], errors


@pytest.mark.parametrize(
    "text",
    [b"rooms: [unclosed\n", b"rooms:\n  max_participants: 2\n bad indent: 1\n", b"a: b: c\n"],
)
def test_text_that_is_not_yaml_is_one_error(text: bytes) -> None:
    errors = errors_of(text)
    assert len(errors) == 1 and errors[0].startswith("not YAML: "), errors
    assert "\n" not in errors[0] and "line" in errors[0]  # where the parser stopped


@pytest.mark.parametrize(
    ("text", "kind"), [(b"- rooms\n", "list"), (b"just words\n", "str"), (b"42\n", "int")]
)
def test_a_document_that_is_not_a_mapping_is_one_error(text: bytes, kind: str) -> None:
    assert errors_of(text) == [f"expected a mapping at the top, got {kind}"]


def test_an_override_needs_a_capacity() -> None:
    errors = errors_of({"rooms": {"overrides": [{"match": "1on1-*"}]}})
    assert errors == ["rooms.overrides[0].max_participants: Field required"]


# What YAML would let through silently.


@pytest.mark.parametrize(
    ("data", "path"),
    [
        ({"ice": {"stun_urls": ["turn:127.0.0.1:3478"]}}, "ice.stun_urls[0]"),
        ({"ice": {"turn_urls": ["stun:127.0.0.1:3478"]}}, "ice.turn_urls[0]"),
        ({"limits": {"rate_limit_burst": True}}, "limits.rate_limit_burst"),
        ({"limits": {"max_message_bytes": "2048"}}, "limits.max_message_bytes"),
        ({"rooms": {"max_participants": 2.5}}, "rooms.max_participants"),
    ],
)
def test_a_value_of_the_wrong_kind_is_refused_not_converted(
    data: dict[str, Any], path: str
) -> None:
    # A STUN URL among TURN ones would be handed out with credentials, and a TURN URL
    # among STUN ones without: a browser's RTCPeerConnection throws on the latter.
    (error,) = errors_of(data)
    assert error.startswith(f"{path}: ")


def test_a_key_given_twice_is_refused_rather_than_the_last_winning() -> None:
    with pytest.raises(PolicyError) as refused:
        parse_policy(b"rooms:\n  max_participants: 3\nrooms:\n  max_participants: 40\n")
    (error,) = refused.value.errors
    assert "duplicate key 'rooms'" in error


def test_an_origin_may_end_in_a_slash_as_the_variable_may() -> None:
    policy = parse_policy(b"allowed_origins: ['https://app.example.org/']")
    assert policy.allowed_origins == ["https://app.example.org/"]


def test_a_section_with_everything_under_it_commented_out_states_nothing() -> None:
    policy = parse_policy(b"ice:\n#  stun_urls: []\nrooms:\n  overrides:\nlimits:\n")
    assert policy == EMPTY_POLICY


def test_a_yaml_error_names_the_line_and_column() -> None:
    with pytest.raises(PolicyError) as refused:
        parse_policy(b"rooms:\n  max_participants: [3\n")
    (error,) = refused.value.errors
    assert error.startswith("not YAML: ") and "line " in error and "<byte string>" not in error
