"""ICE servers for `/webrtc/config`. The URLs and policies come from the policy in force
(the environment's, or the policy file's); TURN credentials from the first source that
has them, in DESIGN section 6's order: the sidecar's file (sidecar_file.py), per-user
credentials minted from WEBRTC_TURN_SECRET, static SEED.md credentials."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal, Protocol

from rendezvous.auth import Identity
from rendezvous.policy.effective import IceConfig
from rendezvous.settings import STATIC_CREDENTIALS_TTL_SECONDS, Settings
from rendezvous.turn.credentials import mint

IceServer = dict[str, Any]
# For /readyz: "ok" (TURN credentials to hand out), "degraded" (the preferred source is
# failing; a later one answers), "off" (no TURN credential source configured).
TurnStatus = Literal["ok", "degraded", "off"]


@dataclass(frozen=True, slots=True)
class IceServers:
    servers: list[IceServer]
    ttl_seconds: int  # how long the TURN credentials in `servers` stay valid


class IceServerProvider(Protocol):
    description: str  # where the TURN credentials come from, for logs

    def ice_servers(self, identity: Identity, ice: IceConfig) -> IceServers: ...

    @property
    def turn_status(self) -> TurnStatus: ...

    @property
    def turn_problem(self) -> str:
        """Why the status is "degraded"; empty otherwise."""
        ...

    async def watch(self) -> None:
        """Follow the source's changes for the app's lifetime (returns at once if static)."""
        ...


def ice_server_provider(settings: Settings) -> IceServerProvider:
    """The configured sources, most preferred first."""
    fallback: IceServerProvider = (
        MintedIceServers(settings) if settings.turn_secret else StaticIceServers(settings)
    )
    if settings.turn_credentials_file is not None:
        from rendezvous.turn.sidecar_file import SidecarFileIceServers

        return SidecarFileIceServers(settings, fallback=fallback)
    return fallback


def stun_servers(ice: IceConfig) -> list[IceServer]:
    return [{"urls": list(ice.stun_urls)}] if ice.stun_urls else []


def turn_server(urls: tuple[str, ...], username: str, credential: str) -> IceServer:
    return {"urls": list(urls), "username": username, "credential": credential}


class MintedIceServers:
    """Per-user credentials minted from WEBRTC_TURN_SECRET on every call."""

    turn_status: TurnStatus = "ok"
    turn_problem = ""
    description = "per-user credentials minted from WEBRTC_TURN_SECRET"

    def __init__(self, settings: Settings, *, clock: Callable[[], float] = time.time) -> None:
        self._secret = settings.turn_secret or ""
        self._ttl = settings.turn_ttl_seconds
        self._clock = clock

    def ice_servers(self, identity: Identity, ice: IceConfig) -> IceServers:
        servers = stun_servers(ice)
        if ice.turn_urls:
            username, credential = mint(
                self._secret, identity.user_id, ttl_seconds=self._ttl, now=self._clock()
            )
            servers.append(turn_server(ice.turn_urls, username, credential))
        return IceServers(servers=servers, ttl_seconds=self._ttl)

    async def watch(self) -> None:
        return None


class StaticIceServers:
    """SEED.md's configuration: TURN URLs with a fixed username/credential, if any."""

    turn_problem = ""

    def __init__(self, settings: Settings) -> None:
        self._username = settings.turn_username or ""
        self._credential = settings.turn_credential or ""
        self.turn_status: TurnStatus = "ok" if self._username else "off"
        self.description = "the static TURN credentials" if self._username else "no TURN server"

    def ice_servers(self, identity: Identity, ice: IceConfig) -> IceServers:
        servers = stun_servers(ice)
        if ice.turn_urls and self._username:
            servers.append(turn_server(ice.turn_urls, self._username, self._credential))
        return IceServers(servers=servers, ttl_seconds=STATIC_CREDENTIALS_TTL_SECONDS)

    async def watch(self) -> None:
        return None


def rtc_configuration(ice_servers: IceServers, ice: IceConfig) -> dict[str, Any]:
    """The `/webrtc/config` body: SEED.md's snake_case keys, repeated in the camelCase
    that `new RTCPeerConnection(config)` reads (a browser ignores the snake_case ones)."""
    servers = ice_servers.servers
    return {
        "ice_servers": servers,
        "ice_transport_policy": ice.ice_transport_policy,
        "bundle_policy": ice.bundle_policy,
        "rtcp_mux_policy": ice.rtcp_mux_policy,
        "ttl": ice_servers.ttl_seconds,
        "iceServers": servers,
        "iceTransportPolicy": ice.ice_transport_policy,
        "bundlePolicy": ice.bundle_policy,
        "rtcpMuxPolicy": ice.rtcp_mux_policy,
    }
