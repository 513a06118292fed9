"""The signaling container's side of the TURN sidecar: `/webrtc/config` serves the
credentials file while it is good, rereads it the moment the sidecar replaces it, and
falls through to the next source (WEBRTC_TURN_SECRET, static credentials, no TURN) when
it is missing, unreadable or expired, with `/readyz` staying 200 but saying
`turn: degraded`, and a log line for each change."""

from __future__ import annotations

import asyncio
import logging
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from rendezvous.auth import Identity
from rendezvous.policy.effective import resolve
from rendezvous.settings import Settings
from rendezvous.turn.credentials_file import TurnCredentials, write_credentials
from rendezvous.turn.ice_servers import IceServerProvider, IceServers, ice_server_provider
from rendezvous.turn.sidecar_file import POLL_SECONDS, SidecarFileIceServers
from tests.support.server import running_server, test_settings
from tests.support.tokens import token

FILE_URLS = ["turn:127.0.0.1:3478?transport=udp"]
ALICE = Identity("alice", "Alice")


def credentials(
    *, username: str = "pod", expires_in: int = 600, now: float | None = None
) -> TurnCredentials:
    now = time.time() if now is None else now
    expires_at = int(now) + expires_in
    return TurnCredentials(
        urls=FILE_URLS,
        username=f"{expires_at}:{username}",
        credential=f"credential-of-{username}",
        expires_at=expires_at,
        rotated_at=int(now),
    )


class Configured:
    """A provider with the ICE configuration its settings resolve to, as the route has."""

    def __init__(self, settings: Settings, provider: IceServerProvider | None = None) -> None:
        self.provider = provider or ice_server_provider(settings)
        self.ice = resolve(settings).ice

    def ice_servers(self, identity: Identity) -> IceServers:
        return self.provider.ice_servers(identity, self.ice)

    @property
    def turn_status(self) -> str:
        return self.provider.turn_status

    @property
    def turn_problem(self) -> str:
        return self.provider.turn_problem


def provider(path: Path, **settings: Any) -> Configured:
    configured = Configured(test_settings(turn_credentials_file=path, **settings))
    assert isinstance(configured.provider, SidecarFileIceServers)
    return configured


def turn_entry(servers: list[dict[str, Any]]) -> dict[str, Any] | None:
    entries = [s for s in servers if s.get("username")]
    assert len(entries) <= 1
    return entries[0] if entries else None


def test_serves_the_file_with_its_urls_and_remaining_lifetime(tmp_path: Path) -> None:
    path = tmp_path / "turn.json"
    written = credentials(expires_in=600)
    write_credentials(path, written)
    ice = provider(path, stun_urls="stun:127.0.0.1:3478").ice_servers(ALICE)
    assert ice.servers == [
        {"urls": ["stun:127.0.0.1:3478"]},
        {"urls": FILE_URLS, "username": written.username, "credential": written.credential},
    ]
    assert 598 <= ice.ttl_seconds <= 600


def test_webrtc_turn_urls_win_over_the_files_urls(tmp_path: Path) -> None:
    path = tmp_path / "turn.json"
    write_credentials(path, credentials())
    ice = provider(path, turn_urls="turns:turn.example.test:5349").ice_servers(ALICE)
    entry = turn_entry(ice.servers)
    assert entry is not None and entry["urls"] == ["turns:turn.example.test:5349"]


def test_a_replaced_file_is_served_at_the_next_call(tmp_path: Path) -> None:
    path = tmp_path / "turn.json"
    write_credentials(path, credentials(username="first"))
    source = provider(path)
    assert (turn_entry(source.ice_servers(ALICE).servers) or {})[
        "credential"
    ] == "credential-of-first"
    for generation in range(5):  # same size each time: the file identity still changes
        write_credentials(path, credentials(username=f"gen{generation}"))
        entry = turn_entry(source.ice_servers(ALICE).servers) or {}
        assert entry["credential"] == f"credential-of-gen{generation}"


@pytest.mark.parametrize("damage", ["missing", "expired", "garbage", "half"])
def test_an_unusable_file_falls_through_to_the_shared_secret(tmp_path: Path, damage: str) -> None:
    path = tmp_path / "turn.json"
    good = credentials()
    if damage == "expired":
        write_credentials(path, credentials(expires_in=-1))
    elif damage == "garbage":
        path.write_text("not json at all")
    elif damage == "half":
        path.write_bytes(good.model_dump_json().encode()[:40])
    source = provider(
        path, turn_urls="turn:127.0.0.1:3478", turn_secret="shared", turn_ttl_seconds=300
    )
    entry = turn_entry(source.ice_servers(ALICE).servers)
    assert entry is not None
    assert entry["username"].endswith(":alice")  # minted per user, not the pod's credential
    assert entry["credential"] != good.credential
    assert source.turn_status == "degraded"
    assert str(path) in source.turn_problem


def test_then_to_static_credentials_then_to_no_turn(tmp_path: Path) -> None:
    path = tmp_path / "missing.json"
    static = provider(
        path, turn_urls="turn:127.0.0.1:3478", turn_username="u", turn_credential="c"
    ).ice_servers(ALICE)
    assert turn_entry(static.servers) == {
        "urls": ["turn:127.0.0.1:3478"],
        "username": "u",
        "credential": "c",
    }
    bare = provider(path, stun_urls="stun:127.0.0.1:3478").ice_servers(ALICE)
    assert bare.servers == [{"urls": ["stun:127.0.0.1:3478"]}]


def test_expiry_is_checked_at_each_call_not_only_when_the_file_changes(tmp_path: Path) -> None:
    path = tmp_path / "turn.json"
    now = [1_800_000_000.0]
    write_credentials(path, credentials(expires_in=60, now=now[0]))
    settings = test_settings(turn_credentials_file=path)
    source = Configured(
        settings,
        SidecarFileIceServers(
            settings, fallback=ice_server_provider(test_settings()), clock=lambda: now[0]
        ),
    )
    assert turn_entry(source.ice_servers(ALICE).servers) is not None
    assert source.ice_servers(ALICE).ttl_seconds == 60
    now[0] += 60  # the credential's last second has passed
    assert turn_entry(source.ice_servers(ALICE).servers) is None
    assert source.turn_status == "degraded"
    assert "expired" in source.turn_problem


async def test_readyz_stays_200_and_says_degraded_and_logs_each_change(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "turn.json"
    caplog.set_level(logging.INFO, logger="rendezvous.turn.sidecar_file")
    settings = test_settings(turn_credentials_file=path, turn_urls="turn:127.0.0.1:3478")
    async with (
        running_server(settings) as server,
        httpx.AsyncClient(base_url=server.http, trust_env=False, timeout=10) as http,
    ):
        degraded = await _ready_body(http)
        assert degraded["turn"] == "degraded"
        assert "does not exist" in degraded["turn_problem"]
        config = await http.get(
            "/webrtc/config", headers={"Authorization": f"Bearer {token('alice')}"}
        )
        assert config.status_code == 200
        assert config.json()["iceServers"] == []  # no STUN in tests, no TURN without the file

        written = credentials()
        write_credentials(path, written)
        config = await http.get(
            "/webrtc/config", headers={"Authorization": f"Bearer {token('alice')}"}
        )
        assert turn_entry(config.json()["iceServers"]) == {
            "urls": ["turn:127.0.0.1:3478"],
            "username": written.username,
            "credential": written.credential,
        }
        healthy = await _ready_body(http)
        assert healthy["turn"] == "ok" and "turn_problem" not in healthy
        await _logged(caplog, "usable again")

        path.unlink()
        assert (await _ready_body(http))["turn"] == "degraded"
        await _logged(caplog, "unusable")
    unusable = [r for r in caplog.records if "unusable" in r.getMessage()]
    assert len(unusable) == 2  # at start, and after the unlink: once per change
    assert all("falls back to no TURN server" in r.getMessage() for r in unusable)
    assert not any(written.credential in r.getMessage() for r in caplog.records)


async def _ready_body(http: httpx.AsyncClient) -> dict[str, Any]:
    response = await http.get("/readyz")
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


async def _logged(caplog: pytest.LogCaptureFixture, text: str) -> None:
    """Wait for the poll (once a second) to log `text`; 2x margin over one poll period."""
    seen = len([r for r in caplog.records if text in r.getMessage()])
    async with asyncio.timeout(POLL_SECONDS * 2 + 1):
        while len([r for r in caplog.records if text in r.getMessage()]) == seen:
            await asyncio.sleep(0.05)
