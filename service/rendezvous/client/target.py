"""Where `rendezvous client` connects, and with which token."""

from __future__ import annotations

import urllib.parse
from collections.abc import Mapping

from rendezvous.auth import mint_token
from rendezvous.client.arguments import TOKEN_ENV
from rendezvous.protocol import is_valid_room_id
from rendezvous.settings import load_settings

MINTED_TOKEN_TTL_SECONDS = 3600  # `rendezvous token`'s default lifetime
_WS_SCHEMES = {"http": "ws", "https": "wss", "ws": "ws", "wss": "wss"}
_WS_PATH = "/webrtc/ws"


class UsageError(Exception):
    """A command line the client cannot act on (exit status 2)."""


def room_url(base: str, room: str) -> str:
    """The signaling URL of `room` (without the token) under a service base URL;
    http(s) becomes ws(s), and a pasted `.../webrtc/ws/...` path is cut back to its base."""
    if not is_valid_room_id(room):
        raise UsageError(f"invalid room id {room!r}: room ids match ^[A-Za-z0-9-]{{1,64}}$")
    parts = urllib.parse.urlsplit(base.strip())
    scheme = _WS_SCHEMES.get(parts.scheme.lower())
    if scheme is None or not parts.hostname:
        raise UsageError(f"--url: expected an http(s):// or ws(s):// URL, got {base!r}")
    if parts.query:
        # Silently dropping a pasted ?token= would join as someone else than expected.
        raise UsageError("--url: give the base URL without a query; pass the token with --token")
    path = parts.path.rstrip("/")
    if _WS_PATH in path:
        path = path[: path.index(_WS_PATH)]
    return urllib.parse.urlunsplit((scheme, parts.netloc, f"{path}{_WS_PATH}/{room}", "", ""))


def with_token(url: str, token: str) -> str:
    return f"{url}?token={urllib.parse.quote(token, safe='')}"


def resolve_token(*, token: str | None, user: str | None, environ: Mapping[str, str]) -> str:
    """--token, else a token minted for --user, else $RENDEZVOUS_TOKEN."""
    if token is not None:
        return token
    if user is not None:
        return mint_for(user)
    from_environment = environ.get(TOKEN_ENV)
    if from_environment:
        return from_environment
    raise UsageError(f"no token: pass --token T or --user NAME, or set {TOKEN_ENV}")


def mint_for(user: str) -> str:
    """A token for `user` signed exactly as `rendezvous token --user USER` signs it:
    JWT_SECRET_KEY, else the dev-mode key file (ConfigError when neither exists)."""
    from rendezvous.cli import dev_secret  # the CLI module is loaded already: it runs us

    settings = load_settings()
    key = settings.jwt_secret_key or dev_secret(create=False)
    return mint_token(key=key, user_id=user, ttl_seconds=MINTED_TOKEN_TTL_SECONDS)
