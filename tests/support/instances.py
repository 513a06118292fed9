"""Several real `rendezvous serve` processes, as a scaled-out deployment runs them: each
on its own free 127.0.0.1 port (kept across restarts), sharing one Redis when the
environment names REDIS_URL (`instance_env(tmp_path, redis_url=...)`; without it each
runs the in-memory backend on its own). Started concurrently, each waited for until
/healthz answers; output goes to files, one pair per run, quoted in failures.

    async with running_instances(3, env=instance_env(tmp_path, redis_url=redis.url),
                                 log_dir=tmp_path) as (a, b, c):
        async with joined(a.ws_url("room", token("alice"))) as (alice, _): ...
        await b.kill()        # SIGKILL: an instance dies
        c.terminate()         # SIGTERM: it drains; `await c.wait(10)` for its exit
        await b.restart()     # the same port again
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import subprocess
from collections.abc import AsyncIterator
from pathlib import Path

from tests.support.process import Daemon, Served, cli_env, spawn_serve, unused_port, wait_healthy
from tests.support.tokens import TEST_SECRET

INSTANCE_ENV = {"JWT_SECRET_KEY": TEST_SECRET, "WEBRTC_STUN_URLS": ""}
STOP_SIGNAL_WAIT_SECONDS = 5.0  # per signal: SIGINT drains, a second SIGINT ends at once


def instance_env(
    tmp_path: Path, *, redis_url: str | None = None, **variables: str
) -> dict[str, str]:
    """The environment for `rendezvous serve` in tests: the test's signing key, no STUN,
    a private state directory, REDIS_URL when given, then `variables` (env names)."""
    wanted = dict(INSTANCE_ENV)
    if redis_url is not None:
        wanted["REDIS_URL"] = redis_url
    wanted.update(variables)
    return cli_env(tmp_path, **wanted)


class Instance:
    """One `rendezvous serve` process on a fixed port; each (re)start is a new run."""

    def __init__(
        self, index: int, *, env: dict[str, str], log_dir: Path, args: tuple[str, ...] = ()
    ) -> None:
        self.index = index
        self.port = unused_port()
        self.env = env
        self.args = args
        self.log_dir = log_dir / f"instance-{index}"
        self.runs = 0
        self._daemon: Daemon | None = None

    def __repr__(self) -> str:
        return f"Instance({self.index}, port={self.port}, runs={self.runs})"

    @property
    def daemon(self) -> Daemon:
        assert self._daemon is not None, f"instance {self.index} was never started"
        return self._daemon

    @property
    def served(self) -> Served:
        """The current run as `tests.support.process.Served`."""
        daemon = self.daemon
        assert daemon.process is not None and daemon.stderr_path is not None
        return Served(daemon.process, self.port, daemon.log_path, daemon.stderr_path)

    @property
    def process(self) -> subprocess.Popen[bytes]:
        return self.served.process

    @property
    def pid(self) -> int:
        return self.daemon.pid

    @property
    def running(self) -> bool:
        return self._daemon is not None and self._daemon.running

    @property
    def http(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def ws_url(self, room: str, token: str) -> str:
        return f"ws://127.0.0.1:{self.port}/webrtc/ws/{room}?token={token}"

    def output(self) -> str:
        """stdout then stderr of the current run."""
        return self.served.output()

    def all_output(self) -> str:
        """Every run's output, oldest first."""
        runs = sorted(self.log_dir.glob("run-*"), key=lambda p: int(p.name.split("-")[1]))
        return "".join(
            f"--- run {path.name}\n"
            + (path / "stdout.log").read_text(errors="replace")
            + (path / "stderr.log").read_text(errors="replace")
            for path in runs
        )

    async def start(self) -> None:
        """Start a new run on this instance's port and wait until /healthz answers."""
        assert not self.running, f"instance {self.index} is running"
        self.runs += 1
        self._daemon = spawn_serve(
            *self.args, port=self.port, env=self.env, log_dir=self.log_dir / f"run-{self.runs}"
        )
        try:
            await wait_healthy(self.served)
        except BaseException:
            await self.kill()
            raise

    async def restart(self) -> None:
        """Stop (if running) and start again on the same port."""
        if self.running:
            await self.stop()
        await self.start()

    async def kill(self) -> int:
        """SIGKILL, as a crash; returns once the process is gone."""
        return await asyncio.to_thread(self.daemon.kill)

    def terminate(self) -> None:
        """SIGTERM, as an orchestrator does: the instance drains and exits by itself;
        `await wait(timeout)` for that."""
        self.daemon.send_signal(signal.SIGTERM)

    async def wait(self, timeout: float) -> int:
        """Wait (bounded) for the process to exit by itself; its exit status."""
        return await asyncio.to_thread(self.daemon.wait, timeout)

    async def stop(self) -> int:
        """Shut down, bounded: SIGINT (drain), a second SIGINT (at once), then SIGKILL."""
        if self._daemon is None:
            return 0
        daemon = self._daemon

        def stop() -> int:
            if daemon.running:
                daemon.send_signal(signal.SIGINT)
                with contextlib.suppress(subprocess.TimeoutExpired):
                    return daemon.wait(STOP_SIGNAL_WAIT_SECONDS)
            return daemon.stop(signal.SIGINT, timeout=STOP_SIGNAL_WAIT_SECONDS)

        return await asyncio.to_thread(stop)


@contextlib.asynccontextmanager
async def running_instances(
    count: int, *, env: dict[str, str], log_dir: Path, args: tuple[str, ...] = ()
) -> AsyncIterator[list[Instance]]:
    """Start `count` instances concurrently, each healthy before this yields; stop every
    one (still running or not) afterwards."""
    instances = [Instance(i, env=env, log_dir=log_dir, args=args) for i in range(count)]
    try:
        started = await asyncio.gather(*(i.start() for i in instances), return_exceptions=True)
        for result in started:
            if isinstance(result, BaseException):
                raise result
        yield instances
    finally:
        await asyncio.gather(*(i.stop() for i in instances))
