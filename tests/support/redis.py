"""Real Redis for the scale-out tests: a standalone server, a three-node Cluster and a
Sentinel setup (primary, replica, sentinel). Each runs on free 127.0.0.1 ports (below
the ephemeral range, so a stopped server can restart on its port) in its own directory,
is stopped and waited for on exit, and keeps its log for failure messages. The machine's
own Redis (6379) is never touched.

Handles are context managers: `with` in fixtures, `async with` in tests. Inside a test,
operations are coroutines (`await server.stop()`) that run in a thread, so the test's
event loop, and any in-process server in it, keeps running meanwhile.

Fixtures (import them into the conftest.py of a directory that needs them, together
with the `*_pool` fixture they depend on):

- `redis_server`, `redis_sentinel`: fresh for each test (~30 ms and ~0.2 s to start):
  stop, kill, restart or fail over freely.
- `redis_cluster` (with `redis_cluster_pool`): one per session, shared, since a cluster
  takes ~2 s to form. Before each test it is checked and emptied: FLUSHALL and SCRIPT
  FLUSH on every node, so no test sees another's keys or cached scripts. A test may
  still break it (stop or kill a node): the next test then gets a rebuilt one.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any, Generic, TypeVar

import pytest
import redis
import redis.asyncio
import redis.asyncio.cluster
import redis.asyncio.retry
import redis.asyncio.sentinel
import redis.retry
from redis.backoff import NoBackoff

from tests.support.process import Component, Daemon, require_program, unused_port

HOST = "127.0.0.1"
READY_DEADLINE_SECONDS = 10.0
CLUSTER_READY_DEADLINE_SECONDS = 30.0
FAILOVER_DEADLINE_SECONDS = 30.0
CLI_TIMEOUT_SECONDS = 30.0
STOP_DEADLINE_SECONDS = 15.0
CLUSTER_BUS_OFFSET = 10000  # a cluster node's bus listens on its port + 10000
CLUSTER_SLOTS = 16384
SENTINEL_SERVICE = "mymaster"
_POLL_SECONDS = 0.02
_PORT_ATTEMPTS = 5


def _redis_program(name: str) -> str:
    return require_program(name, package="redis-server")


def _sync_client(port: int, password: str | None = None) -> redis.Redis:
    # RESP2, short timeouts, no retries: a helper must fail fast on a dead server.
    return redis.Redis(
        host=HOST,
        port=port,
        password=password,
        protocol=2,
        socket_timeout=2,
        socket_connect_timeout=2,
        retry=redis.retry.Retry(NoBackoff(), 0),
        decode_responses=True,
    )


def _poll_until(what: str, check: Callable[[], bool], deadline_seconds: float) -> None:
    deadline = time.monotonic() + deadline_seconds
    last_error: Exception | None = None
    while True:
        try:
            if check():
                return
        except (redis.RedisError, OSError) as exc:
            last_error = exc
        if time.monotonic() > deadline:
            raise AssertionError(
                f"{what}: not within {deadline_seconds} s (last error: {last_error!r})"
            )
        time.sleep(_POLL_SECONDS)


def _run_cli(port: int, args: Sequence[str], *, password: str | None = None) -> str:
    env = dict(os.environ)
    env.pop("REDISCLI_AUTH", None)
    if password is not None:
        env["REDISCLI_AUTH"] = password  # keeps the password off the command line
    argv = [_redis_program("redis-cli"), "-h", HOST, "-p", str(port), *map(str, args)]
    result = subprocess.run(
        argv, env=env, capture_output=True, text=True, timeout=CLI_TIMEOUT_SECONDS, check=False
    )
    assert result.returncode == 0, f"{subprocess.list2cmdline(argv)}: {result.stderr}"
    return result.stdout.strip()


def _key_ttls(port: int, password: str | None = None) -> dict[str, int]:
    ttls: dict[str, int] = {}
    with _sync_client(port, password) as client:
        keys = list(client.scan_iter(count=1000))
        pipe = client.pipeline(transaction=False)
        for key in keys:
            pipe.pttl(key)
        for key, ttl in zip(keys, pipe.execute(), strict=True):
            ttls[key] = int(ttl)
    return ttls


def _flush(port: int, password: str | None = None) -> None:
    with _sync_client(port, password) as client:
        client.flushall()
        client.script_flush()


class _Component(Component):
    """A Redis deployment: it can also say whether it is healthy and empty itself."""

    def _healthy(self) -> bool:
        raise NotImplementedError

    def _flush(self) -> None:
        raise NotImplementedError


class _PortTakenError(Exception):
    pass


class RedisServer(_Component):
    """One `redis-server` (no persistence: a restart starts empty) on a free port.
    `password` turns on `requirepass`; `config` adds redis.conf lines."""

    def __init__(
        self,
        directory: Path,
        *,
        password: str | None = None,
        name: str = "redis",
        config: Sequence[str] = (),
        cluster_node: bool = False,
    ) -> None:
        self.directory = directory
        self.name = name
        self.password = password
        self._extra_config = list(config)
        self._bus_offset = CLUSTER_BUS_OFFSET if cluster_node else 0
        self.port = unused_port(bus_offset=self._bus_offset)
        self.config_path = directory / f"{name}.conf"
        self._daemon = Daemon(
            [_redis_program("redis-server"), str(self.config_path)],
            log_path=directory / f"{name}.log",
            cwd=directory,
        )
        self._started_once = False
        self._log_offset = 0

    def __repr__(self) -> str:
        return f"RedisServer({self.name}, port={self.port}, running={self.running})"

    @property
    def url(self) -> str:
        auth = f":{self.password}@" if self.password else ""
        return f"redis://{auth}{HOST}:{self.port}/0"

    @property
    def address(self) -> tuple[str, int]:
        return HOST, self.port

    @property
    def running(self) -> bool:
        return self._daemon.running

    @property
    def pid(self) -> int:
        return self._daemon.pid

    def log(self) -> str:
        return self._daemon.log()

    def client(self, **options: object) -> redis.asyncio.Redis:
        """A redis-py asyncio client on this server (RESP2, str replies, and no retries, so
        an outage shows at once); `options` override those. Close it after."""
        settings: dict[str, object] = {
            "password": self.password,
            "protocol": 2,
            "decode_responses": True,
            "retry": redis.asyncio.retry.Retry(NoBackoff(), 0),
        }
        settings.update(options)
        return redis.asyncio.Redis(host=HOST, port=self.port, **settings)  # type: ignore[arg-type]

    async def start(self) -> None:
        """Start again, on the same port, and wait until PING answers."""
        await asyncio.to_thread(self._up)

    async def stop(self) -> int:
        """SIGTERM, and wait for the exit; returns the exit status."""
        return await asyncio.to_thread(
            self._daemon.stop, signal.SIGTERM, timeout=STOP_DEADLINE_SECONDS
        )

    async def kill(self) -> int:
        """SIGKILL, and wait for the exit: an abrupt crash."""
        return await asyncio.to_thread(self._daemon.kill)

    async def cli(self, *args: str | int) -> str:
        """Run `redis-cli` against this server; returns its output, stripped (an error
        reply comes back as its text, e.g. "ERR unknown command ...")."""
        return await asyncio.to_thread(
            _run_cli, self.port, [str(a) for a in args], password=self.password
        )

    async def key_ttls(self) -> dict[str, int]:
        """Every key with its PTTL in milliseconds (-1: the key never expires; -2: it
        expired between the scan and the PTTL)."""
        return await asyncio.to_thread(_key_ttls, self.port, self.password)

    async def flush(self) -> None:
        """FLUSHALL and SCRIPT FLUSH."""
        await asyncio.to_thread(self._flush)

    async def info(self, section: str) -> dict[str, object]:
        def read() -> dict[str, object]:
            with _sync_client(self.port, self.password) as client:
                return dict(client.info(section))

        return await asyncio.to_thread(read)

    # Synchronous internals, used by fixtures and run in a thread by the coroutines.

    def _write_config(self) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        lines = [
            f"port {self.port}",
            f"bind {HOST}",
            "daemonize no",
            'logfile ""',
            f'dir "{self.directory}"',
            'save ""',
            "appendonly no",
            "enable-debug-command local",  # DEBUG SLEEP simulates a stalled server
            "repl-diskless-sync-delay 0",  # a replica syncs at once, not after 5 s
        ]
        if self.password is not None:
            lines += [f'requirepass "{self.password}"', f'masterauth "{self.password}"']
        if self._bus_offset:
            lines += ["cluster-enabled yes", f"cluster-config-file nodes-{self.port}.conf"]
        self.config_path.write_text("\n".join([*lines, *self._extra_config]) + "\n")

    def _up(self) -> None:
        if self.running:
            return
        if not self._started_once:
            self._write_config()
        for _ in range(_PORT_ATTEMPTS):
            self._log_offset = (
                self._daemon.log_path.stat().st_size if self._daemon.log_path.exists() else 0
            )
            self._daemon.start()
            try:
                self._wait_ready()
            except _PortTakenError:
                self._daemon.kill()
                if self._started_once:
                    raise AssertionError(
                        f"{self.name}: port {self.port} was taken while it was stopped"
                    ) from None
                self.port = unused_port(bus_offset=self._bus_offset)  # lost a race; again
                self._write_config()
                continue
            self._started_once = True
            return
        raise AssertionError(f"{self.name}: every port tried was taken")

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + READY_DEADLINE_SECONDS
        while True:
            if not self._daemon.running:
                output = self._daemon.log()[self._log_offset :]
                if "Address already in use" in output:
                    raise _PortTakenError
                raise AssertionError(f"{self.name} exited on start:\n{output}")
            with (
                contextlib.suppress(redis.RedisError, OSError),
                _sync_client(self.port, self.password) as client,
            ):
                if client.ping():
                    return
            if time.monotonic() > deadline:
                self._daemon.kill()
                raise AssertionError(f"{self.name} never answered PING:\n{self._daemon.log_tail()}")
            time.sleep(_POLL_SECONDS)

    def _down(self) -> None:
        if self._daemon.process is not None:
            self._daemon.stop(signal.SIGTERM, timeout=STOP_DEADLINE_SECONDS)

    def _healthy(self) -> bool:
        if not self.running:
            return False
        with _sync_client(self.port, self.password) as client:
            return bool(client.ping())

    def _flush(self) -> None:
        _flush(self.port, self.password)

    def _cluster_info(self) -> dict[str, str]:
        text = _run_cli(self.port, ["CLUSTER", "INFO"], password=self.password)
        pairs = (line.strip().partition(":") for line in text.splitlines() if ":" in line)
        return {key: value for key, _, value in pairs}


class RedisCluster(_Component):
    """Three (or more) `redis-server --cluster-enabled yes` primaries, no replicas, every
    slot covered. Cluster mode has one database (0) and no password here."""

    def __init__(self, directory: Path, *, size: int = 3, node_timeout_ms: int = 2000) -> None:
        assert size >= 3, "redis-cli --cluster create needs at least three primaries"
        self.directory = directory
        self.nodes = [
            RedisServer(
                directory / f"node-{i}",
                name=f"node-{i}",
                cluster_node=True,
                config=[f"cluster-node-timeout {node_timeout_ms}"],
            )
            for i in range(size)
        ]

    def __repr__(self) -> str:
        return f"RedisCluster(ports={[n.port for n in self.nodes]})"

    @property
    def url(self) -> str:
        """`redis+cluster://127.0.0.1:N1,127.0.0.1:N2,127.0.0.1:N3` (see redis_url.py)."""
        return "redis+cluster://" + ",".join(f"{HOST}:{n.port}" for n in self.nodes)

    @property
    def addresses(self) -> list[tuple[str, int]]:
        return [n.address for n in self.nodes]

    def client(self, **options: object) -> redis.asyncio.cluster.RedisCluster:
        """A redis-py asyncio RedisCluster (RESP2, str replies); close it after."""
        settings: dict[str, object] = {"protocol": 2, "decode_responses": True}
        settings.update(options)
        return redis.asyncio.cluster.RedisCluster(
            startup_nodes=[redis.asyncio.cluster.ClusterNode(h, p) for h, p in self.addresses],
            **settings,  # type: ignore[arg-type]
        )

    async def cli(self, *args: str | int, node: int = 0) -> str:
        return await self.nodes[node].cli(*args)

    async def cluster_info(self, node: int = 0) -> dict[str, str]:
        return await asyncio.to_thread(self.nodes[node]._cluster_info)

    async def node_for(self, key: str) -> RedisServer:
        """The node that owns `key`'s slot (a `{tag}` in the key decides it)."""
        return await asyncio.to_thread(self._node_for, key)

    async def key_ttls(self) -> dict[str, int]:
        """Every key on every node with its PTTL in milliseconds (-1: never expires)."""

        def scan() -> dict[str, int]:
            ttls: dict[str, int] = {}
            for node in self.nodes:
                ttls.update(_key_ttls(node.port))
            return ttls

        return await asyncio.to_thread(scan)

    async def flush(self) -> None:
        await asyncio.to_thread(self._flush)

    def _node_for(self, key: str) -> RedisServer:
        with _sync_client(self.nodes[0].port) as client:
            slot = int(client.execute_command("CLUSTER", "KEYSLOT", key))
            for start, end, owner, *_replicas in client.execute_command("CLUSTER", "SLOTS"):
                if int(start) <= slot <= int(end):
                    return next(n for n in self.nodes if n.port == int(owner[1]))
        raise AssertionError(f"no node owns slot {slot}")

    def _up(self) -> None:
        for node in self.nodes:
            node._up()
        argv = [
            _redis_program("redis-cli"),
            "--cluster",
            "create",
            *(f"{HOST}:{n.port}" for n in self.nodes),
            "--cluster-replicas",
            "0",
            "--cluster-yes",
        ]
        result = subprocess.run(
            argv,
            capture_output=True,
            text=True,
            timeout=CLUSTER_READY_DEADLINE_SECONDS,
            check=False,
        )
        assert result.returncode == 0 and f"All {CLUSTER_SLOTS} slots covered" in result.stdout, (
            f"redis-cli --cluster create failed:\n{result.stdout}{result.stderr}"
        )
        try:
            _poll_until(
                "cluster_state:ok on every node", self._formed, CLUSTER_READY_DEADLINE_SECONDS
            )
        except AssertionError as exc:
            logs = "\n".join(f"--- {n.name}:\n{n._daemon.log_tail(20)}" for n in self.nodes)
            raise AssertionError(f"{exc}\n{logs}") from None

    def _formed(self) -> bool:
        for node in self.nodes:
            info = node._cluster_info()
            if info.get("cluster_state") != "ok" or info.get("cluster_known_nodes") != str(
                len(self.nodes)
            ):
                return False
        return True

    def _down(self) -> None:
        for node in self.nodes:
            node._down()

    def _healthy(self) -> bool:
        return all(n.running for n in self.nodes) and self._formed()

    def _flush(self) -> None:
        for node in self.nodes:
            node._flush()


class RedisSentinel(_Component):
    """A primary, a replica (`replicaof`) and one sentinel monitoring them (quorum 1, so
    the single sentinel fails over by itself). `servers[0]` starts as the primary."""

    def __init__(
        self,
        directory: Path,
        *,
        service_name: str = SENTINEL_SERVICE,
        down_after_ms: int = 1000,
        failover_timeout_ms: int = 5000,
    ) -> None:
        self.directory = directory
        self.service_name = service_name
        self._down_after_ms = down_after_ms
        self._failover_timeout_ms = failover_timeout_ms
        primary = RedisServer(directory / "server-a", name="server-a")
        replica = RedisServer(
            directory / "server-b",
            name="server-b",
            config=[f"replicaof {HOST} {primary.port}"],
        )
        self.servers = [primary, replica]
        self.sentinel_port = unused_port()
        self._sentinel_dir = directory / "sentinel"
        self._sentinel_config = self._sentinel_dir / "sentinel.conf"  # the sentinel rewrites it
        self._sentinel = Daemon(
            [_redis_program("redis-server"), str(self._sentinel_config), "--sentinel"],
            log_path=self._sentinel_dir / "sentinel.log",
            cwd=self._sentinel_dir,
        )

    def __repr__(self) -> str:
        ports = [s.port for s in self.servers]
        return f"RedisSentinel(sentinel={self.sentinel_port}, servers={ports})"

    @property
    def url(self) -> str:
        """`redis+sentinel://127.0.0.1:S/mymaster/0` (see redis_url.py)."""
        return f"redis+sentinel://{HOST}:{self.sentinel_port}/{self.service_name}/0"

    def sentinel_log(self) -> str:
        return self._sentinel.log()

    def client(self, **options: object) -> redis.asyncio.sentinel.Sentinel:
        """A redis-py asyncio Sentinel (`.master_for(service_name)`); close it after."""
        settings: dict[str, object] = {"protocol": 2, "decode_responses": True}
        settings.update(options)
        return redis.asyncio.sentinel.Sentinel(  # type: ignore[no-untyped-call]
            [(HOST, self.sentinel_port)], socket_timeout=2, **settings
        )

    async def sentinel_cli(self, *args: str | int) -> str:
        """Run `redis-cli` against the sentinel."""
        return await asyncio.to_thread(_run_cli, self.sentinel_port, [str(a) for a in args])

    async def master_address(self) -> tuple[str, int]:
        """What the sentinel answers to SENTINEL get-master-addr-by-name."""
        return await asyncio.to_thread(self._master_address)

    async def primary(self) -> RedisServer:
        """The server the sentinel currently names as primary."""
        return await asyncio.to_thread(self._primary)

    async def kill_primary(self) -> RedisServer:
        """SIGKILL the current primary, wait (bounded) until the sentinel has promoted the
        other server and finished the failover; returns the new primary. The killed one
        stays down (`await server.start()` brings it back, as a replica)."""
        return await asyncio.to_thread(self._kill_primary)

    async def key_ttls(self) -> dict[str, int]:
        return await asyncio.to_thread(lambda: _key_ttls(self._primary().port))

    async def flush(self) -> None:
        await asyncio.to_thread(self._flush)

    def _master_address(self) -> tuple[str, int]:
        with _sync_client(self.sentinel_port) as client:
            host, port = client.execute_command(
                "SENTINEL", "GET-MASTER-ADDR-BY-NAME", self.service_name
            )
        return str(host), int(port)

    def _master_state(self) -> dict[str, str]:
        with _sync_client(self.sentinel_port) as client:
            fields = client.execute_command("SENTINEL", "MASTER", self.service_name)
        return dict(zip(fields[::2], fields[1::2], strict=True))

    def _settled_on(self, server: RedisServer) -> bool:
        """The sentinel names `server` as primary, with no failover in progress and no
        down flags (clients such as redis-py's Sentinel refuse a primary flagged down)."""
        state = self._master_state()
        return (state["ip"], int(state["port"])) == server.address and state["flags"] == "master"

    def _primary(self) -> RedisServer:
        host, port = self._master_address()
        return next(s for s in self.servers if (HOST, s.port) == (host, port))

    def _kill_primary(self) -> RedisServer:
        old = self._primary()
        successor = next(s for s in self.servers if s is not old)
        old._daemon.kill()

        def promoted() -> bool:
            if not self._settled_on(successor):
                return False
            with _sync_client(successor.port) as client:
                return bool(client.info("replication")["role"] == "master")

        try:
            _poll_until("failover to the replica", promoted, FAILOVER_DEADLINE_SECONDS)
        except AssertionError as exc:
            raise AssertionError(f"{exc}\nsentinel log:\n{self._sentinel.log_tail()}") from None
        return successor

    def _replica_in_sync(self, replica: RedisServer) -> bool:
        with _sync_client(replica.port) as client:
            info = client.info("replication")
        return bool(info.get("role") == "slave" and info.get("master_link_status") == "up")

    def _sentinel_ready(self) -> bool:
        if not self._settled_on(self.servers[0]):
            return False
        with _sync_client(self.sentinel_port) as client:
            replicas = client.execute_command("SENTINEL", "REPLICAS", self.service_name)
        views = [dict(zip(r[::2], r[1::2], strict=True)) for r in replicas]
        return any(
            int(v["port"]) == self.servers[1].port
            and v["flags"] == "slave"
            and v.get("master-link-status") == "ok"
            for v in views
        )

    def _up(self) -> None:
        primary, replica = self.servers
        primary._up()
        replica._up()
        # The sentinel finds replicas in the primary's INFO, read at once on connecting and
        # then only every 10 s: start it after the replica is attached, not before.
        _poll_until(
            "replica in sync", lambda: self._replica_in_sync(replica), READY_DEADLINE_SECONDS
        )
        self._sentinel_dir.mkdir(parents=True, exist_ok=True)
        name = self.service_name
        self._sentinel_config.write_text(
            "\n".join(
                [
                    f"port {self.sentinel_port}",
                    f"bind {HOST}",
                    "daemonize no",
                    'logfile ""',
                    f'dir "{self._sentinel_dir}"',
                    f"sentinel monitor {name} {HOST} {primary.port} 1",
                    f"sentinel down-after-milliseconds {name} {self._down_after_ms}",
                    f"sentinel failover-timeout {name} {self._failover_timeout_ms}",
                    f"sentinel parallel-syncs {name} 1",
                ]
            )
            + "\n"
        )
        self._sentinel.start()
        try:
            _poll_until(
                "sentinel sees the primary and its replica",
                lambda: self._sentinel.running and self._sentinel_ready(),
                READY_DEADLINE_SECONDS,
            )
        except AssertionError as exc:
            raise AssertionError(f"{exc}\nsentinel log:\n{self._sentinel.log_tail()}") from None

    def _down(self) -> None:
        # All at once: a primary stopped on its own first waits for its replica's next ack.
        daemons = [
            d for d in (self._sentinel, *(s._daemon for s in self.servers)) if d.process is not None
        ]
        for daemon in daemons:
            daemon.send_signal(signal.SIGTERM)
        for daemon in daemons:
            daemon.stop(signal.SIGTERM, timeout=STOP_DEADLINE_SECONDS)

    def _healthy(self) -> bool:
        primary, replica = self.servers
        return (
            self._sentinel.running
            and primary._healthy()
            and replica.running
            and self._replica_in_sync(replica)
            and self._sentinel_ready()
        )

    def _flush(self) -> None:
        primary, replica = self.servers
        primary._flush()

        # The replica applies the flush asynchronously; wait so no old key is ever read.
        def empty() -> bool:
            with _sync_client(replica.port) as client:
                return int(client.dbsize()) == 0

        _poll_until("replica flushed", empty, READY_DEADLINE_SECONDS)


# Shared components, one per session, handed to each test checked and emptied.

C = TypeVar("C", bound=_Component)


class SharedComponent(Generic[C]):
    """One component for every test of the session that asks for it: emptied before each
    test, rebuilt when a test left it broken (a node stopped, a failover)."""

    def __init__(self, build: Callable[[Path], C], directory: Path) -> None:
        self._build = build
        self._directory = directory
        self.current: C | None = None
        self.builds = 0
        self.users = 0

    def acquire(self) -> C:
        if self.current is not None:
            try:
                if self.current._healthy():
                    self.current._flush()
                    return self.current
            except (redis.RedisError, OSError, AssertionError, StopIteration):
                pass  # broken by the last test: replaced below
            self.current._down()
            self.current = None
        self.builds += 1
        component = self._build(self._directory / f"build-{self.builds}")
        component.__enter__()
        self.current = component
        return component

    def close(self) -> None:
        if self.current is not None:
            self.current._down()
            self.current = None


_shared: dict[str, SharedComponent[Any]] = {}


@contextlib.contextmanager
def _shared_component(
    kind: str, build: Callable[[Path], C], factory: pytest.TempPathFactory
) -> Iterator[SharedComponent[C]]:
    # Two conftests importing the same pool fixture make two fixture definitions; both
    # get the one shared component, stopped when the last of them is torn down.
    pool = _shared.get(kind)
    if pool is None:
        pool = SharedComponent(build, factory.mktemp(f"shared-{kind}"))
        _shared[kind] = pool
    pool.users += 1
    try:
        yield pool
    finally:
        pool.users -= 1
        if pool.users == 0:
            del _shared[kind]
            pool.close()


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[RedisServer]:
    """A fresh standalone redis-server for this test alone."""
    with RedisServer(tmp_path / "redis") as server:
        yield server


@pytest.fixture(scope="session")
def redis_cluster_pool(
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[SharedComponent[RedisCluster]]:
    """The session's one Redis Cluster, built on first use (`redis_cluster` hands it out)."""
    with _shared_component("cluster", RedisCluster, tmp_path_factory) as pool:
        yield pool


@pytest.fixture
def redis_cluster(redis_cluster_pool: SharedComponent[RedisCluster]) -> RedisCluster:
    """The session's Redis Cluster, healthy and empty."""
    return redis_cluster_pool.acquire()


@pytest.fixture
def redis_sentinel(tmp_path: Path) -> Iterator[RedisSentinel]:
    """A fresh Sentinel setup for this test alone (~0.2 s): servers[0] is the primary."""
    with RedisSentinel(tmp_path / "sentinel") as sentinel:
        yield sentinel
