"""`rendezvous turn-sidecar` as the real process, reading coturn's shared secret from a
Secret volume that tests/support/kubelet.py updates exactly as kubelet does. It writes
TURN REST credentials that verify against the secret (mode 0640), turns ready only then,
rotates on schedule and within a poll of a kubelet swap, keeps the last good file while
the key is gone (saying why in /readyz), counts all of it in /metrics, stops on SIGTERM,
refuses unusable configuration with one line naming the variable, and never prints the
secret."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import hmac
import inspect
import signal
import stat
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest

from tests.support.kubelet import SecretVolume
from tests.support.process import (
    cli_env,
    one_line_failure,
    run_cli,
    unused_port,
)
from tests.support.turn_sidecar import Sidecar
from tests.support.turn_sidecar import running_sidecar as sidecar_process

SECRET = "sidecar-shared-secret-0123456789"
NEW_SECRET = "sidecar-rotated-secret-9876543210"
KEY = "static-auth-secret"
TURN_URL = "turn:127.0.0.1:3478?transport=udp"
POLL_SECONDS = 1.0  # DirectorySecretSource's poll
STARTUP_DEADLINE_SECONDS = 15.0
STOP_DEADLINE_SECONDS = 5.0  # a clean stop takes ~0.2 s
HTTP_TIMEOUT_SECONDS = 5.0
WAIT_POLL_SECONDS = 0.05
EXIT_CONFIG = 2


@contextlib.asynccontextmanager
async def running_sidecar(
    tmp_path: Path, volume: SecretVolume, **variables: str
) -> AsyncIterator[Sidecar]:
    """`rendezvous turn-sidecar` reading `volume`, writing tmp_path/shared/turn.json, with
    `variables` added to its environment; answering /healthz before the test runs, and
    sent SIGTERM (then killed, if need be) afterwards."""
    shared = tmp_path / "shared"
    shared.mkdir()
    env = cli_env(
        tmp_path,
        WEBRTC_TURN_CREDENTIALS_FILE=str(shared / "turn.json"),
        WEBRTC_TURN_URLS=TURN_URL,
        WEBRTC_TURN_SECRET_DIR=str(volume.directory),
        **variables,
    )
    async with sidecar_process(env=env, log_dir=tmp_path, until="healthy") as sidecar:
        yield sidecar


async def within(seconds: float, what: str, check: Callable[[], bool | Awaitable[bool]]) -> None:
    """Wait until `check` holds, failing after `seconds`."""
    start = time.monotonic()
    while True:
        result = check()
        if inspect.isawaitable(result):
            result = await result
        if result:
            return
        assert time.monotonic() - start < seconds, f"not within {seconds}s: {what}"
        await asyncio.sleep(WAIT_POLL_SECONDS)


def secret_volume(tmp_path: Path, **keys: bytes) -> SecretVolume:
    volume = SecretVolume(tmp_path / "turn-secret")
    volume.write(keys)
    return volume


def with_secret(secret: str) -> dict[str, bytes]:
    """The Secret as `kubectl create secret generic --from-file` stores it: with the
    file's trailing newline, and another key beside it."""
    return {KEY: f"{secret}\n".encode(), "realm": b"example.test"}


def assert_verifies(credentials: dict[str, Any], *, secret: str, user: str, ttl: int) -> None:
    """The TURN REST format coturn's use-auth-secret checks: username "<expiry>:<user>",
    credential base64(HMAC-SHA1(secret, username)), expiring `ttl` after minting."""
    expiry, _, user_part = credentials["username"].partition(":")
    assert user_part == user
    assert int(expiry) == credentials["expires_at"] == credentials["rotated_at"] + ttl
    digest = hmac.new(secret.encode(), credentials["username"].encode(), hashlib.sha1).digest()
    assert credentials["credential"] == base64.b64encode(digest).decode()
    assert credentials["urls"] == [TURN_URL]
    assert set(credentials) == {"urls", "username", "credential", "expires_at", "rotated_at"}


def assert_never_shown(sidecar: Sidecar, *secrets: str) -> None:
    output = sidecar.daemon.log()
    assert "TURN credential written" in output, "nothing logged, so nothing checked"
    for secret in secrets:
        assert secret not in output


async def test_ready_only_once_the_secret_arrives_and_credentials_verify(tmp_path: Path) -> None:
    """Started on a Secret without the key, the sidecar is alive but not ready and says
    why; once kubelet projects the key it writes, within a poll, credentials for the
    default user that verify with the secret, mode 0640, and turns ready."""
    volume = secret_volume(tmp_path, realm=b"example.test")
    async with running_sidecar(tmp_path, volume) as sidecar:
        assert (await sidecar.http.get("/healthz")).json() == {"status": "ok"}

        async def source_reported() -> bool:
            return bool((await sidecar.readyz())[1]["source"] != "waiting")

        await within(2 * POLL_SECONDS, "the source's first reading", source_reported)
        status, body = await sidecar.readyz()
        assert status == 503
        assert body["status"] == "not ready"
        assert body["credentials"] == "none"
        assert body["source"] == f"no key {KEY!r} in {volume.directory} (it has: realm)"
        assert not sidecar.credentials_file.exists()

        volume.write(with_secret(SECRET))
        await within(2 * POLL_SECONDS, "credentials file", sidecar.credentials_file.exists)
        written = sidecar.written()
        assert_verifies(written, secret=SECRET, user="rendezvous", ttl=86400)
        assert abs(written["rotated_at"] - time.time()) <= 5
        assert stat.S_IMODE(sidecar.credentials_file.stat().st_mode) == 0o640
        status, body = await sidecar.readyz()
        assert status == 200
        assert body == {
            "status": "ready",
            "credentials": "ok",
            "source": "ok",
            "expires_at": written["expires_at"],
            "rotated_at": written["rotated_at"],
        }
        assert await sidecar.metric("rendezvous_turn_rotations_total", 'reason="first"') == 1
        assert await sidecar.metric("rendezvous_turn_source_failures_total") == 1
        assert await sidecar.metric("rendezvous_turn_source_up") == 1
        assert SECRET not in (await sidecar.http.get("/metrics")).text
    assert_never_shown(sidecar, SECRET)


async def test_rotates_on_schedule_at_the_ttl_fraction(tmp_path: Path) -> None:
    """WEBRTC_TURN_TTL=4 with fraction 0.5: a new username every 2 s (seen within 4 s),
    with the user part from WEBRTC_TURN_SIDECAR_USER."""
    volume = secret_volume(tmp_path, **with_secret(SECRET))
    async with running_sidecar(
        tmp_path,
        volume,
        WEBRTC_TURN_TTL="4",
        WEBRTC_TURN_ROTATE_FRACTION="0.5",
        WEBRTC_TURN_SIDECAR_USER="pod-7",
    ) as sidecar:
        await within(2 * POLL_SECONDS, "first credentials", sidecar.credentials_file.exists)
        first = sidecar.written()
        assert_verifies(first, secret=SECRET, user="pod-7", ttl=4)

        def rotated() -> bool:
            return bool(sidecar.written()["username"] != first["username"])

        await within(2 * 2.0, "scheduled rotation", rotated)
        second = sidecar.written()
        assert_verifies(second, secret=SECRET, user="pod-7", ttl=4)
        assert second["rotated_at"] - first["rotated_at"] >= 2  # not before ttl * fraction
        assert await sidecar.metric("rendezvous_turn_rotations_total", 'reason="schedule"') >= 1
    assert_never_shown(sidecar, SECRET)


async def test_kubelet_swap_to_a_new_secret_rotates_within_a_poll(tmp_path: Path) -> None:
    volume = secret_volume(tmp_path, **with_secret(SECRET))
    async with running_sidecar(tmp_path, volume) as sidecar:
        await within(2 * POLL_SECONDS, "first credentials", sidecar.credentials_file.exists)
        first = sidecar.written()
        assert_verifies(first, secret=SECRET, user="rendezvous", ttl=86400)

        volume.write(with_secret(NEW_SECRET))
        await within(
            2 * POLL_SECONDS,
            "credentials from the new secret",
            lambda: sidecar.written()["credential"] != first["credential"],
        )
        assert_verifies(sidecar.written(), secret=NEW_SECRET, user="rendezvous", ttl=86400)
        changed = await sidecar.metric("rendezvous_turn_rotations_total", 'reason="secret_changed"')
        assert changed == 1
    assert_never_shown(sidecar, SECRET, NEW_SECRET)


async def test_removed_key_keeps_the_last_file_and_readyz_says_why(tmp_path: Path) -> None:
    """The key deleted from the Secret: the file keeps the last good credentials, and
    /readyz stays 200 with the problem in its detail."""
    volume = secret_volume(tmp_path, **with_secret(SECRET))
    async with running_sidecar(tmp_path, volume) as sidecar:
        await within(2 * POLL_SECONDS, "first credentials", sidecar.credentials_file.exists)
        before = sidecar.credentials_file.read_bytes()

        volume.remove_key(KEY)

        async def source_failing() -> bool:
            return bool((await sidecar.readyz())[1]["source"] != "ok")

        await within(2 * POLL_SECONDS, "/readyz names the problem", source_failing)
        status, body = await sidecar.readyz()
        assert status == 200
        assert body["status"] == "ready"
        assert body["credentials"] == "ok"
        assert body["source"] == f"no key {KEY!r} in {volume.directory} (it has: realm)"
        assert sidecar.credentials_file.read_bytes() == before
        assert await sidecar.metric("rendezvous_turn_source_up") == 0
    assert sidecar.credentials_file.read_bytes() == before
    assert_never_shown(sidecar, SECRET)


async def test_sigterm_stops_the_sidecar_cleanly_and_promptly(tmp_path: Path) -> None:
    volume = secret_volume(tmp_path, **with_secret(SECRET))
    async with running_sidecar(tmp_path, volume) as sidecar:
        await within(2 * POLL_SECONDS, "first credentials", sidecar.credentials_file.exists)
        started = time.monotonic()
        sidecar.daemon.send_signal(signal.SIGTERM)
        returncode = await asyncio.to_thread(sidecar.daemon.wait, STOP_DEADLINE_SECONDS)
        assert time.monotonic() - started < STOP_DEADLINE_SECONDS
    # uvicorn shuts down, then re-raises the SIGTERM it caught so the parent sees it.
    assert returncode in (0, -signal.SIGTERM)
    output = sidecar.daemon.log()
    assert "Application shutdown complete" in output  # the lifespan ended its loops
    assert "Traceback" not in output


# Unusable configuration: one line on stderr, naming the variable, exit status 2.

_MISSING = "<unset>"


@pytest.mark.parametrize(
    ("variables", "expected"),
    [
        (
            {"WEBRTC_TURN_SECRET_DIR": _MISSING},
            "set exactly one of WEBRTC_TURN_SECRET_DIR (a mounted Secret) and "
            "WEBRTC_TURN_SECRET_NAME",
        ),
        (
            {"WEBRTC_TURN_SECRET_NAME": "turn-secret"},
            "set exactly one of WEBRTC_TURN_SECRET_DIR (a mounted Secret) and "
            "WEBRTC_TURN_SECRET_NAME",
        ),
        ({"WEBRTC_TURN_CREDENTIALS_FILE": _MISSING}, "WEBRTC_TURN_CREDENTIALS_FILE: must be set"),
        ({"WEBRTC_TURN_URLS": _MISSING}, "WEBRTC_TURN_URLS: must be set"),
        ({"WEBRTC_TURN_URLS": " , "}, "WEBRTC_TURN_URLS: no TURN URL given"),
        (
            {"WEBRTC_TURN_CREDENTIALS_FILE": "{tmp}/nowhere/turn.json"},
            "WEBRTC_TURN_CREDENTIALS_FILE: {tmp}/nowhere is not a directory",
        ),
        (
            {"WEBRTC_TURN_SECRET_DIR": "{tmp}/no-secret"},
            "WEBRTC_TURN_SECRET_DIR: {tmp}/no-secret is not a directory",
        ),
        ({"WEBRTC_TURN_ROTATE_FRACTION": "1"}, "WEBRTC_TURN_ROTATE_FRACTION: "),
        ({"WEBRTC_TURN_ROTATE_FRACTION": "0"}, "WEBRTC_TURN_ROTATE_FRACTION: "),
        ({"WEBRTC_TURN_SIDECAR_USER": "pod:7"}, "WEBRTC_TURN_SIDECAR_USER: must not contain ':'"),
    ],
    ids=[
        "no-source",
        "two-sources",
        "no-credentials-file",
        "no-urls",
        "blank-urls",
        "missing-output-directory",
        "missing-secret-directory",
        "fraction-1",
        "fraction-0",
        "user-with-colon",
    ],
)
def test_unusable_configuration_exits_2_with_one_line(
    tmp_path: Path, variables: dict[str, str], expected: str
) -> None:
    """Everything else is valid (a Secret volume with the key, a writable directory), so
    the line is about the one variable the case breaks."""
    volume = secret_volume(tmp_path, **with_secret(SECRET))
    (tmp_path / "shared").mkdir()
    env = cli_env(
        tmp_path,
        WEBRTC_TURN_CREDENTIALS_FILE=str(tmp_path / "shared" / "turn.json"),
        WEBRTC_TURN_URLS=TURN_URL,
        WEBRTC_TURN_SECRET_DIR=str(volume.directory),
    )
    for name, value in variables.items():
        if value == _MISSING:
            del env[name]
        else:
            env[name] = value.format(tmp=tmp_path)
    result = run_cli("turn-sidecar", "--port", str(unused_port()), env=env)
    line = one_line_failure(result)
    assert result.returncode == EXIT_CONFIG
    assert line.startswith("rendezvous: invalid configuration: ")
    assert expected.format(tmp=tmp_path) in line
    assert SECRET not in line
    assert not (tmp_path / "shared" / "turn.json").exists()
