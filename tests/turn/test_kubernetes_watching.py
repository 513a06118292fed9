"""The TURN sidecar's Kubernetes API source, driven with the real `kubernetes` client.

No Kubernetes API server can run on these machines, so the server here is a stand-in
(tests/support/kube_api.py) that speaks the Secret list/watch JSON, answers 410 Gone the
way the real one does, drops streams, fails on demand, and refuses any list or watch
without the `metadata.name` field selector; every test's server checks at the end that it
refused nothing. The last test runs the real `rendezvous turn-sidecar` process against it."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import itertools
import logging
import re
import signal
import socket
import threading
import time
import urllib.error
import urllib.request
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path

import pytest

from rendezvous.settings import ConfigError
from rendezvous.turn.credentials import mint
from rendezvous.turn.credentials_file import CredentialsFileError, read_credentials
from rendezvous.turn.kubernetes_watching import (
    KubernetesSecretSource,
    KubernetesWatchError,
    kubernetes_secret_source,
)
from rendezvous.turn.secrets import SecretReading, backoff_seconds
from rendezvous.turn.sidecar_settings import SidecarSettings, load_sidecar_settings
from tests.support.kube_api import TOKEN, FakeKubeApi
from tests.support.process import cli_env, one_line_failure, run_cli
from tests.support.server import free_port
from tests.support.turn_sidecar import running_sidecar

KEY = "static-auth-secret"
FIRST, SECOND, THIRD = b"first-turn-secret", b"second-turn-secret", b"third-turn-secret"
DEADLINE_SECONDS = 10.0
CANCEL_DEADLINE_SECONDS = 2.0
SIDECAR_DEADLINE_SECONDS = 30.0
_POLL_SECONDS = 0.01


def fast_backoff(attempt: int) -> float:
    return min(0.05 * 2.0 ** (attempt - 1), 0.2)


@pytest.fixture
def kube(tmp_path: Path) -> Iterator[FakeKubeApi]:
    with FakeKubeApi(tmp_path) as api:
        yield api
        assert api.refusals == [], "a request went out without the name field selector"


def sidecar_settings(tmp_path: Path, kube: FakeKubeApi, **overrides: str) -> SidecarSettings:
    values = {
        "credentials_file": str(tmp_path / "turn.json"),
        "turn_urls": "turn:127.0.0.1:3478",
        "secret_name": kube.name,
        **overrides,
    }
    return load_sidecar_settings(**values)


def source_for(
    tmp_path: Path,
    kube: FakeKubeApi,
    *,
    key: str = KEY,
    backoff: Callable[[int], float] = fast_backoff,
    watch_seconds: int = 60,
) -> KubernetesSecretSource:
    """A source built from the fake's kubeconfig, as the sidecar builds it, then tuned."""
    built = kubernetes_secret_source(
        sidecar_settings(tmp_path, kube), environ={"KUBECONFIG": str(kube.kubeconfig)}
    )
    return KubernetesSecretSource(
        built.api_client,
        namespace=built.namespace,
        name=built.name,
        key=key,
        backoff=backoff,
        watch_seconds=watch_seconds,
    )


class Readings:
    """What a source reported, in order."""

    def __init__(self) -> None:
        self.all: list[SecretReading] = []

    def __call__(self, reading: SecretReading) -> None:
        self.all.append(reading)

    @property
    def last(self) -> SecretReading | None:
        return self.all[-1] if self.all else None

    async def until(self, secret: bytes | None, problem: str = "") -> SecretReading:
        """Wait for the last reading to be `secret`, or a problem containing `problem`."""
        expected = secret.decode() if secret is not None else None

        def matches() -> bool:
            last = self.last
            return last is not None and last.secret == expected and problem in last.problem

        await eventually(matches, lambda: f"{expected!r} / {problem!r}; got {self.all}")
        assert self.last is not None
        return self.last


async def eventually(condition: Callable[[], bool], what: str | Callable[[], str]) -> None:
    deadline = time.monotonic() + DEADLINE_SECONDS
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what() if callable(what) else what}")
        await asyncio.sleep(_POLL_SECONDS)


@contextlib.asynccontextmanager
async def running(source: KubernetesSecretSource) -> AsyncIterator[Readings]:
    readings = Readings()
    task = asyncio.create_task(source.run(readings), name="source under test")
    try:
        yield readings
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.wait_for(task, CANCEL_DEADLINE_SECONDS)
        assert task.cancelled(), "run() ended on its own"


async def watch_open(kube: FakeKubeApi, count: int = 1) -> None:
    await eventually(lambda: kube.open_watches >= count, f"{count} open watch(es)")


# Reading the Secret.


async def test_list_gives_the_secret_then_a_watch_from_its_version(
    tmp_path: Path, kube: FakeKubeApi
) -> None:
    listed_version = kube.set_secret({KEY: FIRST, "username": b"ignored"})
    async with running(source_for(tmp_path, kube)) as readings:
        assert (await readings.until(FIRST)) == SecretReading(FIRST.decode())
        await watch_open(kube)
    first, second = kube.requests[:2]
    assert (first.verb, second.verb) == ("list", "watch")
    assert first.path == f"/api/v1/namespaces/{kube.namespace}/secrets"
    assert second.resource_version == listed_version
    assert second.query["allowWatchBookmarks"] == "true"
    assert second.query["timeoutSeconds"] == "60"
    for request in kube.requests:
        assert request.query["fieldSelector"] == f"metadata.name={kube.name}"
        assert request.authorization == f"Bearer {TOKEN}"


async def test_modified_secret_arrives_over_the_watch(tmp_path: Path, kube: FakeKubeApi) -> None:
    kube.set_secret({KEY: FIRST})
    async with running(source_for(tmp_path, kube)) as readings:
        await readings.until(FIRST)
        await watch_open(kube)
        kube.set_secret({KEY: SECOND})
        await readings.until(SECOND)
        kube.set_secret({KEY: SECOND + b"\n"})  # kubectl --from-file keeps the newline
        kube.set_secret({KEY: THIRD})
        await readings.until(THIRD)
    assert [r.secret for r in readings.all] == [s.decode() for s in (FIRST, SECOND, THIRD)]
    assert len(kube.received("list")) == 1


async def test_absent_deleted_and_keyless_secrets_are_problems(
    tmp_path: Path, kube: FakeKubeApi
) -> None:
    secret = f"Secret {kube.namespace}/{kube.name}"
    async with running(source_for(tmp_path, kube)) as readings:
        await readings.until(None, f"{secret} not found")
        kube.set_secret({KEY: FIRST})
        await readings.until(FIRST)
        kube.delete_secret()
        await readings.until(None, f"{secret} was deleted")
        kube.set_secret({"password": FIRST, "username": b"u"})
        missing = await readings.until(None, f"{secret} has no key {KEY!r}")
        assert "(it has: password, username)" in missing.problem
        kube.set_secret({KEY: b""})
        await readings.until(None, "is empty")
        kube.set_secret({KEY: SECOND})
        await readings.until(SECOND)
    assert len(kube.received("list")) == 1  # all of it over one watch


async def test_only_changed_readings_are_reported(tmp_path: Path, kube: FakeKubeApi) -> None:
    kube.set_secret({KEY: FIRST})
    async with running(source_for(tmp_path, kube)) as readings:
        await readings.until(FIRST)
        await watch_open(kube)
        kube.set_secret({KEY: FIRST, "other": b"x"})  # MODIFIED, same value under KEY
        kube.set_secret({KEY: SECOND})
        await readings.until(SECOND)
    assert [r.secret for r in readings.all] == [FIRST.decode(), SECOND.decode()]


# Following the stream.


async def test_gone_on_the_open_watch_relists_then_watches_from_the_new_version(
    tmp_path: Path, kube: FakeKubeApi
) -> None:
    kube.set_secret({KEY: FIRST})
    # A slow backoff: the re-list must not wait for it.
    async with running(source_for(tmp_path, kube, backoff=lambda _: 30.0)) as readings:
        await readings.until(FIRST)
        await watch_open(kube)
        missed = kube.set_secret({KEY: SECOND}, deliver=False)  # the watch fell behind
        assert kube.expire_open_watches() == 1
        await readings.until(SECOND)
        await watch_open(kube)
    lists, watches = kube.received("list"), kube.received("watch")
    assert len(lists) == 2
    assert [w.resource_version for w in watches] == [str(int(missed) - 1), missed]
    assert watches[1].at > lists[1].at
    assert all(r.secret is not None for r in readings.all)  # one 410 is no failure


async def test_gone_at_once_relists_at_once_and_repeated_gone_backs_off(
    tmp_path: Path, kube: FakeKubeApi, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    kube.set_secret({KEY: FIRST})
    kube.expire_next_watches(2)
    async with running(source_for(tmp_path, kube, backoff=lambda _: 0.5)) as readings:
        await readings.until(None, "keeps answering 410 Gone")
        await readings.until(FIRST)
        await watch_open(kube)
    lists = kube.received("list")
    assert len(lists) == 3
    assert lists[2].at - lists[1].at >= 0.45  # the second 410 waited for the backoff
    assert "expired (410 Gone); retry 1 now: listing again" in caplog.text


async def test_dropped_stream_is_recovered_and_later_changes_arrive(
    tmp_path: Path, kube: FakeKubeApi
) -> None:
    kube.set_secret({KEY: FIRST})
    async with running(source_for(tmp_path, kube)) as readings:
        await readings.until(FIRST)
        await watch_open(kube)
        assert kube.drop_open_watches() == 1
        await eventually(lambda: len(kube.received("watch")) == 2, "a second watch")
        await watch_open(kube)
        kube.set_secret({KEY: SECOND})
        await readings.until(SECOND)
    problems = [r.problem for r in readings.all if r.secret is None]
    assert len(problems) == 1 and "Connection broken" in problems[0], problems
    assert len(kube.received("list")) == 2


async def test_a_normally_ended_watch_resumes_from_the_last_version(
    tmp_path: Path, kube: FakeKubeApi
) -> None:
    kube.set_secret({KEY: FIRST})
    async with running(source_for(tmp_path, kube, watch_seconds=2)) as readings:
        await readings.until(FIRST)
        changed = kube.set_secret({KEY: SECOND})
        await readings.until(SECOND)
        # The server ends the watch after timeoutSeconds=2; the next one starts from
        # the version of the last event.
        await eventually(lambda: len(kube.received("watch")) >= 2, "a second watch")
    assert kube.received("watch")[1].resource_version == changed
    assert len(kube.received("list")) == 1
    assert all(r.secret is not None for r in readings.all)


async def test_bookmark_moves_the_version_without_a_reading(
    tmp_path: Path, kube: FakeKubeApi
) -> None:
    kube.set_secret({KEY: FIRST})
    async with running(source_for(tmp_path, kube)) as readings:
        await readings.until(FIRST)
        await watch_open(kube)
        marked = kube.bookmark()
        kube.end_open_watches()  # after the bookmark, on the same stream
        await eventually(lambda: len(kube.received("watch")) == 2, "a second watch")
    assert kube.received("watch")[1].resource_version == marked
    assert len(readings.all) == 1


# Failures and backoff.


async def test_server_errors_back_off_growing_then_recover(
    tmp_path: Path, kube: FakeKubeApi, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    delays = {1: 0.1, 2: 0.2, 3: 0.4, 4: 0.4}  # the schedule's shape: doubling, capped
    kube.set_secret({KEY: FIRST})
    kube.fail_next(4, 500)
    async with running(source_for(tmp_path, kube, backoff=delays.__getitem__)) as readings:
        await readings.until(FIRST)
        await watch_open(kube)
    assert readings.all[0] == SecretReading(
        None, f"reading Secret {kube.namespace}/{kube.name} failed: HTTP 500 Internal Server Error"
    )
    assert len(readings.all) == 2  # the same failure is reported once
    lists = kube.received("list")
    gaps = [later.at - earlier.at for earlier, later in itertools.pairwise(lists)]
    assert len(gaps) == 4
    for attempt, gap in enumerate(gaps, start=1):
        assert gap >= delays[attempt] * 0.9, gaps
    assert gaps[2] > gaps[0] * 2, gaps  # grew: 0.4 s against 0.1 s, generous margins
    retries = re.findall(r"retry (\d+) in ([\d.]+)s", caplog.text)
    assert [int(n) for n, _ in retries] == [1, 2, 3, 4]
    assert backoff_seconds(1) == 0.5 and backoff_seconds(100) == 30.0  # the default's cap


async def test_backoff_starts_over_once_a_watch_works(
    tmp_path: Path, kube: FakeKubeApi, caplog: pytest.LogCaptureFixture
) -> None:
    kube.set_secret({KEY: FIRST})
    kube.fail_next(3, 500)
    async with running(source_for(tmp_path, kube)) as readings:
        await readings.until(FIRST)
        await watch_open(kube)
        kube.set_secret({KEY: SECOND})  # an event: the watch works
        await readings.until(SECOND)
        kube.fail_next(1, 500)
        kube.drop_open_watches()
        await eventually(lambda: len(kube.received("watch")) == 2, "a second watch")
    retries = [int(n) for n in re.findall(r"retry (\d+) in", caplog.text)]
    assert retries == [1, 2, 3, 1, 2], retries  # the drop, then the failed re-list


async def test_list_working_while_watch_is_forbidden_still_backs_off(
    tmp_path: Path, kube: FakeKubeApi, caplog: pytest.LogCaptureFixture
) -> None:
    """RBAC with `list` but not `watch`: every list succeeds and every watch fails; the
    retries must not restart at the shortest delay after each good list."""
    kube.set_secret({KEY: FIRST})
    kube.fail_next(3, 403, only="watch")
    async with running(source_for(tmp_path, kube)) as readings:
        await readings.until(None, "forbidden (403)")
        await eventually(lambda: len(kube.received("watch")) == 4, "a fourth watch")
        await watch_open(kube)
        await readings.until(FIRST)
    retries = [int(n) for n in re.findall(r"retry (\d+) in", caplog.text)]
    assert retries == [1, 2, 3]


async def test_forbidden_names_the_permissions_needed(tmp_path: Path, kube: FakeKubeApi) -> None:
    kube.set_secret({KEY: FIRST})
    kube.fail_next(1, 403, only="list")
    async with running(source_for(tmp_path, kube, backoff=lambda _: 30.0)) as readings:
        forbidden = await readings.until(None, "forbidden (403)")
    assert forbidden.problem == (
        f"reading Secret {kube.namespace}/{kube.name} is forbidden (403): the service "
        f"account needs get, list and watch on it (a Role with resourceNames: [{kube.name}])"
    )


async def test_unreachable_api_is_a_problem_retried(
    tmp_path: Path, kube: FakeKubeApi, caplog: pytest.LogCaptureFixture
) -> None:
    with socket.socket() as closed:  # bound, never listening: connections are refused
        closed.bind(("127.0.0.1", 0))
        kubeconfig = kube.write_kubeconfig(
            tmp_path / "unreachable",
            namespace=kube.namespace,
            server=f"http://127.0.0.1:{closed.getsockname()[1]}",
        )
        built = kubernetes_secret_source(
            sidecar_settings(tmp_path, kube), environ={"KUBECONFIG": str(kubeconfig)}
        )
        source = KubernetesSecretSource(
            built.api_client,
            namespace=kube.namespace,
            name=kube.name,
            key=KEY,
            backoff=fast_backoff,
        )
        async with running(source) as readings:
            unreachable = await readings.until(None, "Connection refused")
            await eventually(lambda: "retry 3 in" in caplog.text, "a third retry")
    assert unreachable.problem.startswith(f"reading Secret {kube.namespace}/{kube.name} failed:")
    assert len(readings.all) == 1  # the same failure, reported once


async def test_a_watch_ending_at_once_with_no_event_counts_as_a_failure(
    tmp_path: Path, kube: FakeKubeApi, caplog: pytest.LogCaptureFixture
) -> None:
    kube.set_secret({KEY: FIRST})
    async with running(source_for(tmp_path, kube)) as readings:
        await readings.until(FIRST)
        await watch_open(kube)
        kube.end_open_watches()
        await readings.until(None, "the watch ended at once")
        await readings.until(FIRST)
    assert "retry 1 in" in caplog.text


async def test_the_secret_is_never_logged_nor_in_a_problem(
    tmp_path: Path, kube: FakeKubeApi, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    kube.set_secret({KEY: FIRST})
    async with running(source_for(tmp_path, kube)) as readings:
        await readings.until(FIRST)
        await watch_open(kube)
        kube.drop_open_watches()
        kube.fail_next(1, 500)
        kube.set_secret({KEY: SECOND}, deliver=False)
        await readings.until(SECOND)
        kube.set_secret({"other": FIRST})
        await readings.until(None, "has no key")
    assert len(readings.all) >= 4
    text = caplog.text + " ".join(repr(r) + r.problem for r in readings.all)
    for value in (FIRST, SECOND):
        assert value.decode() not in text
        assert base64.b64encode(value).decode() not in text


# The run loop.


async def test_cancel_returns_promptly_with_a_watch_open(tmp_path: Path, kube: FakeKubeApi) -> None:
    kube.set_secret({KEY: FIRST})
    readings = Readings()
    before = set(_watch_threads())
    task = asyncio.create_task(source_for(tmp_path, kube).run(readings))
    await readings.until(FIRST)
    await watch_open(kube)
    kube.set_secret({KEY: SECOND})
    await readings.until(SECOND)  # the thread is reading the stream now
    ours = set(_watch_threads()) - before
    assert len(ours) == 1
    started = time.monotonic()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await asyncio.wait_for(task, CANCEL_DEADLINE_SECONDS)
    assert time.monotonic() - started < CANCEL_DEADLINE_SECONDS
    # And the thread does not linger on the open watch: stop() shut its socket. (Had the
    # cancel come while the watch request was still in flight, it would end with the
    # watch instead: harmless, it reports nothing once stopped.)
    await eventually(lambda: not any(t.is_alive() for t in ours), "the watch thread to end")


async def test_run_raises_when_its_thread_dies(tmp_path: Path, kube: FakeKubeApi) -> None:
    def broken_backoff(attempt: int) -> float:
        raise RuntimeError("a bug in the retry path")

    kube.fail_next(1, 500)
    source = source_for(tmp_path, kube, backoff=broken_backoff)
    with pytest.raises(KubernetesWatchError, match="stopped") as raised:
        await asyncio.wait_for(source.run(Readings()), DEADLINE_SECONDS)
    assert isinstance(raised.value.__cause__, RuntimeError)


def _watch_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == "rendezvous.turn.kubernetes"]


# The stand-in itself: it must refuse what a real cluster with resourceNames refuses.


def test_fake_api_refuses_requests_without_the_name_field_selector(tmp_path: Path) -> None:
    with FakeKubeApi(tmp_path) as api:
        url = f"{api.url}/api/v1/namespaces/{api.namespace}/secrets?watch=true"
        request = urllib.request.Request(url, headers={"Authorization": f"Bearer {TOKEN}"})
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(request, timeout=DEADLINE_SECONDS)
        refused.value.close()
        assert refused.value.code == 400
        assert [r.verb for r in api.refusals] == ["watch"]


# Configuration.


def test_namespace_comes_from_the_kubeconfig_context_unless_set(
    tmp_path: Path, kube: FakeKubeApi
) -> None:
    environ = {"KUBECONFIG": str(kube.kubeconfig)}
    source = kubernetes_secret_source(sidecar_settings(tmp_path, kube), environ=environ)
    assert source.namespace == kube.namespace
    assert (
        source.description == f"key {KEY!r} of Secret {kube.namespace}/{kube.name} (Kubernetes API)"
    )
    settings = sidecar_settings(tmp_path, kube, secret_namespace="elsewhere", secret_key="k")
    source = kubernetes_secret_source(settings, environ=environ)
    assert (source.namespace, source.key) == ("elsewhere", "k")


def test_config_errors_are_one_line(tmp_path: Path, kube: FakeKubeApi) -> None:
    settings = sidecar_settings(tmp_path, kube)
    garbage = tmp_path / "garbage"
    garbage.write_text("clusters: [unclosed\n")
    no_namespace = kube.write_kubeconfig(tmp_path / "no-namespace", namespace=None)
    cases = {
        str(tmp_path / "missing"): "no kubeconfig at",
        str(garbage): "cannot use the kubeconfig",
        str(no_namespace): "WEBRTC_TURN_SECRET_NAMESPACE: not set",
    }
    for kubeconfig, expected in cases.items():
        with pytest.raises(ConfigError) as raised:
            kubernetes_secret_source(settings, environ={"KUBECONFIG": kubeconfig})
        message = str(raised.value)
        assert expected in message and "\n" not in message, message


def test_in_cluster_without_a_service_account_is_a_config_error(
    tmp_path: Path, kube: FakeKubeApi, monkeypatch: pytest.MonkeyPatch
) -> None:
    # load_incluster_config reads the process environment itself.
    monkeypatch.setenv("KUBERNETES_SERVICE_HOST", "127.0.0.1")
    monkeypatch.setenv("KUBERNETES_SERVICE_PORT", "6443")
    with pytest.raises(ConfigError) as raised:
        kubernetes_secret_source(sidecar_settings(tmp_path, kube))
    message = str(raised.value)
    assert "cannot use the pod's service account" in message and "\n" not in message


def test_cli_without_a_kubeconfig_exits_with_one_line(tmp_path: Path) -> None:
    env = _sidecar_env(tmp_path, KUBECONFIG=str(tmp_path / "missing"), WEBRTC_TURN_SECRET_NAME="s")
    result = run_cli("turn-sidecar", "--port", str(free_port()), env=env)
    assert result.returncode == 2
    line = one_line_failure(result)
    assert line.startswith(
        "rendezvous: invalid configuration: WEBRTC_TURN_SECRET_NAME: no kubeconfig"
    )


# The whole sidecar.


def _sidecar_env(tmp_path: Path, **variables: str) -> dict[str, str]:
    shared = tmp_path / "shared"
    shared.mkdir(exist_ok=True)
    env = cli_env(
        tmp_path,
        WEBRTC_TURN_CREDENTIALS_FILE=str(shared / "turn.json"),
        WEBRTC_TURN_URLS="turn:127.0.0.1:3478?transport=udp",
        **variables,
    )
    env.pop("KUBERNETES_SERVICE_HOST", None)  # never the machine's own cluster
    return env


async def test_sidecar_process_mints_from_the_secret_and_rotates_on_change(
    tmp_path: Path, kube: FakeKubeApi
) -> None:
    kube.set_secret({KEY: FIRST})
    env = _sidecar_env(tmp_path, WEBRTC_TURN_SECRET_NAME=kube.name, KUBECONFIG=str(kube.kubeconfig))
    credentials_file = Path(env["WEBRTC_TURN_CREDENTIALS_FILE"])
    async with running_sidecar(env=env, log_dir=tmp_path, stop_signal=signal.SIGINT) as sidecar:
        first = read_credentials(credentials_file)
        assert (first.username, first.credential) == mint(
            FIRST.decode(), "rendezvous", ttl_seconds=86400, now=first.rotated_at
        )
        assert first.urls == ["turn:127.0.0.1:3478?transport=udp"]
        kube.set_secret({KEY: SECOND})

        def rotated() -> bool:
            with contextlib.suppress(CredentialsFileError):
                now = read_credentials(credentials_file)
                return (
                    now.credential
                    == mint(SECOND.decode(), "rendezvous", ttl_seconds=86400, now=now.rotated_at)[1]
                )
            return False

        await eventually(rotated, "the credentials file minted from the new Secret")
    # A clean stop on SIGINT, the open watch notwithstanding.
    assert sidecar.exit_status == 130, sidecar.daemon.log_tail()
    log = sidecar.log()
    for value in (FIRST, SECOND):
        assert value.decode() not in log and base64.b64encode(value).decode() not in log
    assert len(kube.received("list")) == 1  # the change came over the watch
