"""JWT verification: a token becomes an Identity, or a SignalingError(unauthorized)."""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass
from typing import Any

import jwt

from rendezvous.protocol import ErrorCode, SignalingError
from rendezvous.settings import HMAC_ALGORITHMS, Settings

log = logging.getLogger(__name__)

MAX_USER_ID_CHARS = 128
MAX_USERNAME_CHARS = 128
JWKS_CACHE_SECONDS = 300
# An unknown kid forces at most one JWKS fetch per this interval (PyJWT's default).
JWKS_REFRESH_COOLDOWN_SECONDS = 30.0
JWKS_FETCH_TIMEOUT_SECONDS = 5.0


@dataclass(frozen=True, slots=True)
class Identity:
    """Who a verified token speaks for, and which rooms it may enter."""

    user_id: str
    username: str
    rooms: tuple[str, ...] | None = None  # None: any room (SEED.md's tokens carry no claim)
    roles: frozenset[str] = frozenset()

    def may_enter(self, room_id: str) -> bool:
        if self.rooms is None:
            return True
        return any(_grant_matches(grant, room_id) for grant in self.rooms)

    @property
    def is_admin(self) -> bool:
        return "admin" in self.roles


def _grant_matches(grant: str, room_id: str) -> bool:
    if grant.endswith("*"):
        return room_id.startswith(grant[:-1])
    return grant == room_id


def unauthorized(message: str) -> SignalingError:
    return SignalingError(ErrorCode.UNAUTHORIZED, message)


class Authenticator:
    """Verifies tokens against an explicit algorithm allow-list; `none` is never in it."""

    def __init__(
        self,
        settings: Settings,
        *,
        jwks_cache_seconds: float = JWKS_CACHE_SECONDS,
        jwks_refresh_cooldown_seconds: float = JWKS_REFRESH_COOLDOWN_SECONDS,
    ) -> None:
        self._algorithms = [a for a in settings.algorithms if a != "none"]
        self._secret = settings.jwt_secret_key
        self._public_key = settings.jwt_public_key
        self._audience = settings.jwt_audience
        self._issuer = settings.jwt_issuer
        self._leeway = settings.jwt_leeway_seconds
        self._jwks = (
            # Only the whole set is cached (it expires): PyJWT's per-kid cache never does,
            # so a key removed from the JWKS (revoked) would stay trusted until restart.
            jwt.PyJWKClient(
                settings.jwt_jwks_url,
                cache_keys=False,
                lifespan=jwks_cache_seconds,
                timeout=JWKS_FETCH_TIMEOUT_SECONDS,
                cooldown_duration=jwks_refresh_cooldown_seconds,
            )
            if settings.jwt_jwks_url
            else None
        )

    async def authenticate(self, token: str | None) -> Identity:
        if not token:
            raise unauthorized("a token is required")
        try:
            header = jwt.get_unverified_header(token)
        except jwt.InvalidTokenError:
            raise unauthorized("malformed token") from None
        algorithm = header.get("alg")
        if algorithm not in self._algorithms:
            raise unauthorized(f"algorithm {str(algorithm)[:16]!r} is not accepted")
        key = await self._key_for(algorithm, token)
        try:
            claims = jwt.decode(
                token,
                key=key,
                algorithms=[algorithm],
                audience=self._audience,
                issuer=self._issuer,
                leeway=self._leeway,
                options={"require": ["exp", "sub"], "verify_aud": self._audience is not None},
            )
        except jwt.ExpiredSignatureError:
            raise unauthorized("token expired") from None
        except jwt.InvalidTokenError as exc:
            raise unauthorized(f"invalid token: {exc}") from None
        except jwt.InvalidKeyError:
            # The header names an allowed algorithm that does not fit the configured key
            # (an ES256 token against an RSA PEM): the caller's fault, not ours.
            raise unauthorized(f"no {algorithm} key for this token") from None
        return identity_from_claims(claims)

    async def _key_for(self, algorithm: str, token: str) -> Any:
        if algorithm in HMAC_ALGORITHMS:
            if not self._secret:
                raise unauthorized("HMAC tokens are not accepted here")
            return self._secret
        if self._public_key:
            return self._public_key
        if self._jwks is None:
            raise unauthorized("public-key tokens are not accepted here")
        jwks = self._jwks
        try:
            # PyJWKClient fetches with blocking urllib; keep it off the event loop.
            signing_key = await asyncio.to_thread(jwks.get_signing_key_from_jwt, token)
        except (jwt.PyJWTError, ValueError, OSError) as exc:  # unreachable, not JSON, no key
            log.warning("JWKS lookup failed: %s", exc)
            raise unauthorized("no signing key for this token") from None
        return signing_key.key


def identity_from_claims(claims: dict[str, Any]) -> Identity:
    user_id = claims["sub"]
    if type(user_id) is not str or not 1 <= len(user_id) <= MAX_USER_ID_CHARS:
        raise unauthorized(f"'sub' must be a string of 1-{MAX_USER_ID_CHARS} characters")
    username = claims.get("username", claims.get("name", user_id))
    if type(username) is not str or not 1 <= len(username) <= MAX_USERNAME_CHARS:
        raise unauthorized(f"'username' must be a string of 1-{MAX_USERNAME_CHARS} characters")
    return Identity(
        user_id=user_id,
        username=username,
        rooms=_string_list(claims, "rooms") if "rooms" in claims else None,
        roles=frozenset(_string_list(claims, "roles")),
    )


def _string_list(claims: dict[str, Any], name: str) -> tuple[str, ...]:
    value = claims.get(name, [])
    if type(value) is not list or not all(type(v) is str for v in value):
        raise unauthorized(f"'{name}' must be a list of strings")
    return tuple(value)


def mint_token(
    *,
    key: str,
    user_id: str,
    ttl_seconds: float,
    algorithm: str = "HS256",
    username: str | None = None,
    rooms: list[str] | None = None,
    roles: list[str] | None = None,
) -> str:
    """Sign a token (for `rendezvous token`, dev mode and tests)."""
    now = int(time.time())
    claims: dict[str, Any] = {"sub": user_id, "iat": now, "exp": now + int(ttl_seconds)}
    if username:
        claims["username"] = username
    if rooms is not None:
        claims["rooms"] = rooms
    if roles:
        claims["roles"] = roles
    return jwt.encode(claims, key, algorithm=algorithm)
