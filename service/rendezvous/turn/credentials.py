"""ICE servers for `/webrtc/config`, and TURN credentials in the TURN REST format that
coturn's `use-auth-secret` accepts: username "<unix_expiry>:<user_id>", credential
base64(HMAC-SHA1(secret, username)). Sources, in DESIGN section 6's order of preference:
(the sidecar file, arriving with the sidecar), the shared secret, static credentials."""

from __future__ import annotations

import base64
import hashlib
import hmac
import time
from collections.abc import Callable
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


def mint(secret: str, user_id: str, *, ttl_seconds: int, now: float) -> tuple[str, str]:
    """TURN REST credentials for `user_id`, valid until `now + ttl_seconds`."""
    username = f"{int(now) + ttl_seconds}:{user_id}"
    digest = hmac.new(secret.encode(), username.encode(), hashlib.sha1).digest()
    return username, base64.b64encode(digest).decode()


def expiry_of(username: str) -> int:
    """The unix time a TURN REST username stops being accepted."""
    return int(username.split(":", 1)[0])


def _stun_servers(settings: Settings) -> list[IceServer]:
    return [{"urls": list(settings.stun_url_list)}] if settings.stun_url_list else []


class MintedIceServers:
    """Per-user credentials minted from WEBRTC_TURN_SECRET on every call."""

    def __init__(self, settings: Settings, *, clock: Callable[[], float] = time.time) -> None:
        self._secret = settings.turn_secret or ""
        self._ttl = settings.turn_ttl_seconds
        self._turn_urls = list(settings.turn_url_list)
        self._stun = _stun_servers(settings)
        self._clock = clock

    def ice_servers(self, identity: Identity) -> IceServers:
        servers = list(self._stun)
        if self._turn_urls:
            username, credential = mint(
                self._secret, identity.user_id, ttl_seconds=self._ttl, now=self._clock()
            )
            turn = {"urls": self._turn_urls, "username": username, "credential": credential}
            servers.append(turn)
        return IceServers(servers=servers, ttl_seconds=self._ttl)


def ice_server_provider(settings: Settings) -> IceServerProvider:
    """The most preferred source the configuration provides."""
    if settings.turn_secret:
        return MintedIceServers(settings)
    return StaticIceServers(settings)


class StaticIceServers:
    """SEED.md's configuration: STUN URLs, and TURN URLs with a fixed username/credential."""

    def __init__(self, settings: Settings) -> None:
        servers = _stun_servers(settings)
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
