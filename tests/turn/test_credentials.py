"""TURN REST credentials: the minting arithmetic, checked against openssl's HMAC, and the
shared-secret source behind /webrtc/config."""

from __future__ import annotations

import subprocess

import httpx
import pytest

from rendezvous.auth import Identity
from rendezvous.policy.effective import resolve
from rendezvous.settings import ConfigError
from rendezvous.turn.credentials import expiry_of, mint
from rendezvous.turn.ice_servers import MintedIceServers
from tests.support.server import running_server, test_settings
from tests.support.tokens import token

SECRET = "turn-shared-secret"


def _openssl_credential(secret: str, username: str) -> str:
    """The same HMAC-SHA1 + base64, computed by another implementation."""
    digest = subprocess.run(
        ["openssl", "dgst", "-sha1", "-hmac", secret, "-binary"],
        input=username.encode(),
        capture_output=True,
        check=True,
    ).stdout
    encoded = subprocess.run(
        ["openssl", "base64", "-A"], input=digest, capture_output=True, check=True
    ).stdout
    return encoded.decode()


@pytest.mark.parametrize("user_id", ["alice", "zoë-😀", "user:with:colons"])
def test_credentials_follow_the_turn_rest_format(user_id: str) -> None:
    username, credential = mint(SECRET, user_id, ttl_seconds=3600, now=1_700_000_000.9)
    assert username == f"1700003600:{user_id}"
    assert credential == _openssl_credential(SECRET, username)


def test_expiry_is_whole_seconds_after_now() -> None:
    username, _ = mint(SECRET, "u", ttl_seconds=60, now=99.99)
    assert expiry_of(username) == 159


def test_another_secret_gives_another_credential() -> None:
    _, one = mint(SECRET, "u", ttl_seconds=60, now=0)
    _, other = mint(SECRET + "x", "u", ttl_seconds=60, now=0)
    assert one != other


def test_minted_servers_put_credentials_on_turn_urls_only() -> None:
    settings = test_settings(
        stun_urls="stun:127.0.0.1:3478",
        turn_urls="turn:127.0.0.1:3478?transport=udp,turn:127.0.0.1:3478?transport=tcp",
        turn_secret=SECRET,
        turn_ttl_seconds=600,
    )
    minted = MintedIceServers(settings, clock=lambda: 1000.0)
    ice = minted.ice_servers(Identity("bob", "Bob"), resolve(settings).ice)
    stun, turn = ice.servers
    assert stun == {"urls": ["stun:127.0.0.1:3478"]}
    assert turn["urls"] == [
        "turn:127.0.0.1:3478?transport=udp",
        "turn:127.0.0.1:3478?transport=tcp",
    ]
    assert turn["username"] == "1600:bob"
    assert turn["credential"] == _openssl_credential(SECRET, "1600:bob")
    assert ice.ttl_seconds == 600


async def test_config_mints_per_user_credentials_and_never_shows_the_secret() -> None:
    settings = test_settings(
        turn_urls="turn:127.0.0.1:3478", turn_secret=SECRET, turn_ttl_seconds=900
    )
    async with running_server(settings) as server, httpx.AsyncClient(trust_env=False) as http:
        answers = {}
        for user in ("alice", "bob"):
            headers = {"Authorization": f"Bearer {token(user)}"}
            response = await http.get(f"{server.http}/webrtc/config", headers=headers)
            assert response.status_code == 200
            assert SECRET not in response.text
            answers[user] = response.json()
    for user, body in answers.items():
        (turn,) = body["iceServers"]
        assert turn["username"].endswith(f":{user}")
        assert body["ttl"] == 900
        assert body["ice_servers"] == body["iceServers"]
    assert answers["alice"]["iceServers"] != answers["bob"]["iceServers"]


def test_turn_urls_need_a_secret_or_static_credentials() -> None:
    test_settings(turn_urls="turn:127.0.0.1:3478", turn_secret=SECRET)
    with pytest.raises(
        ConfigError, match="WEBRTC_TURN_URLS needs WEBRTC_TURN_CREDENTIALS_FILE, WEBRTC_TURN_SECRET"
    ):
        test_settings(turn_urls="turn:127.0.0.1:3478")
