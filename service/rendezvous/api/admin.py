"""Admin routes (a token with role `admin`): what an operator asks an instance."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter

from rendezvous.api.deps import AdminDep, ServicesDep
from rendezvous.policy.view import policy_view

router = APIRouter(prefix="/webrtc/admin")


@router.get("/policy")
async def policy(admin: AdminDep, services: ServicesDep) -> dict[str, Any]:
    """The policy in force on this instance and how it got there. It holds no secret by
    design (a policy lives in a ConfigMap): TURN credentials are named by source only."""
    live = services.policy
    return {
        "status": live.status.as_json(),
        "policy": policy_view(live.effective),
        "turn_credentials": services.ice.description,
    }
