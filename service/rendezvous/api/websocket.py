"""`WS /webrtc/ws/{room_id}`: admission (origin, connection cap, token, room) then a Session."""

from __future__ import annotations

import logging

from fastapi import APIRouter, WebSocket
from fastapi.responses import PlainTextResponse

from rendezvous.api.deps import ServicesDep, bearer_token
from rendezvous.protocol import (
    ErrorCode,
    SignalingError,
    error_frame,
    is_valid_room_id,
    with_seq,
)
from rendezvous.resuming import ResumeRequest
from rendezvous.session import Session
from rendezvous.telemetry import spans as span_names
from rendezvous.telemetry.spans import current

log = logging.getLogger(__name__)
router = APIRouter()

SUBPROTOCOL = "rendezvous.v1"
BEARER_SUBPROTOCOL_PREFIX = "bearer."


@router.websocket("/webrtc/ws/{room_id}")
async def signaling(websocket: WebSocket, room_id: str, services: ServicesDep) -> None:
    allowed = services.policy.allowed_origins
    origin = websocket.headers.get("origin")
    if allowed and origin is not None and origin.rstrip("/") not in allowed:
        await websocket.close(code=1008)  # before accept: the client sees HTTP 403
        return
    if services.drainer.draining:
        # Before accept: a proxy sees HTTP 503 and retries another upstream.
        await websocket.send_denial_response(PlainTextResponse("draining", status_code=503))
        return
    offered = websocket.scope.get("subprotocols", [])
    await websocket.accept(subprotocol=SUBPROTOCOL if SUBPROTOCOL in offered else None)
    if services.connections >= services.settings.max_connections:
        await _reject(websocket, room_id, SignalingError(ErrorCode.SERVER_BUSY, "server busy"))
        return
    services.connections += 1
    services.metrics.connections.inc()
    try:
        await _serve(websocket, room_id, services)
    finally:
        services.connections -= 1
        services.metrics.connections.dec()


async def _serve(websocket: WebSocket, room_id: str, services: ServicesDep) -> None:
    spans = services.spans
    join_span = spans.join(room_id[:128])
    try:
        with current(join_span, end=False):
            if not is_valid_room_id(room_id):
                raise SignalingError(
                    ErrorCode.FORBIDDEN_ROOM, "room ids match ^[A-Za-z0-9-]{1,64}$"
                )
            with spans.auth():
                identity = await services.authenticator.authenticate(_token(websocket))
            join_span.set_attribute(span_names.USER_ID, identity.user_id)
            if not identity.may_enter(room_id):
                raise SignalingError(
                    ErrorCode.FORBIDDEN_ROOM, "your token does not grant this room"
                )
            resume = _resume_request(websocket)
            log.info("WebSocket connected", extra={"room_id": room_id, "user_id": identity.user_id})
    except SignalingError as error:
        join_span.end()
        await _reject(websocket, room_id, error)
        return
    except BaseException:
        join_span.end()
        raise
    session = Session(
        websocket,
        identity,
        room_id,
        hub=services.hub,
        policy=services.policy,
        metrics=services.metrics,
        spans=spans,
        resume=resume,
        debug=services.settings.debug,
    )
    await session.run(capacity=services.policy.rooms.for_room(room_id), join_span=join_span)


def _resume_request(websocket: WebSocket) -> ResumeRequest | None:
    """`?resume=TOKEN&last_seq=N`: a client coming back to its session after a drop."""
    token = websocket.query_params.get("resume")
    if token is None:
        return None
    raw = websocket.query_params.get("last_seq")
    if raw is not None and not (raw.isascii() and raw.isdigit() and len(raw) <= 18):
        raise SignalingError(ErrorCode.RESUME_FAILED, "last_seq must be a non-negative integer")
    return ResumeRequest(token, None if raw is None else int(raw))


def _token(websocket: WebSocket) -> str | None:
    """From the `bearer.<JWT>` subprotocol (kept out of proxy logs), the Authorization
    header, or SEED.md's `?token=` query, in that order."""
    offered: list[str] = websocket.scope.get("subprotocols", [])
    for protocol in offered:
        if protocol.startswith(BEARER_SUBPROTOCOL_PREFIX):
            return protocol[len(BEARER_SUBPROTOCOL_PREFIX) :]
    return bearer_token(websocket.headers.get("authorization")) or websocket.query_params.get(
        "token"
    )


async def _reject(websocket: WebSocket, room_id: str, error: SignalingError) -> None:
    """Refuse a connection: a client's doing, so INFO, with the code and never the token."""
    log.info("WebSocket refused", extra={"room_id": room_id[:128], "code": error.code.value})
    services: ServicesDep = websocket.app.state.services
    services.metrics.error(error.code.value)
    # The first (and only) frame of this connection: seq 1, as every frame has one.
    await websocket.send_text(with_seq(error_frame(error, room_id=room_id[:128]), 1).decode())
    await websocket.close(code=error.close_code or 1008)
