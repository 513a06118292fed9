"""The demo page resumes its signaling session, in Chromium, through real components: the
call (peer to peer) goes on while the WebSocket blinks, and nobody sees anyone leave.

- Same instance: the proxy in front of Alice's page stops (her socket drops with no close
  frame, 1006) and starts again; the server holds her, Bob's signal to her meanwhile is
  buffered, and her page resumes with `resume=`/`last_seq=`, gets it once, and delivers
  what it sent while down (its outbox).
- Across instances (issue 10 item 5): Alice's instance is drained (SIGTERM); her page is
  closed `server_draining` (1012) and resumes on the other instance, which nginx sends it
  to (her listener's upstream has the other instance as `backup`, and a draining
  instance's 503 at the handshake makes nginx try it).

Each time: Alice's #status went through `resuming` back to `joined`, the page counted one
resume (`missed: false`) and no fresh join, Bob's #participants never lost Alice and he
got no user_left/user_joined for her, both RTCPeerConnections are the same objects and
never left `connected`, no offer or answer was needed, video kept decoding both ways, and
chat still works.

- Missed: Bob's burst to the held Alice overflows her buffer (a small send queue): she
  resumes with `missed: true`, gets the newest part of it once and in order, and her call
  is untouched all the same.
- Refused: with holding off (WEBRTC_RESUME_GRACE=0) the resume gets `resume_failed` and
  the page joins afresh, silently: the call is rebuilt (new connections, video, chat).
"""

from __future__ import annotations

import asyncio
import json
import signal
from pathlib import Path
from typing import Any

from tests.browser.demo import DemoPage, demo_url
from tests.browser.test_demo_page import local_participants
from tests.support.browser import Chromium, chromium
from tests.support.instances import instance_env, running_instances
from tests.support.nginx import Nginx
from tests.support.redis import RedisServer
from tests.support.tokens import token

# A drained instance's clients are closed over the window, then resume within a few
# backoff steps; the grace (10 s by default) bounds it all: twice that as the margin.
RESUME_TIMEOUT_SECONDS = 30.0
DRAIN_EXIT_TIMEOUT_SECONDS = 30.0  # the drain deadline is 25 s by default
DRAIN_ENV = {"WEBRTC_DRAIN_WINDOW": "1"}

# From now on, record what this page does and sees about `peer`: its connection's state
# changes (and which object it is), #status's data-state changes, participants removed
# from #participants, the frames the signaling helper delivers, and what the page sends.
_WATCH = """(peer) => {
  const app = window.rendezvous;
  const pc = app.peers.get(peer).pc;
  const watch = { pc, connection: [], statuses: [], removed: [], frames: [], sent: [] };
  window.resumeWatch = watch;
  pc.addEventListener('connectionstatechange', () => watch.connection.push(pc.connectionState));
  const status = document.querySelector('#status');
  new MutationObserver(() => watch.statuses.push(status.dataset.state))
    .observe(status, { attributes: true, attributeFilter: ['data-state'] });
  new MutationObserver((records) => {
    for (const record of records) {
      for (const node of record.removedNodes) watch.removed.push(node.dataset?.userId ?? '?');
    }
  }).observe(document.querySelector('#participants'), { childList: true });
  app.signaling.addEventListener('frame', ({ detail }) => watch.frames.push({
    type: detail.type, from: detail.sender_id, seq: detail.seq ?? null,
    user_id: detail.payload?.user_id ?? null, candidate: detail.payload?.candidate ?? null,
    resumed: detail.payload?.resumed ?? null, missed: detail.payload?.missed ?? null }));
  const send = app.signaling.send.bind(app.signaling);
  app.signaling.send = (type, payload) => {
    watch.sent.push({ type, target: payload?.target_user_id ?? null });
    return send(type, payload);
  };
  return true;
}"""

# When the helper starts resuming, send `peer` an end-of-candidates marker at once: the
# socket is down, so it waits in the helper's outbox until the session is back.
_SEND_WHILE_RESUMING = """(peer) => {
  const signaling = window.rendezvous.signaling;
  signaling.addEventListener('resuming', ({ detail }) => {
    if (detail.attempt === 0) {
      const marker = { candidate: '', target_user_id: peer };
      window.resumeWatch.queued = signaling.send('ice_candidate', marker);
    }
  });
  return true;
}"""

_WATCHED = """(peer) => {
  const watch = window.resumeWatch;
  const current = window.rendezvous.peers.get(peer);
  return {
    same_pc: current !== undefined && current.pc === watch.pc,
    connection_now: watch.pc.connectionState,
    connection: watch.connection, statuses: watch.statuses, removed: watch.removed,
    frames: watch.frames, sent: watch.sent, queued: watch.queued ?? null,
    resumed: window.rendezvous.resumed, rejoined: window.rendezvous.rejoined,
    status: document.querySelector('#status').dataset.state,
  };
}"""

# `count` end-of-candidates markers to `peer`, in one go; how many the page sent.
_BURST = """([peer, count]) => {
  const signaling = window.rendezvous.signaling;
  let sent = 0;
  for (let i = 0; i < count; i += 1) {
    if (signaling.send('ice_candidate', { candidate: '', target_user_id: peer })) sent += 1;
  }
  return sent;
}"""
SMALL_QUEUE = 16  # WEBRTC_SEND_QUEUE_MAX_MESSAGES for the overflow test
BURST = 40
LONG_GRACE_SECONDS = 30  # server and page, where a held participant must wait for a newcomer

_RESUMED = """() => document.querySelector('#status').dataset.state === 'joined'
  && (window.rendezvous.resumed + window.rendezvous.rejoined) > 0"""


async def in_a_call(
    browser: Chromium, alice_base: str, bob_base: str, room: str, *, alice_query: str = ""
) -> tuple[DemoPage, DemoPage]:
    """Alice (through `alice_base`) and Bob (through `bob_base`) in a call: connected,
    video decoded both ways, watched (`_WATCH`) from here on."""
    alice = await DemoPage.open(
        browser,
        "alice",
        demo_url(alice_base, room=room, token=token("alice", username="Alice")) + alice_query,
    )
    assert await alice.wait_joined() == "alice"
    bob = await DemoPage.open(
        browser, "bob", demo_url(bob_base, room=room, token=token("bob", username="Bob"))
    )
    assert await bob.wait_joined() == "bob"
    for page in (alice, bob):
        await page.wait_participants({"alice": "Alice", "bob": "Bob"})
    await alice.wait_connected("bob")
    await bob.wait_connected("alice")
    assert await alice.wait_video_from("bob") > 0
    assert await bob.wait_video_from("alice") > 0
    assert await alice.evaluate(_WATCH, "bob")
    assert await bob.evaluate(_WATCH, "alice")
    assert await alice.evaluate(_SEND_WHILE_RESUMING, "bob")
    return alice, bob


async def wait_resumed(alice: DemoPage) -> dict[str, Any]:
    await alice.poll(
        _RESUMED, what="#status back to joined after a drop", timeout=RESUME_TIMEOUT_SECONDS
    )
    watched: dict[str, Any] = await alice.evaluate(_WATCHED, "bob")
    return watched


def shown(watched: dict[str, Any]) -> str:
    """All of what a page recorded, for a failure message (pytest would abridge it)."""
    return json.dumps(watched)


def markers(watched: dict[str, Any], sender: str) -> list[dict[str, Any]]:
    """The end-of-candidates frames from `sender` since the watch began."""
    return [
        frame
        for frame in watched["frames"]
        if frame["type"] == "ice_candidate" and frame["from"] == sender and frame["candidate"] == ""
    ]


def assert_call_untouched(watched: dict[str, Any], peer: str) -> None:
    """The connection to `peer` is the same object, never left `connected`, and needed no
    new negotiation; `peer` never left the participants nor was said to leave or join."""
    assert watched["same_pc"], shown(watched)
    assert watched["connection_now"] == "connected", shown(watched)
    assert set(watched["connection"]) <= {"connected"}, shown(watched)
    assert peer not in watched["removed"], shown(watched)
    frames = watched["frames"]
    presence = [f for f in frames if f["type"] in ("user_left", "user_joined")]
    assert [f for f in presence if f["user_id"] == peer] == [], shown(watched)
    descriptions = [f for f in frames if f["type"] in ("offer", "answer") and f["from"] == peer]
    descriptions += [
        s for s in watched["sent"] if s["type"] in ("offer", "answer") and s["target"] == peer
    ]
    assert descriptions == [], shown(watched)


async def assert_the_call_goes_on(alice: DemoPage, bob: DemoPage, *, video: dict[str, int]) -> None:
    """Video still decodes past what each side had decoded at the drop, and chat works."""
    await alice.wait_video_from("bob", more_than=video["alice"])
    await bob.wait_video_from("alice", more_than=video["bob"])
    await alice.send_chat("alice, after the blink")
    await bob.wait_chat("alice, after the blink", sender="alice")
    await bob.send_chat("bob, after the blink")
    await alice.wait_chat("bob, after the blink", sender="bob")


async def decoded(alice: DemoPage, bob: DemoPage) -> dict[str, int]:
    return {"alice": await alice.wait_video_from("bob"), "bob": await bob.wait_video_from("alice")}


def assert_alice_resumed(watched: dict[str, Any], *, missed: bool = False) -> None:
    assert watched["resumed"] == 1 and watched["rejoined"] == 0, shown(watched)
    assert "resuming" in watched["statuses"], shown(watched)
    assert watched["status"] == "joined", shown(watched)
    states = [f for f in watched["frames"] if f["type"] == "room_state"]
    assert len(states) == 1 and states[0]["resumed"] is True, shown(watched)
    assert states[0]["missed"] is missed, shown(watched)
    assert watched["queued"] is True, shown(watched)
    assert_call_untouched(watched, "bob")


async def test_a_page_whose_connection_drops_resumes_on_its_instance_and_the_call_goes_on(
    tmp_path: Path,
) -> None:
    async with (
        running_instances(1, env=instance_env(tmp_path), log_dir=tmp_path) as (server,),
        Nginx(tmp_path / "nginx", [server.port], pinned_listeners=True) as nginx,
        chromium(tmp_path / "pages") as browser,
    ):
        alice, bob = await in_a_call(browser, nginx.pinned_url(0), server.http, "blink")
        video = await decoded(alice, bob)

        await asyncio.to_thread(nginx.stop)  # Alice's socket drops: no close frame
        await alice.poll(
            "() => document.querySelector('#status').dataset.state === 'resuming'",
            what="#status data-state=resuming",
            timeout=RESUME_TIMEOUT_SECONDS,
        )
        # The server holds Alice: Bob's signal to her waits in her buffer.
        sent = await bob.evaluate(
            "(peer) => window.rendezvous.signaling.send('ice_candidate',"
            " { candidate: '', target_user_id: peer })",
            "alice",
        )
        assert sent is True
        await asyncio.to_thread(nginx.start)

        watched = await wait_resumed(alice)
        assert_alice_resumed(watched)
        assert len(markers(watched, "bob")) == 1, shown(watched)  # replayed once
        await assert_the_call_goes_on(alice, bob, video=video)
        bob_saw = await bob.evaluate(_WATCHED, "alice")
        assert_call_untouched(bob_saw, "alice")
        assert len(markers(bob_saw, "alice")) == 1, shown(bob_saw)  # Alice's outbox, delivered once
        assert bob_saw["resumed"] == 0 and "resuming" not in bob_saw["statuses"], shown(bob_saw)


async def test_a_resume_that_missed_frames_keeps_the_call_and_gets_the_newest_once(
    tmp_path: Path,
) -> None:
    # A small buffer: Bob's burst to the held Alice overflows it, the oldest are dropped.
    env = instance_env(tmp_path, WEBRTC_SEND_QUEUE_MAX_MESSAGES=str(SMALL_QUEUE))
    async with (
        running_instances(1, env=env, log_dir=tmp_path) as (server,),
        Nginx(tmp_path / "nginx", [server.port], pinned_listeners=True) as nginx,
        chromium(tmp_path / "pages") as browser,
    ):
        alice, bob = await in_a_call(browser, nginx.pinned_url(0), server.http, "overflow")
        video = await decoded(alice, bob)
        await asyncio.to_thread(nginx.stop)
        await alice.poll(
            "() => document.querySelector('#status').dataset.state === 'resuming'",
            what="#status data-state=resuming",
            timeout=RESUME_TIMEOUT_SECONDS,
        )
        sent = await bob.evaluate(_BURST, ["alice", BURST])
        assert sent == BURST
        await asyncio.to_thread(nginx.start)

        watched = await wait_resumed(alice)
        assert_alice_resumed(watched, missed=True)
        # What survived is the newest part of the burst, each frame once, in order.
        seqs = [frame["seq"] for frame in markers(watched, "bob")]
        assert 1 <= len(seqs) <= SMALL_QUEUE, shown(watched)
        assert seqs == list(range(seqs[0], seqs[0] + len(seqs))), shown(watched)
        await assert_the_call_goes_on(alice, bob, video=video)
        bob_saw = await bob.evaluate(_WATCHED, "alice")
        assert_call_untouched(bob_saw, "alice")


async def test_a_resume_that_missed_a_newcomer_calls_them_and_their_call_forms(
    tmp_path: Path,
) -> None:
    # Carol joins while Alice is held and offers to her; Bob's burst then pushes Carol's
    # user_joined, offer and candidates out of Alice's small buffer. Alice resumes with
    # `missed: true`, finds Carol in room_state, and calls her; Carol (the impolite one of
    # the pair: "alice" sorts lower) ignores that offer while hers waits for an answer,
    # then sends hers again, which Alice (polite) answers: the call forms.
    env = instance_env(
        tmp_path,
        WEBRTC_SEND_QUEUE_MAX_MESSAGES=str(SMALL_QUEUE),
        WEBRTC_RESUME_GRACE=str(LONG_GRACE_SECONDS),
    )
    async with (
        running_instances(1, env=env, log_dir=tmp_path) as (server,),
        Nginx(tmp_path / "nginx", [server.port], pinned_listeners=True) as nginx,
        chromium(tmp_path / "pages") as browser,
    ):
        alice, bob = await in_a_call(
            browser,
            nginx.pinned_url(0),
            server.http,
            "newcomer",
            alice_query=f"&resume_grace_ms={LONG_GRACE_SECONDS * 1000}",
        )
        await asyncio.to_thread(nginx.stop)
        await alice.poll(
            "() => document.querySelector('#status').dataset.state === 'resuming'",
            what="#status data-state=resuming",
            timeout=RESUME_TIMEOUT_SECONDS,
        )
        carol = await DemoPage.open(
            browser,
            "carol",
            demo_url(server.http, room="newcomer", token=token("carol", username="Carol")),
        )
        assert await carol.wait_joined() == "carol"
        await carol.poll(  # her offer and every candidate for Alice are in Alice's buffer
            "() => window.rendezvous.peers.get('alice')?.pc.iceGatheringState === 'complete'",
            what="Carol's connection to Alice done gathering",
            timeout=RESUME_TIMEOUT_SECONDS,
        )
        assert await bob.evaluate(_BURST, ["alice", BURST]) == BURST
        await asyncio.to_thread(nginx.start)

        watched = await wait_resumed(alice)
        assert_alice_resumed(watched, missed=True)
        everyone = {"alice": "Alice", "bob": "Bob", "carol": "Carol"}
        for page in (alice, bob, carol):
            await page.wait_participants(everyone)
        await alice.wait_connected("carol")
        await carol.wait_connected("alice")
        assert await alice.wait_video_from("carol") > 0
        assert await carol.wait_video_from("alice") > 0
        assert_call_untouched(await alice.evaluate(_WATCHED, "bob"), "bob")


async def test_a_drained_instance_page_resumes_on_the_other_instance_and_the_call_goes_on(
    tmp_path: Path, redis_server: RedisServer
) -> None:
    env = instance_env(tmp_path, redis_url=redis_server.url, **DRAIN_ENV)
    async with (
        running_instances(2, env=env, log_dir=tmp_path) as instances,
        Nginx(
            tmp_path / "nginx",
            [i.port for i in instances],
            pinned_listeners=True,
            pinned_backup=True,
        ) as nginx,
        chromium(tmp_path / "pages") as browser,
    ):
        drained, other = instances
        alice, bob = await in_a_call(browser, nginx.pinned_url(0), nginx.pinned_url(1), "drain")
        assert [await local_participants(i) for i in instances] == [1.0, 1.0]
        video = await decoded(alice, bob)

        drained.terminate()
        watched = await wait_resumed(alice)
        assert_alice_resumed(watched)
        closes = [s for s in watched["statuses"] if s not in ("joined", "resuming")]
        assert closes == [], shown(watched)  # never shown as disconnected
        # She is on the other instance now, and the drained one exits by itself.
        assert await local_participants(other) == 2.0
        assert await drained.wait(DRAIN_EXIT_TIMEOUT_SECONDS) in (0, -signal.SIGTERM)

        await assert_the_call_goes_on(alice, bob, video=video)
        bob_saw = await bob.evaluate(_WATCHED, "alice")
        assert_call_untouched(bob_saw, "alice")
        assert len(markers(bob_saw, "alice")) == 1, shown(bob_saw)  # Alice's outbox, delivered once


async def test_a_refused_resume_falls_back_to_a_fresh_join_and_the_call_is_rebuilt(
    tmp_path: Path,
) -> None:
    # WEBRTC_RESUME_GRACE=0: the server holds nobody, so Alice's resume is refused
    # (resume_failed, 4004) and her page joins afresh: a new call, but a call.
    env = instance_env(tmp_path, WEBRTC_RESUME_GRACE="0")
    async with (
        running_instances(1, env=env, log_dir=tmp_path) as (server,),
        Nginx(tmp_path / "nginx", [server.port], pinned_listeners=True) as nginx,
        chromium(tmp_path / "pages") as browser,
    ):
        alice, bob = await in_a_call(browser, nginx.pinned_url(0), server.http, "refused")
        await asyncio.to_thread(nginx.stop)
        await bob.poll(  # the server let her go at once
            "() => !document.querySelector('#participants li[data-user-id=\"alice\"]')",
            what="alice gone from #participants",
            timeout=RESUME_TIMEOUT_SECONDS,
        )
        await asyncio.to_thread(nginx.start)

        watched = await wait_resumed(alice)
        assert watched["rejoined"] == 1 and watched["resumed"] == 0, shown(watched)
        states = [f for f in watched["frames"] if f["type"] == "room_state"]
        assert [state["resumed"] for state in states] == [None], shown(watched)  # a fresh join
        assert await alice.status() == {"state": "joined", "error": None}  # nothing to explain
        for page in (alice, bob):
            await page.wait_participants({"alice": "Alice", "bob": "Bob"})
        await alice.wait_connected("bob")
        await bob.wait_connected("alice")
        bob_saw = await bob.evaluate(_WATCHED, "alice")
        assert not bob_saw["same_pc"], shown(bob_saw)  # the old call was hung up
        assert await alice.wait_video_from("bob") > 0
        assert await bob.wait_video_from("alice") > 0
        await alice.send_chat("alice, joined again")
        await bob.wait_chat("alice, joined again", sender="alice")
