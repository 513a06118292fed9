"""`rendezvous` as a real subprocess, for what only a whole process shows: the CLI,
signals, exit codes and logs. Output goes to files, so a chatty server never blocks on
a full pipe."""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import IO, Self, TypeVar

import httpx

from tests.support.server import free_port

RENDEZVOUS = Path(sys.executable).with_name("rendezvous")
STARTUP_DEADLINE_SECONDS = 30.0
STOP_DEADLINE_SECONDS = 30.0
CLI_TIMEOUT_SECONDS = 60.0

T = TypeVar("T")


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


# Long-running components for the scale-out tests (redis-server, nginx, several
# `rendezvous serve` instances): free ports that stay ours across restarts, and child
# processes that are always stopped, their whole process group included.

_PORT_FLOOR = 10000  # below it: well-known and registered services
_DEFAULT_EPHEMERAL_LOW = 32768
_PORT_ATTEMPTS = 500
_taken_ports: set[int] = set()
_port_random = random.Random()  # seeded from os.urandom: concurrent runs pick differently


def unused_port(*, bus_offset: int = 0) -> int:
    """A free 127.0.0.1 port below the kernel's ephemeral range, never handed out twice by
    this process: a component can stop and restart on it without another test's
    `free_port()` (which draws from the ephemeral range) taking it meanwhile. With
    `bus_offset`, `port + bus_offset` is free too (Redis Cluster's bus port)."""
    ceiling = _ephemeral_low() - bus_offset
    assert ceiling - _PORT_FLOOR >= 1000, f"no port range left below {ceiling + bus_offset}"
    for _ in range(_PORT_ATTEMPTS):
        port = _port_random.randrange(_PORT_FLOOR, ceiling)
        wanted = {port, port + bus_offset}
        if wanted & _taken_ports or not all(_bindable(p) for p in wanted):
            continue
        _taken_ports.update(wanted)
        return port
    raise AssertionError(f"no free 127.0.0.1 port in {_PORT_FLOOR}..{ceiling}")


def _ephemeral_low() -> int:
    try:
        low = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return _DEFAULT_EPHEMERAL_LOW
    return low


def _bindable(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


def port_open(port: int, host: str = "127.0.0.1") -> bool:
    """Whether something accepts TCP connections on host:port right now."""
    with contextlib.suppress(OSError), socket.create_connection((host, port), timeout=1):
        return True
    return False


def require_program(name: str, *, package: str) -> str:
    """The path of a program the tests run; fails (never skips) when it is missing."""
    found = shutil.which(name) or next(
        (str(p) for p in (Path("/usr/sbin") / name, Path("/usr/bin") / name) if p.exists()), None
    )
    assert found, (
        f"{name} not found: install the Debian package {package} "
        "(./scripts/test installs it when missing)"
    )
    return found


class Daemon:
    """A long-running child process in its own process group, its output appended to log
    files (kept across restarts for failure messages). Every wait is bounded; whatever will
    not stop is killed, process group included, so no helper or worker outlives it."""

    def __init__(
        self,
        argv: Sequence[str],
        *,
        log_path: Path,
        stderr_path: Path | None = None,
        cwd: Path | None = None,
        env: Mapping[str, str] | None = None,
        banner: bool = True,
    ) -> None:
        self.argv = [str(a) for a in argv]
        self.banner = banner  # a "--- start" line in the log before each start
        self.log_path = log_path
        self.stderr_path = stderr_path  # None: stderr goes to log_path too
        self.cwd = cwd
        self.env = dict(env) if env is not None else None
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    @property
    def pid(self) -> int:
        assert self.process is not None, "never started"
        return self.process.pid

    @property
    def returncode(self) -> int | None:
        return None if self.process is None else self.process.poll()

    def start(self) -> None:
        assert not self.running, f"already running: {self.argv[0]} (pid {self.pid})"
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        stamp = time.strftime("%H:%M:%S")
        with contextlib.ExitStack() as files:
            out = files.enter_context(self.log_path.open("ab"))
            if self.banner:
                out.write(f"--- {stamp} start: {subprocess.list2cmdline(self.argv)}\n".encode())
                out.flush()
            err: IO[bytes] | int = subprocess.STDOUT
            if self.stderr_path is not None:
                err = files.enter_context(self.stderr_path.open("ab"))
            self.process = subprocess.Popen(
                self.argv,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=err,
                cwd=self.cwd,
                env=self.env,
                start_new_session=True,  # its own group: stop() can end every child of it
            )

    def send_signal(self, sig: int) -> None:
        if self.running:
            assert self.process is not None
            self.process.send_signal(sig)

    def stop(self, sig: int = signal.SIGTERM, *, timeout: float = STOP_DEADLINE_SECONDS) -> int:
        """Send `sig`, wait up to `timeout` for the exit, then SIGKILL the whole group;
        returns the exit status (negative: the signal that ended it)."""
        process = self.process
        assert process is not None, "never started"
        if process.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                process.send_signal(sig)
            _wait_exited_unreaped(process.pid, timeout)
            # Not yet reaped, so the group id is still ours: end any child left behind.
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(process.pid, signal.SIGKILL)
        return process.wait(timeout=STOP_DEADLINE_SECONDS)

    def kill(self) -> int:
        return self.stop(signal.SIGKILL)

    def wait(self, timeout: float) -> int:
        """Wait for the process to exit by itself (bounded) and reap it."""
        assert self.process is not None, "never started"
        return self.process.wait(timeout=timeout)

    def log(self) -> str:
        text = self.log_path.read_text(errors="replace") if self.log_path.exists() else ""
        if self.stderr_path is not None and self.stderr_path.exists():
            text += self.stderr_path.read_text(errors="replace")
        return text

    def log_tail(self, lines: int = 60) -> str:
        return "\n".join(self.log().splitlines()[-lines:])


def _wait_exited_unreaped(pid: int, timeout: float) -> bool:
    """Wait until `pid` has exited, leaving it a zombie (its pid and group id not reusable)."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            if os.waitid(os.P_PID, pid, os.WEXITED | os.WNOHANG | os.WNOWAIT) is not None:
                return True
        except ChildProcessError:
            return True
        if time.monotonic() > deadline:
            return False
        time.sleep(0.01)


def spawn_serve(*args: str, port: int, env: dict[str, str], log_dir: Path) -> Daemon:
    """Start `rendezvous serve --port PORT ARGS` without waiting; stdout and stderr go,
    unaltered, to log_dir/stdout.log and log_dir/stderr.log."""
    log_dir.mkdir(parents=True, exist_ok=True)
    daemon = Daemon(
        [str(RENDEZVOUS), "serve", "--port", str(port), *args],
        log_path=log_dir / "stdout.log",
        stderr_path=log_dir / "stderr.log",
        env=env,
        banner=False,
    )
    daemon.start()
    return daemon


async def wait_healthy(served: Served) -> None:
    """Wait (bounded) until `served` answers GET /healthz with 200; fail with its output if
    it exits or never does."""
    await _wait_healthy(served)


class Component:
    """A real component for tests: started on enter, stopped on exit, with `with`
    (fixtures) or `async with` (tests; start and stop run in a thread)."""

    def _up(self) -> None:
        raise NotImplementedError

    def _down(self) -> None:
        raise NotImplementedError

    def __enter__(self) -> Self:
        try:
            self._up()
        except BaseException:
            self._down()
            raise
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self._down()

    async def __aenter__(self) -> Self:
        return await asyncio.to_thread(self.__enter__)

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        await asyncio.to_thread(self._down)


def interrupt_when_ready(
    argv: Sequence[str],
    *,
    cwd: Path,
    ready: Callable[[str], bool],
    settle_seconds: float,
    ready_timeout: float,
    stop_timeout: float,
    env: Mapping[str, str] | None = None,
    before_signal: Callable[[int], T] = lambda pid: None,  # type: ignore[assignment,return-value]
) -> tuple[int, str, T]:
    """Run `argv` until a line of its output is `ready`, let it work `settle_seconds`, call
    `before_signal(pid)` (to see what it started), SIGTERM it, and wait for it to exit:
    its exit status, all its output, and what `before_signal` returned. Killed if it will
    not stop."""
    process = subprocess.Popen(
        argv,
        cwd=cwd,
        env=None if env is None else dict(env),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    lines: list[str] = []
    try:
        assert process.stdout is not None
        deadline = time.monotonic() + ready_timeout
        while not any(ready(line) for line in lines):
            line = process.stdout.readline()
            assert line and time.monotonic() < deadline, "".join(lines)
            lines.append(line)
        time.sleep(settle_seconds)
        seen = before_signal(process.pid)
        process.send_signal(signal.SIGTERM)
        rest, _ = process.communicate(timeout=stop_timeout)
    finally:
        if process.poll() is None:
            process.kill()
            process.communicate()
    return process.returncode, "".join(lines) + rest, seen
