"""Signing keys and tokens for tests."""

from __future__ import annotations

from typing import Any

from rendezvous.auth import mint_token

TEST_SECRET = "test-secret-" + "k" * 40


def token(
    user: str = "alice", *, ttl: float = 600, secret: str = TEST_SECRET, **claims: Any
) -> str:
    return mint_token(
        key=secret,
        user_id=user,
        ttl_seconds=ttl,
        username=claims.pop("username", None),
        rooms=claims.pop("rooms", None),
        roles=claims.pop("roles", None),
    )
