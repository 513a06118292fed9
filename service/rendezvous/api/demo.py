"""The demo page (static files under `/demo/`) and dev mode's token endpoint.

The page is always served: outside dev mode it asks for a token. The dev routes exist
only in dev mode (`rendezvous serve --dev` with no JWT key configured); elsewhere they
are simply not routed, so they answer 404 like any unknown path.
"""

from __future__ import annotations

import json
import re
import secrets
import unicodedata
from pathlib import Path

from fastapi import APIRouter, Request
from fastapi.responses import FileResponse, JSONResponse, RedirectResponse, Response

from rendezvous.auth import mint_token
from rendezvous.protocol import ErrorCode

WEB_DIRECTORY = Path(__file__).resolve().parent.parent / "web"
DEV_TOKEN_TTL_SECONDS = 4 * 3600  # a working session; the page asks again on the next join
DEV_NAME_MAX_CHARS = 64
DEV_BODY_MAX_BYTES = 4096
_SLUG_MAX_CHARS = 32
_SUFFIX_BYTES = 3  # six hex digits: two tabs named "alice" are two users

_MEDIA_TYPES = {
    ".html": "text/html; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
}
# Only what ships in web/, by exact name: no path from the request ever reaches the disk.
ASSETS = {
    path.name: _MEDIA_TYPES[path.suffix]
    for path in sorted(WEB_DIRECTORY.glob("*"))
    if path.is_file() and path.suffix in _MEDIA_TYPES
}
# No plugins, no <base> rewriting, no framing (clickjacking). Scripts are not restricted
# further: browser automation evaluates code in the page (Playwright's wait_for_function
# needs eval), and the page itself never puts a name or a message into markup.
CONTENT_SECURITY_POLICY = "object-src 'none'; base-uri 'none'; frame-ancestors 'none'"
_ASSET_HEADERS = {
    "Cache-Control": "no-cache",  # revalidate: an upgraded server never runs yesterday's JS
    "X-Content-Type-Options": "nosniff",
    "Content-Security-Policy": CONTENT_SECURITY_POLICY,
}

router = APIRouter()


@router.get("/", include_in_schema=False)
async def root() -> RedirectResponse:
    # Relative, so the redirect also works behind a proxy that mounts us under a prefix.
    return RedirectResponse("demo/", status_code=307)


@router.get("/demo", include_in_schema=False)
async def demo_without_slash() -> RedirectResponse:
    # The page's relative module imports resolve against /demo/, never against /.
    return RedirectResponse("demo/", status_code=307)


@router.get("/demo/", include_in_schema=False)
async def demo_page() -> Response:
    return _asset("index.html")


@router.get("/demo/{name}", include_in_schema=False)
async def demo_asset(name: str) -> Response:
    return _asset(name)


def _asset(name: str) -> Response:
    media_type = ASSETS.get(name)
    if media_type is None:
        return JSONResponse({"detail": "Not Found"}, status_code=404)
    return FileResponse(WEB_DIRECTORY / name, media_type=media_type, headers=_ASSET_HEADERS)


def dev_router(*, key: str) -> APIRouter:
    """`GET /webrtc/dev` and `POST /webrtc/dev/token`, signing with dev mode's HS256 key."""
    dev = APIRouter()

    @dev.get("/webrtc/dev")
    async def dev_mode() -> dict[str, bool]:
        return {"dev_mode": True}

    @dev.post("/webrtc/dev/token")
    async def dev_token(request: Request) -> JSONResponse:
        name, problem = await _display_name(request)
        if problem is not None:
            return JSONResponse(
                {"code": ErrorCode.INVALID_MESSAGE.value, "message": problem}, status_code=422
            )
        user_id = f"{slug(name)}-{secrets.token_hex(_SUFFIX_BYTES)}"
        token = mint_token(
            key=key, user_id=user_id, ttl_seconds=DEV_TOKEN_TTL_SECONDS, username=name
        )
        body = {
            "token": token,
            "user_id": user_id,
            "username": name,
            "expires_in": DEV_TOKEN_TTL_SECONDS,
        }
        return JSONResponse(body, headers={"Cache-Control": "no-store"})

    return dev


async def _display_name(request: Request) -> tuple[str, str | None]:
    """The request's `name`, or a message saying what is wrong with it."""
    raw = bytearray()
    async for chunk in request.stream():
        raw += chunk
        if len(raw) > DEV_BODY_MAX_BYTES:
            return "", f"the request body must be at most {DEV_BODY_MAX_BYTES} bytes"
    try:
        body = json.loads(raw)
    except (ValueError, UnicodeDecodeError):
        return "", 'the body must be JSON: {"name": "..."}'
    name = body.get("name") if isinstance(body, dict) else None
    if not isinstance(name, str):
        return "", '"name" must be a string: {"name": "..."}'
    name = name.strip()
    if not 1 <= len(name) <= DEV_NAME_MAX_CHARS:
        return "", f"name must be 1 to {DEV_NAME_MAX_CHARS} characters (got {len(name)})"
    if any(unicodedata.category(char) in ("Cc", "Cf") for char in name):
        return "", "name must not contain control or format characters"
    return name, None


def slug(name: str) -> str:
    """A user-id-safe form of a display name: lower-case ASCII letters, digits and '-'."""
    ascii_name = unicodedata.normalize("NFKD", name).encode("ascii", "ignore").decode()
    text = re.sub(r"[^a-z0-9]+", "-", ascii_name.lower()).strip("-")
    return text[:_SLUG_MAX_CHARS].strip("-") or "user"
