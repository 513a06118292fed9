"""The TURN sidecar's two moving parts, in-process. The Rotator, fed readings by hand and
reading an injected clock: it writes at once on the first secret and on a changed one,
again when the clock says the rotation is due, nothing while the source fails (the last
file stays), retries a failed write with backoff, reports status and metrics, and never
logs the secret. The DirectorySecretSource, reading a Secret volume that
tests/support/kubelet.py writes exactly as kubelet does: whole values across `..data`
swaps, a missing key named along with the keys present, one trailing newline dropped,
empty values refused."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import hmac
import logging
import threading
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry

from rendezvous.turn.credentials_file import TurnCredentials, read_credentials
from rendezvous.turn.directory_watching import DirectorySecretSource
from rendezvous.turn.rotating import Rotator, RotatorMetrics
from rendezvous.turn.secrets import SecretReading
from rendezvous.turn.sidecar_settings import load_sidecar_settings
from tests.support.kubelet import SecretVolume

SECRET = "first-shared-secret-0123456789"
NEW_SECRET = "second-shared-secret-9876543210"
KEY = "static-auth-secret"
URLS = ("turn:127.0.0.1:3478?transport=udp", "turn:127.0.0.1:3478?transport=tcp")
USER = "rendezvous"
TTL_SECONDS = 3600
START = 1_800_000_000.0  # the injected clock's first reading; whole seconds on purpose
ROTATE_AFTER_SECONDS = 0.2  # how long the rotator sleeps between checks of the clock
DEADLINE_SECONDS = 2.0  # for what should happen at once (a poll or two, 2x margin)
QUIET_SECONDS = 0.5  # how long "nothing happens" is watched: a few rotator wake-ups
POLL_SECONDS = 0.01
MISSING = SecretReading(None, f"no key {KEY!r} in /etc/turn-secret (it has: other)")


class FakeClock:
    """Unix time that moves only when the test says so."""

    def __init__(self, now: float = START) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@dataclass
class Rig:
    """A Rotator under test, with what the test needs to drive and observe it."""

    rotator: Rotator
    clock: FakeClock
    path: Path
    registry: CollectorRegistry

    def sample(self, name: str, **labels: str) -> float:
        value = self.registry.get_sample_value(name, labels)
        return 0.0 if value is None else value

    def rotations(self, reason: str) -> float:
        return self.sample("rendezvous_turn_rotations_total", reason=reason)

    def written(self) -> TurnCredentials:
        return read_credentials(self.path)


@contextlib.asynccontextmanager
async def running_rotator(
    tmp_path: Path, *, rotate_after: float = ROTATE_AFTER_SECONDS
) -> AsyncIterator[Rig]:
    """A Rotator writing tmp_path/turn.json, its loop running for the test's duration;
    if the loop died meanwhile, its exception fails the test."""
    registry = CollectorRegistry()
    clock = FakeClock()
    path = tmp_path / "turn.json"
    rotator = Rotator(
        path=path,
        urls=URLS,
        user=USER,
        ttl_seconds=TTL_SECONDS,
        rotate_after_seconds=rotate_after,
        metrics=RotatorMetrics(registry),
        clock=clock,
    )
    task = asyncio.create_task(rotator.run(), name="test.rotator")
    try:
        yield Rig(rotator, clock, path, registry)
    finally:
        await cancelled(task)


async def cancelled(task: asyncio.Task[None]) -> None:
    """Cancel a loop that never returns by itself, and check it stopped (bounded), with
    the loop's own exception if it had died before."""
    task.cancel()
    await asyncio.wait({task}, timeout=DEADLINE_SECONDS)
    assert task.done(), f"{task.get_name()} ignored its cancellation"
    if not task.cancelled():
        raise AssertionError(f"{task.get_name()} ended by itself") from task.exception()


async def eventually(what: str, check: Callable[[], bool]) -> None:
    deadline = time.monotonic() + DEADLINE_SECONDS
    while not check():
        assert time.monotonic() < deadline, f"not within {DEADLINE_SECONDS}s: {what}"
        await asyncio.sleep(POLL_SECONDS)


async def stays(what: str, check: Callable[[], bool]) -> None:
    deadline = time.monotonic() + QUIET_SECONDS
    while time.monotonic() < deadline:
        assert check(), f"no longer true: {what}"
        await asyncio.sleep(POLL_SECONDS)


def expected_credential(secret: str, username: str) -> str:
    """TURN REST (coturn's use-auth-secret): base64(HMAC-SHA1(secret, username))."""
    digest = hmac.new(secret.encode(), username.encode(), hashlib.sha1).digest()
    return base64.b64encode(digest).decode()


def assert_minted(credentials: TurnCredentials, *, secret: str, at: float) -> None:
    """`credentials` were minted from `secret` when the clock read `at`."""
    expiry = int(at) + TTL_SECONDS
    assert credentials.username == f"{expiry}:{USER}"
    assert credentials.credential == expected_credential(secret, credentials.username)
    assert credentials.urls == list(URLS)
    assert (credentials.expires_at, credentials.rotated_at) == (expiry, int(at))


def assert_not_logged(caplog: pytest.LogCaptureFixture, *secrets: str) -> None:
    """No record carries a secret: not its message, arguments or `extra` fields."""
    assert caplog.records, "nothing was logged, so nothing was checked"
    for record in caplog.records:
        text = f"{record.getMessage()} {vars(record)}"
        for secret in secrets:
            assert secret not in text, record


# Rotator


async def test_nothing_is_written_before_the_first_reading(tmp_path: Path) -> None:
    async with running_rotator(tmp_path) as rig:
        await stays("no file", lambda: not rig.path.exists())
        status = rig.rotator.status
        assert (status.ready, status.credentials, status.source) == (False, "none", "waiting")


async def test_first_reading_writes_at_once(tmp_path: Path) -> None:
    """Credentials minted from the secret for WEBRTC_TURN_SIDECAR_USER, verifiable with
    HMAC-SHA1, and the sidecar turns ready with them."""
    async with running_rotator(tmp_path) as rig:
        rig.rotator.on_reading(SecretReading(SECRET))
        await eventually("first write", rig.path.exists)
        assert_minted(rig.written(), secret=SECRET, at=START)
        status = rig.rotator.status
        assert (status.ready, status.credentials, status.source) == (True, "ok", "ok")
        assert (status.expires_at, status.rotated_at) == (int(START) + TTL_SECONDS, int(START))
        assert rig.rotations("first") == 1
        assert rig.sample("rendezvous_turn_source_up") == 1
        assert rig.sample("rendezvous_turn_credentials_expiry_timestamp_seconds") == (
            int(START) + TTL_SECONDS
        )


async def test_changed_secret_rewrites_at_once(tmp_path: Path) -> None:
    """A new secret replaces the credential long before the schedule would."""
    async with running_rotator(tmp_path, rotate_after=TTL_SECONDS / 2) as rig:
        rig.rotator.on_reading(SecretReading(SECRET))
        await eventually("first write", rig.path.exists)
        first = rig.written()
        rig.rotator.on_reading(SecretReading(NEW_SECRET))
        await eventually("rewrite", lambda: rig.written() != first)
        assert_minted(rig.written(), secret=NEW_SECRET, at=START)
        assert rig.rotations("secret_changed") == 1
        assert rig.rotations("schedule") == 0


async def test_same_secret_reported_again_rewrites_nothing(tmp_path: Path) -> None:
    async with running_rotator(tmp_path, rotate_after=TTL_SECONDS / 2) as rig:
        rig.rotator.on_reading(SecretReading(SECRET))
        await eventually("first write", rig.path.exists)
        first = rig.path.read_bytes()
        rig.rotator.on_reading(SecretReading(SECRET))
        await stays("file unchanged", lambda: rig.path.read_bytes() == first)
        assert rig.rotations("first") == 1
        assert rig.rotations("secret_changed") == rig.rotations("schedule") == 0


async def test_scheduled_rotation_follows_the_clock(tmp_path: Path) -> None:
    """The rotator wakes every rotate_after seconds, but rotates only when its clock says
    rotate_after has passed since the last write: never early, then at once."""
    async with running_rotator(tmp_path) as rig:
        rig.rotator.on_reading(SecretReading(SECRET))
        await eventually("first write", rig.path.exists)
        first = rig.path.read_bytes()
        rig.clock.advance(ROTATE_AFTER_SECONDS / 2)
        await stays("not due yet", lambda: rig.path.read_bytes() == first)
        rig.clock.advance(5)  # due; a whole second later, so the username changes
        await eventually("scheduled rotation", lambda: rig.path.read_bytes() != first)
        assert_minted(rig.written(), secret=SECRET, at=rig.clock.now)
        assert rig.rotations("schedule") == 1


async def test_rotator_stops_when_cancelled_as_a_reading_arrives(tmp_path: Path) -> None:
    """Shutdown cancels the rotator; a reading reported in the same instant must not
    swallow that cancel (asyncio.wait_for on Python 3.11 did, and shutdown hung)."""
    async with running_rotator(tmp_path) as rig:
        rig.rotator.on_reading(SecretReading(SECRET))
        await eventually("first write", rig.path.exists)
        rig.rotator.on_reading(MISSING)  # sets the wake-up event; the cancel follows at once


def test_rotation_interval_is_the_ttl_times_the_fraction(tmp_path: Path) -> None:
    settings = load_sidecar_settings(
        credentials_file=tmp_path / "turn.json",
        turn_urls=URLS[0],
        secret_dir=tmp_path,
        ttl_seconds=4,
        rotate_fraction=0.25,
    )
    assert settings.rotate_after_seconds == 1.0


async def test_failing_source_mints_nothing_and_keeps_the_last_file(tmp_path: Path) -> None:
    """While the source fails, an overdue rotation does not happen and the file stays as
    it was; status names the problem but stays ready. The secret back, it rotates."""
    async with running_rotator(tmp_path) as rig:
        rig.rotator.on_reading(SecretReading(SECRET))
        await eventually("first write", rig.path.exists)
        first = rig.path.read_bytes()
        rig.rotator.on_reading(MISSING)
        rig.clock.advance(10 * ROTATE_AFTER_SECONDS + 5)
        await stays("file unchanged", lambda: rig.path.read_bytes() == first)
        status = rig.rotator.status
        assert (status.ready, status.credentials, status.source) == (True, "ok", MISSING.problem)
        assert rig.sample("rendezvous_turn_source_up") == 0
        assert rig.sample("rendezvous_turn_source_failures_total") == 1
        assert rig.rotations("schedule") == 0

        rig.rotator.on_reading(SecretReading(SECRET))
        await eventually("overdue rotation", lambda: rig.path.read_bytes() != first)
        assert_minted(rig.written(), secret=SECRET, at=rig.clock.now)
        assert rig.rotator.status.source == "ok"
        assert rig.sample("rendezvous_turn_source_up") == 1


async def test_source_failing_from_the_start_writes_nothing(tmp_path: Path) -> None:
    async with running_rotator(tmp_path) as rig:
        rig.rotator.on_reading(MISSING)
        await stays("no file", lambda: not rig.path.exists())
        status = rig.rotator.status
        assert (status.ready, status.credentials, status.source) == (False, "none", MISSING.problem)
        assert rig.sample("rendezvous_turn_source_failures_total") == 1


async def test_status_says_expired_once_the_clock_passes_the_expiry(tmp_path: Path) -> None:
    """With the source down the credential ages out; the probe detail says so (ready
    stays: the signaling container falls through to its next source by itself)."""
    async with running_rotator(tmp_path) as rig:
        rig.rotator.on_reading(SecretReading(SECRET))
        await eventually("first write", rig.path.exists)
        rig.rotator.on_reading(MISSING)
        rig.clock.advance(TTL_SECONDS - 1)
        assert rig.rotator.status.credentials == "ok"
        rig.clock.advance(1)
        status = rig.rotator.status
        assert (status.ready, status.credentials) == (True, "expired")


async def test_failed_write_is_retried_with_backoff_and_logged(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A directory where the file goes makes the rename fail (for root too). Each attempt
    is logged with its number and the delay before the next, 0.5 s then 1 s; once the
    way is clear, the next attempt writes."""
    caplog.set_level(logging.INFO, logger="rendezvous")
    async with running_rotator(tmp_path, rotate_after=TTL_SECONDS / 2) as rig:
        rig.path.mkdir()
        rig.rotator.on_reading(SecretReading(SECRET))
        await eventually("two failed attempts", lambda: len(write_errors(caplog)) >= 2)
        rig.path.rmdir()
        first, second = write_errors(caplog)[:2]
        assert "attempt 1, again in 0.5s" in first.getMessage()
        assert "attempt 2, again in 1.0s" in second.getMessage()
        assert str(rig.path) in first.getMessage()
        assert second.created - first.created >= 0.5 * 0.9  # backed off, not spinning
        assert rig.rotator.status.ready is False
        assert rig.sample("rendezvous_turn_write_failures_total") == 2

        await eventually("write after the backoff", rig.path.is_file)
        assert_minted(rig.written(), secret=SECRET, at=START)
        assert rig.rotator.status.ready is True
        assert rig.rotations("first") == 1
        assert len(write_errors(caplog)) == 2
    assert_not_logged(caplog, SECRET)


def write_errors(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [
        r
        for r in caplog.records
        if r.name == "rendezvous.turn.rotating" and r.levelno == logging.ERROR
    ]


async def test_secret_is_never_logged(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """Through a first write, a failing source, a recovery and a secret change, at debug
    level, neither secret appears in any log record."""
    caplog.set_level(logging.DEBUG)
    async with running_rotator(tmp_path) as rig:
        rig.rotator.on_reading(SecretReading(SECRET))
        await eventually("first write", rig.path.exists)
        rig.rotator.on_reading(MISSING)
        rig.rotator.on_reading(SecretReading(SECRET))
        rig.rotator.on_reading(SecretReading(NEW_SECRET))
        await eventually("rewrite", lambda: rig.rotations("secret_changed") == 1)
    messages = [r.getMessage() for r in caplog.records]
    assert any("unavailable" in m for m in messages)
    assert any("readable again" in m for m in messages)
    assert_not_logged(caplog, SECRET, NEW_SECRET)


# DirectorySecretSource on a kubelet Secret volume


@pytest.fixture
def volume(tmp_path: Path) -> SecretVolume:
    return SecretVolume(tmp_path / "secret")


def test_volume_is_laid_out_as_kubelet_does(volume: SecretVolume) -> None:
    """The test double first: keys are symlinks into `..data`, itself a symlink to the
    one timestamped directory left after a swap."""
    volume.write({KEY: b"one", "other": b"x"})
    volume.write({KEY: b"two", "other": b"x"})
    (timestamped,) = volume.timestamped_directories()
    assert timestamped.startswith("..20")
    assert volume.data_target == timestamped
    assert (volume.directory / KEY).readlink() == Path("..data") / KEY
    assert volume.keys == ["other", KEY]
    assert (volume.directory / KEY).read_bytes() == b"two"


def test_directory_source_reads_the_key(volume: SecretVolume) -> None:
    volume.write({KEY: SECRET.encode(), "other": b"x"})
    source = DirectorySecretSource(volume.directory, KEY)
    assert source.read() == SecretReading(SECRET)
    assert SECRET not in repr(source.read())


async def test_directory_source_reports_a_swap_once(volume: SecretVolume) -> None:
    """A reading at start, one after kubelet swaps in a new value, and none for polls
    that find nothing new."""
    volume.write({KEY: SECRET.encode()})
    source = DirectorySecretSource(volume.directory, KEY, poll_seconds=POLL_SECONDS)
    readings: list[SecretReading] = []
    task = asyncio.create_task(source.run(readings.append), name="test.directory-source")
    try:
        await eventually("first reading", lambda: len(readings) == 1)
        volume.write({KEY: NEW_SECRET.encode()})
        await eventually("reading after the swap", lambda: len(readings) == 2)
        await stays("no repeated readings", lambda: len(readings) == 2)
    finally:
        await cancelled(task)
    assert readings == [SecretReading(SECRET), SecretReading(NEW_SECRET)]


def test_reads_during_kubelet_swaps_are_always_whole(volume: SecretVolume) -> None:
    """A thread reading while the volume is swapped hundreds of times sees every value
    whole: never a missing key, never bytes of two versions. (A read can resolve `..data`
    to the directory kubelet is deleting; on a busy machine about one run in three saw
    that as a missing key until the source learnt to read again.)"""
    values = [bytes([ord("a") + i % 26]) * 2048 for i in range(300)]
    volume.write({KEY: values[0], "other": b"x"})
    source = DirectorySecretSource(volume.directory, KEY)
    seen: set[str] = set()
    failures: list[SecretReading] = []
    done = threading.Event()

    def reread() -> None:
        while not done.is_set():
            reading = source.read()
            if reading.secret is None or len(set(reading.secret)) != 1:
                failures.append(reading)
            else:
                seen.add(reading.secret[0])

    reader = threading.Thread(target=reread, name="secret-reader")
    reader.start()
    try:
        for value in values[1:]:
            volume.write({KEY: value, "other": b"x"})
    finally:
        done.set()
        reader.join(timeout=DEADLINE_SECONDS * 10)
    assert not reader.is_alive()
    assert failures == []
    assert len(seen) > 1, "the reader never overlapped a swap"


def test_missing_key_names_the_keys_present(volume: SecretVolume) -> None:
    """Not the `..data` machinery: only what `kubectl get secret` would show."""
    volume.write({"tls.crt": b"x", "other": b"y"})
    reading = DirectorySecretSource(volume.directory, KEY).read()
    assert reading.secret is None
    assert reading.problem == f"no key {KEY!r} in {volume.directory} (it has: other, tls.crt)"


async def test_key_removed_by_a_swap_is_reported(volume: SecretVolume) -> None:
    volume.write({KEY: SECRET.encode(), "other": b"y"})
    source = DirectorySecretSource(volume.directory, KEY, poll_seconds=POLL_SECONDS)
    readings: list[SecretReading] = []
    task = asyncio.create_task(source.run(readings.append), name="test.directory-source")
    try:
        await eventually("first reading", lambda: len(readings) == 1)
        volume.remove_key(KEY)
        await eventually("reading after the removal", lambda: len(readings) == 2)
    finally:
        await cancelled(task)
    problem = f"no key {KEY!r} in {volume.directory} (it has: other)"
    assert readings == [SecretReading(SECRET), SecretReading(None, problem)]


def test_missing_directory_is_reported(tmp_path: Path) -> None:
    reading = DirectorySecretSource(tmp_path / "nowhere", KEY).read()
    assert reading.secret is None
    assert "cannot be listed: No such file or directory" in reading.problem


@pytest.mark.parametrize(
    ("stored", "secret"),
    [
        (b"s3cret", "s3cret"),
        (b"s3cret\n", "s3cret"),  # kubectl create secret --from-file keeps the newline
        (b"s3cret\r\n", "s3cret"),
        (b"s3cret\n\n", "s3cret\n"),  # one newline only: the rest is the secret's
        (b" s3 cret ", " s3 cret "),
        ("sécret".encode(), "sécret"),
    ],
)
def test_one_trailing_newline_is_dropped(volume: SecretVolume, stored: bytes, secret: str) -> None:
    volume.write({KEY: stored})
    assert DirectorySecretSource(volume.directory, KEY).read() == SecretReading(secret)


@pytest.mark.parametrize(
    ("stored", "problem"),
    [(b"", "is empty"), (b"\n", "is empty"), (b"\xff\xfe", "is not UTF-8 text")],
)
def test_unusable_value_is_refused(volume: SecretVolume, stored: bytes, problem: str) -> None:
    """A refusal names the file, so an operator knows which Secret key to fix."""
    volume.write({KEY: stored})
    reading = DirectorySecretSource(volume.directory, KEY).read()
    assert reading == SecretReading(None, f"{volume.directory / KEY} {problem}")
