"""Chromium against the service without the demo page: two pages in two browser contexts,
each running a small inline peer (js/inline_peer.js) on the service's origin, call each
other with the fake camera over the service's signaling (targeted offer and answer,
trickled candidates) and greet each other over a data channel. It proves the browser
machinery (Debian's Chromium, its flags, the loopback-only namespace) on its own."""

from __future__ import annotations

from pathlib import Path

from tests.browser.webrtc import frames_decoded, script, selected_pair
from tests.support.browser import BrowserPage, Chromium, chromium
from tests.support.instances import instance_env, running_instances
from tests.support.tokens import token

ROOM = "smoke"
JOIN_TIMEOUT_SECONDS = 10.0
CALL_TIMEOUT_SECONDS = 30.0


async def start_peer(page: BrowserPage, user: str, offer_to: str | None = None) -> None:
    arguments = {"token": token(user), "room": ROOM, "me": user, "offerTo": offer_to}
    await page.evaluate(script("inline_peer.js"), arguments)


async def wait_joined(browser: Chromium, page: BrowserPage) -> None:
    await browser.poll(
        page, "() => window.peer.joined", what="room_state", timeout=JOIN_TIMEOUT_SECONDS
    )


async def test_two_chromium_pages_call_through_the_service_with_inline_js(
    tmp_path: Path,
) -> None:
    env = instance_env(tmp_path)  # no ICE servers: host candidates on loopback alone
    async with (
        running_instances(1, env=env, log_dir=tmp_path) as (server,),
        chromium(tmp_path / "pages") as browser,
    ):
        alice = await browser.open("alice", f"{server.http}/healthz")
        bob = await browser.open("bob", f"{server.http}/healthz")
        await start_peer(alice, "alice")
        await wait_joined(browser, alice)
        await start_peer(bob, "bob", offer_to="alice")  # the joiner offers

        for page, other in ((alice, "bob"), (bob, "alice")):
            greeting = f"hello from {other}"
            received = await browser.poll(
                page,
                "(greeting) => window.peer.received.includes(greeting) && window.peer.received",
                greeting,
                what=f"data-channel greeting from {other}",
                timeout=CALL_TIMEOUT_SECONDS,
            )
            assert received == [greeting]
            frames = await browser.poll(
                page,
                frames_decoded("window.peer.pc"),
                what=f"video decoded from {other}",
                timeout=CALL_TIMEOUT_SECONDS,
            )
            assert frames > 0
            pair = await page.evaluate(selected_pair("window.peer.pc"))
            assert pair["local"] == pair["remote"] == "host", pair
            assert pair["local_address"].startswith("127.0.0.1:"), pair
            assert await page.evaluate("() => window.peer.pc.connectionState") == "connected"
            assert await page.evaluate("() => window.peer.errors") == []
