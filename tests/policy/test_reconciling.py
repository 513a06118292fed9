"""The reconcile loop (issue 5, acceptances 2 and 3), in process: a PolicyReconciler
polling every 50 ms with a real Metrics, the file changed as kubelet changes a ConfigMap
volume (tests/support/kubelet.py) or as an editor rewrites a plain file. A valid version
applies whole and is reported (generation, sha256, applied_at, a log line naming what
changed); an invalid one is refused whole, the last good stays in force, and the refusal
is logged with its exact errors, counted and reported until a good version arrives."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest

from rendezvous.policy.document import parse_policy
from rendezvous.policy.effective import resolve
from rendezvous.policy.live import LivePolicy
from rendezvous.policy.reconciling import PolicyReconciler, initial_policy
from rendezvous.settings import ConfigError, Settings
from rendezvous.telemetry.metrics import Metrics
from tests.support.kubelet import SecretVolume
from tests.support.server import test_settings as settings_with

POLL_SECONDS = 0.05
SETTLE_SECONDS = 2.0  # 40 polls: far past the one or two a change needs
LOGGER = "rendezvous.policy.reconciling"
KEY = "policy.yaml"

V1 = b"rooms:\n  max_participants: 10\n"
V2 = b"rooms:\n  max_participants: 4\n  overrides: [{match: '1on1-*', max_participants: 2}]\n"
V3 = b"rooms:\n  max_participants: 4\nlimits:\n  rate_limit_burst: 5\n"
INVALID = b"rooms:\n  max_participants: 0\nlimits:\n  rate_limit_burst: 0\n  typo: 1\n"
INVALID_ERRORS = [
    "rooms.max_participants: Input should be greater than or equal to 1",
    "limits.rate_limit_burst: Input should be greater than or equal to 1",
    "limits.typo: Extra inputs are not permitted",
]


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


async def settle(what: str, condition: Callable[[], bool]) -> None:
    """Wait (bounded) until `condition` holds."""
    deadline = time.monotonic() + SETTLE_SECONDS
    while not condition():
        assert time.monotonic() < deadline, f"{what}: not within {SETTLE_SECONDS} s"
        await asyncio.sleep(0.01)


async def reach(live: LivePolicy, generation: int) -> None:
    await settle(f"generation {generation}", lambda: live.status.generation == generation)


async def unchanged_for_a_few_polls() -> None:
    await asyncio.sleep(POLL_SECONDS * 4)


def rejected(metrics: Metrics) -> float:
    value = metrics.registry.get_sample_value("rendezvous_policy_rejected_total")
    assert value is not None
    return value


def generation_gauge(metrics: Metrics) -> float | None:
    return metrics.registry.get_sample_value("rendezvous_policy_generation")


@contextlib.asynccontextmanager
async def reconciling(settings: Settings) -> AsyncIterator[tuple[LivePolicy, Metrics]]:
    """The policy the file gives at start-up, and a reconciler keeping it in step."""
    live = initial_policy(settings)
    metrics = Metrics()
    reconciler = PolicyReconciler(settings, live, metrics=metrics, poll_seconds=POLL_SECONDS)
    task = asyncio.create_task(reconciler.run(), name="test.policy")
    try:
        yield live, metrics
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        assert task.cancelled()  # it never died by itself


@pytest.fixture
def volume(tmp_path: Path) -> SecretVolume:
    """A ConfigMap volume holding V1, as kubelet projects it."""
    volume = SecretVolume(tmp_path / "policy")
    volume.write({KEY: V1})
    return volume


@pytest.fixture
def settings(volume: SecretVolume) -> Settings:
    return settings_with(policy_file=volume.directory / KEY, max_participants_per_room=50)


# Start-up.


def test_without_a_file_the_environment_is_generation_zero() -> None:
    live = initial_policy(settings_with(max_participants_per_room=6))
    assert live.status.as_json() == {
        "source": "environment",
        "generation": 0,
        "applied_at": None,
        "sha256": None,
        "last_error": None,
        "last_error_at": None,
    }
    assert live.rooms.default == 6
    assert live.effective == resolve(settings_with(max_participants_per_room=6))


def test_a_file_at_start_up_is_generation_one(settings: Settings) -> None:
    before = time.time()
    live = initial_policy(settings)
    status = live.status
    assert (status.source, status.generation) == (str(settings.policy_file), 1)
    assert status.sha256 == sha256(V1)
    assert status.applied_at is not None and before <= status.applied_at <= time.time()
    assert live.rooms.default == 10
    assert live.effective == resolve(settings, parse_policy(V1))


def test_a_missing_file_at_start_up_is_a_one_line_config_error(tmp_path: Path) -> None:
    path = tmp_path / "absent.yaml"
    with pytest.raises(ConfigError) as caught:
        initial_policy(settings_with(policy_file=path))
    message = str(caught.value)
    assert message == f"WEBRTC_POLICY_FILE: {path}: cannot read {path}: No such file or directory"


def test_an_invalid_file_at_start_up_is_a_one_line_config_error(tmp_path: Path) -> None:
    path = tmp_path / "policy.yaml"
    path.write_bytes(INVALID)
    with pytest.raises(ConfigError) as caught:
        initial_policy(settings_with(policy_file=path))
    assert str(caught.value) == f"WEBRTC_POLICY_FILE: {path}: " + "; ".join(INVALID_ERRORS)


def test_a_file_the_process_cannot_honour_at_start_up_is_a_config_error(
    tmp_path: Path,
) -> None:
    path = tmp_path / "policy.yaml"
    path.write_bytes(b"limits: {max_message_bytes: 9000}\n")
    with pytest.raises(ConfigError, match=r"above WEBRTC_MAX_MESSAGE_BYTES \(8192\)"):
        initial_policy(settings_with(policy_file=path, max_message_bytes=8192))


# Valid versions apply.


async def test_a_configmap_swap_applies_the_new_version(
    volume: SecretVolume, settings: Settings, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger=LOGGER)
    async with reconciling(settings) as (live, metrics):
        assert generation_gauge(metrics) == 1
        old_limits, old_ice = live.limits, live.ice
        before = time.time()
        volume.write({KEY: V2})
        await settle("generation 2", lambda: live.status.generation == 2)
        status = live.status
        assert status.sha256 == sha256(V2)
        assert status.applied_at is not None and before <= status.applied_at <= time.time()
        assert status.last_error is None and status.source == str(settings.policy_file)
        assert live.effective == resolve(settings, parse_policy(V2))
        assert (live.rooms.default, live.rooms.for_room("1on1-x")) == (4, 2)
        assert live.limits is live.effective.limits and live.rooms is live.effective.rooms
        assert live.limits == old_limits and live.ice == old_ice  # sections V2 leaves alone
        assert generation_gauge(metrics) == 2
    applied = [r for r in caplog.records if r.name == LOGGER and "applied" in r.getMessage()]
    assert [r.getMessage() for r in applied] == [
        f"policy generation 2 applied from {settings.policy_file} "
        f"(sha256 {sha256(V2)[:12]}); changed: rooms"
    ]
    assert applied[0].levelno == logging.INFO


async def test_each_new_version_is_one_generation_more(
    volume: SecretVolume, settings: Settings, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger=LOGGER)
    async with reconciling(settings) as (live, metrics):
        for generation, version in enumerate((V2, V3, V1), start=2):
            volume.write({KEY: version})
            await reach(live, generation)
            assert live.status.sha256 == sha256(version)
            assert live.effective == resolve(settings, parse_policy(version))
        assert generation_gauge(metrics) == 4
    applied = [r.getMessage() for r in caplog.records if "applied" in r.getMessage()]
    changed = [message.rpartition("changed: ")[2] for message in applied]
    assert changed == ["rooms", "rooms, limits", "rooms, limits"]


async def test_a_plain_rewrite_of_an_ordinary_file_applies(tmp_path: Path) -> None:
    path = tmp_path / "policy.yaml"
    path.write_bytes(V1)
    settings = settings_with(policy_file=path)
    async with reconciling(settings) as (live, _):
        path.write_bytes(V3)  # in place: the same inode, a new size and ctime
        await settle("generation 2", lambda: live.status.generation == 2)
        assert live.status.sha256 == sha256(V3)
        assert (live.rooms.default, live.limits.burst) == (4, 5)


async def test_a_new_version_that_changes_nothing_in_force_is_still_a_generation(
    volume: SecretVolume, settings: Settings, caplog: pytest.LogCaptureFixture
) -> None:
    # An operator converging pods looks for the file's hash, so a comment counts.
    caplog.set_level(logging.INFO, logger=LOGGER)
    async with reconciling(settings) as (live, _):
        effective = live.effective
        volume.write({KEY: b"# reviewed\n" + V1})
        await settle("generation 2", lambda: live.status.generation == 2)
        assert live.status.sha256 == sha256(b"# reviewed\n" + V1)
        assert live.effective == effective
    assert caplog.records[-1].getMessage().endswith("changed: nothing in force")


# Invalid versions are refused whole.


async def test_an_invalid_version_is_refused_whole_and_the_last_good_stays(
    volume: SecretVolume, settings: Settings, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger=LOGGER)
    async with reconciling(settings) as (live, metrics):
        good = (live.effective, live.ice, live.rooms, live.limits, live.allowed_origins)
        good_status = live.status
        before = time.time()
        volume.write({KEY: INVALID})
        await settle("refused", lambda: live.status.last_error is not None)
        # Not one field of the refused version applies, valid ones included.
        assert (live.effective, live.ice, live.rooms, live.limits, live.allowed_origins) == good
        assert live.effective is good[0] and live.rooms.default == 10
        status = live.status
        assert status.last_error == "; ".join(INVALID_ERRORS)
        assert status.last_error_at is not None and before <= status.last_error_at <= time.time()
        assert (status.generation, status.sha256, status.applied_at) == (
            good_status.generation,
            good_status.sha256,
            good_status.applied_at,
        )
        assert rejected(metrics) == 1 and generation_gauge(metrics) == 1
        await unchanged_for_a_few_polls()
        assert rejected(metrics) == 1  # refused once, not once per poll
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(errors) == 1 and errors[0].name == LOGGER
    message = errors[0].getMessage()
    assert message.startswith(f"policy file {settings.policy_file} refused, generation 1 stays")
    assert all(line in message for line in INVALID_ERRORS), message
    assert errors[0].__dict__["policy_errors"] == INVALID_ERRORS  # for JSON log pipelines


async def test_a_version_the_process_cannot_honour_is_refused(
    volume: SecretVolume, settings: Settings
) -> None:
    async with reconciling(settings) as (live, metrics):
        volume.write({KEY: b"limits: {max_message_bytes: 99999999}\n"})
        await settle("refused", lambda: live.status.last_error is not None)
        assert "above WEBRTC_MAX_MESSAGE_BYTES (65536)" in str(live.status.last_error)
        assert live.limits.max_message_bytes == 65536 and live.status.generation == 1
        assert rejected(metrics) == 1


async def test_a_valid_version_after_a_refusal_applies_and_clears_the_error(
    volume: SecretVolume, settings: Settings
) -> None:
    async with reconciling(settings) as (live, metrics):
        volume.write({KEY: INVALID})
        await settle("refused", lambda: live.status.last_error is not None)
        volume.write({KEY: V2})
        await settle("generation 2", lambda: live.status.generation == 2)
        assert live.status.last_error is None and live.status.last_error_at is None
        assert live.status.sha256 == sha256(V2) and live.rooms.default == 4
        assert rejected(metrics) == 1 and generation_gauge(metrics) == 2


async def test_writing_back_the_version_in_force_clears_the_error_without_a_generation(
    volume: SecretVolume, settings: Settings
) -> None:
    async with reconciling(settings) as (live, metrics):
        in_force = live.status
        effective = live.effective
        volume.write({KEY: INVALID})
        await settle("refused", lambda: live.status.last_error is not None)
        volume.write({KEY: V1})  # the operator reverts the change
        await settle("error cleared", lambda: live.status.last_error is None)
        assert live.status == in_force  # same generation, hash and applied_at
        assert live.effective is effective
        assert rejected(metrics) == 1 and generation_gauge(metrics) == 1


async def test_a_deleted_file_keeps_the_last_good_and_reports_it(
    volume: SecretVolume, settings: Settings
) -> None:
    async with reconciling(settings) as (live, metrics):
        effective = live.effective
        volume.remove_key(KEY)  # the key was dropped from the ConfigMap
        await settle("refused", lambda: live.status.last_error is not None)
        path = settings.policy_file
        assert live.status.last_error == f"cannot read {path}: No such file or directory"
        assert live.effective is effective and live.status.generation == 1
        assert rejected(metrics) == 1
        await unchanged_for_a_few_polls()
        assert rejected(metrics) == 1
        volume.write({KEY: V1})  # back, as it was
        await settle("error cleared", lambda: live.status.last_error is None)
        assert live.status.generation == 1 and live.effective is effective


# A writer caught half-way.


def test_a_truncated_file_caught_mid_write_is_never_put_in_force(tmp_path: Path) -> None:
    """`cat > policy.yaml` truncates, then writes. An empty file is a valid policy (the
    environment's values, every override gone), so a poll that lands in between must
    not apply it: a version is judged only once its identity has held for one poll."""
    path = tmp_path / "policy.yaml"
    path.write_bytes(V2)
    settings = settings_with(policy_file=path, max_participants_per_room=50)
    live = initial_policy(settings)
    reconciler = PolicyReconciler(settings, live, metrics=Metrics(), poll_seconds=POLL_SECONDS)

    with path.open("r+b") as out:
        out.truncate(0)  # the writer has truncated and not yet written
        out.flush()
        reconciler.check()  # a poll sees the change: noted, not judged
        assert live.status.generation == 1 and live.rooms.for_room("1on1-x") == 2
        out.write(V3)  # the writer finishes before the next poll
    reconciler.check()  # changed again since: still waiting for it to hold
    assert live.status.generation == 1
    reconciler.check()  # held for a poll: judged
    assert live.status.generation == 2
    assert live.status.sha256 == sha256(V3)
    assert live.rooms.for_room("1on1-x") == 4  # V3 has no override; never the empty file's 50
