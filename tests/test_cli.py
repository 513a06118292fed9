"""`rendezvous serve | token | check-config` run as real subprocesses, the way an operator
runs them: masked configuration, one-line failures, minted tokens that verify, and dev
mode serving a token and URL that a real WebSocket client joins with."""

from __future__ import annotations

import json
import re
import stat
import time
from pathlib import Path
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from tests.support.client import joined
from tests.support.process import cli_env, one_line_failure, run_cli, serving
from tests.support.server import free_port

SECRET = "cli-secret-" + "z" * 40


async def test_serve_stops_on_ctrl_c_without_a_traceback(tmp_path: Path) -> None:
    env = cli_env(tmp_path, JWT_SECRET_KEY=SECRET)
    async with serving(env=env, log_dir=tmp_path / "serve") as served:
        pass
    assert served.process.returncode == 130
    output = served.output()
    assert "Finished server process" in output
    assert "Traceback" not in output


# check-config


def test_check_config_prints_the_configuration_with_secrets_masked(tmp_path: Path) -> None:
    env = cli_env(
        tmp_path,
        JWT_SECRET_KEY=SECRET,
        WEBRTC_STUN_URLS="stun:127.0.0.1:3478",
        WEBRTC_TURN_URLS="turn:127.0.0.1:3478",
        WEBRTC_TURN_USERNAME="turn-user",
        WEBRTC_TURN_CREDENTIAL="turn-credential-value",
        REDIS_PASSWORD="redis-part-password",
        WEBRTC_MAX_PARTICIPANTS_PER_ROOM="12",
    )
    result = run_cli("check-config", env=env)
    assert result.returncode == 0, result.stderr
    for secret in (SECRET, "turn-credential-value", "redis-part-password"):
        assert secret not in result.stdout + result.stderr
    shown: dict[str, Any] = json.loads(result.stdout)
    assert shown["JWT_SECRET_KEY"] == "***"
    assert shown["WEBRTC_TURN_CREDENTIAL"] == "***"
    assert shown["REDIS_PASSWORD"] == "***"
    assert shown["WEBRTC_TURN_USERNAME"] == "turn-user"
    assert shown["WEBRTC_MAX_PARTICIPANTS_PER_ROOM"] == 12
    assert shown["WEBRTC_ROOM_PRESENCE_TTL"] == 30
    assert shown["WEBRTC_ICE_TRANSPORT_POLICY"] == "all"
    assert shown["effective"]["backend"] == "memory"
    assert shown["effective"]["stun_urls"] == ["stun:127.0.0.1:3478"]
    assert shown["effective"]["turn_urls"] == ["turn:127.0.0.1:3478"]
    assert shown["effective"]["turn_credentials"] == [
        "static WEBRTC_TURN_USERNAME/WEBRTC_TURN_CREDENTIAL"
    ]
    # A 51-byte secret is long enough for HS256 and HS384, not HS512 (RFC 7518 3.2).
    assert set(shown["effective"]["jwt_algorithms"]) == {"HS256", "HS384"}


def test_check_config_lists_the_turn_credential_sources_in_order(tmp_path: Path) -> None:
    env = cli_env(
        tmp_path,
        JWT_SECRET_KEY=SECRET,
        WEBRTC_TURN_URLS="turn:127.0.0.1:3478",
        WEBRTC_TURN_CREDENTIALS_FILE="/run/turn/credentials.json",
        WEBRTC_TURN_SECRET="turn-shared-secret-value",
    )
    result = run_cli("check-config", env=env)
    assert result.returncode == 0, result.stderr
    assert "turn-shared-secret-value" not in result.stdout + result.stderr
    shown = json.loads(result.stdout)
    assert shown["WEBRTC_TURN_SECRET"] == "***"
    assert shown["effective"]["turn_credentials"] == [
        "sidecar file /run/turn/credentials.json",
        "minted from WEBRTC_TURN_SECRET",
    ]


def test_check_config_shows_the_google_stun_fallback(tmp_path: Path) -> None:
    result = run_cli("check-config", env=cli_env(tmp_path))
    assert result.returncode == 0, result.stderr
    shown = json.loads(result.stdout)
    assert shown["WEBRTC_STUN_URLS"] is None
    assert shown["effective"]["stun_urls"] == [
        "stun:stun.l.google.com:19302",
        "stun:stun1.l.google.com:19302",
    ]


def test_check_config_never_prints_the_password_inside_redis_url(tmp_path: Path) -> None:
    env = cli_env(
        tmp_path,
        JWT_SECRET_KEY=SECRET,
        REDIS_URL="redis://app:url-password-value@redis.internal:6380/1",
    )
    result = run_cli("check-config", env=env)
    assert result.returncode == 0, result.stderr
    assert "url-password-value" not in result.stdout + result.stderr
    shown = json.loads(result.stdout)
    assert shown["REDIS_URL"] == "redis://app:***@redis.internal:6380/1"
    assert shown["effective"]["backend"] == "redis (standalone)"


def test_effective_config_masks_the_password_inside_redis_url(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from rendezvous.cli import effective_config
    from rendezvous.settings import load_settings

    monkeypatch.setenv("REDIS_URL", "rediss://app:url-password-value@redis.internal:6380/1")
    shown = effective_config(load_settings())
    assert shown["REDIS_URL"] == "rediss://app:***@redis.internal:6380/1"
    assert shown["effective"]["backend"] == "redis (standalone)"
    assert "url-password-value" not in json.dumps(shown)


@pytest.mark.parametrize("command", ["check-config", "serve"])
@pytest.mark.parametrize(
    ("variable", "value"),
    [
        ("WEBRTC_MAX_PARTICIPANTS_PER_ROOM", "0"),
        ("WEBRTC_ICE_TRANSPORT_POLICY", "bogus"),
        ("WEBRTC_WS_PING_INTERVAL", "45"),
        ("REDIS_URL", "http://nope"),
    ],
)
def test_invalid_value_exits_non_zero_with_one_line_naming_it(
    tmp_path: Path, command: str, variable: str, value: str
) -> None:
    env = cli_env(tmp_path, JWT_SECRET_KEY=SECRET, **{variable: value})
    line = one_line_failure(run_cli(command, env=env))
    assert variable in line
    assert "Traceback" not in line


def test_serve_without_a_key_refuses_to_start_unless_dev(tmp_path: Path) -> None:
    line = one_line_failure(run_cli("serve", "--port", str(free_port()), env=cli_env(tmp_path)))
    assert "JWT_SECRET_KEY" in line
    assert "--dev" in line
    assert not (tmp_path / "state").exists()  # no dev key was created behind the user's back


# token


def test_token_mints_a_token_the_configured_key_verifies(tmp_path: Path) -> None:
    env = cli_env(tmp_path, JWT_SECRET_KEY=SECRET)
    result = run_cli(
        "token", "--user", "alice", "--room", "demo", "--ttl", "1h", "--name", "Alice", env=env
    )
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert len(lines) == 1
    claims = jwt.decode(lines[0], SECRET, algorithms=["HS256"])
    assert claims["sub"] == "alice"
    assert claims["rooms"] == ["demo"]
    assert claims["username"] == "Alice"
    assert claims["exp"] - claims["iat"] == 3600
    assert abs(claims["iat"] - time.time()) < 60
    with pytest.raises(jwt.InvalidSignatureError):
        jwt.decode(lines[0], "another-" + SECRET, algorithms=["HS256"])


@pytest.mark.parametrize(
    ("ttl", "seconds"), [("90", 90), ("45s", 45), ("30m", 1800), ("2d", 172800)]
)
def test_token_ttl_accepts_duration_units(tmp_path: Path, ttl: str, seconds: int) -> None:
    env = cli_env(tmp_path, JWT_SECRET_KEY=SECRET)
    result = run_cli("token", "--user", "bob", f"--ttl={ttl}", "--role", "admin", env=env)
    assert result.returncode == 0, result.stderr
    claims = jwt.decode(result.stdout.strip(), SECRET, algorithms=["HS256"])
    assert claims["exp"] - claims["iat"] == seconds
    assert claims["roles"] == ["admin"]
    assert "rooms" not in claims  # no --room: any room


@pytest.mark.parametrize("ttl", ["1x", "0", "-5", "h", "1.5h", ""])
def test_token_with_a_bad_ttl_exits_non_zero(tmp_path: Path, ttl: str) -> None:
    env = cli_env(tmp_path, JWT_SECRET_KEY=SECRET)
    assert "--ttl" in one_line_failure(run_cli("token", "--user", "a", f"--ttl={ttl}", env=env))


def test_token_without_any_key_exits_non_zero(tmp_path: Path) -> None:
    line = one_line_failure(run_cli("token", "--user", "a", env=cli_env(tmp_path)))
    assert "JWT_SECRET_KEY" in line


def test_token_signs_with_a_private_key_file(tmp_path: Path) -> None:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = tmp_path / "key.pem"
    pem.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    args = ("token", "--user", "carol", "--algorithm", "RS256")
    result = run_cli(*args, "--private-key", str(pem), env=cli_env(tmp_path))
    assert result.returncode == 0, result.stderr
    claims = jwt.decode(result.stdout.strip(), key.public_key(), algorithms=["RS256"])
    assert claims["sub"] == "carol"
    assert "--private-key" in one_line_failure(run_cli(*args, env=cli_env(tmp_path)))


# serve --dev


async def test_dev_mode_creates_a_private_key_and_prints_a_working_token_and_url(
    tmp_path: Path,
) -> None:
    env = cli_env(tmp_path)
    key_file = tmp_path / "state" / "rendezvous" / "dev-jwt-secret"
    async with serving("--dev", env=env, log_dir=tmp_path / "dev") as served:
        assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
        key = key_file.read_text().strip()
        assert len(key) >= 32
        banner = served.stdout()
        url = re.search(r"ws://\S+", banner)
        dev_token = re.search(r"dev token[^:]*:\s*(\S+)", banner)
        assert url is not None and dev_token is not None, banner
        assert url.group(0) == (
            f"ws://127.0.0.1:{served.port}/webrtc/ws/demo?token={dev_token.group(1)}"
        )
        assert jwt.decode(dev_token.group(1), key, algorithms=["HS256"])["sub"] == "dev-user"
        assert "DEV MODE" in served.output()

        async with joined(url.group(0)) as (dev_user, state):
            assert state["payload"]["participants"][0]["user_id"] == "dev-user"

            minted = run_cli("token", "--user", "bob", "--room", "demo", env=env)
            assert minted.returncode == 0, minted.stderr
            bob_url = f"ws://127.0.0.1:{served.port}/webrtc/ws/demo?token={minted.stdout.strip()}"
            async with joined(bob_url) as (_, bob_state):
                users = {p["user_id"] for p in bob_state["payload"]["participants"]}
                assert users == {"dev-user", "bob"}
                assert (await dev_user.expect("user_joined"))["payload"]["user_id"] == "bob"

        assert key_file.read_text().strip() == key  # `token` reads the key, never rewrites it


async def test_dev_mode_reuses_the_key_it_created(tmp_path: Path) -> None:
    env = cli_env(tmp_path)
    key_file = tmp_path / "state" / "rendezvous" / "dev-jwt-secret"
    async with serving("--dev", env=env, log_dir=tmp_path / "first"):
        key = key_file.read_text()
    earlier = run_cli("token", "--user", "erin", env=env).stdout.strip()
    async with serving("--dev", env=env, log_dir=tmp_path / "second") as served:
        assert key_file.read_text() == key
        async with joined(f"ws://127.0.0.1:{served.port}/webrtc/ws/demo?token={earlier}") as (
            _,
            state,
        ):
            assert state["payload"]["participants"][0]["user_id"] == "erin"
