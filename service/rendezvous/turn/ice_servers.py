"""ICE servers for `/webrtc/config`. TURN credentials come from the first source that has
them, in DESIGN section 6's order: the sidecar's file (sidecar_file.py), per-user
credentials minted from WEBRTC_TURN_SECRET, static SEED.md credentials."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal, Protocol

from rendezvous.auth import Identity
from rendezvous.settings import STATIC_CREDENTIALS_TTL_SECONDS, Settings
from rendezvous.turn.credentials import mint

IceServer = dict[str, Any]
# For /readyz: "ok" (TURN credentials to hand out), "degraded" (the preferred source is
# failing; a later one answers), "off" (no TURN configured).
TurnStatus = Literal["ok", "degraded", "off"]


@dataclass(frozen=True, slots=True)
class IceServers:
    servers: list[IceServer]
    ttl_seconds: int  # how long the TURN credentials in `servers` stay valid


class IceServerProvider(Protocol):
    description: str  # where the TURN credentials come from, for logs

    def ice_servers(self, identity: Identity) -> IceServers: ...

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


def stun_servers(settings: Settings) -> list[IceServer]:
    return [{"urls": list(settings.stun_url_list)}] if settings.stun_url_list else []


def turn_server(urls: list[str], username: str, credential: str) -> IceServer:
    return {"urls": urls, "username": username, "credential": credential}


class MintedIceServers:
    """Per-user credentials minted from WEBRTC_TURN_SECRET on every call."""

    turn_problem = ""
    description = "per-user credentials minted from WEBRTC_TURN_SECRET"

    def __init__(self, settings: Settings, *, clock: Callable[[], float] = time.time) -> None:
        self._secret = settings.turn_secret or ""
        self._ttl = settings.turn_ttl_seconds
        self._turn_urls = list(settings.turn_url_list)
        self._stun = stun_servers(settings)
        self._clock = clock

    @property
    def turn_status(self) -> TurnStatus:
        return "ok" if self._turn_urls else "off"

    def ice_servers(self, identity: Identity) -> IceServers:
        servers = list(self._stun)
        if self._turn_urls:
            username, credential = mint(
                self._secret, identity.user_id, ttl_seconds=self._ttl, now=self._clock()
            )
            servers.append(turn_server(self._turn_urls, username, credential))
        return IceServers(servers=servers, ttl_seconds=self._ttl)

    async def watch(self) -> None:
        return None


class StaticIceServers:
    """SEED.md's configuration: STUN URLs, and TURN URLs with a fixed username/credential."""

    turn_problem = ""

    def __init__(self, settings: Settings) -> None:
        servers = stun_servers(settings)
        has_turn = bool(settings.turn_url_list and settings.turn_username)
        if has_turn:
            servers.append(
                turn_server(
                    list(settings.turn_url_list),
                    settings.turn_username or "",
                    settings.turn_credential or "",
                )
            )
        self._status: TurnStatus = "ok" if has_turn else "off"
        self.description = "the static TURN credentials" if has_turn else "no TURN server"
        self._answer = IceServers(servers=servers, ttl_seconds=STATIC_CREDENTIALS_TTL_SECONDS)

    @property
    def turn_status(self) -> TurnStatus:
        return self._status

    def ice_servers(self, identity: Identity) -> IceServers:
        return self._answer

    async def watch(self) -> None:
        return None


def rtc_configuration(ice: IceServers, settings: Settings) -> dict[str, Any]:
    """The `/webrtc/config` body: SEED.md's snake_case keys, repeated in the camelCase
    that `new RTCPeerConnection(config)` reads (a browser ignores the snake_case ones)."""
    return {
        "ice_servers": ice.servers,
        "ice_transport_policy": settings.ice_transport_policy,
        "bundle_policy": settings.bundle_policy,
        "rtcp_mux_policy": settings.rtcp_mux_policy,
        "ttl": ice.ttl_seconds,
        "iceServers": ice.servers,
        "iceTransportPolicy": settings.ice_transport_policy,
        "bundlePolicy": settings.bundle_policy,
        "rtcpMuxPolicy": settings.rtcp_mux_policy,
    }
