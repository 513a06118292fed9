"""Admin routes (a token with role `admin`): what an operator asks an instance."""

from __future__ import annotations

import dataclasses
from typing import Any

from fastapi import APIRouter

from rendezvous.api.deps import AdminDep, ServicesDep

router = APIRouter(prefix="/webrtc/admin")


@router.get("/policy")
async def policy(admin: AdminDep, services: ServicesDep) -> dict[str, Any]:
    """The policy in force on this instance and how it got there. It holds no secret by
    design (a policy lives in a ConfigMap): TURN credentials are named by source only."""
    live = services.policy
    effective = live.effective
    rooms = effective.rooms
    return {
        "status": live.status.as_json(),
        "policy": {
            "ice": dataclasses.asdict(effective.ice),
            "rooms": {
                "max_participants": rooms.default,
                "overrides": [
                    {"match": match, "max_participants": capacity}
                    for match, capacity in rooms.overrides
                ],
            },
            "limits": dataclasses.asdict(effective.limits),
            "allowed_origins": sorted(effective.allowed_origins),
        },
        "turn_credentials": services.ice.description,
    }
