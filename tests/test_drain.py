"""Graceful drain on SIGTERM, with the real `rendezvous serve` process. (Exiting by the
deadline despite a client that never reads is proven, with its buffers really full, in
tests/scaleout_failures/test_drain_scaleout.py.)"""

from __future__ import annotations

import asyncio
import signal
import time
from pathlib import Path

import httpx
import pytest
import websockets

from tests.support.client import Client, joined
from tests.support.process import cli_env, serving
from tests.support.tokens import TEST_SECRET, token

DRAIN_ENV = {
    "JWT_SECRET_KEY": TEST_SECRET,
    "WEBRTC_STUN_URLS": "",
    "WEBRTC_DRAIN_WINDOW": "1",
    "WEBRTC_DRAIN_DEADLINE": "4",
}


async def _closed_at(client: Client) -> tuple[float, list[dict[str, object]], int | None]:
    """Read until the server closes; return when, what arrived, and the close code."""
    frames: list[dict[str, object]] = []
    try:
        while True:
            frames.append(await client.recv(timeout=10))
    except websockets.ConnectionClosed:
        pass
    return time.monotonic(), frames, client.connection.close_code


async def test_sigterm_drains_clients_over_the_window_then_exits(tmp_path: Path) -> None:
    async with serving(env=cli_env(tmp_path, **DRAIN_ENV), log_dir=tmp_path) as server:
        urls = [server.ws_url("drain", token(user)) for user in ("a", "b", "c")]
        async with joined(urls[0]) as (a, _), joined(urls[1]) as (b, _), joined(urls[2]) as (c, _):
            await a.expect("user_joined")
            await a.expect("user_joined")
            await b.expect("user_joined")
            signalled = time.monotonic()
            server.process.send_signal(signal.SIGTERM)

            async with httpx.AsyncClient() as http:
                assert (await http.get(f"{server.http}/readyz")).status_code == 503
                assert (await http.get(f"{server.http}/healthz")).status_code == 200
            with pytest.raises(websockets.InvalidStatus) as refused:
                async with websockets.connect(server.ws_url("drain", token("late"))):
                    pass
            assert refused.value.response.status_code == 503

            results = await asyncio.gather(*(_closed_at(client) for client in (a, b, c)))
        for _, frames, code in results:
            assert code == 1012
            errors = [f for f in frames if f["type"] == "error"]
            assert [e["payload"]["code"] for e in errors] == ["server_draining"]  # type: ignore[index]
            # Drained participants are held for a resume elsewhere: nobody is told they left.
            assert not [f for f in frames if f["type"] == "user_left"], frames
        close_times = sorted(at for at, _, _ in results)
        # Three sessions over a 1 s window: spread out, yet all within twice the window.
        assert close_times[-1] - close_times[0] >= 0.3
        assert close_times[-1] - signalled <= 2.0
        returncode = await asyncio.to_thread(server.process.wait, 8)
        assert time.monotonic() - signalled <= 2 * 4
        assert returncode in (0, -signal.SIGTERM)
    # The refused handshake is an expected answer, not a server error.
    assert "without completing handshake" not in server.output()
    assert '"level":"error"' not in server.output(), server.output()
