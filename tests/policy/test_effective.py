"""The policy in force (issue 5, acceptance 1): the environment's values with the file's
laid over. A field the file leaves out keeps the environment's value, a field it states
wins over the variable it replaces, `[]` means none, a policy may lower
WEBRTC_MAX_MESSAGE_BYTES but never raise it, TURN URLs need a credential source, and room
overrides match exact names and `*` prefixes, first match first."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from rendezvous.limits import SessionLimits
from rendezvous.policy.document import PolicyError, parse_policy
from rendezvous.policy.effective import EffectivePolicy, RoomCapacity, resolve
from rendezvous.policy.view import policy_view
from rendezvous.settings import Settings
from tests.support.server import test_settings as settings_with

# The environment every precedence test starts from: a value set for each variable a
# policy can replace, each different from what the policies below state.
ENVIRONMENT: dict[str, Any] = {
    "stun_urls": "stun:127.0.0.1:3478",
    "turn_urls": "turn:127.0.0.1:3478?transport=udp",
    "turn_secret": "env-turn-secret",
    "ice_transport_policy": "relay",
    "bundle_policy": "max-compat",
    "rtcp_mux_policy": "negotiate",
    "max_participants_per_room": 7,
    "max_message_bytes": 8192,
    "rate_limit_per_second": 20.0,
    "rate_limit_burst": 40,
    "send_queue_max_messages": 64,
    "send_queue_max_bytes": 65536,
    "allowed_origins": "https://env.example.org,https://other.example.org/",
}


def environment(**overrides: Any) -> Settings:
    return settings_with(**{**ENVIRONMENT, **overrides})


def effective(policy_yaml: str, settings: Settings | None = None) -> EffectivePolicy:
    return resolve(settings or environment(), parse_policy(policy_yaml.encode()))


ENVIRONMENT_EFFECTIVE = {
    "ice.stun_urls": ("stun:127.0.0.1:3478",),
    "ice.turn_urls": ("turn:127.0.0.1:3478?transport=udp",),
    "ice.ice_transport_policy": "relay",
    "ice.bundle_policy": "max-compat",
    "ice.rtcp_mux_policy": "negotiate",
    "rooms.default": 7,
    "limits.max_message_bytes": 8192,
    "limits.rate_per_second": 20.0,
    "limits.burst": 40,
    "limits.queue_max_messages": 64,
    "limits.queue_max_bytes": 65536,
    "allowed_origins": frozenset({"https://env.example.org", "https://other.example.org"}),
}

# (what the file states, the attribute of the effective policy, its value then)
STATED: list[tuple[str, str, Any]] = [
    ("ice: {stun_urls: ['stun:127.0.0.2:3478']}", "ice.stun_urls", ("stun:127.0.0.2:3478",)),
    ("ice: {turn_urls: ['turns:127.0.0.2:5349']}", "ice.turn_urls", ("turns:127.0.0.2:5349",)),
    ("ice: {ice_transport_policy: all}", "ice.ice_transport_policy", "all"),
    ("ice: {bundle_policy: max-bundle}", "ice.bundle_policy", "max-bundle"),
    ("ice: {rtcp_mux_policy: require}", "ice.rtcp_mux_policy", "require"),
    ("rooms: {max_participants: 3}", "rooms.default", 3),
    ("limits: {max_message_bytes: 4096}", "limits.max_message_bytes", 4096),
    ("limits: {rate_limit_per_second: 2.5}", "limits.rate_per_second", 2.5),
    ("limits: {rate_limit_burst: 5}", "limits.burst", 5),
    ("limits: {send_queue_max_messages: 8}", "limits.queue_max_messages", 8),
    ("limits: {send_queue_max_bytes: 2048}", "limits.queue_max_bytes", 2048),
    (
        "allowed_origins: ['https://app.example.org']",
        "allowed_origins",
        frozenset({"https://app.example.org"}),
    ),
]


def attribute(policy: EffectivePolicy, dotted: str) -> Any:
    value: Any = policy
    for name in dotted.split("."):
        value = getattr(value, name)
    return value


def test_an_empty_policy_is_the_environment_exactly() -> None:
    settings = environment()
    assert resolve(settings) == resolve(settings, parse_policy(b""))
    policy = effective("")
    assert {name: attribute(policy, name) for name in ENVIRONMENT_EFFECTIVE} == (
        ENVIRONMENT_EFFECTIVE
    )
    assert policy.rooms.overrides == ()
    assert policy.ice.turn_urls_set  # WEBRTC_TURN_URLS is set


@pytest.mark.parametrize(("stated", "name", "value"), STATED, ids=[s[1] for s in STATED])
def test_a_stated_field_wins_and_every_other_keeps_the_environments(
    stated: str, name: str, value: Any
) -> None:
    policy = effective(stated)
    assert attribute(policy, name) == value != ENVIRONMENT_EFFECTIVE[name]
    for other, environment_value in ENVIRONMENT_EFFECTIVE.items():
        if other != name:
            assert attribute(policy, other) == environment_value, other


def test_the_issues_example_over_the_environment() -> None:
    policy = effective(
        """
        ice: {stun_urls: ["stun:127.0.0.9:3478"], ice_transport_policy: all}
        rooms: {max_participants: 50, overrides: [{match: "1on1-*", max_participants: 2}]}
        limits: {max_message_bytes: 4096}
        allowed_origins: ["https://app.example.org"]
        """
    )
    assert policy.ice.stun_urls == ("stun:127.0.0.9:3478",)
    assert policy.ice.turn_urls == ("turn:127.0.0.1:3478?transport=udp",)  # not stated: env
    assert policy.ice.bundle_policy == "max-compat"  # not stated: env
    assert policy.rooms == RoomCapacity(default=50, overrides=(("1on1-*", 2),))
    assert policy.limits == SessionLimits(
        max_message_bytes=4096, rate_per_second=20.0, burst=40,
        queue_max_messages=64, queue_max_bytes=65536,
    )  # fmt: skip
    assert policy.allowed_origins == frozenset({"https://app.example.org"})


# `[]` states "none", which is not the same as leaving the field out.


def test_empty_stun_urls_mean_no_stun_even_with_the_variable_set() -> None:
    assert effective("ice: {stun_urls: []}").ice.stun_urls == ()


def test_empty_turn_urls_mean_no_turn_and_outrank_the_sidecars_urls() -> None:
    ice = effective("ice: {turn_urls: []}", environment(turn_urls=None)).ice
    assert ice.turn_urls == () and ice.turn_urls_set  # stated: the sidecar file's urls lose


def test_turn_urls_left_out_and_unset_let_the_sidecars_urls_apply() -> None:
    ice = effective("ice: {stun_urls: []}", environment(turn_urls=None)).ice
    assert ice.turn_urls == () and not ice.turn_urls_set


def test_empty_allowed_origins_allow_any_even_with_the_variable_set() -> None:
    assert effective("allowed_origins: []").allowed_origins == frozenset()


def test_no_overrides_stated_keeps_none() -> None:
    assert effective("rooms: {overrides: []}").rooms.overrides == ()


# What the process allows.


@pytest.mark.parametrize("wanted", [1024, 8191, 8192])
def test_a_policy_may_lower_the_message_limit(wanted: int) -> None:
    assert effective(f"limits: {{max_message_bytes: {wanted}}}").limits.max_message_bytes == (
        wanted
    )


def test_a_policy_may_not_raise_the_message_limit() -> None:
    # The WebSocket layer is sized from WEBRTC_MAX_MESSAGE_BYTES at start-up.
    with pytest.raises(PolicyError) as caught:
        effective("limits: {max_message_bytes: 8193}")
    assert caught.value.errors == [
        "limits.max_message_bytes: 8193 is above WEBRTC_MAX_MESSAGE_BYTES (8192); "
        "a policy may lower it, never raise it"
    ]


TURN_URLS = "ice: {turn_urls: ['turn:127.0.0.1:3478']}"
NO_CREDENTIALS: dict[str, Any] = {"turn_urls": None, "turn_secret": None}


def test_turn_urls_without_a_credential_source_are_refused() -> None:
    # A browser refuses a turn: URL without credentials (InvalidAccessError).
    with pytest.raises(PolicyError) as caught:
        effective(TURN_URLS, environment(**NO_CREDENTIALS))
    assert caught.value.errors == [
        "ice.turn_urls: no TURN credential source is configured "
        "(WEBRTC_TURN_CREDENTIALS_FILE, WEBRTC_TURN_SECRET or the static pair)"
    ]


@pytest.mark.parametrize(
    "source",
    [
        {"turn_secret": "minted-from-this"},
        {"turn_username": "static-user", "turn_credential": "static-credential"},
        {"turn_credentials_file": Path("/nonexistent/turn.json")},
    ],
    ids=["secret", "static pair", "sidecar file"],
)
def test_turn_urls_with_any_credential_source_are_accepted(source: dict[str, Any]) -> None:
    settings = environment(**{**NO_CREDENTIALS, **source})
    assert effective(TURN_URLS, settings).ice.turn_urls == ("turn:127.0.0.1:3478",)


def test_no_turn_urls_need_no_credential_source() -> None:
    assert effective("ice: {turn_urls: []}", environment(**NO_CREDENTIALS)).ice.turn_urls == ()


def test_both_conflicts_are_listed_at_once() -> None:
    with pytest.raises(PolicyError) as caught:
        effective(TURN_URLS + "\nlimits: {max_message_bytes: 9000}", environment(**NO_CREDENTIALS))
    assert [line.partition(":")[0] for line in caught.value.errors] == [
        "limits.max_message_bytes",
        "ice.turn_urls",
    ]


# Room overrides: exact names, `*` prefixes, `*` alone; the first that fits wins.

ROOMS = """
rooms:
  max_participants: 50
  overrides:
    - {match: "lobby", max_participants: 200}
    - {match: "1on1-*", max_participants: 2}
    - {match: "1on1-vip-*", max_participants: 3}
    - {match: "webinar-*", max_participants: 500}
    - {match: "1on1-late", max_participants: 9}
"""


@pytest.mark.parametrize(
    ("room", "capacity"),
    [
        ("lobby", 200),  # exact name
        ("lobby-2", 50),  # an exact name is no prefix
        ("lobb", 50),
        ("1on1-abc", 2),  # prefix
        ("1on1-", 2),  # the prefix itself, with nothing after it
        ("1on1", 50),  # shorter than the prefix
        ("1on1-vip-x", 2),  # the first entry that fits wins, not the longest...
        ("1on1-late", 2),  # ...nor an exact name listed after a prefix that fits
        ("webinar-q3", 500),
        ("team-x", 50),  # no entry fits: rooms.max_participants
        ("WEBINAR-q3", 50),  # room ids are case-sensitive
    ],
)
def test_room_capacity_comes_from_the_first_override_that_fits(room: str, capacity: int) -> None:
    assert effective(ROOMS).rooms.for_room(room) == capacity


def test_a_lone_star_matches_every_room_from_where_it_stands() -> None:
    rooms = effective(
        """
        rooms:
          overrides:
            - {match: "1on1-*", max_participants: 2}
            - {match: "*", max_participants: 10}
            - {match: "never", max_participants: 1}
        """
    ).rooms
    assert [rooms.for_room(r) for r in ("1on1-a", "never", "anything")] == [2, 10, 10]
    assert rooms.default == 7  # unused, but still the environment's


def test_without_overrides_every_room_has_the_default() -> None:
    rooms = effective("")
    assert {rooms.rooms.for_room(r) for r in ("a", "1on1-a", "lobby")} == {7}


def test_the_view_of_a_policy_saved_as_a_file_gives_the_same_policy(tmp_path: Path) -> None:
    """With the TURN URLs left to the sidecar's file, the view says `turn_urls: null`:
    saved as a policy it keeps them there, where `[]` would switch TURN off."""
    settings = settings_with(turn_credentials_file=tmp_path / "turn.json")
    effective = resolve(settings)
    view = policy_view(effective)
    assert view["ice"]["turn_urls"] is None
    again = resolve(settings, parse_policy(json.dumps(view).encode()))
    assert again == effective and again.ice.turn_urls_set is False
