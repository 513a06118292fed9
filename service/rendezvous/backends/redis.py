"""Redis backend: standalone, Sentinel or Cluster (sharded pub/sub), Redis 7+.

Per Redis node (one, or each Cluster primary) the instance keeps one pub/sub listener and
one ordered publisher, both long-lived RESP2 connections of our own; presence goes
through redis-py with pinned protocol, timeouts and a single retry. Every key and
channel of a room carries the hash tag `{room_id}`. redis-py's errors stop here: callers
see BackendUnavailableError (Redis unreachable or failing over) or BackendError.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from collections import defaultdict
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import redis.asyncio as aioredis
import redis.exceptions as redis_errors
from redis.asyncio.cluster import ClusterNode, RedisCluster
from redis.asyncio.retry import Retry
from redis.asyncio.sentinel import Sentinel
from redis.backoff import NoBackoff

from rendezvous.backends import redis_scripts as scripts
from rendezvous.backends.base import (
    Backend,
    BackendError,
    BackendUnavailableError,
    BusHandler,
    JoinResult,
    Member,
    ResumeRecord,
    ResumeRefusedError,
    RoomFullError,
    RoomPage,
    page_of,
)
from rendezvous.backends.redis_listening import (
    Credentials,
    Listener,
    Node,
    Resolve,
    backoff_seconds,
)
from rendezvous.backends.redis_writing import OrderedWriter
from rendezvous.protocol import is_valid_room_id
from rendezvous.redis_url import RedisMode, RedisTarget
from rendezvous.telemetry.histogram import PUBLISH_LATENCY_BUCKETS_SECONDS, LatencyHistogram

log = logging.getLogger(__name__)

KEY_PREFIX = "rdv"
COMMAND_TIMEOUT_SECONDS = 3.0
CONNECT_TIMEOUT_SECONDS = 2.0
START_WAIT_SECONDS = 5.0
PUBLISH_QUEUE_MAX_MESSAGES = 10_000
RESTART_DELAY_SECONDS = 1.0
_CHANNEL_HEAD = f"{KEY_PREFIX}:{{".encode()
_CHANNEL_TAIL = b"}:bus"
_MEMBERS_HEAD = _CHANNEL_HEAD  # a room's keys start as its channel does: `rdv:{room_id}`
_MEMBERS_TAIL = b"}:members"
SCAN_COUNT = 1000  # keys per SCAN step when listing rooms: few round trips, short steps
# Every bus payload starts with its publisher's 16-byte id, so an instance drops its echo.
_ORIGIN_BYTES = 16
_EVERYONE = bytes(_ORIGIN_BYTES)  # no instance's id: its publisher hears it too
# Failures that mean "Redis is unreachable or failing over": the caller may retry later.
_UNAVAILABLE = (
    redis_errors.ConnectionError,
    redis_errors.TimeoutError,
    redis_errors.BusyLoadingError,
    redis_errors.ReadOnlyError,
    redis_errors.ClusterDownError,
    redis_errors.TryAgainError,
    redis_errors.RedisClusterException,  # no node reachable, or a slot not covered
    OSError,
)
# Client-side mistakes of ours that redis-py's Cluster raises outside RedisError.
_MISUSE = (redis_errors.CrossSlotTransactionError, redis_errors.InvalidPipelineStack)

Commands = aioredis.Redis | RedisCluster


def channel_of(room_id: str) -> bytes:
    return _CHANNEL_HEAD + room_id.encode() + _CHANNEL_TAIL


def keys_of(room_id: str) -> tuple[str, str]:
    return f"{KEY_PREFIX}:{{{room_id}}}:members", f"{KEY_PREFIX}:{{{room_id}}}:expiry"


def held_key(room_id: str, session_id: str) -> str:
    """The Stream of what a held session was sent, in its room's slot."""
    return f"{KEY_PREFIX}:{{{room_id}}}:held:{session_id}"


def resume_key(room_id: str, resume_hash: str) -> str:
    """A resume record's key: the room's hash tag, so room scripts may touch it."""
    return f"{KEY_PREFIX}:{{{room_id}}}:resume:{resume_hash}"


@contextlib.contextmanager
def translated(what: str) -> Iterator[None]:
    try:
        yield
    except _MISUSE as exc:
        raise BackendError(f"redis failed ({what}): {exc}") from exc
    except _UNAVAILABLE as exc:
        raise BackendUnavailableError(f"redis unavailable ({what}): {exc}") from exc
    except redis_errors.RedisError as exc:
        raise BackendError(f"redis failed ({what}): {exc}") from exc


class _Shard:
    """One Redis node's pub/sub listener and ordered writer."""

    def __init__(self, name: str, listener: Listener, writer: OrderedWriter) -> None:
        self.name = name
        self.listener = listener
        self.writer = writer
        self.tasks: list[asyncio.Task[None]] = []
        self.was_up = False


class RedisBackend(Backend):
    def __init__(self, target: RedisTarget, *, presence_ttl_seconds: float) -> None:
        origin = uuid.uuid4()
        self.instance_id = origin.hex
        self._origin = origin.bytes
        self._target = target
        self._ttl_ms = int(presence_ttl_seconds * 1000)
        self._key_ttl_ms = 3 * self._ttl_ms  # outlives every member's expiry, then goes
        self._credentials = Credentials(target.username, target.password, target.tls)
        self._commands: Commands | None = None
        self._sentinel: Sentinel | None = None
        self._shards: dict[str, _Shard] = {}
        self._rooms: set[str] = set()
        self._on_message: BusHandler | None = None
        self._on_recovered: Callable[[], None] | None = None
        self._discovery: asyncio.Task[None] | None = None
        # Shared by every writer: a Cluster has one per primary, /metrics one histogram.
        self.publish_latency = LatencyHistogram(PUBLISH_LATENCY_BUCKETS_SECONDS)

    # Lifecycle.

    async def start(
        self, on_message: BusHandler, on_recovered: Callable[[], None] | None = None
    ) -> None:
        self._on_message = on_message
        self._on_recovered = on_recovered
        self._commands = self._command_client()
        if isinstance(self._commands, RedisCluster):
            self._discovery = asyncio.create_task(
                self._discover(self._commands), name="rendezvous.redis.discover"
            )
        else:
            self._shard_named("primary", self._primary_address)
        await self._wait_until_up()
        log.info("redis backend started (%s)", self._target.masked())

    async def stop(self) -> None:
        self._on_message = None
        tasks = [task for shard in self._shards.values() for task in shard.tasks]
        if self._discovery is not None:
            tasks.append(self._discovery)
            self._discovery = None
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self._shards.clear()
        if self._commands is not None:
            with contextlib.suppress(*_UNAVAILABLE, redis_errors.RedisError):
                await self._commands.aclose()
            self._commands = None
        if self._sentinel is not None:  # its own connections to the sentinels
            with contextlib.suppress(*_UNAVAILABLE, redis_errors.RedisError):
                await self._sentinel.aclose()
            self._sentinel = None

    @property
    def reconnects(self) -> int:
        return sum(shard.listener.reconnects for shard in self._shards.values())

    @property
    def dropped_publishes(self) -> int:
        return sum(shard.writer.dropped for shard in self._shards.values())

    @property
    def ready(self) -> bool:
        shards = self._shards.values()
        return (
            self._on_message is not None
            and bool(shards)
            and all(s.listener.connected for s in shards)
        )

    @property
    def tasks(self) -> tuple[asyncio.Task[None], ...]:
        """The long-running loops: a listener and a writer per Redis node."""
        return tuple(task for shard in self._shards.values() for task in shard.tasks)

    async def _wait_until_up(self) -> None:
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(START_WAIT_SECONDS):
                while not self.ready:
                    await asyncio.sleep(0.02)
        if not self.ready:
            log.warning("redis is not reachable yet; the instance stays unready until it is")

    def _command_client(self) -> Commands:
        target = self._target
        common: dict[str, Any] = {
            "username": target.username,
            "password": target.password,
            "protocol": 2,
            "socket_timeout": COMMAND_TIMEOUT_SECONDS,
            "socket_connect_timeout": CONNECT_TIMEOUT_SECONDS,
            "retry": Retry(NoBackoff(), 1),  # one immediate retry: a stale pooled socket
            "client_name": self._client_name("commands"),
        }
        if target.mode is RedisMode.CLUSTER:
            nodes = [ClusterNode(host, port) for host, port in target.nodes]
            return RedisCluster(startup_nodes=nodes, ssl=target.tls, **common)
        if target.mode is RedisMode.SENTINEL:
            # The connections to the sentinels are pinned too (redis-py 8 defaults to RESP3).
            sentinel_options = {
                "protocol": 2,
                "socket_timeout": COMMAND_TIMEOUT_SECONDS,
                "socket_connect_timeout": CONNECT_TIMEOUT_SECONDS,
                "retry": Retry(NoBackoff(), 1),
                "client_name": self._client_name("sentinel"),
            }
            self._sentinel = Sentinel(  # type: ignore[no-untyped-call]
                list(target.nodes), sentinel_kwargs=sentinel_options
            )
            primary: aioredis.Redis = self._sentinel.master_for(
                target.service_name or "", db=target.db, ssl=target.tls, **common
            )
            return primary
        ((host, port),) = target.nodes
        return aioredis.Redis(host=host, port=port, db=target.db, ssl=target.tls, **common)

    async def _discover(self, cluster: RedisCluster) -> None:
        """Find the Cluster's primaries, one shard each; until the Cluster answers (it may
        start after us), retry with capped backoff while the instance stays unready."""
        attempt = 0
        while True:
            try:
                with translated("cluster discovery"):
                    await cluster.initialize()
                    primaries = cluster.get_primaries()
                break
            except Exception as exc:  # a bug must not leave the instance unready for good
                attempt += 1
                delay = backoff_seconds(attempt)
                log.warning(
                    "redis cluster discovery attempt %d failed (%s); retrying in %.2fs",
                    attempt,
                    exc,
                    delay,
                    exc_info=not isinstance(exc, BackendError),
                )
                await asyncio.sleep(delay)
        for node in primaries:
            self._shard_of_node(node)
        if attempt:
            log.info("redis cluster discovered after %d attempts", attempt)

    def _client_name(self, role: str) -> str:
        """How our connections appear in `CLIENT LIST`: role and instance."""
        return f"rendezvous-{role}-{self.instance_id}"

    async def _primary_address(self) -> tuple[str, int]:
        if self._sentinel is None:
            return self._target.nodes[0]
        with translated("sentinel lookup"):
            host, port = await self._sentinel.discover_master(self._target.service_name or "")
        return str(host), int(port)

    # Shards: where a room's channel lives.

    def _shard_for(self, room_id: str) -> _Shard:
        if isinstance(self._commands, RedisCluster):
            if self._discovery is not None and not self._discovery.done():
                raise BackendUnavailableError("the redis cluster is not discovered yet")
            with translated("cluster routing"):
                node = self._commands.get_node_from_key(channel_of(room_id).decode())
            if node is None:
                raise BackendUnavailableError(f"no cluster node serves room {room_id}")
            return self._shard_of_node(node)
        return self._shards["primary"]

    def _shard_of_node(self, node: ClusterNode) -> _Shard:
        async def address() -> tuple[str, int]:
            return node.host, int(node.port)

        return self._shard_named(node.name, address)

    def _shard_named(self, name: str, resolve: Resolve) -> _Shard:
        shard = self._shards.get(name)
        if shard is not None:
            return shard
        sharded = self._target.mode is RedisMode.CLUSTER
        node = Node(name, resolve, self._credentials, sharded)
        listener = Listener(
            node,
            client_name=self._client_name("listen"),
            on_message=self._deliver,
            on_up=lambda: self._shard_up(name),
        )
        writer = OrderedWriter(
            node,
            client_name=self._client_name("publish"),
            max_queued=PUBLISH_QUEUE_MAX_MESSAGES,
            latency=self.publish_latency,
        )
        shard = self._shards[name] = _Shard(name, listener, writer)
        for activity, run in (("listen", listener.run), ("publish", writer.run)):
            task = asyncio.create_task(
                _supervised(run, f"redis {activity} {name}"),
                name=f"rendezvous.redis.{activity}:{name}",
            )
            shard.tasks.append(task)
        return shard

    def _shard_up(self, name: str) -> None:
        shard = self._shards.get(name)
        if shard is None:
            return
        recovered, shard.was_up = shard.was_up, True
        if recovered and self._on_recovered is not None:
            self._on_recovered()

    def _deliver(self, channel: bytes, data: bytes) -> None:
        on_message = self._on_message
        if on_message is None or data[:_ORIGIN_BYTES] == self._origin:
            return  # stopped, or our own message coming back
        if len(data) < _ORIGIN_BYTES or not channel.startswith(_CHANNEL_HEAD):
            log.warning("dropping a malformed bus message on %r", channel)
            return
        room_id = channel[len(_CHANNEL_HEAD) : -len(_CHANNEL_TAIL)].decode()
        on_message(room_id, data[_ORIGIN_BYTES:])

    # The bus.

    async def subscribe(self, room_id: str) -> None:
        self._require_started()
        known = room_id in self._rooms
        self._rooms.add(room_id)
        try:
            await self._shard_for(room_id).listener.subscribe(channel_of(room_id))
        except BaseException:
            if not known:  # not subscribed: not ours to reap either
                self._rooms.discard(room_id)
            raise

    async def unsubscribe(self, room_id: str) -> None:
        self._rooms.discard(room_id)
        if self._commands is not None:
            await self._shard_for(room_id).listener.unsubscribe(channel_of(room_id))

    def publish(self, room_id: str, data: bytes) -> None:
        self._require_started()
        shard = self._shard_for(room_id)
        if not shard.listener.connected:
            raise BackendUnavailableError(f"redis {shard.name} is unreachable")
        shard.writer.put(channel_of(room_id), self._origin + data)

    def publish_to_all(self, room_id: str, data: bytes) -> None:
        self._require_started()
        shard = self._shard_for(room_id)
        if not shard.listener.connected:
            raise BackendUnavailableError(f"redis {shard.name} is unreachable")
        shard.writer.put(channel_of(room_id), _EVERYONE + data)

    # Held sessions' buffers.

    async def keep_held(
        self,
        room_id: str,
        session_id: str,
        entries: Sequence[tuple[int, bytes]],
        *,
        max_entries: int,
        ttl_seconds: float,
    ) -> None:
        commands = self._require_started()
        key = held_key(room_id, session_id)
        with translated("keep held"):
            pipe = commands.pipeline(transaction=False)
            for seq, frame in entries:
                fields: dict[str | bytes, bytes | int] = {"s": seq, "f": frame}
                pipe.xadd(key, fields, maxlen=max(max_entries, 1), approximate=True)  # type: ignore[arg-type]
            pipe.pexpire(key, max(int(ttl_seconds * 1000), 1))
            await pipe.execute()

    async def take_held(self, room_id: str, session_id: str) -> list[tuple[int, bytes]]:
        commands = self._require_started()
        with translated("take held"):
            key = held_key(room_id, session_id)
            entries: list[Any] = await commands.eval(scripts.TAKE_HELD, 1, key)
        # Each entry: [id, ["s", seq, "f", frame]] (RESP2, fields in the order written).
        return [(int(fields[1]), bytes(fields[3])) for _, fields in entries]

    # Presence.

    async def join(self, room_id: str, member: Member, *, capacity: int) -> JoinResult:
        args = (
            member.user_id,
            _value(member),
            capacity,
            self._ttl_ms,
            self._key_ttl_ms,
            self.instance_id if member.resume_hash else "",
            member.session_id,
            member.username,
        )
        reply = await self._eval(
            scripts.JOIN, room_id, args, "join", resume_key(room_id, member.resume_hash)
        )
        if reply[0] == 0:
            raise RoomFullError(room_id)
        replaced = _member(member.user_id.encode(), reply[1]) if reply[1] else None
        return JoinResult(members=_members(reply[2:]), replaced=replaced)

    async def leave(self, room_id: str, member: Member) -> bool:
        reply = await self._eval(
            scripts.LEAVE,
            room_id,
            (member.user_id, member.session_id),
            "leave",
            resume_key(room_id, member.resume_hash),
        )
        return bool(reply == 1)

    async def resume_record(self, room_id: str, resume_hash: str) -> ResumeRecord | None:
        commands = self._require_started()
        with translated("resume record"):
            fields: dict[bytes, bytes] = await commands.hgetall(  # type: ignore[assignment]
                resume_key(room_id, resume_hash)
            )
        return _record(fields)

    async def hold(self, room_id: str, member: Member, *, grace_seconds: float) -> None:
        grace_ms = max(int(grace_seconds * 1000), 1)
        key = resume_key(room_id, member.resume_hash)
        await self._eval(scripts.HOLD, room_id, (member.session_id, grace_ms), "hold", key)

    async def claim_resume(self, room_id: str, resume_hash: str, member: Member) -> ResumeRecord:
        args = (member.user_id, self._ttl_ms, self._key_ttl_ms, self.instance_id)
        keys = (resume_key(room_id, resume_hash), resume_key(room_id, member.resume_hash))
        reply = await self._eval(scripts.CLAIM, room_id, args, "claim resume", *keys)
        if reply[0] == -1:
            raise ResumeRefusedError("resume token belongs to another user or room", foreign=True)
        if reply[0] != 1:
            raise ResumeRefusedError("unknown or expired resume token")
        session_id, username, instance_id, held = (value.decode() for value in reply[1:])
        return ResumeRecord(member.user_id, username, session_id, instance_id, held == "1")

    async def release_held(self, room_id: str, member: Member) -> bool:
        key = resume_key(room_id, member.resume_hash)
        args = (member.user_id, member.session_id)
        return bool(await self._eval(scripts.RELEASE_HELD, room_id, args, "release", key) == 1)

    async def refresh(self, entries: Sequence[tuple[str, Member]]) -> None:
        def build(room_id: str, members: list[Member]) -> tuple[list[str], list[str | int]]:
            records = [resume_key(room_id, m.resume_hash) for m in members]
            pairs = [part for m in members for part in (m.user_id, m.session_id)]
            return records, [self._ttl_ms, self._key_ttl_ms, *pairs]

        await self._per_room(scripts.REFRESH, entries, build, "refresh")

    async def reassert(self, entries: Sequence[tuple[str, Member]]) -> None:
        def build(room_id: str, members: list[Member]) -> tuple[list[str], list[str | int]]:
            records: list[str] = []
            args: list[str | int] = [self._ttl_ms, self._key_ttl_ms, self.instance_id]
            for m in members:
                if m.resume_hash:
                    records.append(resume_key(room_id, m.resume_hash))
                index = 2 + len(records) if m.resume_hash else 0
                args += (m.user_id, _value(m), m.session_id, m.username, index)
            return records, args

        await self._per_room(scripts.REASSERT, entries, build, "reassert")

    async def _per_room(
        self,
        script: str,
        entries: Sequence[tuple[str, Member]],
        build: Callable[[str, list[Member]], tuple[list[str], list[str | int]]],
        what: str,
    ) -> None:
        """One pipelined call: `script` once per room (per node, in Cluster mode), with the
        record keys and arguments `build` gives for that room's members."""
        commands = self._require_started()
        by_room: dict[str, list[Member]] = defaultdict(list)
        for room_id, member in entries:
            by_room[room_id].append(member)
        if not by_room:
            return
        with translated(what):
            pipe = commands.pipeline(transaction=False)
            for room_id, members in by_room.items():
                records, args = build(room_id, members)
                pipe.eval(script, 2 + len(records), *keys_of(room_id), *records, *args)
            await pipe.execute()

    async def members(self, room_id: str) -> tuple[Member, ...]:
        return _members(await self._eval(scripts.MEMBERS, room_id, (), "members"))

    async def evict(self, room_id: str, user_id: str) -> Member | None:
        value = await self._eval(scripts.EVICT, room_id, (user_id,), "evict")
        return _member(user_id.encode(), value) if value else None

    async def evict_all(self, room_id: str) -> tuple[Member, ...]:
        return _members(await self._eval(scripts.EVICT_ALL, room_id, (), "evict all"))

    async def active_rooms(self, *, after: str | None, limit: int) -> RoomPage:
        commands = self._require_started()

        async def count(room_ids: Sequence[str]) -> list[int]:
            pipe = commands.pipeline(transaction=False)
            for room_id in room_ids:
                pipe.eval(scripts.COUNT, 2, *keys_of(room_id))
            return [int(n) for n in await pipe.execute()]

        with translated("list rooms"):
            return await page_of(
                await self._room_ids(commands), after=after, limit=limit, count=count
            )

    async def _room_ids(self, commands: Commands) -> list[str]:
        """Rooms with presence keys, from a SCAN of every primary (in a Cluster, redis-py
        scans each primary in turn). A key may come twice; `page_of` keeps one."""
        pattern = f"{KEY_PREFIX}:{{*}}:members"
        room_ids: list[str] = []
        async for key in commands.scan_iter(match=pattern, count=SCAN_COUNT):
            if key.startswith(_MEMBERS_HEAD) and key.endswith(_MEMBERS_TAIL):
                room_id = key[len(_MEMBERS_HEAD) : -len(_MEMBERS_TAIL)].decode(errors="replace")
                if is_valid_room_id(room_id):  # never trust a stray key that matches
                    room_ids.append(room_id)
        return room_ids

    async def reap_expired(self) -> list[tuple[str, Member]]:
        commands = self._require_started()
        rooms = sorted(self._rooms)
        if not rooms:
            return []
        with translated("reap"):
            pipe = commands.pipeline(transaction=False)
            for room_id in rooms:
                pipe.eval(scripts.REAP, 2, *keys_of(room_id))
            replies = await pipe.execute()
        return [
            (room_id, m)
            for room_id, reply in zip(rooms, replies, strict=True)
            for m in _members(reply)
        ]

    async def _eval(
        self, script: str, room_id: str, args: Sequence[object], what: str, *extra_keys: str
    ) -> Any:
        commands = self._require_started()
        keys = (*keys_of(room_id), *extra_keys)
        with translated(what):
            return await commands.eval(script, len(keys), *keys, *args)  # type: ignore[arg-type]

    def _require_started(self) -> Commands:
        if self._commands is None or self._on_message is None:
            raise BackendUnavailableError("redis backend is not started")
        return self._commands


async def _supervised(run: Callable[[], Any], what: str) -> None:
    """Keep a long-running loop alive: a bug in it is logged, never silent, and it restarts."""
    while True:
        try:
            await run()
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("%s crashed; restarting in %.1fs", what, RESTART_DELAY_SECONDS)
            await asyncio.sleep(RESTART_DELAY_SECONDS)


def _value(member: Member) -> str:
    return f"{member.session_id}|{member.username}"


def _member(user_id: bytes, value: bytes) -> Member:
    session_id, _, username = value.decode().partition("|")
    return Member(user_id.decode(), username, session_id)


def _record(fields: dict[bytes, bytes]) -> ResumeRecord | None:
    if not fields:
        return None
    return ResumeRecord(
        user_id=fields[b"u"].decode(),
        username=fields[b"n"].decode(),
        session_id=fields[b"s"].decode(),
        instance_id=fields[b"i"].decode(),
        held=fields[b"h"] == b"1",
    )


def _members(flat: Sequence[bytes]) -> tuple[Member, ...]:
    return tuple(_member(flat[i], flat[i + 1]) for i in range(0, len(flat), 2))
