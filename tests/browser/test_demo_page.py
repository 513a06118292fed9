"""The demo page in Chromium, end to end through real components: two browsers on two
instances behind nginx sharing Redis, and a three-way mesh. Each browser context has its
own fake camera; the tests read what the page shows (#participants, #chat-log, the peer
tiles' connection states) and what its RTCPeerConnections decoded (getStats)."""

from __future__ import annotations

import asyncio
from pathlib import Path

import httpx

from tests.browser.demo import DemoPage, demo_url
from tests.support.browser import chromium
from tests.support.instances import Instance, instance_env, running_instances
from tests.support.nginx import Nginx
from tests.support.process import cli_env
from tests.support.redis import RedisServer
from tests.support.tokens import token

HTTP_TIMEOUT_SECONDS = 5.0


async def local_participants(instance: Instance) -> float:
    """The instance's own `rendezvous_participants` gauge (its local WebSockets)."""
    async with httpx.AsyncClient(timeout=HTTP_TIMEOUT_SECONDS, trust_env=False) as http:
        text = (await http.get(f"{instance.http}/metrics")).text
    for line in text.splitlines():
        name, _, value = line.partition(" ")
        if name == "rendezvous_participants":
            return float(value)
    raise AssertionError(f"no rendezvous_participants in {instance}'s /metrics")


async def test_two_browsers_on_two_instances_behind_nginx_chat_and_see_each_other(
    tmp_path: Path, redis_server: RedisServer
) -> None:
    env = instance_env(tmp_path, redis_url=redis_server.url)
    async with (
        running_instances(2, env=env, log_dir=tmp_path) as instances,
        Nginx(tmp_path / "nginx", [i.port for i in instances], pinned_listeners=True) as nginx,
        chromium(tmp_path / "pages") as browser,
    ):
        room = "two-instances"
        alice = await DemoPage.open(
            browser,
            "alice",
            demo_url(nginx.pinned_url(0), room=room, token=token("alice", username="Alice")),
        )
        assert await alice.wait_joined() == "alice"
        bob = await DemoPage.open(
            browser,
            "bob",
            demo_url(nginx.pinned_url(1), room=room, token=token("bob", username="Bob")),
        )
        assert await bob.wait_joined() == "bob"
        # Each page's WebSocket went through its own listener to its own instance.
        assert [await local_participants(i) for i in instances] == [1.0, 1.0]

        for page in (alice, bob):
            await page.wait_participants({"alice": "Alice", "bob": "Bob"})
        await alice.wait_connected("bob")
        await bob.wait_connected("alice")

        await alice.send_chat("hello from alice, on instance 0")
        await bob.wait_chat("hello from alice, on instance 0", sender="alice")
        await bob.send_chat("hello back from bob, on instance 1")
        await alice.wait_chat("hello back from bob, on instance 1", sender="bob")

        assert await alice.wait_video_from("bob") > 0
        assert await bob.wait_video_from("alice") > 0


async def test_three_browsers_form_a_mesh_with_dev_tokens(tmp_path: Path) -> None:
    # Dev mode: no JWT key configured; each page asks the service for a token for its name.
    env = cli_env(tmp_path, WEBRTC_STUN_URLS="")
    async with (
        running_instances(1, env=env, log_dir=tmp_path, args=("--dev",)) as (server,),
        chromium(tmp_path / "pages") as browser,
    ):
        names = ("Ana", "Ben", "Cleo")
        pages = await asyncio.gather(
            *(
                DemoPage.open(browser, name.lower(), demo_url(server.http, room="mesh", name=name))
                for name in names
            )
        )
        ids = await asyncio.gather(*(page.wait_joined() for page in pages))
        assert len(set(ids)) == 3, ids
        everyone = dict(zip(ids, names, strict=True))
        for page in pages:
            await page.wait_participants(everyone)

        for page in pages:
            others = [user for user in ids if user != page.user_id]
            for other in others:
                await page.wait_connected(other)
                assert await page.wait_video_from(other) > 0
            tiles = await page.evaluate(
                "() => [...document.querySelectorAll('#peers .peer')].map((t) => t.dataset.userId)"
            )
            assert sorted(tiles) == sorted(others)

        ana, ben, cleo = pages
        await cleo.send_chat("hello mesh")
        for page in (ana, ben):
            await page.wait_chat("hello mesh", sender=ids[2])
