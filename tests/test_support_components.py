"""The scale-out fixtures really start what they claim: a standalone redis-server, a
three-node Redis Cluster with sharded pub/sub, a Sentinel that fails over, nginx with an
ip_hash upstream in front of real servers (HTTP and WebSocket), and `rendezvous serve`
instances that can be killed, restarted and drained. Each check asserts on what the
component did, and every process is gone afterwards."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis.asyncio
import redis.exceptions

from rendezvous.redis_url import RedisMode, parse_redis_url
from tests.support import redis as redis_support
from tests.support.instances import instance_env, running_instances
from tests.support.nginx import (
    Nginx,
    http_from,
    ip_hash_index,
    joined_from,
    source_address,
    source_for_upstream,
)
from tests.support.redis import RedisCluster, RedisSentinel, RedisServer, SharedComponent
from tests.support.tokens import token

MACHINE_REDIS_PORT = 6379
MESSAGE_TIMEOUT_SECONDS = 5.0

# The fixtures under test, by name (a conftest.py imports them the same way).
redis_server = redis_support.redis_server
redis_sentinel = redis_support.redis_sentinel
redis_cluster = redis_support.redis_cluster
redis_cluster_pool = redis_support.redis_cluster_pool


def _process_group(pgid: int) -> list[int]:
    """The live (non-zombie) processes in process group `pgid`."""
    members = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        with contextlib.suppress(OSError):
            # Fields after the ")" that ends the command name: state, ppid, pgrp, ...
            fields = (entry / "stat").read_text().rpartition(")")[2].split()
            if int(fields[2]) == pgid and fields[0] != "Z":
                members.append(int(entry.name))
    return members


def _gone(pid: int) -> bool:
    return not Path(f"/proc/{pid}").exists() and not _process_group(pid)


# Standalone redis-server


async def test_redis_server_serves_redis_py_on_its_own_port(redis_server: RedisServer) -> None:
    assert redis_server.port != MACHINE_REDIS_PORT
    assert redis_server.url == f"redis://127.0.0.1:{redis_server.port}/0"
    async with redis.asyncio.Redis.from_url(redis_server.url, protocol=2) as client:
        assert await client.ping() is True
        await client.set("greeting", "hello")
        assert await client.get("greeting") == b"hello"
    assert await redis_server.cli("CONFIG", "GET", "port") == f"port\n{redis_server.port}"
    assert await redis_server.cli("GET", "greeting") == "hello"


async def test_redis_server_restarts_empty_on_the_same_port(redis_server: RedisServer) -> None:
    port, first_pid = redis_server.port, redis_server.pid
    await redis_server.cli("SET", "before", "1")
    assert await redis_server.stop() == 0
    assert not redis_server.running
    async with redis_server.client(socket_connect_timeout=1) as client:
        with pytest.raises(redis.exceptions.ConnectionError):
            await client.ping()
    await redis_server.start()
    assert (redis_server.port, redis_server.running) == (port, True)
    assert redis_server.pid != first_pid
    assert await redis_server.key_ttls() == {}  # no persistence: an outage loses the data
    assert await redis_server.cli("PING") == "PONG"


async def test_redis_server_kill_drops_connected_clients(redis_server: RedisServer) -> None:
    async with redis_server.client() as client:
        assert await client.ping() is True
        assert await redis_server.kill() == -signal.SIGKILL
        with pytest.raises(redis.exceptions.ConnectionError):
            await client.ping()
    assert _gone(redis_server.pid)


async def test_redis_cli_kills_pubsub_connections(redis_server: RedisServer) -> None:
    async with redis_server.client() as client:
        pubsub = client.pubsub()
        try:
            await pubsub.subscribe("room")
            assert (await pubsub.get_message(timeout=MESSAGE_TIMEOUT_SECONDS) or {}).get(
                "type"
            ) == "subscribe"
            assert await redis_server.cli("CLIENT", "KILL", "TYPE", "pubsub") == "1"
            with pytest.raises(redis.exceptions.ConnectionError):
                await pubsub.get_message(timeout=MESSAGE_TIMEOUT_SECONDS)
        finally:
            await pubsub.aclose()  # type: ignore[no-untyped-call]


async def test_key_ttls_lists_every_key_with_its_expiry(redis_server: RedisServer) -> None:
    await redis_server.cli("SET", "forever", "1")
    await redis_server.cli("SET", "expiring", "1", "EX", "100")
    ttls = await redis_server.key_ttls()
    assert ttls.keys() == {"forever", "expiring"}
    assert ttls["forever"] == -1
    assert 90_000 < ttls["expiring"] <= 100_000
    await redis_server.flush()
    assert await redis_server.key_ttls() == {}


async def test_password_protected_server_refuses_anonymous_clients(tmp_path: Path) -> None:
    async with RedisServer(tmp_path, password="s3cret") as server:
        assert server.url == f"redis://:s3cret@127.0.0.1:{server.port}/0"
        async with server.client(password=None) as anonymous:
            with pytest.raises(redis.exceptions.AuthenticationError):
                await anonymous.ping()
        async with redis.asyncio.Redis.from_url(server.url, protocol=2) as client:
            assert await client.ping() is True
        assert await server.cli("PING") == "PONG"
        pid = server.pid
    assert _gone(pid)


# Redis Cluster


async def test_cluster_is_formed_on_every_node(redis_cluster: RedisCluster) -> None:
    for node in range(3):
        info = await redis_cluster.cluster_info(node)
        assert info["cluster_state"] == "ok"
        assert info["cluster_known_nodes"] == "3"
        assert info["cluster_slots_ok"] == "16384"
    target = parse_redis_url(redis_cluster.url)
    assert target.mode is RedisMode.CLUSTER
    assert list(target.nodes) == redis_cluster.addresses
    assert MACHINE_REDIS_PORT not in {port for _, port in target.nodes}


async def test_cluster_client_reaches_keys_on_all_three_nodes(redis_cluster: RedisCluster) -> None:
    keys_by_node: dict[int, str] = {}
    for n in range(200):
        key = f"{{room-{n}}}:presence"
        owner = await redis_cluster.node_for(key)
        keys_by_node.setdefault(owner.port, key)
        if len(keys_by_node) == 3:
            break
    assert len(keys_by_node) == 3
    async with redis_cluster.client() as client:
        for port, key in keys_by_node.items():
            await client.set(key, str(port))
        for port, key in keys_by_node.items():
            assert await client.get(key) == str(port)
    for node in redis_cluster.nodes:
        assert await node.cli("DBSIZE") == "1"  # each node holds exactly its own key
    assert set((await redis_cluster.key_ttls()).items()) == {(k, -1) for k in keys_by_node.values()}


async def test_cluster_sharded_pubsub_round_trip(redis_cluster: RedisCluster) -> None:
    channel = "{room-7}:bus"
    async with redis_cluster.client() as client:
        pubsub = client.pubsub()
        try:
            await pubsub.ssubscribe(channel)
            confirmed = await pubsub.get_sharded_message(timeout=MESSAGE_TIMEOUT_SECONDS)
            assert confirmed is not None and confirmed["type"] == "ssubscribe"
            assert await client.spublish(channel, "offer") == 1
            message = await pubsub.get_sharded_message(
                ignore_subscribe_messages=True, timeout=MESSAGE_TIMEOUT_SECONDS
            )
            assert message is not None
            assert (message["type"], message["channel"], message["data"]) == (
                "smessage",
                channel,
                "offer",
            )
        finally:
            await pubsub.aclose()


async def test_shared_cluster_is_emptied_between_uses_and_rebuilt_when_broken(
    redis_cluster_pool: SharedComponent[RedisCluster],
) -> None:
    cluster = redis_cluster_pool.acquire()
    builds = redis_cluster_pool.builds
    await cluster.cli("SET", "{a}left-behind", "1", node=0)
    await cluster.cli("SCRIPT", "LOAD", "return 1", node=0)
    again = redis_cluster_pool.acquire()
    assert again is cluster and redis_cluster_pool.builds == builds
    assert await cluster.key_ttls() == {}
    assert await cluster.cli("SCRIPT", "EXISTS", "e0e1f9fabfc9d4800c877a703b823ac0578ff8db") == "0"

    stopped = cluster.nodes[1]
    await stopped.stop()
    rebuilt = redis_cluster_pool.acquire()
    assert rebuilt is not cluster and redis_cluster_pool.builds == builds + 1
    assert not any(node.running for node in cluster.nodes)  # the broken one is torn down
    assert (await rebuilt.cluster_info())["cluster_state"] == "ok"


# Redis Sentinel


async def test_sentinel_names_the_primary_and_the_replica_follows(
    redis_sentinel: RedisSentinel,
) -> None:
    primary, replica = redis_sentinel.servers
    assert await redis_sentinel.master_address() == primary.address
    target = parse_redis_url(redis_sentinel.url)
    assert (target.mode, target.service_name) == (RedisMode.SENTINEL, "mymaster")
    assert target.nodes == (("127.0.0.1", redis_sentinel.sentinel_port),)
    sentinel = redis_sentinel.client()
    try:
        async with (
            sentinel.master_for("mymaster") as master,
            master.pipeline(transaction=False) as pipe,
        ):
            pipe.set("k", "v")
            pipe.wait(1, 5000)  # on the same connection: the replica has it
            assert await pipe.execute() == [True, 1]
    finally:
        await sentinel.aclose()
    assert await replica.cli("GET", "k") == "v"
    assert (await replica.info("replication"))["role"] == "slave"


async def test_sentinel_fails_over_to_the_replica_when_the_primary_dies(
    redis_sentinel: RedisSentinel,
) -> None:
    old, replica = redis_sentinel.servers
    async with old.client(single_connection_client=True) as client:
        await client.set("survivor", "1")
        assert await client.wait(1, 5000) == 1  # replicated before the crash
    started = time.monotonic()
    new = await redis_sentinel.kill_primary()
    took = time.monotonic() - started
    assert new is replica and not old.running
    assert await redis_sentinel.master_address() == replica.address
    sentinel = redis_sentinel.client()
    try:
        async with sentinel.master_for("mymaster") as primary:
            assert await primary.get("survivor") == "1"
            await primary.set("after", "2")
    finally:
        await sentinel.aclose()
    assert await replica.cli("GET", "after") == "2"
    # down-after 1 s plus the election: a few seconds; the fixture waits up to 30.
    assert took < 30, took


# nginx


async def _answer_with_port(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """A tiny HTTP upstream: every request gets 200 and the port it arrived on."""
    await _answer(reader, writer, status="200 OK")


async def _answer_503(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """A draining upstream: every request gets 503."""
    await _answer(reader, writer, status="503 Service Unavailable")


async def _answer(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter, *, status: str
) -> None:
    with contextlib.suppress(ConnectionError, asyncio.IncompleteReadError):
        await reader.readuntil(b"\r\n\r\n")
        body = str(writer.get_extra_info("sockname")[1]).encode()
        head = f"HTTP/1.1 {status}\r\nContent-Length: {len(body)}\r\nConnection: close\r\n"
        writer.write(head.encode() + b"\r\n" + body)
        await writer.drain()
    writer.close()
    with contextlib.suppress(ConnectionError):
        await writer.wait_closed()


@contextlib.asynccontextmanager
async def _upstreams(*handlers: object) -> AsyncIterator[list[int]]:
    servers = [
        await asyncio.start_server(handler, "127.0.0.1", 0)  # type: ignore[arg-type]
        for handler in handlers
    ]
    try:
        yield [s.sockets[0].getsockname()[1] for s in servers]
    finally:
        for server in servers:
            server.close()
            await server.wait_closed()


async def test_ip_hash_sends_distinct_source_addresses_to_distinct_upstreams(
    tmp_path: Path,
) -> None:
    async with _upstreams(*[_answer_with_port] * 3) as ports, Nginx(tmp_path, ports) as nginx:
        reached: dict[str, int] = {}
        for n in range(1, 7):
            source = source_address(n)
            async with http_from(source, nginx.url) as http:
                response = await http.get("/healthz")
            assert response.status_code == 200
            reached[source] = int(response.text)
        assert len(set(reached.values())) == 3, reached
        for source, port in reached.items():
            assert port == ports[nginx.upstream_for(source)], (source, reached)
        for index in range(3):  # the helper that picks a source for a given upstream
            async with http_from(source_for_upstream(index, 3), nginx.url) as http:
                assert (await http.get("/webrtc/config")).text == str(ports[index])
        remotes = {line.split()[0] for line in nginx.access_log()}
        assert set(reached) <= remotes  # nginx saw the distinct source addresses
        pid = nginx.pid
        assert len(_process_group(pid)) >= 2  # master and worker
    assert _gone(pid)


async def test_nginx_sends_a_request_refused_with_503_to_another_upstream(
    tmp_path: Path,
) -> None:
    handlers = [_answer_with_port, _answer_with_port]
    draining = ip_hash_index("127.0.0.1", 2)  # where ip_hash sends this test's requests
    handlers[draining] = _answer_503
    async with _upstreams(*handlers) as ports, Nginx(tmp_path, ports) as nginx:
        async with httpx.AsyncClient(base_url=nginx.url, trust_env=False) as http:
            response = await http.get("/webrtc/rooms/demo/participants")
        assert response.status_code == 200
        assert response.text == str(ports[1 - draining])
        await asyncio.sleep(0.1)  # the access log line is written after the response
        upstreams = nginx.access_log()[-1].split("upstream=")[1]
        assert f"127.0.0.1:{ports[draining]}, 127.0.0.1:{ports[1 - draining]}" in upstreams
        assert "upstream_status=503, 200" in upstreams


async def test_nginx_least_conn_proxies_to_an_upstream(tmp_path: Path) -> None:
    async with _upstreams(_answer_with_port, _answer_with_port) as ports:
        async with Nginx(tmp_path, ports, balance="least_conn") as nginx:
            assert "least_conn;" in nginx.config() and "ip_hash" not in nginx.config()
            async with httpx.AsyncClient(base_url=nginx.url, trust_env=False) as http:
                response = await http.get("/healthz")
            assert response.status_code == 200 and int(response.text) in ports


def _users(room_state: dict[str, Any]) -> set[str]:
    return {p["user_id"] for p in room_state["payload"]["participants"]}


async def test_websockets_through_nginx_reach_the_instance_ip_hash_picks(tmp_path: Path) -> None:
    async with running_instances(2, env=instance_env(tmp_path), log_dir=tmp_path) as instances:
        ports = [i.port for i in instances]
        async with Nginx(tmp_path / "nginx", ports) as nginx:
            first, second = source_for_upstream(0, 2), source_for_upstream(1, 2)
            url_a, url_b = (
                nginx.ws_url("lobby", token("alice")),
                nginx.ws_url("lobby", token("bob")),
            )
            async with joined_from(first, url_a) as (alice, state_a):
                assert _users(state_a) == {"alice"}
                async with joined_from(second, url_b) as (_, state_b):
                    # Memory backends share nothing: bob is alone on the other instance.
                    assert _users(state_b) == {"bob"}
                    await alice.expect_silence()
                async with joined_from(source_for_upstream(0, 2, skip=1), url_b) as (_, state):
                    assert _users(state) == {"alice", "bob"}
                    assert (await alice.expect("user_joined"))["payload"]["user_id"] == "bob"
            async with http_from(first, nginx.url) as http:
                assert (await http.get("/healthz")).status_code == 200


# rendezvous serve instances


async def test_instances_can_be_killed_restarted_and_drained(tmp_path: Path) -> None:
    env = instance_env(tmp_path, WEBRTC_DRAIN_WINDOW="0.5", WEBRTC_DRAIN_DEADLINE="3")
    async with running_instances(2, env=env, log_dir=tmp_path) as (crashing, draining):
        assert crashing.port != draining.port
        assert "REDIS_URL" not in crashing.env
        first_pid = crashing.pid
        assert await crashing.kill() == -signal.SIGKILL
        async with httpx.AsyncClient(trust_env=False) as http:
            with pytest.raises(httpx.ConnectError):
                await http.get(f"{crashing.http}/healthz")
            await crashing.restart()
            assert crashing.pid != first_pid and crashing.runs == 2
            assert (await http.get(f"{crashing.http}/healthz")).status_code == 200
        assert crashing.all_output().count("--- run run-") == 2

        draining.terminate()
        started = time.monotonic()
        assert await draining.wait(10) in (0, -signal.SIGTERM)
        assert time.monotonic() - started < 2 * 3  # within twice the drain deadline
        pids = [crashing.pid, draining.pid]
    assert all(_gone(pid) for pid in pids)


async def test_instance_that_cannot_start_fails_with_its_output(tmp_path: Path) -> None:
    # A drain window longer than the drain deadline is refused at start-up.
    env = instance_env(tmp_path, WEBRTC_DRAIN_WINDOW="9", WEBRTC_DRAIN_DEADLINE="3")
    with pytest.raises(AssertionError, match="exited early") as failure:
        async with running_instances(1, env=env, log_dir=tmp_path):
            pass
    assert "WEBRTC_DRAIN" in str(failure.value)


def test_instance_env_names_the_redis_url_and_no_stun_server(tmp_path: Path) -> None:
    env = instance_env(tmp_path, redis_url="redis://127.0.0.1:1/0")
    assert env["REDIS_URL"] == "redis://127.0.0.1:1/0"
    assert env["WEBRTC_STUN_URLS"] == "" and os.environ.get("REDIS_URL") is None
