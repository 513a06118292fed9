"""Admin routes (a token with role `admin`): what an operator asks an instance, and the
rooms of the whole deployment (listed from the backend, kicked and closed through it).

The admin role is deployment-wide: a `rooms` claim does not narrow these routes."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from typing import Annotated, Any

from fastapi import APIRouter, Query, Response

from rendezvous.api.deps import AdminDep, ApiError, ServicesDep
from rendezvous.backends.base import BackendUnavailableError
from rendezvous.policy.view import policy_view
from rendezvous.protocol import ErrorCode, SignalingError, is_valid_room_id

log = logging.getLogger(__name__)

router = APIRouter(prefix="/webrtc/admin")

DEFAULT_PAGE_ROOMS = 100
MAX_PAGE_ROOMS = 1000
_ROOM_ID_RULE = "room ids match ^[A-Za-z0-9-]{1,64}$"


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


@router.get("/rooms")
async def rooms(
    admin: AdminDep,
    services: ServicesDep,
    limit: Annotated[int, Query(description="rooms per page, 1 to 1000")] = DEFAULT_PAGE_ROOMS,
    cursor: Annotated[str | None, Query(description="`next_cursor` of the last page")] = None,
) -> dict[str, Any]:
    """Rooms with a live member on any instance, by room id, with their sizes."""
    if not 1 <= limit <= MAX_PAGE_ROOMS:
        raise _invalid(f"limit must be 1 to {MAX_PAGE_ROOMS}")
    if cursor is not None and not is_valid_room_id(cursor):
        raise _invalid("cursor is not one this API returned")
    with _backend_errors():
        page = await services.backend.active_rooms(after=cursor, limit=limit)
    listed = [{"room_id": r.room_id, "participant_count": r.participant_count} for r in page.rooms]
    return {"rooms": listed, "next_cursor": page.next_cursor}


@router.get("/rooms/{room_id}")
async def room(room_id: str, admin: AdminDep, services: ServicesDep) -> dict[str, Any]:
    """A room's live participants, on every instance; 404 when it has none."""
    _check_room_id(room_id)
    with _backend_errors():
        members = await services.backend.members(room_id)
    if not members:
        raise _not_found(f"room {room_id!r} has no participants")
    people = [
        {"user_id": m.user_id, "username": m.username, "session_id": m.session_id}
        for m in sorted(members, key=lambda m: m.user_id)
    ]
    return {"room_id": room_id, "participants": people, "participant_count": len(people)}


@router.delete("/rooms/{room_id}/participants/{user_id}", status_code=204)
async def kick(room_id: str, user_id: str, admin: AdminDep, services: ServicesDep) -> Response:
    """Remove a participant, wherever it is connected: it gets `kicked` (close 4002), the
    others `user_left` with reason `kicked`. Not a ban: its token still works."""
    _check_room_id(room_id)
    with _backend_errors():
        member = await services.hub.kick(room_id, user_id)
    if member is None:
        raise _not_found(f"{user_id[:128]!r} is not in room {room_id!r}")
    log.info(
        "participant kicked by an admin",
        extra={"room_id": room_id, "user_id": user_id, "admin_id": admin.user_id},
    )
    return Response(status_code=204)


@router.delete("/rooms/{room_id}", status_code=204)
async def close(room_id: str, admin: AdminDep, services: ServicesDep) -> Response:
    """Disconnect every participant of a room (`room_closed`, close 4003) and empty its
    presence. Not a ban: anyone whose token grants the room may join it again."""
    _check_room_id(room_id)
    with _backend_errors():
        members = await services.hub.close_room(room_id)
    if not members:
        raise _not_found(f"room {room_id!r} has no participants")
    log.info(
        "room closed by an admin",
        extra={"room_id": room_id, "participant_count": len(members), "admin_id": admin.user_id},
    )
    return Response(status_code=204)


def _check_room_id(room_id: str) -> None:
    if not is_valid_room_id(room_id):
        raise _invalid(_ROOM_ID_RULE)  # as /webrtc/rooms/{room_id}/participants does


def _invalid(message: str) -> ApiError:
    return ApiError(SignalingError(ErrorCode.INVALID_MESSAGE, message))


def _not_found(message: str) -> ApiError:
    return ApiError(SignalingError(ErrorCode.NOT_FOUND, message))


@contextlib.contextmanager
def _backend_errors() -> Iterator[None]:
    try:
        yield
    except BackendUnavailableError as exc:
        raise ApiError(exc.to_signaling()) from exc
