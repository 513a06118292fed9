"""`rendezvous client` run as a real subprocess against real `rendezvous serve` processes
(and, across instances, a real redis-server): what it prints, what it sends, and the exit
status a script reads for each kind of refused join."""

from __future__ import annotations

import asyncio
import contextlib
import json
import signal
import subprocess
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from aiortc import RTCConfiguration, RTCPeerConnection, RTCSessionDescription

from tests.support.client import joined
from tests.support.instances import instance_env, running_instances
from tests.support.process import RENDEZVOUS, one_line_failure, run_cli, serving
from tests.support.redis import RedisServer, redis_server  # noqa: F401  (a fixture)
from tests.support.server import free_port
from tests.support.tokens import token

LINE_TIMEOUT_SECONDS = 10.0
EXIT_TIMEOUT_SECONDS = 15.0
RECV_TIMEOUT_SECONDS = 5.0


def client_env(tmp_path: Path, **variables: str) -> dict[str, str]:
    """The servers' environment (the test key, no STUN) for the client too, so --user
    mints tokens they accept; no token from the shell, no proxy for loopback."""
    env = instance_env(tmp_path, NO_PROXY="127.0.0.1,localhost")
    env.pop("RENDEZVOUS_TOKEN", None)
    env.update(variables)
    return env


class RunningClient:
    """An interactive `rendezvous client`: its stdout read line by line, stdin written."""

    def __init__(self, process: asyncio.subprocess.Process) -> None:
        self.process = process
        self.lines: list[str] = []

    async def line_with(self, *words: str) -> str:
        """The next stdout line containing every one of `words` (earlier ones are kept)."""
        assert self.process.stdout is not None
        try:
            async with asyncio.timeout(LINE_TIMEOUT_SECONDS):
                while True:
                    raw = await self.process.stdout.readline()
                    assert raw, f"client exited before printing {words}: {self.lines}"
                    line = raw.decode().rstrip("\n")
                    self.lines.append(line)
                    if all(word in line for word in words):
                        return line
        except TimeoutError:
            raise AssertionError(f"no line with {words} in {self.lines}") from None

    async def type(self, line: str) -> None:
        assert self.process.stdin is not None
        self.process.stdin.write(line.encode() + b"\n")
        await self.process.stdin.drain()

    async def quit(self) -> tuple[int, str]:
        """Type `quit`; the exit status and stderr once it has exited."""
        await self.type("quit")
        return await self.exited()

    async def exited(self) -> tuple[int, str]:
        """The exit status and stderr once it exits by itself (bounded)."""
        async with asyncio.timeout(EXIT_TIMEOUT_SECONDS):
            stdout, stderr = await self.process.communicate()
        self.lines.extend(stdout.decode().splitlines())
        assert self.process.returncode is not None
        return self.process.returncode, stderr.decode()


@contextlib.asynccontextmanager
async def interactive(*args: str, env: dict[str, str]) -> AsyncIterator[RunningClient]:
    process = await asyncio.create_subprocess_exec(
        str(RENDEZVOUS),
        "client",
        *args,
        env=env,
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        yield RunningClient(process)
    finally:
        if process.returncode is None:
            process.kill()
            await process.communicate()


async def one_shot(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    """`rendezvous client ARGS` to the end, off the event loop (in-process clients keep
    reading meanwhile)."""
    return await asyncio.to_thread(run_cli, "client", *args, env=env)


async def test_join_prints_room_state_and_the_pongs_to_flag_pings(tmp_path: Path) -> None:
    env = client_env(tmp_path)
    async with serving(env=env, log_dir=tmp_path / "serve") as served:
        url = ("--url", served.http)
        args = ("--user", "alice", "--ping", "2", "--exit-after-join")
        result = await one_shot("lobby", *url, *args, env=env)
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""
    received = [line for line in result.stdout.splitlines() if " < " in line]
    assert "room_state" in received[0]
    assert received[0].endswith("1 in room: alice")
    pongs = [line for line in received if "< pong" in line]
    assert [p.split()[-1] for p in pongs] == ['{"seq":1}', '{"seq":2}']


async def test_a_second_clients_join_and_offer_are_printed_by_the_first(tmp_path: Path) -> None:
    env = client_env(tmp_path)
    async with serving(env=env, log_dir=tmp_path / "serve") as served:
        url = ("--url", served.http)
        async with interactive("lobby", *url, "--user", "alice", env=env) as alice:
            await alice.line_with("< room_state", "1 in room: alice")
            args = ("--user", "bob", "--offer", "--exit-after-join")
            bob = await one_shot("lobby", *url, *args, env=env)
            assert bob.returncode == 0, bob.stderr
            assert "2 in room: alice, bob" in bob.stdout
            await alice.line_with("< user_joined", "bob")
            offer = await alice.line_with("< offer")
            assert offer.split()[3] == "bob"  # time, <, type, sender
            assert "sdp offer" in offer
            await alice.line_with("< user_left", "bob", "reason left")
            status, stderr = await alice.quit()
    assert status == 0, stderr


async def test_json_lines_are_the_frames_exactly_as_the_server_sent_them(tmp_path: Path) -> None:
    env = client_env(tmp_path)
    async with serving(env=env, log_dir=tmp_path / "serve") as served:
        # carol, an in-process client, receives the same encoded frames as the CLI.
        async with joined(served.ws_url("lobby", token("carol"))) as (carol, _):
            args = ("lobby", "--url", served.http, "--user", "alice", "--json")
            async with interactive(*args, env=env) as alice:
                first = json.loads(await alice.line_with('"room_state"'))
                await carol.expect("user_joined")  # alice
                async with joined(served.ws_url("lobby", token("bob"))) as (bob, _):
                    carols_join = await _raw(carol)
                    await bob.send({"type": "offer", "payload": {"type": "offer", "sdp": "v=0"}})
                    carols_offer = await _raw(carol)
                    joined_line = await alice.line_with('"user_joined"')
                    offer_line = await alice.line_with('"offer"')
                    await alice.type("ping hello")
                    pong = json.loads(await alice.line_with('"pong"'))
                    status, stderr = await alice.quit()
    assert status == 0, stderr
    # The same bytes for both, but for the per-session `seq` spliced in at the very end.
    unnumbered = [_without_seq(line) for line in (joined_line, offer_line)]
    assert unnumbered == [_without_seq(carols_join), _without_seq(carols_offer)]
    assert [json.loads(line)["seq"] for line in (joined_line, offer_line)] == [2, 3]
    assert first["payload"]["participants"] == [
        {"user_id": "carol", "username": "carol"},
        {"user_id": "alice", "username": "alice"},
    ]
    assert json.loads(offer_line)["sender_id"] == "bob"
    assert pong["payload"] == {"seq": 1, "text": "hello"}
    for line in alice.lines:
        assert isinstance(json.loads(line), dict), line  # nothing but frames on stdout


def _without_seq(line: str) -> str:
    head, separator, _ = line.rpartition(',"seq":')
    assert separator, line
    return head


async def _raw(client: Any) -> str:
    text = await asyncio.wait_for(client.connection.recv(), RECV_TIMEOUT_SECONDS)
    assert isinstance(text, str)
    return text


async def test_offer_flag_sends_an_sdp_offer_a_real_peer_answers(tmp_path: Path) -> None:
    env = client_env(tmp_path)
    async with serving(env=env, log_dir=tmp_path / "serve") as served:
        async with joined(served.ws_url("lobby", token("alice"))) as (alice, _):
            args = ("--user", "bob", "--offer", "alice", "--exit-after-join")
            result = await one_shot("lobby", "--url", served.http, *args, env=env)
            assert result.returncode == 0, result.stderr
            await alice.expect("user_joined")
            offer = await alice.expect("offer")
    assert offer["sender_id"] == "bob"
    assert offer["payload"]["target_user_id"] == "alice"
    peer = RTCPeerConnection(RTCConfiguration(iceServers=[]))  # never a public STUN
    try:
        await peer.setRemoteDescription(RTCSessionDescription(offer["payload"]["sdp"], "offer"))
        answer = await peer.createAnswer()
    finally:
        await peer.close()
    assert answer.type == "answer"
    assert "m=application 9 UDP/DTLS/SCTP webrtc-datachannel" in answer.sdp


@pytest.mark.parametrize(
    ("claims", "status", "code"),
    [
        ({"secret": "some-other-key-" + "x" * 40}, 3, "unauthorized"),
        ({"rooms": ["other-*"]}, 4, "forbidden_room"),
    ],
)
async def test_a_refused_join_exits_with_its_error_codes_status(
    tmp_path: Path, claims: dict[str, Any], status: int, code: str
) -> None:
    env = client_env(tmp_path)
    refused = token("mallory", **claims)
    async with serving(env=env, log_dir=tmp_path / "serve") as served:
        result = await one_shot("lobby", "--url", served.http, "--token", refused, env=env)
    assert result.returncode == status, result.stderr
    assert result.stderr.startswith(f"rejected: {code} (close 1008): ")
    assert refused not in result.stdout + result.stderr


async def test_a_token_from_the_environment_is_used_and_never_printed(tmp_path: Path) -> None:
    env = client_env(tmp_path, RENDEZVOUS_TOKEN=token("dora"))
    async with serving(env=env, log_dir=tmp_path / "serve") as served:
        result = await one_shot("lobby", "--url", served.http, "--exit-after-join", env=env)
    assert result.returncode == 0, result.stderr
    assert "1 in room: dora" in result.stdout
    assert env["RENDEZVOUS_TOKEN"] not in result.stdout + result.stderr


async def test_a_full_room_exits_with_room_fulls_status(tmp_path: Path) -> None:
    env = client_env(tmp_path, WEBRTC_MAX_PARTICIPANTS_PER_ROOM="1")
    async with serving(env=env, log_dir=tmp_path / "serve") as served:
        async with joined(served.ws_url("lobby", token("alice"))):
            result = await one_shot("lobby", "--url", served.http, "--user", "bob", env=env)
    assert result.returncode == 5, result.stderr
    assert result.stderr == "rejected: room_full (close 1008): the room is full\n"


async def test_a_busy_instance_exits_with_the_try_again_status(tmp_path: Path) -> None:
    env = client_env(tmp_path, WEBRTC_MAX_CONNECTIONS="1")
    async with serving(env=env, log_dir=tmp_path / "serve") as served:
        async with joined(served.ws_url("lobby", token("alice"))):
            result = await one_shot("lobby", "--url", served.http, "--user", "bob", env=env)
    assert result.returncode == 6, result.stderr
    assert result.stderr.startswith("rejected: server_busy (close 1013): ")


async def test_a_draining_instance_ends_a_session_with_the_try_again_status(
    tmp_path: Path,
) -> None:
    env = client_env(tmp_path, WEBRTC_DRAIN_WINDOW="0.2")
    async with serving(env=env, log_dir=tmp_path / "serve") as served:
        async with interactive("lobby", "--url", served.http, "--user", "alice", env=env) as alice:
            await alice.line_with("< room_state")
            served.process.send_signal(signal.SIGTERM)
            await alice.line_with("< error", "server_draining")
            status, stderr = await alice.exited()
    assert status == 6, stderr
    assert stderr.startswith("rejected: server_draining (close 1012): ")


@pytest.mark.parametrize(
    ("args", "says"),
    [
        (("bad room", "--user", "x"), "invalid room id"),
        (("lobby",), "no token"),
        (("lobby", "--url", "ftp://127.0.0.1"), "--url"),
    ],
)
def test_usage_errors_exit_2_with_one_line_before_connecting(
    tmp_path: Path, args: tuple[str, ...], says: str
) -> None:
    result = run_cli("client", *args, env=client_env(tmp_path))
    assert result.returncode == 2
    assert says in one_line_failure(result)


def test_connection_refused_is_one_line_and_status_1(tmp_path: Path) -> None:
    url = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    result = run_cli("client", "lobby", "--url", url, "--user", "x", env=client_env(tmp_path))
    assert result.returncode == 1
    assert "cannot connect to ws://127.0.0.1:" in one_line_failure(result)


async def test_clients_on_two_instances_see_each_others_offers(
    tmp_path: Path,
    redis_server: RedisServer,  # noqa: F811  (the imported fixture)
) -> None:
    env = client_env(tmp_path)
    shared = instance_env(tmp_path, redis_url=redis_server.url)
    async with running_instances(2, env=shared, log_dir=tmp_path) as (one, two):
        async with interactive("lobby", "--url", one.http, "--user", "alice", env=env) as alice:
            await alice.line_with("< room_state", "1 in room: alice")
            async with interactive("lobby", "--url", two.http, "--user", "bob", env=env) as bob:
                await bob.line_with("< room_state", "2 in room: alice, bob")
                await alice.line_with("< user_joined", "bob")
                await alice.type("offer bob")
                await bob.type("offer alice")
                from_bob = await alice.line_with("< offer", "to alice")
                from_alice = await bob.line_with("< offer", "to bob")
                bob_status, bob_err = await bob.quit()
            await alice.line_with("< user_left", "bob")
            alice_status, alice_err = await alice.quit()
    assert from_bob.split()[3] == "bob"
    assert from_alice.split()[3] == "alice"
    assert (alice_status, bob_status) == (0, 0), alice_err + bob_err
