"""JWT auth (DESIGN section 4) against the real app over real sockets: algorithms and keys
(secret, PEM, a JWKS served by a local HTTP server), registered claims, room grants,
the three token sources, and what a rejected join does (error frame, close 1008, no trace)."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import hmac
import json
import threading
import time
from collections.abc import AsyncIterator, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import httpx
import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from jwt.algorithms import ECAlgorithm, RSAAlgorithm

from rendezvous.auth import Authenticator
from rendezvous.protocol import SignalingError
from rendezvous.settings import load_settings
from tests.support.client import connect, joined
from tests.support.server import RunningServer, running_server
from tests.support.server import test_settings as settings_for
from tests.support.tokens import TEST_SECRET, token

PolicyViolation = 1008
PrivateKey = rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey

# Generating RSA keys costs tens of milliseconds; a few shared ones keep the module fast.
RSA_KEY = rsa.generate_private_key(public_exponent=65537, key_size=2048)
RSA_OTHER_KEY = rsa.generate_private_key(public_exponent=65537, key_size=2048)
EC_KEY = ec.generate_private_key(ec.SECP256R1())


def public_pem(key: PrivateKey) -> str:
    return (
        key.public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        .decode()
    )


def claims(user: str = "alice", *, ttl: float = 600, **extra: Any) -> dict[str, Any]:
    now = int(time.time())
    values: dict[str, Any] = {"sub": user, "iat": now, "exp": now + int(ttl)}
    values.update(extra)
    return values


def sign(
    payload: dict[str, Any],
    key: str | PrivateKey = TEST_SECRET,
    algorithm: str = "HS256",
    *,
    kid: str | None = None,
) -> str:
    headers = {"kid": kid} if kid is not None else None
    return jwt.encode(payload, key, algorithm=algorithm, headers=headers)


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def hand_made(header: dict[str, Any], payload: dict[str, Any], secret: bytes | None) -> str:
    """A JWT built without PyJWT (which refuses to make these): unsigned when `secret` is None,
    else HMAC-SHA256 with `secret` as the key, whatever the header says."""
    signing_input = f"{_b64(json.dumps(header).encode())}.{_b64(json.dumps(payload).encode())}"
    if secret is None:
        return f"{signing_input}."
    signature = hmac.new(secret, signing_input.encode(), hashlib.sha256).digest()
    return f"{signing_input}.{_b64(signature)}"


async def admitted(url: str, **kwargs: Any) -> dict[str, Any]:
    """Join, and return the `room_state` payload the server answered with."""
    async with joined(url, **kwargs) as (_, state):
        payload: dict[str, Any] = state["payload"]
        return payload


async def rejected(url: str, code: str, **kwargs: Any) -> str:
    """Join, expect the `error` frame with `code` then close 1008; return the message."""
    async with connect(url, **kwargs) as client:
        frame = await client.expect_error(code)
        await client.expect_close(PolicyViolation)
        message: str = frame["payload"]["message"]
        return message


async def participants(server: RunningServer, room: str) -> set[str]:
    async with httpx.AsyncClient(base_url=server.http) as http:
        response = await http.get(
            f"/webrtc/rooms/{room}/participants",
            headers={"Authorization": f"Bearer {token('observer')}"},
        )
    assert response.status_code == 200, response.text
    return {p["user_id"] for p in response.json()["participants"]}


# Algorithms and keys.


# RFC 7518 wants an HMAC key at least as long as the hash (PyJWT warns below that).
LONG_SECRET = "long-secret-" + "q" * 64


@pytest.mark.parametrize("algorithm", ["HS256", "HS384", "HS512"])
async def test_hmac_tokens_signed_with_the_secret_are_accepted(algorithm: str) -> None:
    async with running_server(settings_for(jwt_secret_key=LONG_SECRET)) as server:
        tok = sign(claims("alice", username="Alice"), LONG_SECRET, algorithm)
        state = await admitted(server.ws_url("r1", tok))
        assert state["participants"] == [{"user_id": "alice", "username": "Alice"}]


async def test_hmac_token_signed_with_another_secret_is_rejected() -> None:
    async with running_server() as server:
        forged = sign(claims(), "another-secret-" + "x" * 40)
        await rejected(server.ws_url("r1", forged), "unauthorized")


@pytest.mark.parametrize(
    ("algorithm", "key"), [("RS256", RSA_KEY), ("ES256", EC_KEY)], ids=["RS256", "ES256"]
)
async def test_public_key_tokens_are_verified_with_the_pem(algorithm: str, key: PrivateKey) -> None:
    settings = settings_for(jwt_secret_key=None, jwt_public_key=public_pem(key))
    async with running_server(settings) as server:
        state = await admitted(server.ws_url("r1", sign(claims("bob"), key, algorithm)))
        assert state["participants"] == [{"user_id": "bob", "username": "bob"}]
        other = RSA_OTHER_KEY if algorithm == "RS256" else ec.generate_private_key(ec.SECP256R1())
        await rejected(server.ws_url("r1", sign(claims("eve"), other, algorithm)), "unauthorized")


async def test_token_of_another_key_type_is_rejected_not_crashed() -> None:
    """ES256 is in the default allow-list beside an RSA PEM: an ES256 token must be refused
    as unauthorized, on the WebSocket and over REST, not break the handler."""
    settings = settings_for(jwt_secret_key=None, jwt_public_key=public_pem(RSA_KEY))
    async with running_server(settings) as server:
        wrong_type = sign(claims("eve"), EC_KEY, "ES256")
        await rejected(server.ws_url("r1", wrong_type), "unauthorized")
        async with httpx.AsyncClient(base_url=server.http) as http:
            response = await http.get(
                "/webrtc/config", headers={"Authorization": f"Bearer {wrong_type}"}
            )
        assert response.status_code == 401
        assert response.json()["code"] == "unauthorized"


async def test_none_algorithm_is_rejected() -> None:
    unsigned = hand_made({"alg": "none", "typ": "JWT"}, claims("mallory"), None)
    async with running_server() as server:
        await rejected(server.ws_url("r1", unsigned), "unauthorized")
    async with running_server(settings_for(jwt_algorithms="HS256")) as server:
        await rejected(server.ws_url("r1", unsigned), "unauthorized")


async def test_algorithm_outside_the_allow_list_is_rejected() -> None:
    settings = settings_for(jwt_secret_key=LONG_SECRET, jwt_algorithms="HS256")
    async with running_server(settings) as server:
        await admitted(server.ws_url("r1", sign(claims("alice"), LONG_SECRET, "HS256")))
        message = await rejected(
            server.ws_url("r1", sign(claims("bob"), LONG_SECRET, "HS512")), "unauthorized"
        )
        assert "HS512" in message


@pytest.mark.parametrize(
    "allow_list", [None, "HS256,RS256"], ids=["default-allow-list", "hmac-allowed-no-secret"]
)
async def test_hmac_token_signed_with_the_public_key_pem_is_rejected(
    allow_list: str | None,
) -> None:
    """Algorithm confusion: the RSA public key is public, so an HS256 token keyed with it
    must never verify."""
    pem = public_pem(RSA_KEY)
    settings = settings_for(jwt_secret_key=None, jwt_public_key=pem, jwt_algorithms=allow_list)
    confused = hand_made({"alg": "HS256", "typ": "JWT"}, claims("mallory"), pem.encode())
    async with running_server(settings) as server:
        await admitted(server.ws_url("r1", sign(claims("alice"), RSA_KEY, "RS256")))
        await rejected(server.ws_url("r1", confused), "unauthorized")


# JWKS.


class JwksServer:
    """A JWKS endpoint on 127.0.0.1, served from a thread; `keys` can change while it runs
    (or a fixed `body`, to serve something broken)."""

    def __init__(self, *, body: bytes | None = None) -> None:
        self.keys: list[dict[str, Any]] = []
        self.fetches = 0
        owner = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                owner.fetches += 1
                served = body if body is not None else json.dumps({"keys": owner.keys}).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(served)))
                self.end_headers()
                self.wfile.write(served)

            def log_message(self, format: str, *args: Any) -> None:
                pass  # keep the test output clean

        self._http = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._http.daemon_threads = True
        self.url = f"http://127.0.0.1:{self._http.server_address[1]}/.well-known/jwks.json"

    def publish(self, **keys: PrivateKey) -> None:
        """Serve exactly these keys, by kid."""
        self.keys = [jwk(kid, key) for kid, key in keys.items()]

    @contextlib.contextmanager
    def running(self) -> Iterator[JwksServer]:
        thread = threading.Thread(target=self._http.serve_forever, name="jwks", daemon=True)
        thread.start()
        try:
            yield self
        finally:
            self._http.shutdown()
            self._http.server_close()
            thread.join(5)


def jwk(kid: str, key: PrivateKey) -> dict[str, Any]:
    if isinstance(key, rsa.RSAPrivateKey):
        value: dict[str, Any] = RSAAlgorithm.to_jwk(key.public_key(), as_dict=True)
        value["alg"] = "RS256"
    else:
        value = ECAlgorithm.to_jwk(key.public_key(), as_dict=True)
        value["alg"] = "ES256"
    return {**value, "kid": kid, "use": "sig"}


@contextlib.asynccontextmanager
async def jwks_backed_server() -> AsyncIterator[tuple[RunningServer, JwksServer]]:
    with JwksServer().running() as jwks:
        settings = settings_for(jwt_secret_key=None, jwt_jwks_url=jwks.url)
        async with running_server(settings) as server:
            yield server, jwks


async def test_jwks_keys_are_chosen_by_kid() -> None:
    async with jwks_backed_server() as (server, jwks):
        jwks.publish(old=RSA_KEY, new=RSA_OTHER_KEY)
        await admitted(server.ws_url("r1", sign(claims("a"), RSA_KEY, "RS256", kid="old")))
        await admitted(server.ws_url("r1", sign(claims("b"), RSA_OTHER_KEY, "RS256", kid="new")))
        # Signed by one key but naming the other's kid: verified with the named key, refused.
        mislabelled = sign(claims("c"), RSA_KEY, "RS256", kid="new")
        await rejected(server.ws_url("r1", mislabelled), "unauthorized")
        unknown = sign(claims("d"), RSA_KEY, "RS256", kid="missing")
        await rejected(server.ws_url("r1", unknown), "unauthorized")
        assert jwks.fetches >= 1


async def test_jwks_is_cached_between_tokens() -> None:
    async with jwks_backed_server() as (server, jwks):
        jwks.publish(k1=RSA_KEY)
        for user in ("a", "b", "c"):
            await admitted(server.ws_url("r1", sign(claims(user), RSA_KEY, "RS256", kid="k1")))
        assert jwks.fetches == 1


async def test_unreachable_jwks_means_unauthorized() -> None:
    with JwksServer().running() as jwks:
        url = jwks.url  # its port is closed once the block ends
    settings = settings_for(jwt_secret_key=None, jwt_jwks_url=url)
    async with running_server(settings) as server:
        tok = sign(claims("a"), RSA_KEY, "RS256", kid="k1")
        await rejected(server.ws_url("r1", tok), "unauthorized")


@pytest.mark.parametrize("body", [b'{"keys": []}', b"not json", b'["a list"]'])
async def test_jwks_without_usable_keys_means_unauthorized(body: bytes) -> None:
    with JwksServer(body=body).running() as jwks:
        settings = settings_for(jwt_secret_key=None, jwt_jwks_url=jwks.url)
        async with running_server(settings) as server:
            tok = sign(claims("a"), RSA_KEY, "RS256", kid="k1")
            await rejected(server.ws_url("r1", tok), "unauthorized")
            assert jwks.fetches >= 1


async def test_jwks_rotation_picks_up_new_keys_and_drops_removed_ones() -> None:
    """Rotation by kid with the refresh timings shortened: a key published later is fetched
    on its first token, and a key removed from the set stops verifying once the cached set
    expires (a per-kid cache must not keep a revoked key alive)."""
    with JwksServer().running() as jwks:
        jwks.publish(k1=RSA_KEY)
        settings = load_settings(jwt_jwks_url=jwks.url)
        authenticator = Authenticator(
            settings, jwks_cache_seconds=1.0, jwks_refresh_cooldown_seconds=0.0
        )
        first = await authenticator.authenticate(sign(claims("a"), RSA_KEY, "RS256", kid="k1"))
        assert first.user_id == "a"

        jwks.publish(k1=RSA_KEY, k2=RSA_OTHER_KEY)
        second = await authenticator.authenticate(
            sign(claims("b"), RSA_OTHER_KEY, "RS256", kid="k2")
        )
        assert second.user_id == "b"

        jwks.publish(k2=RSA_OTHER_KEY)  # k1 revoked
        await asyncio.sleep(2.0)  # twice the cache lifespan
        revoked = sign(claims("c"), RSA_KEY, "RS256", kid="k1")
        with pytest.raises(SignalingError) as caught:
            await authenticator.authenticate(revoked)
        assert caught.value.code.value == "unauthorized"
        still = await authenticator.authenticate(
            sign(claims("d"), RSA_OTHER_KEY, "RS256", kid="k2")
        )
        assert still.user_id == "d"


# Registered claims.


@pytest.mark.parametrize(
    ("payload", "reason"),
    [
        ({"sub": "alice"}, "no exp"),
        ({"sub": "alice", "exp": int(time.time()) - 120}, "expired"),
        (claims("alice", nbf=int(time.time()) + 600), "not yet valid"),
        ({"exp": int(time.time()) + 600}, "no sub"),
        (claims("x" * 129), "sub too long"),
        (claims(""), "empty sub"),
        (claims("alice", rooms="r1"), "rooms not a list"),
    ],
    ids=lambda value: value if isinstance(value, str) else None,
)
async def test_token_with_bad_registered_claims_is_rejected(
    payload: dict[str, Any], reason: str
) -> None:
    async with running_server() as server:
        await rejected(server.ws_url("r1", sign(payload)), "unauthorized")


async def test_missing_or_malformed_token_is_rejected() -> None:
    async with running_server() as server:
        assert "required" in await rejected(server.ws_url("r1"), "unauthorized")
        await rejected(server.ws_url("r1", "not-a-jwt"), "unauthorized")
        await rejected(server.ws_url("r1", ""), "unauthorized")


async def test_audience_and_issuer_are_enforced_when_configured() -> None:
    settings = settings_for(jwt_audience="rendezvous", jwt_issuer="https://issuer.test")
    good: dict[str, Any] = {"aud": "rendezvous", "iss": "https://issuer.test"}
    async with running_server(settings) as server:
        await admitted(server.ws_url("r1", sign(claims("alice", **good))))
        await admitted(
            server.ws_url("r1", sign(claims("alice", aud=["other", "rendezvous"], iss=good["iss"])))
        )
        bad_claims: list[dict[str, Any]] = [
            {"aud": "other", "iss": good["iss"]},
            {"iss": good["iss"]},
            {"aud": "rendezvous", "iss": "https://evil.test"},
            {"aud": "rendezvous"},
        ]
        for bad in bad_claims:
            await rejected(server.ws_url("r1", sign(claims("mallory", **bad))), "unauthorized")


async def test_audience_and_issuer_are_not_required_when_not_configured() -> None:
    async with running_server() as server:
        await admitted(server.ws_url("r1", sign(claims("alice", aud="anything", iss="any"))))


# Room grants.


@pytest.mark.parametrize(
    ("rooms", "room", "allowed"),
    [
        (None, "anything-at-all", True),
        (["demo"], "demo", True),
        (["demo"], "demo2", False),
        (["team-*"], "team-red", True),
        (["team-*"], "teamred", False),
        (["team-*"], "other-team-red", False),
        (["a", "team-*"], "a", True),
        ([], "demo", False),
    ],
)
async def test_rooms_claim_grants_rooms(rooms: list[str] | None, room: str, allowed: bool) -> None:
    async with running_server() as server:
        url = server.ws_url(room, token("alice", rooms=rooms))
        if allowed:
            assert (await admitted(url))["room_id"] == room
        else:
            await rejected(url, "forbidden_room")


@pytest.mark.parametrize(
    ("bad_token", "code"),
    [("garbage", "unauthorized"), (token("bob", rooms=["elsewhere"]), "forbidden_room")],
    ids=["unauthorized", "forbidden_room"],
)
async def test_rejected_join_never_appears_in_the_room(bad_token: str, code: str) -> None:
    async with running_server() as server:
        async with joined(server.ws_url("r1", token("alice"))) as (alice, _):
            await rejected(server.ws_url("r1", bad_token), code)
            await alice.expect_silence()
            assert await participants(server, "r1") == {"alice"}
            # The room still works for a legitimate joiner afterwards.
            async with joined(server.ws_url("r1", token("carol"))):
                assert (await alice.expect("user_joined"))["payload"]["user_id"] == "carol"


# Token sources.


async def test_token_in_the_query_is_accepted() -> None:
    async with running_server() as server:
        state = await admitted(server.ws_url("r1", token("alice")))
        assert state["participant_count"] == 1


async def test_token_in_the_authorization_header_is_accepted() -> None:
    async with running_server() as server:
        headers = {"Authorization": f"Bearer {token('alice')}"}
        state = await admitted(server.ws_url("r1"), additional_headers=headers)
        assert [p["user_id"] for p in state["participants"]] == ["alice"]
        bad = {"Authorization": "Bearer garbage"}
        await rejected(server.ws_url("r1"), "unauthorized", additional_headers=bad)


async def test_token_as_bearer_subprotocol_is_accepted_and_rendezvous_v1_selected() -> None:
    async with running_server() as server:
        offered = ["rendezvous.v1", f"bearer.{token('alice')}"]
        async with joined(server.ws_url("r1"), subprotocols=offered) as (client, state):
            assert client.connection.subprotocol == "rendezvous.v1"
            assert [p["user_id"] for p in state["payload"]["participants"]] == ["alice"]
        async with connect(server.ws_url("r1"), subprotocols=["rendezvous.v1", "bearer.x"]) as c:
            assert c.connection.subprotocol == "rendezvous.v1"
            await c.expect_error("unauthorized")
            await c.expect_close(PolicyViolation)
