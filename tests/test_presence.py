"""Presence over a real server with short TTLs (issue 2, item 7).

The PresenceKeeper started by the app refreshes the instance's participants in one batched
backend call every TTL/3, so a connected idle client never expires; a participant whose
instance died expires, is reaped by exactly one survivor, and every remaining client hears
exactly one `user_left` with reason `timeout`.

A dead instance is simulated by a second MemoryBackend on the server's MemoryBroker (as a
second process on the same Redis) that joins a member and stops without leaving.
"""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Sequence
from typing import Any

import httpx

from rendezvous.backends.base import Member
from rendezvous.backends.memory import MemoryBackend, MemoryBroker
from rendezvous.settings import Settings
from tests.support.client import joined
from tests.support.server import running_server
from tests.support.server import test_settings as settings_for_tests
from tests.support.tokens import token


class RecordingBackend(MemoryBackend):
    """The memory backend, recording each refresh call (when, and which members) and each
    reap_expired call (when, and what it returned)."""

    def __init__(self, *, presence_ttl_seconds: float, broker: MemoryBroker) -> None:
        super().__init__(presence_ttl_seconds=presence_ttl_seconds, broker=broker)
        self.refreshes: list[tuple[float, frozenset[tuple[str, str, str]]]] = []
        self.reaps: list[tuple[float, list[tuple[str, Member]]]] = []

    async def refresh(self, entries: Sequence[tuple[str, Member]]) -> None:
        batch = frozenset((room, m.user_id, m.session_id) for room, m in entries)
        self.refreshes.append((asyncio.get_running_loop().time(), batch))
        await super().refresh(entries)

    async def reap_expired(self) -> list[tuple[str, Member]]:
        reaped = await super().reap_expired()
        self.reaps.append((asyncio.get_running_loop().time(), reaped))
        return reaped

    @property
    def reaped(self) -> list[tuple[str, Member]]:
        return [entry for _, batch in self.reaps for entry in batch]


def presence_settings(ttl: float) -> Settings:
    # Pings well inside the TTL: an idle client proves it is alive only by its pongs.
    return settings_for_tests(presence_ttl_seconds=ttl, ws_ping_interval_seconds=ttl / 4)


async def participants(base_url: str, room: str) -> list[dict[str, Any]]:
    headers = {"Authorization": f"Bearer {token('observer')}"}
    async with httpx.AsyncClient(base_url=base_url, timeout=5) as http:
        response = await http.get(f"/webrtc/rooms/{room}/participants", headers=headers)
    response.raise_for_status()
    people: list[dict[str, Any]] = response.json()["participants"]
    return people


async def dead_instance_member(broker: MemoryBroker, room: str, ttl: float) -> Member:
    """Join a member through another instance on `broker`, which then dies without a leave."""
    ghost_instance = MemoryBackend(presence_ttl_seconds=ttl, broker=broker)
    await ghost_instance.start(lambda room_id, data: None)
    ghost = Member("ghost", "Ghost", "ghost-session")
    await ghost_instance.join(room, ghost, capacity=50)
    await ghost_instance.stop()
    return ghost


async def test_local_participants_are_refreshed_in_one_batch_per_tick() -> None:
    ttl = 1.5
    interval = ttl / 3
    backend = RecordingBackend(presence_ttl_seconds=ttl, broker=MemoryBroker())
    loop = asyncio.get_running_loop()
    async with (
        running_server(presence_settings(ttl), backend=backend) as server,
        joined(server.ws_url("r1", token("alice"))),
        joined(server.ws_url("r1", token("bob"))),
        joined(server.ws_url("r2", token("carol"))),
    ):
        members = [(room, m) for room in ("r1", "r2") for m in await backend.members(room)]
        everyone = frozenset((room, m.user_id, m.session_id) for room, m in members)
        assert len(everyone) == 3
        start = loop.time()
        await asyncio.sleep(5 * interval)
        end = loop.time()
    refreshes = [(at, batch) for at, batch in backend.refreshes if start < at <= end]
    reaps = [at for at, _ in backend.reaps if start < at <= end]
    assert len(refreshes) >= 3, backend.refreshes
    # One batched call holding every local participant, not one call per participant.
    assert all(batch == everyone for _, batch in refreshes), refreshes
    # One refresh per tick: each tick is one refresh then one reap, alternating.
    calls = sorted([(at, "refresh") for at, _ in refreshes] + [(at, "reap") for at in reaps])
    kinds = [kind for _, kind in calls]
    if kinds[0] == "reap":
        kinds = kinds[1:]
    assert kinds[::2] == ["refresh"] * len(kinds[::2]), kinds
    assert kinds[1::2] == ["reap"] * len(kinds[1::2]), kinds
    # Ticks are TTL/3 apart (never sooner; at most twice that on a busy machine).
    times = [at for at, _ in refreshes]
    gaps = [later - earlier for earlier, later in itertools.pairwise(times)]
    assert all(0.9 * interval <= gap <= 2 * interval for gap in gaps), gaps


async def test_connected_idle_client_stays_present_well_beyond_the_ttl() -> None:
    ttl = 1.0
    backend = RecordingBackend(presence_ttl_seconds=ttl, broker=MemoryBroker())
    async with (
        running_server(presence_settings(ttl), backend=backend) as server,
        joined(server.ws_url("r1", token("alice", username="Alice"))) as (alice, _),
    ):
        # Sends nothing for three TTLs; only its automatic pongs show it is alive.
        await alice.expect_silence(3 * ttl + ttl / 2)
        assert await participants(server.http, "r1") == [{"user_id": "alice", "username": "Alice"}]
        assert backend.reaped == []
        await alice.send({"type": "ping", "payload": {"still": "here"}})
        assert (await alice.expect("pong"))["payload"] == {"still": "here"}


async def test_participant_of_a_dead_instance_is_reaped_once_and_announced_once() -> None:
    ttl = 1.0
    broker = MemoryBroker()
    backend = RecordingBackend(presence_ttl_seconds=ttl, broker=broker)
    loop = asyncio.get_running_loop()
    async with running_server(presence_settings(ttl), backend=backend) as server:
        ghost = await dead_instance_member(broker, "r1", ttl)
        ghost_joined_at = loop.time()
        async with joined(server.ws_url("r1", token("alice"))) as (alice, state):
            # Until it expires, the ghost is a participant like any other.
            people = {p["user_id"] for p in state["payload"]["participants"]}
            assert people == {"ghost", "alice"}
            # Expiry after the TTL, then reaping within one TTL/3 tick; allow twice that.
            deadline = ghost_joined_at + 2 * (ttl + ttl / 3)
            left = await alice.expect("user_left", timeout=deadline - loop.time())
            assert loop.time() - ghost_joined_at >= 0.9 * ttl  # not before it expired
            assert left["payload"] == {"user_id": "ghost", "username": "Ghost", "reason": "timeout"}
            assert left["sender_id"] == "server"
            # Several more ticks: nothing else, in particular no second user_left.
            await alice.expect_silence(2 * ttl)
            assert await participants(server.http, "r1") == [
                {"user_id": "alice", "username": "alice"}
            ]
    assert backend.reaped == [("r1", ghost)]


async def test_with_two_instances_only_one_reaper_announces_the_timeout() -> None:
    ttl = 1.0
    broker = MemoryBroker()
    first = RecordingBackend(presence_ttl_seconds=ttl, broker=broker)
    second = RecordingBackend(presence_ttl_seconds=ttl, broker=broker)
    settings = presence_settings(ttl)
    loop = asyncio.get_running_loop()
    async with (
        running_server(settings, backend=first) as one,
        running_server(settings, backend=second) as two,
    ):
        ghost = await dead_instance_member(broker, "r1", ttl)
        ghost_joined_at = loop.time()
        async with (
            joined(one.ws_url("r1", token("alice"))) as (alice, _),
            joined(two.ws_url("r1", token("bob"))) as (bob, bob_state),
        ):
            assert {p["user_id"] for p in bob_state["payload"]["participants"]} == {
                "ghost",
                "alice",
                "bob",
            }
            assert (await alice.expect("user_joined"))["payload"]["user_id"] == "bob"
            deadline = ghost_joined_at + 2 * (ttl + ttl / 3)
            for client in (alice, bob):
                left = await client.expect("user_left", timeout=deadline - loop.time())
                assert left["payload"] == {
                    "user_id": "ghost",
                    "username": "Ghost",
                    "reason": "timeout",
                }
            await asyncio.gather(alice.expect_silence(2 * ttl), bob.expect_silence(2 * ttl))
            for server in (one, two):
                people = await participants(server.http, "r1")
                assert sorted(p["user_id"] for p in people) == ["alice", "bob"]
    # Both instances tried to reap; exactly one got the ghost.
    assert first.reaps
    assert second.reaps
    assert first.reaped + second.reaped == [("r1", ghost)]
