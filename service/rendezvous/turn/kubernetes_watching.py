"""The shared secret through the Kubernetes API, with the official `kubernetes` client:
list one named Secret, then watch it from the list's resourceVersion. A watch the server
ends is resumed from the last version seen (events and bookmarks move it); 410 Gone means
that version is too old, so the Secret is listed again at once; other failures are
reported and retried after a capped backoff, which starts over once a watch works. The
client blocks, so it runs in one daemon thread (the default executor would hold
interpreter shutdown on a watch read that never returns), handing readings to the event
loop by `call_soon_threadsafe`.

RBAC, for the chart: a Role in the Secret's namespace, bound to the pod's ServiceAccount:

    rules:
      - apiGroups: [""]
        resources: ["secrets"]
        resourceNames: ["<WEBRTC_TURN_SECRET_NAME>"]
        verbs: ["get", "list", "watch"]

A list or watch has a name for RBAC only through an exact `metadata.name` field selector
(the API server's RequestInfo takes it from there); without one, a rule restricted by
`resourceNames` does not match and the answer is 403. The RBAC documentation says so: "If
you restrict list or watch by resourceName, clients must include a metadata.name field
selector ... in order to be authorized". So every list and watch here carries
`fieldSelector=metadata.name=<name>`. The source itself lists and watches; `get` rounds
out the read-only set (`kubectl auth can-i`, a one-off read)."""

# mypy: allow-untyped-calls
# (the client's watch and config modules carry no annotations)

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import json
import logging
import os
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any, cast

import kubernetes
import urllib3
from kubernetes.client import ApiClient, ApiException, Configuration, CoreV1Api
from kubernetes.watch import Watch

from rendezvous.settings import ConfigError
from rendezvous.turn.secrets import Report, SecretReading, backoff_seconds, secret_from_bytes
from rendezvous.turn.sidecar_settings import IN_CLUSTER_NAMESPACE_FILE, SidecarSettings

log = logging.getLogger(__name__)

WATCH_SECONDS = 300  # the server ends each watch after this; it is resumed at once
CONNECT_TIMEOUT_SECONDS = 10.0
LIST_TIMEOUT_SECONDS = 30.0
READ_MARGIN_SECONDS = 30.0  # a watch read silent this long past WATCH_SECONDS is dead
SHORT_WATCH_SECONDS = 1.0  # a watch ending this soon with no event failed (as client-go)
_CLIENT_ERRORS = (ApiException, urllib3.exceptions.HTTPError, OSError, ValueError)


class KubernetesWatchError(Exception):
    """The watch thread stopped, which it never does by design; /healthz then fails."""


class _Gone(Exception):
    """410 Gone: the watch's resourceVersion is too old, so list again."""


class KubernetesSecretSource:
    """Key `key` of Secret `namespace/name`, listed and watched through the API."""

    def __init__(
        self,
        api_client: ApiClient,
        *,
        namespace: str,
        name: str,
        key: str,
        watch_seconds: int = WATCH_SECONDS,
        backoff: Callable[[int], float] = backoff_seconds,
    ) -> None:
        self.api_client, self.namespace, self.name, self.key = api_client, namespace, name, key
        self.secret = f"Secret {namespace}/{name}"
        self.description = f"key {key!r} of {self.secret} (Kubernetes API)"
        self.watch_seconds = watch_seconds
        self.backoff = backoff
        self.api = CoreV1Api(api_client)

    async def run(self, report: Report) -> None:
        loop = asyncio.get_running_loop()
        ended: asyncio.Future[BaseException | None] = loop.create_future()

        def hand_over(reading: SecretReading) -> None:
            loop.call_soon_threadsafe(report, reading)

        follower = _Follower(self, hand_over)

        def thread_main() -> None:
            error: BaseException | None = None
            try:
                follower.follow()
            except BaseException as exc:  # noqa: BLE001  handed to run(), which raises it
                error = exc
            finally:
                self.api_client.rest_client.pool_manager.clear()  # close idle connections
            with contextlib.suppress(RuntimeError):  # the loop is closed: nobody waits
                loop.call_soon_threadsafe(_settle, ended, error)

        threading.Thread(target=thread_main, name="rendezvous.turn.kubernetes", daemon=True).start()
        try:
            error = await ended
        finally:
            follower.stop()  # on cancel: the thread ends once its blocked read returns
        raise KubernetesWatchError(f"watching {self.secret} stopped") from error

    def reading(self, secret: Mapping[str, Any] | None, *, deleted: bool = False) -> SecretReading:
        """What a listed or watched Secret object (None: there is none) gives."""
        if secret is None:
            return SecretReading(None, f"{self.secret} {'was deleted' if deleted else 'not found'}")
        data = secret.get("data") or {}
        if self.key not in data:
            keys = ", ".join(sorted(data)) or "no keys"
            return SecretReading(None, f"{self.secret} has no key {self.key!r} (it has: {keys})")
        where = f"key {self.key!r} of {self.secret}"
        try:
            raw = base64.b64decode(data[self.key], validate=True)
        except (binascii.Error, ValueError, TypeError):
            return SecretReading(None, f"{where} is not base64")
        return secret_from_bytes(raw, where=where)


class _Follower:
    """One run's thread: list, watch, retry, until `stop()`."""

    def __init__(self, source: KubernetesSecretSource, report: Report) -> None:
        self.source = source
        self.stopping = threading.Event()
        self._report = report
        self._last: SecretReading | None = None
        self._watch: Watch | None = None
        self._failures = 0  # in a row, since a watch last worked

    def stop(self) -> None:
        self.stopping.set()
        if (watch := self._watch) is not None:
            watch.stop()  # shuts its socket down, which ends a blocked read

    def follow(self) -> None:
        secret = self.source.secret
        while not self.stopping.is_set():
            try:
                version = self._list()
                while not self.stopping.is_set():
                    version = self._watch_from(version)
                return
            except _Gone:
                self._failures += 1
                if self._failures == 1:  # repeated 410s back off like any failure
                    log.info("%s: version expired (410 Gone); retry 1 now: listing again", secret)
                    continue
                problem = f"watching {secret} keeps answering 410 Gone"
            except _CLIENT_ERRORS as exc:
                self._failures += 1
                problem = self._problem(exc)
            except Exception:
                self._failures += 1
                log.exception("unexpected error reading %s", secret)
                problem = f"unexpected error reading {secret} (see the log)"
            if self.stopping.is_set():
                return
            delay = self.source.backoff(self._failures)
            self._emit(SecretReading(None, problem))
            log.warning("%s; retry %d in %.1fs", problem, self._failures, delay)
            self.stopping.wait(delay)

    def _list(self) -> str:
        source = self.source
        # Not deserialized: the raw JSON is what a watch event carries too.
        listing = source.api.list_namespaced_secret(
            source.namespace,
            field_selector=f"metadata.name={source.name}",
            _request_timeout=(CONNECT_TIMEOUT_SECONDS, LIST_TIMEOUT_SECONDS),
            _preload_content=False,
        )
        response = cast(urllib3.HTTPResponse, listing)
        try:
            listed = json.loads(response.data)
        finally:
            response.release_conn()
        items = [item for item in listed.get("items") or [] if _name(item) == source.name]
        self._emit(source.reading(items[0] if items else None))
        version: str = listed["metadata"]["resourceVersion"]
        return version

    def _watch_from(self, version: str) -> str:
        """Watch until the server ends the stream; the version to resume from."""
        source, started, events = self.source, time.monotonic(), 0
        self._watch = watch = Watch()
        stream = watch.stream(
            source.api.list_namespaced_secret,
            source.namespace,
            field_selector=f"metadata.name={source.name}",
            resource_version=version,
            allow_watch_bookmarks=True,
            timeout_seconds=source.watch_seconds,
            _request_timeout=(CONNECT_TIMEOUT_SECONDS, source.watch_seconds + READ_MARGIN_SECONDS),
        )
        try:
            for event in stream:
                events += 1
                self._failures = 0  # the watch works end to end
                kind, obj = event["type"], event["raw_object"]
                if _name(obj) == source.name and kind in ("ADDED", "MODIFIED", "DELETED"):
                    deleted = kind == "DELETED"
                    self._emit(source.reading(None if deleted else obj, deleted=deleted))
                if self.stopping.is_set():
                    return version
        except ApiException as exc:
            if exc.status == 410:
                raise _Gone from exc
            raise
        if not events and time.monotonic() - started < SHORT_WATCH_SECONDS:
            raise urllib3.exceptions.ProtocolError("the watch ended at once, with no event")
        self._failures = 0
        return str(watch.resource_version or version)

    def _emit(self, reading: SecretReading) -> None:
        if reading != self._last and not self.stopping.is_set():
            self._last = reading
            self._report(reading)

    def _problem(self, exc: Exception) -> str:
        """One line for logs and probes; never a response body (it may hold the data)."""
        secret = self.source.secret
        if not isinstance(exc, ApiException):
            return f"reading {secret} failed: {type(exc).__name__}: {exc}"
        if exc.status == 403:
            return (
                f"reading {secret} is forbidden (403): the service account needs get, list and "
                f"watch on it (a Role with resourceNames: [{self.source.name}])"
            )
        return f"reading {secret} failed: HTTP {exc.status} {exc.reason or ''}".rstrip()


def _name(obj: Mapping[str, Any]) -> str | None:
    name = (obj.get("metadata") or {}).get("name")
    return name if isinstance(name, str) else None


def _settle(ended: asyncio.Future[BaseException | None], error: BaseException | None) -> None:
    if not ended.done():
        ended.set_result(error)


def kubernetes_secret_source(
    settings: SidecarSettings,
    *,
    environ: Mapping[str, str] = os.environ,
    namespace_file: Path = IN_CLUSTER_NAMESPACE_FILE,
) -> KubernetesSecretSource:
    """The source WEBRTC_TURN_SECRET_NAME asks for. In a pod (KUBERNETES_SERVICE_HOST set)
    it connects as the service account, else with KUBECONFIG (default ~/.kube/config);
    the namespace is WEBRTC_TURN_SECRET_NAMESPACE, else the pod's or the context's."""
    assert settings.secret_name is not None
    configuration = Configuration()
    if environ.get("KUBERNETES_SERVICE_HOST"):
        where = "the pod's service account"
        with _config_errors(where):
            kubernetes.config.load_incluster_config(client_configuration=configuration)
            found = _read_namespace_file(namespace_file)
    else:
        config_file = environ.get("KUBECONFIG") or "~/.kube/config"
        where = f"the kubeconfig {config_file}"
        if not any(Path(p).expanduser().is_file() for p in config_file.split(os.pathsep)):
            raise ConfigError(
                f"WEBRTC_TURN_SECRET_NAME: no kubeconfig at {config_file} and not in a pod "
                "(KUBERNETES_SERVICE_HOST unset): set KUBECONFIG"
            )
        with _config_errors(where):
            kubernetes.config.load_kube_config(
                config_file, client_configuration=configuration, persist_config=False
            )
            _, context = kubernetes.config.list_kube_config_contexts(config_file)
            found = (context.get("context") or {}).get("namespace")
    namespace = settings.secret_namespace or found
    if not namespace:
        raise ConfigError(f"WEBRTC_TURN_SECRET_NAMESPACE: not set, and {where} names no namespace")
    return KubernetesSecretSource(
        ApiClient(configuration),
        namespace=namespace,
        name=settings.secret_name,
        key=settings.secret_key,
    )


@contextlib.contextmanager
def _config_errors(where: str) -> Iterator[None]:
    """Whatever the client's loaders raise (ConfigException, YAML and OS errors, ...) is a
    configuration problem: one line, naming what could not be used."""
    try:
        yield
    except Exception as exc:
        detail = " ".join(str(exc).split()) or type(exc).__name__
        raise ConfigError(f"WEBRTC_TURN_SECRET_NAME: cannot use {where}: {detail}") from exc


def _read_namespace_file(path: Path) -> str | None:
    try:
        return path.read_text().strip() or None
    except FileNotFoundError:
        return None
