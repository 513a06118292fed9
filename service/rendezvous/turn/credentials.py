"""TURN credentials in the TURN REST format that coturn's `use-auth-secret` accepts:
username "<unix_expiry>:<user_id>", credential base64(HMAC-SHA1(secret, username))."""

from __future__ import annotations

import base64
import hashlib
import hmac


def mint(secret: str, user_id: str, *, ttl_seconds: int, now: float) -> tuple[str, str]:
    """TURN REST credentials for `user_id`, valid until `now + ttl_seconds`."""
    username = f"{int(now) + ttl_seconds}:{user_id}"
    digest = hmac.new(secret.encode(), username.encode(), hashlib.sha1).digest()
    return username, base64.b64encode(digest).decode()


def expiry_of(username: str) -> int:
    """The unix time a TURN REST username stops being accepted."""
    return int(username.split(":", 1)[0])
