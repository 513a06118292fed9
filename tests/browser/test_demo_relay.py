"""The demo page through coturn: with `WEBRTC_ICE_TRANSPORT_POLICY=relay` and the TURN
credentials the sidecar minted from its Secret, two Chromium pages gather only relay
candidates, and the pair ICE selects is relay on both ends, on coturn's relay ports."""

from __future__ import annotations

from pathlib import Path

from tests.browser.demo import DemoPage, demo_url
from tests.browser.relay import relay_path
from tests.support.browser import chromium
from tests.support.coturn import Coturn
from tests.support.instances import running_instances
from tests.support.tokens import token


async def test_demo_pages_call_through_coturn_with_the_sidecars_credentials(
    tmp_path: Path, coturn: Coturn
) -> None:
    async with (
        relay_path(coturn, tmp_path) as relay,
        running_instances(1, env=relay.service_env(tmp_path), log_dir=tmp_path) as (server,),
        chromium(tmp_path / "pages") as browser,
    ):
        room = "relayed"
        dora = await DemoPage.open(
            browser, "dora", demo_url(server.http, room=room, token=token("dora", username="Dora"))
        )
        assert await dora.wait_joined() == "dora"
        eli = await DemoPage.open(
            browser, "eli", demo_url(server.http, room=room, token=token("eli", username="Eli"))
        )
        assert await eli.wait_joined() == "eli"

        for page, other in ((dora, "eli"), (eli, "dora")):
            # The page took its ICE servers and policy from /webrtc/config: the sidecar's.
            relay.assert_config_is_the_sidecars(
                await page.evaluate("() => window.rendezvous.config")
            )
            await page.wait_connected(other)
            pair = await page.selected_pair(other)
            assert (pair["local"], pair["remote"]) == ("relay", "relay"), pair
            for end in (pair["local_address"], pair["remote_address"]):
                host, _, port = end.rpartition(":")
                assert host == "127.0.0.1" and coturn.min_port <= int(port) <= coturn.max_port, pair
            assert await page.wait_video_from(other) > 0

        await dora.send_chat("relayed hello")
        await eli.wait_chat("relayed hello", sender="dora")

    relay.assert_relayed()
