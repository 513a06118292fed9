"""Shared pieces of the HTTP routes: the services, bearer auth, JSON errors."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, HTTPException, Request
from starlette.requests import HTTPConnection

from rendezvous.auth import Identity
from rendezvous.protocol import ErrorCode, SignalingError
from rendezvous.services import Services

_STATUS = {
    ErrorCode.UNAUTHORIZED: 401,
    ErrorCode.FORBIDDEN_ROOM: 403,
    ErrorCode.FORBIDDEN: 403,
    ErrorCode.INVALID_MESSAGE: 400,
    ErrorCode.NOT_FOUND: 404,
    ErrorCode.BACKEND_UNAVAILABLE: 503,
}


class ApiError(HTTPException):
    """An HTTP error whose body is `{code, message}`, like the WebSocket error payload."""

    def __init__(self, error: SignalingError) -> None:
        headers = {"WWW-Authenticate": "Bearer"} if error.code is ErrorCode.UNAUTHORIZED else None
        super().__init__(_STATUS.get(error.code, 500), detail=error.message, headers=headers)
        self.code = error.code


def get_services(connection: HTTPConnection) -> Services:
    services: Services = connection.app.state.services
    return services


def bearer_token(authorization: str | None) -> str | None:
    if authorization and authorization[:7].lower() == "bearer ":
        return authorization[7:].strip() or None
    return None


async def require_identity(
    request: Request, services: Annotated[Services, Depends(get_services)]
) -> Identity:
    try:
        return await services.authenticator.authenticate(
            bearer_token(request.headers.get("authorization"))
        )
    except SignalingError as error:
        raise ApiError(error) from None


async def require_admin(identity: Annotated[Identity, Depends(require_identity)]) -> Identity:
    if not identity.is_admin:
        raise ApiError(SignalingError(ErrorCode.FORBIDDEN, "this route needs the admin role"))
    return identity


ServicesDep = Annotated[Services, Depends(get_services)]
IdentityDep = Annotated[Identity, Depends(require_identity)]
AdminDep = Annotated[Identity, Depends(require_admin)]
