"""The demo page in Chromium and an aiortc peer call each other through the service, in
both directions: the page joins second and offers (the joiner offers), or aiortc joins
second and offers to the page. Media and chat flow both ways, asserted on both sides: the
page decodes aiortc's synthetic video and shows its chat line in #chat-log; aiortc decodes
the page's fake camera and reads the line typed into #chat-input."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from pathlib import Path

import aioice.ice
import pytest

from tests.browser.aiortc_peer import AiortcPeer, aiortc_peer
from tests.browser.demo import CALL_TIMEOUT_SECONDS, CHAT_TIMEOUT_SECONDS, DemoPage, demo_url
from tests.e2e.test_aiortc import LOOPBACK, fetch_rtc_configuration
from tests.support.browser import Chromium, chromium
from tests.support.instances import Instance, instance_env, running_instances
from tests.support.tokens import token

ROOM = "browser-and-aiortc"
PY_USER = "aiortc-peer"


@contextlib.asynccontextmanager
async def python_peer(server: Instance) -> AsyncIterator[AiortcPeer]:
    bearer = token(PY_USER, username="aiortc")
    _, configuration = await fetch_rtc_configuration(server.http, bearer)
    async with aiortc_peer(
        server.ws_url(ROOM, bearer), user_id=PY_USER, configuration=configuration
    ) as peer:
        yield peer


async def open_page(browser: Chromium, server: Instance) -> DemoPage:
    url = demo_url(server.http, room=ROOM, token=token("carol", username="Carol"))
    page = await DemoPage.open(browser, "carol", url)
    assert await page.wait_joined() == "carol"
    return page


async def exchange(page: DemoPage, peer: AiortcPeer) -> None:
    """Both sides connected; chat both ways; video decoded on both sides."""
    await page.wait_participants({"carol": "Carol", PY_USER: "aiortc"})
    await page.wait_connected(PY_USER)
    await peer.wait_until(
        "connection", lambda: peer.pc.connectionState == "connected", timeout=CALL_TIMEOUT_SECONDS
    )

    await page.send_chat("hello aiortc, from Chromium")
    assert await peer.next_message(timeout=CHAT_TIMEOUT_SECONDS) == "hello aiortc, from Chromium"
    peer.send("hello Chromium, from aiortc")
    await page.wait_chat("hello Chromium, from aiortc", sender=PY_USER)

    assert await page.wait_video_from(PY_USER) > 0
    await peer.wait_until(
        "video frame from the page", lambda: peer.video_frames > 0, timeout=CALL_TIMEOUT_SECONDS
    )


@pytest.mark.parametrize("offerer", ["page", "aiortc"])
async def test_demo_page_and_aiortc_call_each_other(
    offerer: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # aioice skips loopback when gathering; pin host candidates to 127.0.0.1.
    monkeypatch.setattr(
        aioice.ice, "get_host_addresses", lambda use_ipv4=True, use_ipv6=True: [LOOPBACK]
    )
    async with (
        running_instances(1, env=instance_env(tmp_path), log_dir=tmp_path) as (server,),
        chromium(tmp_path / "pages") as browser,
    ):
        if offerer == "page":
            async with python_peer(server) as peer:
                page = await open_page(browser, server)  # the joiner: it offers
                await exchange(page, peer)
                assert peer.pc.remoteDescription.type == "offer"
        else:
            page = await open_page(browser, server)
            async with python_peer(server) as peer:
                assert peer.room_state is not None
                present = [p["user_id"] for p in peer.room_state["participants"]]
                assert sorted(present) == [PY_USER, "carol"]
                await peer.offer(to="carol")
                await exchange(page, peer)
                assert peer.pc.remoteDescription.type == "answer"
        assert peer.errors == []
