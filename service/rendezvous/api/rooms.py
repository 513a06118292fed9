"""`GET /webrtc/rooms/{room_id}/participants`: who is in a room now."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter

from rendezvous.api.deps import ApiError, IdentityDep, ServicesDep
from rendezvous.backends.base import BackendUnavailableError
from rendezvous.protocol import ErrorCode, SignalingError, is_valid_room_id

router = APIRouter()


@router.get("/webrtc/rooms/{room_id}/participants")
async def participants(
    room_id: str, identity: IdentityDep, services: ServicesDep
) -> dict[str, Any]:
    if not is_valid_room_id(room_id):
        raise ApiError(
            SignalingError(ErrorCode.INVALID_MESSAGE, "room ids match ^[A-Za-z0-9-]{1,64}$")
        )
    if not identity.may_enter(room_id):
        raise ApiError(
            SignalingError(ErrorCode.FORBIDDEN_ROOM, "your token does not grant this room")
        )
    try:
        members = await services.backend.members(room_id)
    except BackendUnavailableError as exc:
        raise ApiError(exc.to_signaling()) from exc
    people = [{"user_id": m.user_id, "username": m.username} for m in members]
    return {"room_id": room_id, "participants": people, "participant_count": len(people)}
