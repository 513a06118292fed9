"""`rendezvous` as a real subprocess, for what only a whole process shows: the CLI,
signals, exit codes and logs. Output goes to files, so a chatty server never blocks on
a full pipe."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx

from tests.support.server import free_port

RENDEZVOUS = Path(sys.executable).with_name("rendezvous")
STARTUP_DEADLINE_SECONDS = 30.0
STOP_DEADLINE_SECONDS = 30.0
CLI_TIMEOUT_SECONDS = 60.0


def cli_env(tmp_path: Path, **variables: str) -> dict[str, str]:
    """The test's (already cleaned) environment, a private state directory, and `variables`."""
    env = dict(os.environ)
    env["XDG_STATE_HOME"] = str(tmp_path / "state")
    env.update(variables)
    return env


def run_cli(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(RENDEZVOUS), *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=CLI_TIMEOUT_SECONDS,
        check=False,
    )


def one_line_failure(result: subprocess.CompletedProcess[str]) -> str:
    """Assert a failed run printed exactly one line on stderr (and nothing on stdout)."""
    assert result.returncode != 0, result
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert result.stdout == ""
    return lines[0]


@dataclass
class Served:
    """A `rendezvous serve` subprocess; its stdout and stderr go to files."""

    process: subprocess.Popen[bytes]
    port: int
    stdout_path: Path
    stderr_path: Path

    @property
    def http(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def ws_url(self, room: str, token: str) -> str:
        return f"ws://127.0.0.1:{self.port}/webrtc/ws/{room}?token={token}"

    def stdout(self) -> str:
        return self.stdout_path.read_text()

    def output(self) -> str:
        return self.stdout_path.read_text() + self.stderr_path.read_text()


@contextlib.asynccontextmanager
async def serving(*args: str, env: dict[str, str], log_dir: Path) -> AsyncIterator[Served]:
    """Start `rendezvous serve` on a free port, wait until /healthz answers, stop it with
    SIGINT afterwards (killing it if it does not exit in time)."""
    port = free_port()
    log_dir.mkdir(parents=True, exist_ok=True)
    served_stdout, served_stderr = log_dir / "stdout.log", log_dir / "stderr.log"
    with served_stdout.open("wb") as out, served_stderr.open("wb") as err:
        process = subprocess.Popen(
            [str(RENDEZVOUS), "serve", "--port", str(port), *args],
            env=env,
            stdout=out,
            stderr=err,
        )
        served = Served(process, port, served_stdout, served_stderr)
        try:
            await _wait_healthy(served)
            yield served
        finally:
            with _stopping(process):
                process.send_signal(signal.SIGINT)


@contextlib.contextmanager
def _stopping(process: subprocess.Popen[bytes]) -> Iterator[None]:
    try:
        yield
        process.wait(timeout=STOP_DEADLINE_SECONDS)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()


async def _wait_healthy(served: Served) -> None:
    deadline = time.monotonic() + STARTUP_DEADLINE_SECONDS
    async with httpx.AsyncClient(base_url=served.http, timeout=2) as http:
        while True:
            if served.process.poll() is not None:
                raise AssertionError(f"serve exited early:\n{served.output()}")
            with contextlib.suppress(httpx.TransportError):
                if (await http.get("/healthz")).status_code == 200:
                    return
            if time.monotonic() > deadline:
                raise AssertionError(f"serve never became healthy:\n{served.output()}")
            await asyncio.sleep(0.1)
