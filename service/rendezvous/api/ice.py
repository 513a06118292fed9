"""`GET /webrtc/config`: ICE servers and policies for RTCPeerConnection."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter

from rendezvous.api.deps import IdentityDep, ServicesDep
from rendezvous.turn.ice_servers import rtc_configuration

router = APIRouter()


@router.get("/webrtc/config")
async def webrtc_config(identity: IdentityDep, services: ServicesDep) -> dict[str, Any]:
    ice = services.policy.ice  # one version for the whole answer
    return rtc_configuration(services.ice.ice_servers(identity, ice), ice)
