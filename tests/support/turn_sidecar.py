"""`rendezvous turn-sidecar` as a real subprocess: started on a free port, waited on until
its /readyz says a credential is written, stopped with SIGTERM afterwards."""

from __future__ import annotations

import asyncio
import contextlib
import signal
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import httpx

from rendezvous.turn.credentials_file import TurnCredentials, read_credentials
from tests.support.process import RENDEZVOUS, Daemon
from tests.support.server import free_port

READY_DEADLINE_SECONDS = 20.0
STOP_DEADLINE_SECONDS = 10.0


@dataclass
class Sidecar:
    daemon: Daemon
    port: int
    credentials_file: Path

    @property
    def http(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def credentials(self) -> TurnCredentials:
        return read_credentials(self.credentials_file)

    def log(self) -> str:
        return self.daemon.log()


@contextlib.asynccontextmanager
async def running_sidecar(
    *, env: dict[str, str], credentials_file: Path, log_dir: Path
) -> AsyncIterator[Sidecar]:
    """`env` must hold the sidecar's settings but WEBRTC_TURN_CREDENTIALS_FILE, set here."""
    port = free_port()
    daemon = Daemon(
        [str(RENDEZVOUS), "turn-sidecar", "--port", str(port)],
        log_path=log_dir / "turn-sidecar.log",
        env={**env, "WEBRTC_TURN_CREDENTIALS_FILE": str(credentials_file)},
    )
    sidecar = Sidecar(daemon, port, credentials_file)
    daemon.start()
    try:
        await _wait_ready(sidecar)
        yield sidecar
    finally:
        await asyncio.to_thread(daemon.stop, signal.SIGTERM, timeout=STOP_DEADLINE_SECONDS)


async def _wait_ready(sidecar: Sidecar) -> None:
    deadline = time.monotonic() + READY_DEADLINE_SECONDS
    async with httpx.AsyncClient(base_url=sidecar.http, timeout=2, trust_env=False) as http:
        while True:
            if not sidecar.daemon.running:
                raise AssertionError(f"turn-sidecar exited early:\n{sidecar.log()}")
            with contextlib.suppress(httpx.TransportError):
                if (await http.get("/readyz")).status_code == 200:
                    return
            if time.monotonic() > deadline:
                raise AssertionError(f"turn-sidecar never became ready:\n{sidecar.log()}")
            await asyncio.sleep(0.05)
