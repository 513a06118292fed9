"""SEED.md's browser snippet ("Manual Testing with JavaScript"), as written, in Chromium:
evaluated in a page of the service's origin on localhost:8000 (free inside the
loopback-only network namespace), so its `fetch` is same-origin. It takes its ICE servers
and the relay policy from /webrtc/config (coturn, with the credentials the TURN sidecar
minted from its Secret), and completes a call with an aiortc peer that offers: both ends
connected, the selected pair relay on both sides. The README's variant of the snippet
("From a browser") is run the same way.

js/seed_snippet.js is the snippet byte for byte; a test holds it to SEED.md when
../shared/SEED.md is there (CI lays it beside the clone)."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import re
import time
from collections.abc import AsyncIterator
from pathlib import Path

import aioice.ice
import pytest

from tests.browser.aiortc_peer import aiortc_peer
from tests.browser.demo import CALL_TIMEOUT_SECONDS
from tests.browser.relay import RelayPath, relay_path
from tests.browser.webrtc import JS_DIR, selected_pair
from tests.e2e.test_aiortc import LOOPBACK, fetch_rtc_configuration
from tests.support.browser import BrowserPage, Chromium, chromium
from tests.support.coturn import Coturn
from tests.support.instances import Instance
from tests.support.process import port_open
from tests.support.tokens import token
from tests.turn.test_coturn import selected_pair_types

ROOT = Path(__file__).resolve().parents[2]
SEED_MD = ROOT.parent / "shared" / "SEED.md"
SEED_SNIPPET = JS_DIR / "seed_snippet.js"
# The snippet's digest, recorded when it was checked against SEED.md.
SEED_SNIPPET_SHA256 = "5d531798223e7a842efb4ef2796dc76dff784d99973b4cb91c37642c38e46a48"
SEED_PORT = 8000  # the snippet's own http://localhost:8000
SEED_ROOM = "my-room"  # the snippet's own room
SNIPPET_USER = "snippet-user"
PY_USER = "aiortc-peer"
JOIN_TIMEOUT_SECONDS = 10.0


def javascript_block(markdown: str, heading: str) -> str:
    """The first ```javascript block after `heading` in a Markdown text."""
    section = markdown.split(f"\n{heading}\n", 1)[1]
    match = re.search(r"```javascript\n(.*?)```", section, re.DOTALL)
    assert match, f"no javascript block under {heading}"
    return match.group(1)


def snippet(source: str) -> str:
    if source == "SEED.md":
        return SEED_SNIPPET.read_text()
    return javascript_block((ROOT / "README.md").read_text(), "### From a browser")


def as_function(code: str) -> str:
    """The snippet unchanged, as the body of an async function whose argument is the
    `token` it expects to find; then its connection and socket are kept for the test."""
    return f"async (token) => {{\n{code}\nwindow.snippet = {{ pc, ws }};\n}}"


@contextlib.asynccontextmanager
async def serving_on_seed_port(env: dict[str, str], log_dir: Path) -> AsyncIterator[Instance]:
    assert not port_open(SEED_PORT), (
        f"port {SEED_PORT} is taken: the snippet needs localhost:{SEED_PORT}, which is free "
        "only in the loopback-only network namespace the tests run in"
    )
    server = Instance(0, env=env, log_dir=log_dir)
    server.port = SEED_PORT  # not a free port drawn at random: the snippet's own
    try:
        await server.start()
        yield server
    finally:
        await server.stop()


async def wait_console(page: BrowserPage, prefix: str, *, timeout: float) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for line in page.console:
            if line.startswith(prefix):
                return line
        await asyncio.sleep(0.05)
    raise AssertionError(f"{page.name}: no console line {prefix!r}: {page.console}")


async def assert_uses_the_sidecars_relay(page: BrowserPage, relay: RelayPath) -> None:
    """The snippet's RTCPeerConnection holds what /webrtc/config answered."""
    used = await page.evaluate("() => window.snippet.pc.getConfiguration()")
    minted = relay.credentials()
    assert used["iceTransportPolicy"] == "relay", used
    assert [
        (server["urls"], server.get("username"), server.get("credential"))
        for server in used["iceServers"]
    ] == [([relay.coturn.url], minted.username, minted.credential)], used


def test_the_seed_snippet_file_is_seed_mds_as_written() -> None:
    """js/seed_snippet.js is SEED.md's block byte for byte: compared with SEED.md where it
    lies beside the clone (a workstation), else with the digest recorded when it was (a CI
    clone has no ../shared), so an edit to the snippet fails either way."""
    snippet = SEED_SNIPPET.read_bytes()
    if SEED_MD.exists():
        expected = javascript_block(SEED_MD.read_text(), "### Manual Testing with JavaScript")
        assert snippet.decode() == expected
    assert hashlib.sha256(snippet).hexdigest() == SEED_SNIPPET_SHA256


@pytest.mark.parametrize("source", ["SEED.md", "README.md"])
async def test_browser_snippet_as_written_calls_aiortc_through_coturn(
    source: str, tmp_path: Path, coturn: Coturn, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(
        aioice.ice, "get_host_addresses", lambda use_ipv4=True, use_ipv6=True: [LOOPBACK]
    )
    async with (
        relay_path(coturn, tmp_path) as relay,
        serving_on_seed_port(relay.service_env(tmp_path), tmp_path) as server,
        chromium(tmp_path / "pages") as browser,
    ):
        # Any page of the service's origin: the snippet's fetch is then same-origin.
        page = await browser.open("snippet", f"http://localhost:{SEED_PORT}/healthz")
        await page.evaluate(as_function(snippet(source)), token(SNIPPET_USER))
        await wait_console(page, "log: Room participants:", timeout=JOIN_TIMEOUT_SECONDS)
        await assert_uses_the_sidecars_relay(page, relay)

        bearer = token(PY_USER)
        config, configuration = await fetch_rtc_configuration(server.http, bearer)
        relay.assert_config_is_the_sidecars(config)
        url = server.ws_url(SEED_ROOM, bearer)
        async with aiortc_peer(url, user_id=PY_USER, configuration=configuration) as peer:
            await peer.offer(to=SNIPPET_USER)
            await snippet_connected(browser, page)
            await peer.wait_until(
                "connection",
                lambda: peer.pc.connectionState == "connected",
                timeout=CALL_TIMEOUT_SECONDS,
            )
            await peer.wait_until(
                "open chat channel (SCTP through the relay)",
                lambda: any(c.readyState == "open" for c in peer.channels),
                timeout=CALL_TIMEOUT_SECONDS,
            )
            pair = await browser.poll(
                page,
                selected_pair("window.snippet.pc"),
                what="a selected candidate pair",
                timeout=CALL_TIMEOUT_SECONDS,
            )
            assert (pair["local"], pair["remote"]) == ("relay", "relay"), pair
            assert selected_pair_types(peer.pc) == ("relay", "relay")
            assert peer.errors == []

    relay.assert_relayed()


async def snippet_connected(browser: Chromium, page: BrowserPage) -> None:
    await browser.poll(
        page,
        "() => window.snippet.pc.connectionState === 'connected'",
        what="connectionState connected",
        timeout=CALL_TIMEOUT_SECONDS,
        describe="() => ({ connection: window.snippet.pc.connectionState,"
        " ice: window.snippet.pc.iceConnectionState, ws: window.snippet.ws.readyState })",
    )
