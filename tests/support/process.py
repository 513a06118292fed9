"""`rendezvous serve` as a real subprocess, for what only a whole process shows (signals,
logs, exit codes)."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx

from tests.support.server import free_port
from tests.support.tokens import TEST_SECRET

RENDEZVOUS = str(Path(sys.executable).with_name("rendezvous"))
READY_TIMEOUT_SECONDS = 15.0


@dataclass
class ServedProcess:
    process: subprocess.Popen[str]
    port: int
    _output: str | None = None

    @property
    def http(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def ws_url(self, room: str, token: str) -> str:
        return f"ws://127.0.0.1:{self.port}/webrtc/ws/{room}?token={token}"

    def output(self) -> str:
        """Everything the process wrote; waits for it to exit (and closes its pipes)."""
        if self._output is None:
            stdout, stderr = self.process.communicate(timeout=READY_TIMEOUT_SECONDS)
            self._output = stdout + stderr
        return self._output


@contextlib.contextmanager
def served(env: dict[str, str] | None = None, *args: str) -> Iterator[ServedProcess]:
    """Start `rendezvous serve` on a free port with a test key; kill it on the way out."""
    port = free_port()
    environment = {
        **{k: v for k, v in os.environ.items() if not k.startswith(("WEBRTC_", "JWT_", "REDIS_"))},
        "JWT_SECRET_KEY": TEST_SECRET,
        "WEBRTC_STUN_URLS": "",
        **(env or {}),
    }
    process = subprocess.Popen(
        [RENDEZVOUS, "serve", "--port", str(port), *args],
        env=environment,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    served_process = ServedProcess(process, port)
    try:
        _wait_ready(served_process)
        yield served_process
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGKILL)
        served_process.output()


def _wait_ready(served_process: ServedProcess) -> None:
    deadline = time.monotonic() + READY_TIMEOUT_SECONDS
    while time.monotonic() < deadline:
        if served_process.process.poll() is not None:
            raise RuntimeError(f"rendezvous exited early:\n{served_process.output()}")
        with contextlib.suppress(httpx.TransportError):
            if httpx.get(f"{served_process.http}/healthz", timeout=1).status_code == 200:
                return
        time.sleep(0.05)
    raise TimeoutError("rendezvous did not become healthy")
