"""`rendezvous turn-sidecar` as a real subprocess on a free port: started, waited on until
it is healthy (or ready: a credential written), and stopped by a signal afterwards
(killed if it will not stop), its exit status kept for the test."""

from __future__ import annotations

import asyncio
import contextlib
import json
import signal
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import httpx

from rendezvous.turn.credentials_file import TurnCredentials, read_credentials
from tests.support.process import RENDEZVOUS, Daemon
from tests.support.server import free_port

STARTUP_DEADLINE_SECONDS = 20.0
STOP_DEADLINE_SECONDS = 10.0  # a clean stop takes ~0.2 s
HTTP_TIMEOUT_SECONDS = 5.0
POLL_SECONDS = 0.05


@dataclass
class Sidecar:
    daemon: Daemon
    http: httpx.AsyncClient  # to its probes and /metrics
    credentials_file: Path
    exit_status: int | None = None  # once stopped

    def credentials(self) -> TurnCredentials:
        return read_credentials(self.credentials_file)

    def written(self) -> dict[str, Any]:
        """The file's JSON exactly as written."""
        written: dict[str, Any] = json.loads(self.credentials_file.read_bytes())
        return written

    def log(self) -> str:
        return self.daemon.log()

    async def readyz(self) -> tuple[int, dict[str, Any]]:
        response = await self.http.get("/readyz")
        body: dict[str, Any] = response.json()
        return response.status_code, body

    async def metric(self, name: str, labels: str = "") -> float:
        """One sample from /metrics, e.g. metric("x_total", 'reason="first"'); 0 if absent."""
        wanted = f"{name}{{{labels}}}" if labels else name
        for line in (await self.http.get("/metrics")).text.splitlines():
            sample, _, value = line.rpartition(" ")
            if sample == wanted:
                return float(value)
        return 0.0


@contextlib.asynccontextmanager
async def running_sidecar(
    *,
    env: dict[str, str],
    log_dir: Path,
    until: Literal["healthy", "ready"] = "ready",
    stop_signal: int = signal.SIGTERM,
) -> AsyncIterator[Sidecar]:
    """`env` holds the sidecar's settings, WEBRTC_TURN_CREDENTIALS_FILE included."""
    port = free_port()
    daemon = Daemon(
        [str(RENDEZVOUS), "turn-sidecar", "--host", "127.0.0.1", "--port", str(port)],
        log_path=log_dir / "turn-sidecar.log",
        env=env,
        banner=False,
    )
    daemon.start()
    sidecar: Sidecar | None = None
    try:
        async with httpx.AsyncClient(
            base_url=f"http://127.0.0.1:{port}", timeout=HTTP_TIMEOUT_SECONDS, trust_env=False
        ) as http:
            sidecar = Sidecar(daemon, http, Path(env["WEBRTC_TURN_CREDENTIALS_FILE"]))
            await _wait(sidecar, "/healthz" if until == "healthy" else "/readyz")
            yield sidecar
    finally:
        status = await asyncio.to_thread(daemon.stop, stop_signal, timeout=STOP_DEADLINE_SECONDS)
        if sidecar is not None:
            sidecar.exit_status = status


async def _wait(sidecar: Sidecar, probe: str) -> None:
    deadline = time.monotonic() + STARTUP_DEADLINE_SECONDS
    while True:
        assert sidecar.daemon.running, f"turn-sidecar exited:\n{sidecar.daemon.log_tail()}"
        with contextlib.suppress(httpx.TransportError):
            if (await sidecar.http.get(probe)).status_code == 200:
                return
        assert time.monotonic() < deadline, f"{probe} never 200:\n{sidecar.daemon.log_tail()}"
        await asyncio.sleep(POLL_SECONDS)
