"""Draining on SIGTERM: fail readiness, refuse new handshakes (HTTP 503, so a proxy tries
another upstream), and tell every local client `server_draining` (close 1012), spread over
the drain window so that reconnects do not land on the other instances all at once."""

from __future__ import annotations

import asyncio
import logging

from rendezvous.hub import Hub
from rendezvous.protocol import ErrorCode, SignalingError

log = logging.getLogger(__name__)

STRAGGLER_POLL_SECONDS = 0.05


class Drainer:
    def __init__(self, hub: Hub, *, window_seconds: float) -> None:
        self._hub = hub
        self._window = window_seconds
        self.draining = False

    async def drain(self) -> None:
        """Close every local session; return when none is left. The caller bounds the time."""
        self.draining = True
        peers = [peer for _, peer in self._hub.local_members()]
        log.info("draining %d sessions over %.1fs", len(peers), self._window)
        gap = self._window / max(len(peers), 1)
        for index, peer in enumerate(peers):
            if index:
                await asyncio.sleep(gap)
            peer.close(_draining())
        # Sessions whose join was in flight when the drain began, and sessions still closing.
        while remaining := [peer for _, peer in self._hub.local_members()]:
            for peer in remaining:
                peer.close(_draining())
            await asyncio.sleep(STRAGGLER_POLL_SECONDS)
        log.info("drained")


def _draining() -> SignalingError:
    return SignalingError(
        ErrorCode.SERVER_DRAINING, "this server is restarting; reconnect (any instance will do)"
    )
