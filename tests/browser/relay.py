"""The TURN path of a pod, for the relay tests: coturn (`use-auth-secret`), the TURN
Secret written on disk the way kubelet projects it, the real `rendezvous turn-sidecar`
minting credentials from it into a shared file, and the service's environment reading
only that file, with `WEBRTC_ICE_TRANSPORT_POLICY=relay` so peers gather nothing but
relay candidates. The service never sees the secret."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rendezvous.turn.credentials_file import TurnCredentials
from tests.support.coturn import Coturn
from tests.support.kubelet import SecretVolume
from tests.support.process import cli_env
from tests.support.tokens import TEST_SECRET
from tests.support.turn_sidecar import Sidecar, running_sidecar

TURN_TTL_SECONDS = 3600


@dataclass
class RelayPath:
    coturn: Coturn
    sidecar: Sidecar
    credentials_file: Path

    def service_env(self, tmp_path: Path, **variables: str) -> dict[str, str]:
        """`rendezvous serve`'s environment: the test key, no STUN, the sidecar's file and
        the relay policy, then `variables`."""
        return cli_env(
            tmp_path,
            JWT_SECRET_KEY=TEST_SECRET,
            WEBRTC_STUN_URLS="",
            WEBRTC_TURN_CREDENTIALS_FILE=str(self.credentials_file),
            WEBRTC_ICE_TRANSPORT_POLICY="relay",
            **variables,
        )

    def credentials(self) -> TurnCredentials:
        return self.sidecar.credentials()

    def assert_config_is_the_sidecars(self, config: dict[str, Any]) -> None:
        """A /webrtc/config answer lists the sidecar's TURN entry alone, policy relay."""
        minted = self.credentials()
        assert minted.username.partition(":")[2] == "rendezvous"  # the pod's one user
        assert config["iceTransportPolicy"] == "relay", config
        assert config["iceServers"] == [
            {
                "urls": [self.coturn.url],
                "username": minted.username,
                "credential": minted.credential,
            }
        ], config

    def assert_relayed(self) -> None:
        """coturn allocated for the sidecar's username and relayed to a permitted peer."""
        username = self.credentials().username
        assert self.coturn.allocations(username) > 0, self.coturn.log_tail()
        for method in ("CREATE_PERMISSION", "CHANNEL_BIND"):
            assert self.coturn.successes(username, method) > 0, self.coturn.log_tail()
        assert self.coturn.refusals(username) == 0, self.coturn.log_tail()


@contextlib.asynccontextmanager
async def relay_path(coturn: Coturn, tmp_path: Path) -> AsyncIterator[RelayPath]:
    """The Secret holds coturn's shared secret; the sidecar runs until it has written
    its first credentials."""
    volume = SecretVolume(tmp_path / "turn-secret")
    volume.write({"static-auth-secret": coturn.secret.encode()})
    shared = tmp_path / "shared"  # the pod's emptyDir
    shared.mkdir()
    credentials_file = shared / "turn.json"
    sidecar_env = cli_env(
        tmp_path,
        WEBRTC_TURN_SECRET_DIR=str(volume.directory),
        WEBRTC_TURN_CREDENTIALS_FILE=str(credentials_file),
        WEBRTC_TURN_URLS=coturn.url,
        WEBRTC_TURN_TTL=str(TURN_TTL_SECONDS),
    )
    async with running_sidecar(env=sidecar_env, log_dir=tmp_path / "sidecar") as sidecar:
        yield RelayPath(coturn, sidecar, credentials_file)
