"""A real coturn (Debian's `turnserver`) configured as `../shared/TESTING.md` says: TURN
REST authentication with a shared secret (`use-auth-secret`), UDP only on a free
127.0.0.1 port, relaying between loopback peers from a small range of free ports. Its
database, pid file and log stay in its own directory; `verbose` makes the log name every
allocation and refusal with its username, which is what the tests assert on.

`allocate()` runs `turnutils_uclient` against it (TURN allocations, permissions, channel
binds and relayed data between two of its own clients): exit status 0 means allocated,
255 means refused (401 Unauthorized). The `coturn` fixture gives each test a fresh one
(it listens in ~40 ms)."""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import re
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.process import Component, Daemon, require_program, unused_port

HOST = "127.0.0.1"
REALM = "example.test"
TEST_TURN_SECRET = "coturn-shared-secret-for-tests"
# Relay ports: a turnutils_uclient run holds up to 8 until its allocations time out (it
# never releases them), an aiortc peer one; room for several of each.
RELAY_PORT_COUNT = 64
READY_DEADLINE_SECONDS = 10.0
STOP_DEADLINE_SECONDS = 10.0
CLIENT_TIMEOUT_SECONDS = 60.0  # turnutils_uclient takes ~6 s to allocate and relay
ALLOCATED, REFUSED = 0, 255  # turnutils_uclient's exit statuses
_POLL_SECONDS = 0.02
_PROBE_TIMEOUT_SECONDS = 0.2
_PORT_FLOOR = 10000
_PORT_ATTEMPTS = 500
_START_ATTEMPTS = 5
_STUN_MAGIC_COOKIE = 0x2112A442
_STUN_BINDING_REQUEST, _STUN_BINDING_SUCCESS = 0x0001, 0x0101


class Coturn(Component):
    """One `turnserver` accepting credentials minted from `secret`. Use as `with` (fixture)
    or `async with` (test); `restart(secret=...)` rotates the secret on the same port."""

    def __init__(self, directory: Path, *, secret: str = TEST_TURN_SECRET) -> None:
        self.directory = directory
        self.secret = secret
        self.port = _udp_and_tcp_port()
        self.min_port = _udp_port_range(RELAY_PORT_COUNT + 1, avoiding=self.port)
        self.max_port = self.min_port + RELAY_PORT_COUNT
        self.config_path = directory / "turnserver.conf"
        self.log_path = directory / "turn.log"
        self._daemon = Daemon(
            [require_program("turnserver", package="coturn"), "-c", str(self.config_path)],
            log_path=directory / "output.log",  # what it says before opening its log file
            cwd=directory,
        )
        self._started_once = False

    def __repr__(self) -> str:
        return f"Coturn(port={self.port}, relay={self.min_port}-{self.max_port})"

    @property
    def url(self) -> str:
        """The TURN URL clients are given (WEBRTC_TURN_URLS)."""
        return f"turn:{HOST}:{self.port}?transport=udp"

    @property
    def running(self) -> bool:
        return self._daemon.running

    def log(self) -> str:
        """What coturn printed (start banners, and errors from before it opened its log
        file: `no-stdout-log`), then its log file; both kept across restarts."""
        text = self.log_path.read_text(errors="replace") if self.log_path.exists() else ""
        return self._daemon.log() + text

    def log_tail(self, lines: int = 40) -> str:
        return "\n".join(self.log().splitlines()[-lines:])

    def successes(self, username: str, method: str = "ALLOCATE") -> int:
        """How many `method` requests (ALLOCATE, CHANNEL_BIND, CREATE_PERMISSION, ...) from
        `username` coturn granted."""
        return self.log().count(f"user <{username}>: incoming packet {method} processed, success")

    def allocations(self, username: str) -> int:
        """How many TURN allocations coturn granted to `username`."""
        return self.successes(username, "ALLOCATE")

    def refusals(self, username: str) -> int:
        """How many requests naming `username` coturn answered with 401 Unauthorized."""
        pattern = rf"user <{re.escape(username)}>: incoming packet \S+ processed, error 401"
        return len(re.findall(pattern, self.log()))

    async def allocate(self, username: str, credential: str) -> int:
        """Run `turnutils_uclient -y -n 5 -m 1` with these credentials; its exit status
        (ALLOCATED or REFUSED). Its output goes to uclient.log in the directory."""
        return await asyncio.to_thread(self._allocate, username, credential)

    async def restart(self, *, secret: str | None = None) -> None:
        """Stop, then start on the same port, now accepting only `secret` if given."""
        await asyncio.to_thread(self._restart, secret)

    async def stop(self) -> int:
        return await asyncio.to_thread(
            self._daemon.stop, signal.SIGTERM, timeout=STOP_DEADLINE_SECONDS
        )

    # Synchronous internals, used by the fixture and run in a thread by the coroutines.

    def config(self) -> str:
        d = self.directory
        return f"""listening-ip={HOST}
listening-port={self.port}
relay-ip={HOST}
min-port={self.min_port}
max-port={self.max_port}
realm={REALM}
use-auth-secret
static-auth-secret={self.secret}
fingerprint
no-tcp
no-tls
no-dtls
no-cli
allow-loopback-peers
no-multicast-peers
userdb={d}/turndb
pidfile={d}/turnserver.pid
log-file={self.log_path}
simple-log
no-stdout-log
verbose
"""

    def _allocate(self, username: str, credential: str) -> int:
        argv = [
            require_program("turnutils_uclient", package="coturn"),
            *("-y", "-n", "5", "-m", "1"),
            *("-p", str(self.port), "-u", username, "-w", credential),
            HOST,
        ]
        with (self.directory / "uclient.log").open("ab") as output:
            output.write(f"--- {subprocess.list2cmdline(argv)}\n".encode())
            output.flush()
            result = subprocess.run(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=output,
                stderr=subprocess.STDOUT,
                timeout=CLIENT_TIMEOUT_SECONDS,
                check=False,
            )
        return result.returncode

    def _restart(self, secret: str | None) -> None:
        self._down()
        if secret is not None:
            self.secret = secret
        self._up()

    def _up(self) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        for _ in range(_START_ATTEMPTS):
            self.config_path.write_text(self.config())
            log_offset = self.log_path.stat().st_size if self.log_path.exists() else 0
            self._daemon.start()
            if self._wait_ready(log_offset):
                self._started_once = True
                return
            self._daemon.kill()
            if self._started_once:
                raise AssertionError(f"coturn: port {self.port} was taken while it was stopped")
            self.port = _udp_and_tcp_port()  # lost a race for the port; again
        raise AssertionError(f"coturn: every port tried was taken:\n{self.log()}")

    def _wait_ready(self, log_offset: int) -> bool:
        """True once it answers a STUN Binding request; False if its port was taken."""
        deadline = time.monotonic() + READY_DEADLINE_SECONDS
        while True:
            if _answers_stun(self.port):
                return True
            taken = rf"Cannot bind \S+ listener socket to addr {re.escape(HOST)}:{self.port}\b"
            if re.search(taken, self._log_since(log_offset)):
                return False
            if not self._daemon.running:
                raise AssertionError(f"coturn exited on start:\n{self.log()}")
            if time.monotonic() > deadline:
                self._daemon.kill()
                raise AssertionError(f"coturn never answered STUN on {self.port}:\n{self.log()}")
            time.sleep(_POLL_SECONDS)

    def _log_since(self, offset: int) -> str:
        if not self.log_path.exists():
            return ""
        with self.log_path.open("rb") as log:
            log.seek(offset)
            return log.read().decode(errors="replace")

    def _down(self) -> None:
        if self._daemon.process is not None:
            self._daemon.stop(signal.SIGTERM, timeout=STOP_DEADLINE_SECONDS)


def _answers_stun(port: int) -> bool:
    """Whether a STUN Binding request to HOST:port gets a success response."""
    transaction = os.urandom(12)
    request = (
        _STUN_BINDING_REQUEST.to_bytes(2, "big")
        + (0).to_bytes(2, "big")
        + _STUN_MAGIC_COOKIE.to_bytes(4, "big")
        + transaction
    )
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.settimeout(_PROBE_TIMEOUT_SECONDS)
        try:
            sock.connect((HOST, port))  # connected: a closed port fails fast (ECONNREFUSED)
            sock.send(request)
            response = sock.recv(2048)
        except OSError:  # refused, or no answer in time
            return False
    return (
        len(response) >= 20
        and int.from_bytes(response[:2], "big") == _STUN_BINDING_SUCCESS
        and response[8:20] == transaction
    )


def _udp_bindable(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        try:
            sock.bind((HOST, port))
        except OSError:
            return False
        return True


def _udp_and_tcp_port() -> int:
    """A port free for both TCP (unused_port's check and bookkeeping) and UDP."""
    for _ in range(_PORT_ATTEMPTS):
        port = unused_port()
        if _udp_bindable(port):
            return port
    raise AssertionError("no port free for both TCP and UDP on 127.0.0.1")


_range_random = random.Random()  # seeded from os.urandom: concurrent runs pick differently


def _udp_port_range(count: int, *, avoiding: int) -> int:
    """The first of `count` consecutive free UDP ports below the ephemeral range, for
    relays, not including `avoiding`. Ranges are random, so two coturns rarely overlap;
    if they do, coturn skips a relay port it cannot bind."""
    ceiling = _ephemeral_low() - count
    for _ in range(_PORT_ATTEMPTS):
        first = _range_random.randrange(_PORT_FLOOR, ceiling)
        ports = range(first, first + count)
        if avoiding not in ports and all(_udp_bindable(port) for port in ports):
            return first
    raise AssertionError(f"no {count} consecutive free UDP ports on 127.0.0.1")


def _ephemeral_low() -> int:
    with contextlib.suppress(OSError, ValueError, IndexError):
        return int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    return 32768


@pytest.fixture
def coturn(tmp_path: Path) -> Iterator[Coturn]:
    """A fresh coturn for this test alone, with TEST_TURN_SECRET as its shared secret."""
    with Coturn(tmp_path / "coturn") as server:
        yield server
