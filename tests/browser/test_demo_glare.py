"""Glare in the demo page, for real in Chromium: two joined pages renegotiate at the same
moment, round after round, so both offer at once and the offers cross in the service.
mesh.js resolves it with the perfect-negotiation pattern (polite = the lower user_id):
the polite page rolls its own offer back and answers, the impolite one ignores the
colliding offer and later answers the polite page's renewed one. Each page logs what it
sent, received and applied (DemoPage.record_negotiation), so the test proves glare really
happened, not only that the call survived."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

from tests.browser.demo import DemoPage, demo_url
from tests.support.browser import chromium
from tests.support.instances import instance_env, running_instances
from tests.support.tokens import token

ROUNDS = 4
# Each page's camera and microphone: the two transceivers the first negotiation makes.
FIRST_TRANSCEIVERS = 2
# Both pages add a receive-only video transceiver to their connection, in the same tick
# of each page's event loop: both connections fire negotiationneeded and offer at once.
RENEGOTIATE = """(userId) => {
  window.rendezvous.peers.get(userId).pc.addTransceiver('video', { direction: 'recvonly' });
}"""
OFFERING = "have-local-offer"


def _offering(entry: dict[str, Any]) -> bool:
    # mesh.js's makingOffer covers setLocalDescription still running: an offer that arrives
    # then collides as surely as one that arrives in have-local-offer.
    return bool(entry["state"] == OFFERING or entry["making_offer"])


def _in_round(log: list[dict[str, Any]], number: int) -> list[dict[str, Any]]:
    return [entry for entry in log if entry["round"] == number]


def _count(entries: list[dict[str, Any]], kind: str, type_: str) -> int:
    return sum(1 for entry in entries if entry["kind"] == kind and entry["type"] == type_)


def collided(entries: list[dict[str, Any]]) -> bool:
    """The page sent an offer and received the other's while offering itself."""
    sent = _count(entries, "send", "offer") > 0
    crossed = any(e["kind"] == "receive" and e["type"] == "offer" and _offering(e) for e in entries)
    return sent and crossed


def rolled_back(entries: list[dict[str, Any]]) -> bool:
    """The page applied a remote offer while offering (the implicit rollback), and its
    signaling state went from have-local-offer to have-remote-offer with no answer applied
    in between (Chromium passes through stable as it rolls back)."""
    applied_while_offering = any(
        e["kind"] == "apply" and e["type"] == "offer" and _offering(e) for e in entries
    )
    offering = False
    for entry in entries:
        if entry["kind"] == "apply" and entry["type"] == "answer":
            offering = False  # an answer ends the offer: no rollback then
        elif entry["kind"] == "state" and entry["state"] == OFFERING:
            offering = True
        elif entry["kind"] == "state" and entry["state"] == "have-remote-offer" and offering:
            return applied_while_offering
    return False


def ignored_offers(entries: list[dict[str, Any]]) -> int:
    """Offers the page received but never handed to setRemoteDescription."""
    return _count(entries, "receive", "offer") - _count(entries, "apply", "offer")


async def test_simultaneous_renegotiation_resolves_glare_and_keeps_the_call(
    tmp_path: Path,
) -> None:
    async with (
        running_instances(1, env=instance_env(tmp_path), log_dir=tmp_path) as (server,),
        chromium(tmp_path / "pages") as browser,
    ):
        room = "glare"
        pages: list[DemoPage] = []
        for user in ("alice", "bob"):
            url = demo_url(server.http, room=room, token=token(user, username=user.title()))
            page = await DemoPage.open(browser, user, url)
            assert await page.wait_joined() == user
            pages.append(page)
        alice, bob = pages
        await alice.wait_connected("bob")
        await bob.wait_connected("alice")
        frames_before = [await alice.wait_video_from("bob"), await bob.wait_video_from("alice")]

        # The documented rule: the lower user_id is polite.
        assert await alice.evaluate("() => window.rendezvous.peers.get('bob').polite") is True
        assert await bob.evaluate("() => window.rendezvous.peers.get('alice').polite") is False
        polite, impolite = alice, bob
        other = {"alice": "bob", "bob": "alice"}

        for page in pages:
            await page.record_negotiation(other[page.page.name])
        for number in range(1, ROUNDS + 1):
            for page in pages:
                await page.start_round(number)
            await asyncio.gather(
                *(page.evaluate(RENEGOTIATE, other[page.page.name]) for page in pages)
            )
            expected = FIRST_TRANSCEIVERS + 2 * number
            mids = [
                await page.wait_negotiated(other[page.page.name], transceivers=expected)
                for page in pages
            ]
            # One m-line per transceiver, the same on both ends.
            assert sorted(mids[0]) == sorted(mids[1]), mids

        logs = {page.page.name: await page.negotiation_log() for page in pages}
        polite_log, impolite_log = logs[polite.page.name], logs[impolite.page.name]
        glare_rounds = [
            number
            for number in range(1, ROUNDS + 1)
            if collided(_in_round(polite_log, number)) and collided(_in_round(impolite_log, number))
        ]
        # Without a round where both offered at once, this test proves nothing.
        assert glare_rounds, logs
        for number in glare_rounds:
            polite_round = _in_round(polite_log, number)
            impolite_round = _in_round(impolite_log, number)
            assert rolled_back(polite_round), (number, polite_round)
            assert ignored_offers(polite_round) == 0, (number, polite_round)
            assert ignored_offers(impolite_round) >= 1, (number, impolite_round)
            assert not rolled_back(impolite_round), (number, impolite_round)

        # The call is whole again: connected, stable, the video still decoding, and the
        # chat channel carrying a message each way.
        await alice.wait_connected("bob")
        await bob.wait_connected("alice")
        assert await alice.wait_video_from("bob", more_than=frames_before[0]) > frames_before[0]
        assert await bob.wait_video_from("alice", more_than=frames_before[1]) > frames_before[1]
        await alice.send_chat("after the glare, from alice")
        await bob.wait_chat("after the glare, from alice", sender="alice")
        await bob.send_chat("after the glare, from bob")
        await alice.wait_chat("after the glare, from bob", sender="bob")
        # mesh.js warns "could not ..." for a step that failed (an offer it could not apply).
        for page in pages:
            failures = [line for line in page.page.console if "could not" in line]
            assert not failures, (page.page.name, failures)
