"""TURN credentials from `/webrtc/config` against a real coturn (`use-auth-secret` with
the service's WEBRTC_TURN_SECRET): they allocate with `turnutils_uclient`; expired,
forged, another user's and another secret's credentials are refused; two aiortc
peers limited to relay candidates connect through coturn with only what the service
handed them, negotiating over its WebSocket; and when the Secret the TURN sidecar reads
rotates (kubelet's atomic swap, coturn restarted with the new secret), the service hands
out the sidecar's new credentials, which allocate, while the old ones are refused.
coturn's own log is the evidence of what it allocated or refused, and for whom."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aioice.ice
import httpx
import pytest
from aiortc import RTCPeerConnection

from rendezvous.turn.credentials import mint
from tests.e2e.test_aiortc import LOOPBACK, Peer, chat, fetch_rtc_configuration
from tests.support.client import joined
from tests.support.coturn import ALLOCATED, REFUSED, Coturn
from tests.support.kubelet import SecretVolume
from tests.support.process import cli_env
from tests.support.server import running_server
from tests.support.server import test_settings as settings_for_test
from tests.support.tokens import token
from tests.support.turn_sidecar import running_sidecar

TTL_SECONDS = 3600
HTTP_TIMEOUT_SECONDS = 10.0
FRAME_TIMEOUT_SECONDS = 10.0


@dataclass(frozen=True)
class ConfigAnswer:
    """What `/webrtc/config` answered one user."""

    response: httpx.Response
    body: dict[str, Any]
    turn: dict[str, Any]  # the one TURN entry of iceServers

    @property
    def username(self) -> str:
        username: str = self.turn["username"]
        return username

    @property
    def credential(self) -> str:
        credential: str = self.turn["credential"]
        return credential


async def fetch_turn(coturn: Coturn, *users: str, secret: str, ttl: int) -> list[ConfigAnswer]:
    """Run the service with `secret` and `ttl` for coturn's URL, and GET /webrtc/config as
    each of `users`."""
    settings = settings_for_test(turn_urls=coturn.url, turn_secret=secret, turn_ttl_seconds=ttl)
    served = []
    async with (
        running_server(settings) as server,
        httpx.AsyncClient(
            base_url=server.http, timeout=HTTP_TIMEOUT_SECONDS, trust_env=False
        ) as http,
    ):
        for user in users:
            response = await http.get(
                "/webrtc/config", headers={"Authorization": f"Bearer {token(user)}"}
            )
            assert response.status_code == 200, response.text
            body = response.json()
            (turn,) = body["iceServers"]  # no STUN configured: the TURN entry alone
            served.append(ConfigAnswer(response, body, turn))
    return served


def expiry(username: str) -> int:
    return int(username.split(":", 1)[0])


async def test_webrtc_config_credentials_allocate_on_coturn(coturn: Coturn) -> None:
    before = time.time()
    (alice,) = await fetch_turn(coturn, "alice", secret=coturn.secret, ttl=TTL_SECONDS)

    assert alice.turn["urls"] == [coturn.url]
    assert alice.body["ttl"] == TTL_SECONDS
    assert alice.username.partition(":")[2] == "alice"
    assert before + TTL_SECONDS - 1 <= expiry(alice.username)
    assert expiry(alice.username) <= time.time() + TTL_SECONDS
    # The secret itself never leaves the service, in the body or the headers.
    assert coturn.secret not in alice.response.text
    assert coturn.secret not in str(alice.response.headers)

    assert await coturn.allocate(alice.username, alice.credential) == ALLOCATED, coturn.log_tail()
    assert coturn.allocations(alice.username) > 0, coturn.log_tail()
    assert coturn.refusals(alice.username) == 0, coturn.log_tail()


async def test_webrtc_config_credentials_are_refused_once_expired(coturn: Coturn) -> None:
    (alice,) = await fetch_turn(coturn, "alice", secret=coturn.secret, ttl=1)
    expires_at = expiry(alice.username)
    # Right but for the time: the same secret, user and expiry give the same credential.
    assert mint(coturn.secret, "alice", ttl_seconds=1, now=expires_at - 1) == (
        alice.username,
        alice.credential,
    )
    await asyncio.sleep(max(0.0, expires_at + 2 - time.time()))  # 2 s past, whole seconds

    assert await coturn.allocate(alice.username, alice.credential) == REFUSED, coturn.log_tail()
    assert coturn.refusals(alice.username) > 0, coturn.log_tail()
    assert coturn.allocations(alice.username) == 0, coturn.log_tail()


async def test_credentials_minted_with_another_secret_are_refused(coturn: Coturn) -> None:
    (alice,) = await fetch_turn(coturn, "alice", secret="not-" + coturn.secret, ttl=TTL_SECONDS)

    assert await coturn.allocate(alice.username, alice.credential) == REFUSED, coturn.log_tail()
    assert coturn.refusals(alice.username) > 0, coturn.log_tail()
    assert coturn.allocations(alice.username) == 0, coturn.log_tail()


Tamper = Callable[[ConfigAnswer, ConfigAnswer], tuple[str, str]]


def _forged(alice: ConfigAnswer, bob: ConfigAnswer) -> tuple[str, str]:
    return alice.username, "bm90IGEgY3JlZGVudGlhbA=="  # base64, but not the HMAC


def _with_another_users_credential(alice: ConfigAnswer, bob: ConfigAnswer) -> tuple[str, str]:
    return alice.username, bob.credential


def _with_a_later_expiry(alice: ConfigAnswer, bob: ConfigAnswer) -> tuple[str, str]:
    extended = f"{expiry(alice.username) + 86400}:alice"
    return extended, alice.credential


@pytest.mark.parametrize(
    "tamper",
    [_forged, _with_another_users_credential, _with_a_later_expiry],
    ids=["forged-credential", "another-users-credential", "later-expiry"],
)
async def test_wrong_credentials_are_refused(coturn: Coturn, tamper: Tamper) -> None:
    alice, bob = await fetch_turn(coturn, "alice", "bob", secret=coturn.secret, ttl=TTL_SECONDS)
    username, credential = tamper(alice, bob)

    assert await coturn.allocate(username, credential) == REFUSED, coturn.log_tail()
    assert coturn.refusals(username) > 0, coturn.log_tail()
    assert coturn.allocations(username) == 0, coturn.log_tail()


def candidate_type(payload: dict[str, Any]) -> str:
    """The `typ` of a trickled `candidate:...` line."""
    fields: list[str] = payload["candidate"].split()
    return fields[fields.index("typ") + 1]


def selected_pair_types(pc: RTCPeerConnection) -> tuple[str, str]:
    """The (local, remote) candidate types of the pair ICE nominated. aiortc has no
    getSelectedCandidatePair(); this reads aioice's nominated pair for component 1."""
    assert pc.sctp is not None, "no data channel negotiated"
    connection: Any = pc.sctp.transport.transport._connection
    pair: Any = connection._nominated[1]
    return pair.local_candidate.type, pair.remote_candidate.type


async def test_aiortc_peers_connect_through_coturn_with_only_the_relay_it_handed_out(
    coturn: Coturn, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Relay policy gathers no host candidates; pinned to loopback all the same.
    monkeypatch.setattr(
        aioice.ice, "get_host_addresses", lambda use_ipv4=True, use_ipv6=True: [LOOPBACK]
    )
    settings = settings_for_test(
        turn_urls=coturn.url,
        turn_secret=coturn.secret,
        turn_ttl_seconds=TTL_SECONDS,
        ice_transport_policy="relay",
    )
    async with running_server(settings) as server:
        alice_token, bob_token = token("alice", rooms=["call-1"]), token("bob", rooms=["call-1"])
        alice_config, alice_rtc = await fetch_rtc_configuration(server.http, alice_token)
        bob_config, bob_rtc = await fetch_rtc_configuration(server.http, bob_token)
        usernames = {}
        for user, config in (("alice", alice_config), ("bob", bob_config)):
            assert config["iceTransportPolicy"] == "relay"
            (turn,) = config["iceServers"]  # TURN alone: nothing else to connect through
            assert turn["urls"] == [coturn.url]
            assert turn["username"].partition(":")[2] == user
            usernames[user] = turn["username"]

        alice_pc, bob_pc = RTCPeerConnection(alice_rtc), RTCPeerConnection(bob_rtc)
        try:
            async with joined(server.ws_url("call-1", alice_token)) as (alice_ws, _):
                async with joined(server.ws_url("call-1", bob_token)) as (bob_ws, _):
                    arrival = await alice_ws.expect("user_joined", FRAME_TIMEOUT_SECONDS)
                    assert arrival["payload"]["user_id"] == "bob"
                    alice = Peer("alice", alice_ws, alice_pc)
                    bob = Peer("bob", bob_ws, bob_pc)
                    try:
                        await chat(alice, bob, greeting="hello via coturn", reply="and back")
                    except TimeoutError as exc:
                        raise AssertionError(
                            "no data-channel exchange through coturn; candidates sent: "
                            f"{alice.sent_candidates} {bob.sent_candidates}\n"
                            f"{coturn.log_tail()}"
                        ) from exc

                    for peer in (alice, bob):
                        sent = [p for p in peer.sent_candidates if p["candidate"]]
                        assert sent, "no candidates: coturn refused the allocation?"
                        assert {candidate_type(p) for p in sent} == {"relay"}, sent
                        for payload in sent:  # relayed addresses are coturn's relay ports
                            fields = payload["candidate"].split()
                            assert fields[4] == LOOPBACK
                            assert coturn.min_port <= int(fields[5]) <= coturn.max_port
                    assert selected_pair_types(alice_pc) == ("relay", "relay")
                    assert selected_pair_types(bob_pc) == ("relay", "relay")
        finally:
            await asyncio.wait_for(
                asyncio.gather(alice_pc.close(), bob_pc.close()), FRAME_TIMEOUT_SECONDS
            )

    for username in usernames.values():
        assert coturn.allocations(username) > 0, coturn.log_tail()
        # ICE checks and DTLS/SCTP went through the relay on a bound channel.
        assert coturn.successes(username, "CHANNEL_BIND") > 0, coturn.log_tail()


# The whole sidecar path: a Secret volume written the way kubelet writes it, the real
# `rendezvous turn-sidecar` process, the service reading only its file, and coturn.

SIDECAR_POLL_MARGIN_SECONDS = 4.0  # the sidecar rereads the volume once a second; 4x


async def test_a_rotated_secret_reaches_clients_and_coturn_refuses_the_old_credentials(
    coturn: Coturn, tmp_path: Path
) -> None:
    volume = SecretVolume(tmp_path / "turn-secret")
    volume.write({"static-auth-secret": coturn.secret.encode()})
    shared = tmp_path / "shared"
    shared.mkdir()
    sidecar_env = cli_env(
        tmp_path,
        WEBRTC_TURN_SECRET_DIR=str(volume.directory),
        WEBRTC_TURN_CREDENTIALS_FILE=str(shared / "turn.json"),
        WEBRTC_TURN_URLS=coturn.url,
        WEBRTC_TURN_TTL=str(TTL_SECONDS),
    )
    settings = settings_for_test(turn_credentials_file=shared / "turn.json")
    async with (
        running_sidecar(env=sidecar_env, log_dir=tmp_path) as sidecar,
        running_server(settings) as server,
        httpx.AsyncClient(
            base_url=server.http, timeout=HTTP_TIMEOUT_SECONDS, trust_env=False
        ) as http,
    ):
        before = await _pod_turn(http)
        assert before["urls"] == [coturn.url]  # the file's URLs: the service has none of its own
        assert before["username"].partition(":")[2] == "rendezvous"
        assert await coturn.allocate(before["username"], before["credential"]) == ALLOCATED

        new_secret = "rotated-" + coturn.secret
        volume.write({"static-auth-secret": new_secret.encode()})
        await coturn.restart(secret=new_secret)
        after = await _next_pod_turn(http, unlike=before)
        assert mint(
            new_secret,
            "rendezvous",
            ttl_seconds=TTL_SECONDS,
            now=expiry(after["username"]) - TTL_SECONDS,
        ) == (
            after["username"],
            after["credential"],
        )
        assert new_secret not in sidecar.log() and coturn.secret not in sidecar.log()

    assert await coturn.allocate(after["username"], after["credential"]) == ALLOCATED
    assert coturn.allocations(after["username"]) > 0, coturn.log_tail()
    refused_before = coturn.refusals(before["username"])
    assert await coturn.allocate(before["username"], before["credential"]) == REFUSED
    assert coturn.refusals(before["username"]) > refused_before, coturn.log_tail()


async def _pod_turn(http: httpx.AsyncClient) -> dict[str, Any]:
    response = await http.get(
        "/webrtc/config", headers={"Authorization": f"Bearer {token('carol')}"}
    )
    assert response.status_code == 200, response.text
    (turn,) = response.json()["iceServers"]
    entry: dict[str, Any] = turn
    return entry


async def _next_pod_turn(http: httpx.AsyncClient, *, unlike: dict[str, Any]) -> dict[str, Any]:
    """The first TURN entry /webrtc/config hands out that differs from `unlike`."""
    async with asyncio.timeout(SIDECAR_POLL_MARGIN_SECONDS):
        while (turn := await _pod_turn(http))["credential"] == unlike["credential"]:
            await asyncio.sleep(0.05)
    return turn
