"""ICE server providers. `/webrtc/config` asks one for the servers a user may use; the
TURN REST minting and the sidecar file (issue 4) are further providers of this shape."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

from rendezvous.auth import Identity
from rendezvous.settings import STATIC_CREDENTIALS_TTL_SECONDS, Settings

IceServer = dict[str, Any]


@dataclass(frozen=True, slots=True)
class IceServers:
    servers: list[IceServer]
    ttl_seconds: int  # how long the TURN credentials in `servers` stay valid


class IceServerProvider(Protocol):
    def ice_servers(self, identity: Identity) -> IceServers: ...


class StaticIceServers:
    """SEED.md's configuration: STUN URLs, and TURN URLs with a fixed username/credential."""

    def __init__(self, settings: Settings) -> None:
        servers: list[IceServer] = []
        if settings.stun_url_list:
            servers.append({"urls": list(settings.stun_url_list)})
        if settings.turn_url_list and settings.turn_username and settings.turn_credential:
            servers.append(
                {
                    "urls": list(settings.turn_url_list),
                    "username": settings.turn_username,
                    "credential": settings.turn_credential,
                }
            )
        self._answer = IceServers(servers=servers, ttl_seconds=STATIC_CREDENTIALS_TTL_SECONDS)

    def ice_servers(self, identity: Identity) -> IceServers:
        return self._answer


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
