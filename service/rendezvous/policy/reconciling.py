"""Keeping the policy in force in step with `WEBRTC_POLICY_FILE`, operator style.

A ConfigMap volume changes by kubelet's atomic `..data` symlink swap, which gives the
file a new inode; an ordinary file changes in place. Either way its identity (device,
inode, size, ctime) changes, so a poll once a second sees it. A version is judged once
its identity has held for one poll, so a writer that truncates and then writes (`cat >`,
many editors) is never caught half-way, even where half a file would parse (an empty
file is a valid policy: it would switch every override off). Then it is read, validated
whole and, if valid, put in force at once; if not, it is refused whole, the exact errors
are logged and counted, and the version in force stays. Nothing here touches a
session: a lower room limit applies to joins from then on, new limits to frames from then
on."""

from __future__ import annotations

import asyncio
import hashlib
import logging
import os
import time
from pathlib import Path

from rendezvous.policy.document import PolicyError, parse_policy
from rendezvous.policy.effective import EffectivePolicy, resolve
from rendezvous.policy.live import LivePolicy, PolicyStatus
from rendezvous.settings import ConfigError, Settings
from rendezvous.telemetry.metrics import Metrics

log = logging.getLogger(__name__)

POLL_SECONDS = 1.0
FileIdentity = tuple[int, int, int, int] | None  # device, inode, size, ctime; None: absent


def initial_policy(settings: Settings) -> LivePolicy:
    """The environment's values, with the policy file's laid over when there is one. A
    policy file that is missing or invalid at start-up is a configuration error: there is
    no last good version to keep, and starting on the environment's values could run an
    instance with, say, no origin check."""
    path = settings.policy_file
    if path is None:
        return LivePolicy(resolve(settings), PolicyStatus("environment", 0, None, None))
    try:
        effective, sha256 = load_policy(path, settings)
    except PolicyError as exc:
        raise ConfigError(f"WEBRTC_POLICY_FILE: {path}: {exc}") from None
    return LivePolicy(effective, PolicyStatus(str(path), 1, time.time(), sha256))


def load_policy(path: Path, settings: Settings) -> tuple[EffectivePolicy, str]:
    """The policy `path` puts in force over `settings`, and the file's sha256."""
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise PolicyError([f"cannot read {path}: {exc.strerror}"]) from None
    return resolve(settings, parse_policy(data)), hashlib.sha256(data).hexdigest()


class PolicyReconciler:
    def __init__(
        self,
        settings: Settings,
        live: LivePolicy,
        *,
        metrics: Metrics,
        poll_seconds: float = POLL_SECONDS,
    ) -> None:
        assert settings.policy_file is not None
        self._path: Path = settings.policy_file
        self._settings = settings
        self._live = live
        self._metrics = metrics
        self._poll_seconds = poll_seconds
        self._identity = _identity(self._path)  # of the version last judged
        self._pending: FileIdentity | object = self._identity  # seen, not yet held a poll
        metrics.policy_generation.set(live.status.generation)

    async def run(self) -> None:
        while True:
            await asyncio.sleep(self._poll_seconds)
            self.check()

    def check(self) -> None:
        """Reconcile once a changed file has held still for one poll."""
        identity = _identity(self._path)
        if identity == self._identity:
            self._pending = identity
            return
        if identity != self._pending:
            self._pending = identity  # changed since the last look: wait for the writer
            return
        self._identity = identity
        self.reconcile()

    def reconcile(self) -> None:
        before = self._identity
        try:
            effective, sha256 = load_policy(self._path, self._settings)
        except PolicyError as exc:
            if _identity(self._path) == before:  # else a writer is busy: judge its result
                self._refuse(exc)
            else:
                self._identity = None  # judge the next version once it holds still
            return
        status = self._live.status
        if sha256 == status.sha256:
            if status.last_error is not None:
                log.info("policy file is back to generation %d's content", status.generation)
                self._live.clear_error()
            return
        self._apply(effective, sha256)

    def _apply(self, effective: EffectivePolicy, sha256: str) -> None:
        old = self._live.effective
        self._live.apply(effective, sha256=sha256)
        changed = [name for name in _SECTIONS if getattr(old, name) != getattr(effective, name)]
        generation = self._live.status.generation
        self._metrics.policy_generation.set(generation)
        log.info(
            "policy generation %d applied from %s (sha256 %s); changed: %s",
            generation,
            self._path,
            sha256[:12],
            ", ".join(changed) or "nothing in force",
            extra={"policy_generation": generation, "policy_sha256": sha256},
        )

    def _refuse(self, exc: PolicyError) -> None:
        self._live.refuse(str(exc))
        self._metrics.policy_rejected.inc()
        log.error(
            "policy file %s refused, generation %d stays in force: %s",
            self._path,
            self._live.status.generation,
            "; ".join(exc.errors),
            extra={"policy_errors": exc.errors},
        )


_SECTIONS = ("ice", "rooms", "limits", "allowed_origins")


def _identity(path: Path) -> FileIdentity:
    try:
        stat = os.stat(path)
    except OSError:
        return None
    return (stat.st_dev, stat.st_ino, stat.st_size, stat.st_ctime_ns)
