"""Settings from the environment (DESIGN section 5, SEED.md's exact names and defaults):
every variable, its default, comma lists, Redis location, and invalid values failing with
one line that names the variable."""

from __future__ import annotations

from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from rendezvous.redis_url import RedisMode, RedisTarget
from rendezvous.settings import GOOGLE_STUN_URLS, ConfigError, Settings, load_settings

SECRET = "s" * 40
EC_PUBLIC_PEM = (
    ec.generate_private_key(ec.SECP256R1())
    .public_key()
    .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    .decode()
)

# (environment variable, default as read with nothing set)
DEFAULTS: list[tuple[str, str, Any]] = [
    ("DEBUG", "debug", False),
    ("REDIS_URL", "redis_url", None),
    ("REDIS_HOST", "redis_host", None),
    ("REDIS_PORT", "redis_port", 6379),
    ("REDIS_PASSWORD", "redis_password", None),
    ("REDIS_DB", "redis_db", 0),
    ("JWT_SECRET_KEY", "jwt_secret_key", None),
    ("JWT_PUBLIC_KEY", "jwt_public_key", None),
    ("JWT_JWKS_URL", "jwt_jwks_url", None),
    ("JWT_ALGORITHMS", "jwt_algorithms", None),
    ("JWT_AUDIENCE", "jwt_audience", None),
    ("JWT_ISSUER", "jwt_issuer", None),
    ("JWT_LEEWAY", "jwt_leeway_seconds", 10.0),
    ("WEBRTC_STUN_URLS", "stun_urls", None),
    ("WEBRTC_TURN_URLS", "turn_urls", None),
    ("WEBRTC_TURN_USERNAME", "turn_username", None),
    ("WEBRTC_TURN_CREDENTIAL", "turn_credential", None),
    ("WEBRTC_ICE_TRANSPORT_POLICY", "ice_transport_policy", "all"),
    ("WEBRTC_BUNDLE_POLICY", "bundle_policy", "balanced"),
    ("WEBRTC_RTCP_MUX_POLICY", "rtcp_mux_policy", "require"),
    ("WEBRTC_ROOM_PRESENCE_TTL", "presence_ttl_seconds", 30.0),
    ("WEBRTC_MAX_PARTICIPANTS_PER_ROOM", "max_participants_per_room", 50),
    ("WEBRTC_ALLOWED_ORIGINS", "allowed_origins", ""),
    ("WEBRTC_WS_PING_INTERVAL", "ws_ping_interval_seconds", 20.0),
    ("WEBRTC_WS_COMPRESSION", "ws_per_message_deflate", False),
    ("WEBRTC_MAX_CONNECTIONS", "max_connections", 10000),
    ("WEBRTC_HANDSHAKE_TIMEOUT", "handshake_timeout_seconds", 10.0),
    ("WEBRTC_MAX_MESSAGE_BYTES", "max_message_bytes", 65536),
    ("WEBRTC_RATE_LIMIT_PER_SECOND", "rate_limit_per_second", 100.0),
    ("WEBRTC_RATE_LIMIT_BURST", "rate_limit_burst", 1000),
    ("WEBRTC_SEND_QUEUE_MAX_MESSAGES", "send_queue_max_messages", 256),
    ("WEBRTC_SEND_QUEUE_MAX_BYTES", "send_queue_max_bytes", 1024 * 1024),
]

# (environment variable, value to set, attribute, value read)
READS: list[tuple[str, str, str, Any]] = [
    ("DEBUG", "true", "debug", True),
    ("REDIS_URL", "redis://r:6380/1", "redis_url", "redis://r:6380/1"),
    ("REDIS_HOST", "redis", "redis_host", "redis"),
    ("REDIS_PORT", "6390", "redis_port", 6390),
    ("REDIS_PASSWORD", "pw", "redis_password", "pw"),
    ("REDIS_DB", "3", "redis_db", 3),
    ("JWT_SECRET_KEY", SECRET, "jwt_secret_key", SECRET),
    ("JWT_PUBLIC_KEY", EC_PUBLIC_PEM, "jwt_public_key", EC_PUBLIC_PEM),
    ("JWT_JWKS_URL", "https://idp.test/jwks", "jwt_jwks_url", "https://idp.test/jwks"),
    ("JWT_ALGORITHMS", "HS256,RS256", "algorithms", ("HS256", "RS256")),
    ("JWT_AUDIENCE", "rendezvous", "jwt_audience", "rendezvous"),
    ("JWT_ISSUER", "https://idp.test", "jwt_issuer", "https://idp.test"),
    ("JWT_LEEWAY", "2.5", "jwt_leeway_seconds", 2.5),
    ("WEBRTC_STUN_URLS", "stun:a:3478", "stun_url_list", ("stun:a:3478",)),
    ("WEBRTC_ICE_TRANSPORT_POLICY", "relay", "ice_transport_policy", "relay"),
    ("WEBRTC_BUNDLE_POLICY", "max-compat", "bundle_policy", "max-compat"),
    ("WEBRTC_RTCP_MUX_POLICY", "negotiate", "rtcp_mux_policy", "negotiate"),
    ("WEBRTC_ROOM_PRESENCE_TTL", "60", "presence_ttl_seconds", 60.0),
    ("WEBRTC_MAX_PARTICIPANTS_PER_ROOM", "2", "max_participants_per_room", 2),
    ("WEBRTC_WS_PING_INTERVAL", "5", "ws_ping_interval_seconds", 5.0),
    ("WEBRTC_WS_COMPRESSION", "1", "ws_per_message_deflate", True),
    ("WEBRTC_MAX_CONNECTIONS", "7", "max_connections", 7),
    ("WEBRTC_HANDSHAKE_TIMEOUT", "2.5", "handshake_timeout_seconds", 2.5),
    ("WEBRTC_ALLOWED_ORIGINS", "https://x.test", "allowed_origin_set", {"https://x.test"}),
    ("WEBRTC_MAX_MESSAGE_BYTES", "4096", "max_message_bytes", 4096),
    ("WEBRTC_RATE_LIMIT_PER_SECOND", "5.5", "rate_limit_per_second", 5.5),
    ("WEBRTC_RATE_LIMIT_BURST", "9", "rate_limit_burst", 9),
    ("WEBRTC_SEND_QUEUE_MAX_MESSAGES", "16", "send_queue_max_messages", 16),
    ("WEBRTC_SEND_QUEUE_MAX_BYTES", "2048", "send_queue_max_bytes", 2048),
]


def test_every_variable_has_its_documented_default() -> None:
    settings = load_settings()
    for env, attribute, default in DEFAULTS:
        assert getattr(settings, attribute) == default, env
    assert settings.stun_url_list == GOOGLE_STUN_URLS
    assert settings.turn_url_list == ()
    assert settings.allowed_origin_set == frozenset()
    assert settings.redis_target is None
    assert settings.algorithms == ()
    assert not settings.has_jwt_key


def test_every_setting_is_read_from_its_environment_variable() -> None:
    """No field without an upper-case environment name, and the table above covers them."""
    names = set()
    for name, field in Settings.model_fields.items():
        alias = field.validation_alias
        choices = getattr(alias, "choices", None)
        assert choices, f"{name} has no environment variable"
        names.add(str(choices[0]))
    assert all(name.isupper() for name in names)
    assert {env for env, _, _ in DEFAULTS} <= names


@pytest.mark.parametrize(("env", "raw", "attribute", "expected"), READS, ids=[r[0] for r in READS])
def test_each_variable_is_read_from_the_environment(
    monkeypatch: pytest.MonkeyPatch, env: str, raw: str, attribute: str, expected: Any
) -> None:
    monkeypatch.setenv(env, raw)
    assert getattr(load_settings(), attribute) == expected


def test_turn_variables_are_read_together(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WEBRTC_TURN_URLS", "turn:t1:3478, turns:t2:5349 ,")
    monkeypatch.setenv("WEBRTC_TURN_USERNAME", "user")
    monkeypatch.setenv("WEBRTC_TURN_CREDENTIAL", "pass")
    settings = load_settings()
    assert settings.turn_url_list == ("turn:t1:3478", "turns:t2:5349")
    assert (settings.turn_username, settings.turn_credential) == ("user", "pass")


def test_comma_lists_are_split_and_trimmed(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WEBRTC_STUN_URLS", " stun:a:1 ,stun:b:2,, stun:c:3 ")
    monkeypatch.setenv("WEBRTC_ALLOWED_ORIGINS", "https://a.example/, https://b.example")
    monkeypatch.setenv("JWT_SECRET_KEY", "s" * 64)
    monkeypatch.setenv("JWT_ALGORITHMS", " HS256 , HS512 ")
    settings = load_settings()
    assert settings.stun_url_list == ("stun:a:1", "stun:b:2", "stun:c:3")
    assert settings.allowed_origin_set == {"https://a.example", "https://b.example"}
    assert settings.algorithms == ("HS256", "HS512")


def test_empty_stun_variable_means_no_servers_not_the_fallback(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("WEBRTC_STUN_URLS", "")
    assert load_settings().stun_url_list == ()


def test_algorithm_allow_list_follows_the_configured_keys(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("JWT_SECRET_KEY", "s" * 64)
    assert set(load_settings().algorithms) == {"HS256", "HS384", "HS512"}
    monkeypatch.delenv("JWT_SECRET_KEY")
    monkeypatch.setenv("JWT_PUBLIC_KEY", EC_PUBLIC_PEM)
    settings = load_settings()
    assert set(settings.algorithms) == {"RS256", "ES256"}
    assert settings.has_jwt_key


def test_hmac_algorithms_need_a_secret_as_long_as_their_hash(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """RFC 7518 3.2: the default allow-list leaves out what the key is too short for..."""
    monkeypatch.setenv("JWT_SECRET_KEY", "s" * 48)
    assert set(load_settings().algorithms) == {"HS256", "HS384"}
    monkeypatch.setenv("JWT_SECRET_KEY", "s" * 32)
    assert set(load_settings().algorithms) == {"HS256"}
    # ...and asking for it explicitly fails at start-up, naming the variable.
    monkeypatch.setenv("JWT_ALGORITHMS", "HS256,HS512")
    with pytest.raises(ConfigError, match="JWT_SECRET_KEY is too short for HS512"):
        load_settings()


# Redis location.


def test_redis_url_is_parsed_into_a_target(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("REDIS_URL", "redis+sentinel://:pw@s1:26379,s2:26380/mymaster/2")
    assert load_settings().redis_target == RedisTarget(
        mode=RedisMode.SENTINEL,
        nodes=(("s1", 26379), ("s2", 26380)),
        password="pw",
        db=2,
        service_name="mymaster",
    )


@pytest.mark.parametrize(
    ("url", "mode", "nodes"),
    [
        ("redis://h:1/0", RedisMode.STANDALONE, (("h", 1),)),
        ("rediss://h", RedisMode.STANDALONE, (("h", 6379),)),
        ("redis+cluster://a:7000,b:7001", RedisMode.CLUSTER, (("a", 7000), ("b", 7001))),
        ("redis+sentinel://s:1/name/0", RedisMode.SENTINEL, (("s", 1),)),
    ],
)
def test_each_redis_url_form_is_accepted(
    monkeypatch: pytest.MonkeyPatch, url: str, mode: RedisMode, nodes: tuple[Any, ...]
) -> None:
    monkeypatch.setenv("REDIS_URL", url)
    target = load_settings().redis_target
    assert target is not None
    assert (target.mode, target.nodes, target.tls) == (mode, nodes, url.startswith("rediss"))


def test_redis_parts_make_a_standalone_target(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("REDIS_HOST", "redis.internal")
    monkeypatch.setenv("REDIS_PORT", "6380")
    monkeypatch.setenv("REDIS_PASSWORD", "pw")
    monkeypatch.setenv("REDIS_DB", "4")
    assert load_settings().redis_target == RedisTarget(
        mode=RedisMode.STANDALONE, nodes=(("redis.internal", 6380),), password="pw", db=4
    )


def test_redis_host_alone_uses_the_default_port_and_database(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("REDIS_HOST", "redis")
    assert load_settings().redis_target == RedisTarget(
        mode=RedisMode.STANDALONE, nodes=(("redis", 6379),)
    )


def test_redis_url_wins_over_the_parts(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("REDIS_HOST", "ignored")
    monkeypatch.setenv("REDIS_PORT", "1")
    monkeypatch.setenv("REDIS_URL", "redis+cluster://a:7000,b:7001")
    target = load_settings().redis_target
    assert target is not None
    assert target.mode is RedisMode.CLUSTER
    assert target.nodes == (("a", 7000), ("b", 7001))


# Invalid values.


@pytest.mark.parametrize(
    ("environment", "named"),
    [
        ({"WEBRTC_MAX_PARTICIPANTS_PER_ROOM": "0"}, "WEBRTC_MAX_PARTICIPANTS_PER_ROOM"),
        ({"WEBRTC_MAX_PARTICIPANTS_PER_ROOM": "many"}, "WEBRTC_MAX_PARTICIPANTS_PER_ROOM"),
        ({"WEBRTC_ICE_TRANSPORT_POLICY": "bogus"}, "WEBRTC_ICE_TRANSPORT_POLICY"),
        ({"WEBRTC_BUNDLE_POLICY": "bogus"}, "WEBRTC_BUNDLE_POLICY"),
        ({"WEBRTC_RTCP_MUX_POLICY": "bogus"}, "WEBRTC_RTCP_MUX_POLICY"),
        ({"WEBRTC_ROOM_PRESENCE_TTL": "0"}, "WEBRTC_ROOM_PRESENCE_TTL"),
        ({"WEBRTC_ROOM_PRESENCE_TTL": "abc"}, "WEBRTC_ROOM_PRESENCE_TTL"),
        ({"WEBRTC_WS_PING_INTERVAL": "30"}, "WEBRTC_WS_PING_INTERVAL"),
        (
            {"WEBRTC_WS_PING_INTERVAL": "10", "WEBRTC_ROOM_PRESENCE_TTL": "5"},
            "WEBRTC_WS_PING_INTERVAL",
        ),
        ({"WEBRTC_MAX_CONNECTIONS": "0"}, "WEBRTC_MAX_CONNECTIONS"),
        ({"WEBRTC_HANDSHAKE_TIMEOUT": "0"}, "WEBRTC_HANDSHAKE_TIMEOUT"),
        ({"WEBRTC_MAX_MESSAGE_BYTES": "10"}, "WEBRTC_MAX_MESSAGE_BYTES"),
        ({"WEBRTC_RATE_LIMIT_PER_SECOND": "-1"}, "WEBRTC_RATE_LIMIT_PER_SECOND"),
        ({"WEBRTC_RATE_LIMIT_BURST": "0"}, "WEBRTC_RATE_LIMIT_BURST"),
        ({"WEBRTC_SEND_QUEUE_MAX_MESSAGES": "0"}, "WEBRTC_SEND_QUEUE_MAX_MESSAGES"),
        ({"REDIS_PORT": "70000"}, "REDIS_PORT"),
        ({"REDIS_DB": "-1"}, "REDIS_DB"),
        ({"REDIS_URL": "http://localhost"}, "REDIS_URL"),
        ({"REDIS_URL": "redis+cluster://a:1,b:2/5"}, "REDIS_URL"),
        ({"REDIS_URL": "redis+sentinel://s1"}, "REDIS_URL"),
        ({"DEBUG": "maybe"}, "DEBUG"),
        ({"JWT_SECRET_KEY": "short"}, "JWT_SECRET_KEY"),
        ({"JWT_ALGORITHMS": "none"}, "JWT_ALGORITHMS"),
        ({"JWT_ALGORITHMS": "HS256,XY999"}, "JWT_ALGORITHMS"),
        ({"JWT_PUBLIC_KEY": "not a pem"}, "JWT_PUBLIC_KEY"),
        ({"JWT_JWKS_URL": "file:///etc/passwd"}, "JWT_JWKS_URL"),
        (
            {"JWT_PUBLIC_KEY": EC_PUBLIC_PEM, "JWT_JWKS_URL": "https://idp.test/jwks"},
            "JWT_JWKS_URL",
        ),
        ({"JWT_LEEWAY": "-1"}, "JWT_LEEWAY"),
        ({"WEBRTC_TURN_URLS": "turn:t:3478"}, "WEBRTC_TURN_USERNAME"),
        ({"WEBRTC_TURN_USERNAME": "u"}, "WEBRTC_TURN_CREDENTIAL"),
    ],
    ids=lambda value: (
        "-".join(f"{k}={v[:12]}" for k, v in value.items()) if isinstance(value, dict) else None
    ),
)
def test_invalid_value_raises_one_line_naming_the_variable(
    monkeypatch: pytest.MonkeyPatch, environment: dict[str, str], named: str
) -> None:
    for name, value in environment.items():
        monkeypatch.setenv(name, value)
    with pytest.raises(ConfigError) as caught:
        load_settings()
    message = str(caught.value)
    assert named in message
    assert "\n" not in message
    assert "Traceback" not in message


def test_secret_values_are_never_echoed_in_errors(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("JWT_SECRET_KEY", "tooshort-secret")
    with pytest.raises(ConfigError) as caught:
        load_settings()
    assert "tooshort-secret" not in str(caught.value)
    monkeypatch.delenv("JWT_SECRET_KEY")
    monkeypatch.setenv("REDIS_URL", "redis://:hunter2-pw@host:bad/0")
    with pytest.raises(ConfigError) as caught:
        load_settings()
    assert "hunter2" not in str(caught.value)


def test_overrides_win_over_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WEBRTC_MAX_PARTICIPANTS_PER_ROOM", "5")
    assert load_settings(max_participants_per_room=9).max_participants_per_room == 9
