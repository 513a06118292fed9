"""The demo page explains, in Chromium, each error a person can meet against a real
`rendezvous serve`: `#error[data-code]` carries the server's code, its visible text is the
sentence messages.js has for that code (read from the page itself, never a raw fallback),
and `#status[data-state]` says `error`. Two browser launches: one for joins the server
refuses, one for a joined page the server disconnects (replaced, then drained)."""

from __future__ import annotations

import signal
from pathlib import Path

from tests.browser.demo import DemoPage, demo_url
from tests.support.browser import chromium
from tests.support.instances import instance_env, running_instances
from tests.support.tokens import token

# Another key than the instance's: a well-formed JWT the server must refuse.
FOREIGN_SECRET = "another-secret-" + "x" * 40
DRAIN_EXIT_TIMEOUT_SECONDS = 30.0  # the drain deadline is 25 s by default; it exits sooner
RESUME_GRACE_MS = 3000  # the lone instance drains: no resume can succeed


async def test_the_page_explains_each_refused_join(tmp_path: Path) -> None:
    # A one-seat room: the second page's join is the one refused as room_full.
    env = instance_env(tmp_path, WEBRTC_MAX_PARTICIPANTS_PER_ROOM="1")
    async with (
        running_instances(1, env=env, log_dir=tmp_path) as (server,),
        chromium(tmp_path / "pages") as browser,
    ):

        def url(room: str, signed: str) -> str:
            return demo_url(server.http, room=room, token=signed, media=False)

        # unauthorized: the page's first request with the token (/webrtc/config) is refused.
        forged = token("mallory", secret=FOREIGN_SECRET)
        mallory = await DemoPage.open(browser, "unauthorized", url("lobby", forged))
        await mallory.assert_error_explained("unauthorized")

        # forbidden_room: the token is valid but grants other rooms only; the WebSocket
        # says so in an error frame, then closes 1008.
        elsewhere = token("erin", rooms=["other-room", "team-*"])
        erin = await DemoPage.open(browser, "forbidden-room", url("secret-room", elsewhere))
        await erin.assert_error_explained("forbidden_room")

        # room_full: the second of two users in a one-seat room; the first stays joined.
        frank = await DemoPage.open(browser, "room-full-first", url("one-seat", token("frank")))
        assert await frank.wait_joined() == "frank"
        grace = await DemoPage.open(browser, "room-full-second", url("one-seat", token("grace")))
        await grace.assert_error_explained("room_full")
        await frank.wait_participants({"frank": "frank"})
        assert await frank.status() == {"state": "joined", "error": None}


async def test_the_page_explains_why_a_joined_page_was_disconnected(tmp_path: Path) -> None:
    async with (
        running_instances(1, env=instance_env(tmp_path), log_dir=tmp_path) as (server,),
        chromium(tmp_path / "pages") as browser,
    ):

        def url(room: str) -> str:
            signed = token("heidi", username="Heidi")
            # The page tries to resume a drained session for this long before it explains.
            resume = f"&resume_grace_ms={RESUME_GRACE_MS}"
            return demo_url(server.http, room=room, token=signed, media=False) + resume

        # session_replaced: the same user joins the same room from a second page; the first
        # page is closed 4001 and says why, the second one holds the seat.
        first = await DemoPage.open(browser, "replaced-first", url("replaced"))
        assert await first.wait_joined() == "heidi"
        second = await DemoPage.open(browser, "replaced-second", url("replaced"))
        assert await second.wait_joined() == "heidi"
        await first.assert_error_explained("session_replaced")
        await second.wait_participants({"heidi": "Heidi"})
        assert await second.status() == {"state": "joined", "error": None}

        # server_draining: SIGTERM, as an orchestrator stops a pod; with no other instance
        # the page's resume attempts fail, then it says to join again, Join button live.
        server.terminate()
        shown = await second.assert_error_explained("server_draining")
        assert shown["join_enabled"], shown
        assert await server.wait(DRAIN_EXIT_TIMEOUT_SECONDS) in (0, -signal.SIGTERM)
