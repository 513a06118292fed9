"""The TURN sidecar's credentials file as the preferred source of `/webrtc/config`.

Every call checks the file's identity (one stat) and rereads it when the sidecar has
replaced it, so a rotation is served at once and a restart is never needed; the sidecar
renames whole files into place, so a read sees one version whole. A missing, unreadable
or expired file is never served: the next source answers instead (per-user credentials
from WEBRTC_TURN_SECRET, else static ones, else no TURN), /readyz says `turn: degraded`,
and the change is logged once. A poll once a second notices expiry and a vanished file
without waiting for a request."""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections.abc import Callable
from pathlib import Path

from rendezvous.auth import Identity
from rendezvous.policy.effective import IceConfig
from rendezvous.settings import Settings
from rendezvous.turn.credentials_file import (
    CredentialsFileError,
    TurnCredentials,
    read_credentials,
)
from rendezvous.turn.ice_servers import (
    IceServerProvider,
    IceServers,
    TurnStatus,
    stun_servers,
    turn_server,
)

log = logging.getLogger(__name__)

POLL_SECONDS = 1.0
FileIdentity = tuple[int, int, int, int]  # device, inode, size, ctime: any replace or change


class SidecarFileIceServers:
    def __init__(
        self,
        settings: Settings,
        *,
        fallback: IceServerProvider,
        clock: Callable[[], float] = time.time,
    ) -> None:
        assert settings.turn_credentials_file is not None
        self._path: Path = settings.turn_credentials_file
        self._fallback = fallback
        self._clock = clock
        self._identity: FileIdentity | None = None
        self._credentials: TurnCredentials | None = None
        self._file_problem = "not read yet"
        self._reported = ""  # the problem last logged ("" = healthy)
        self.description = f"the TURN sidecar's file {self._path}"
        self._refresh()

    @property
    def turn_status(self) -> TurnStatus:
        return "degraded" if self.turn_problem else "ok"

    @property
    def turn_problem(self) -> str:
        self._refresh()  # as of now, not as of the last poll
        credentials = self._credentials
        if credentials is None:
            return self._file_problem
        if credentials.expired(self._clock()):
            return f"{self._path} expired at {credentials.expires_at}"
        return ""

    def ice_servers(self, identity: Identity, ice: IceConfig) -> IceServers:
        self._refresh()
        credentials, now = self._credentials, self._clock()
        if credentials is None or credentials.expired(now):
            return self._fallback.ice_servers(identity, ice)
        # The policy's or WEBRTC_TURN_URLS, when stated (even as none), win over the file's.
        urls = ice.turn_urls if ice.turn_urls_set else tuple(credentials.urls)
        servers = stun_servers(ice)
        if urls:
            servers.append(turn_server(urls, credentials.username, credentials.credential))
        return IceServers(servers, ttl_seconds=credentials.expires_at - int(now))

    async def watch(self) -> None:
        while True:
            self._refresh()
            self._log_change()
            await asyncio.sleep(POLL_SECONDS)

    def _refresh(self) -> None:
        try:
            stat = os.stat(self._path)
        except OSError:
            identity = None
        else:
            identity = (stat.st_dev, stat.st_ino, stat.st_size, stat.st_ctime_ns)
        if identity is not None and identity == self._identity:
            return
        self._identity = identity
        try:
            self._credentials, self._file_problem = read_credentials(self._path), ""
        except CredentialsFileError as exc:
            self._credentials, self._file_problem = None, str(exc)

    def _log_change(self) -> None:
        problem = self.turn_problem
        if problem == self._reported:
            return
        if problem:
            log.warning(
                "TURN credentials file unusable (%s); /webrtc/config falls back to %s",
                problem,
                self._fallback.description,
            )
        else:
            log.info("TURN credentials file usable again: %s", self._path)
        self._reported = problem
