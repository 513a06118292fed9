"""The admin API over real HTTP: listing rooms a page at a time, a room's participants,
kicking a participant and closing a room. First on one in-process server (the memory
backend), then across two real `rendezvous serve` processes sharing a real redis-server,
where the member kicked or closed is connected to the other instance (or to a dead one).
Listing on a real Redis Cluster is the backend contract's (tests/backends)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.scaleout.helpers import expect_event, participants, pending_frames, user_ids
from tests.support.client import Client, joined
from tests.support.instances import Instance, instance_env, running_instances
from tests.support.redis import RedisServer
from tests.support.server import running_server
from tests.support.tokens import token

ROOM = "call-1"
ADMIN = token("root", roles=["admin"])
FRAME_TIMEOUT_SECONDS = 10.0
ROUTES = [
    ("GET", "/webrtc/admin/rooms"),
    ("GET", f"/webrtc/admin/rooms/{ROOM}"),
    ("DELETE", f"/webrtc/admin/rooms/{ROOM}/participants/alice"),
    ("DELETE", f"/webrtc/admin/rooms/{ROOM}"),
]


async def call(
    base: str, method: str, path: str, *, tok: str | None = ADMIN, **params: Any
) -> httpx.Response:
    headers = {} if tok is None else {"Authorization": f"Bearer {tok}"}
    async with httpx.AsyncClient(base_url=base, timeout=10, trust_env=False) as http:
        return await http.request(method, path, headers=headers, params=params or None)


def error_of(response: httpx.Response, status: int, code: str) -> str:
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) == {"code", "message"} and body["code"] == code, body
    message: str = body["message"]
    return message


async def walk_pages(base: str, limit: int) -> list[dict[str, Any]]:
    """Every page of GET /webrtc/admin/rooms, following next_cursor to its end."""
    pages: list[dict[str, Any]] = []
    cursor: str | None = None
    while True:
        params: dict[str, Any] = {"limit": limit}
        if cursor is not None:
            params["cursor"] = cursor
        response = await call(base, "GET", "/webrtc/admin/rooms", **params)
        assert response.status_code == 200, response.text
        pages.append(response.json())
        cursor = pages[-1]["next_cursor"]
        if cursor is None:
            return pages


async def expect_ended(client: Client, code: str, close_code: int) -> None:
    """The next frame is `error{code}` and the server then closes with `close_code`."""
    frame = await client.expect("error", FRAME_TIMEOUT_SECONDS)
    assert frame["payload"]["code"] == code, frame
    await client.expect_close(close_code, FRAME_TIMEOUT_SECONDS)


@contextlib.asynccontextmanager
async def room_of(urls: Sequence[tuple[str, str]]) -> AsyncIterator[dict[str, Client]]:
    """Join (user, ws url) pairs in order; each earlier member reads each later one's join."""
    async with contextlib.AsyncExitStack() as stack:
        clients: dict[str, Client] = {}
        for user, url in urls:
            client, state = await stack.enter_async_context(joined(url))
            assert user_ids(state) == {*clients, user}
            for earlier in clients.values():
                await expect_event(earlier, "user_joined", user)
            clients[user] = client
        yield clients


# Auth: a valid token with the admin role, on every route.


@pytest.mark.parametrize(("method", "path"), ROUTES)
async def test_admin_routes_need_a_valid_token(method: str, path: str) -> None:
    async with running_server() as server:
        for tok in (None, "garbage", token("root", roles=["admin"], ttl=-120)):
            response = await call(server.http, method, path, tok=tok)
            error_of(response, 401, "unauthorized")
            assert response.headers["www-authenticate"] == "Bearer"


@pytest.mark.parametrize(("method", "path"), ROUTES)
async def test_admin_routes_refuse_a_token_without_the_admin_role(method: str, path: str) -> None:
    async with running_server() as server:
        async with joined(server.ws_url(ROOM, token("alice"))) as (alice, _):
            for tok in (token("alice"), token("mallory", roles=["operator"])):
                response = await call(server.http, method, path, tok=tok)
                error_of(response, 403, "forbidden")
            await alice.expect_silence()  # nobody was kicked or closed
        # Nor does a room grant make a token an admin's.
        response = await call(server.http, method, path, tok=token("bob", rooms=[ROOM]))
        error_of(response, 403, "forbidden")


# One instance, the memory backend.


async def test_rooms_are_listed_by_id_with_counts_a_page_at_a_time() -> None:
    sizes = {f"room-{n}": n % 3 + 1 for n in range(7)}
    async with running_server() as server, contextlib.AsyncExitStack() as stack:
        for room, size in sizes.items():
            for n in range(size):
                await stack.enter_async_context(joined(server.ws_url(room, token(f"u{n}"))))
        pages = await walk_pages(server.http, limit=3)
    assert [p["next_cursor"] for p in pages] == ["room-2", "room-5", None]
    assert [len(p["rooms"]) for p in pages] == [3, 3, 1]
    listed = [room for page in pages for room in page["rooms"]]
    assert listed == [{"room_id": r, "participant_count": s} for r, s in sorted(sizes.items())]


async def test_an_empty_deployment_lists_no_rooms() -> None:
    async with running_server() as server:
        response = await call(server.http, "GET", "/webrtc/admin/rooms")
    assert response.status_code == 200, response.text
    assert response.json() == {"rooms": [], "next_cursor": None}


@pytest.mark.parametrize(
    "params",
    [{"limit": 0}, {"limit": 1001}, {"limit": -1}, {"cursor": "not a room/"}, {"cursor": ""}],
)
async def test_a_bad_limit_or_cursor_is_refused(params: dict[str, Any]) -> None:
    async with running_server() as server:
        response = await call(server.http, "GET", "/webrtc/admin/rooms", **params)
    assert error_of(response, 400, "invalid_message")


async def test_a_room_lists_its_participants_and_an_empty_one_is_404() -> None:
    async with running_server() as server:
        urls = [(u, server.ws_url(ROOM, token(u, username=u.title()))) for u in ("bob", "alice")]
        async with room_of(urls):
            response = await call(server.http, "GET", f"/webrtc/admin/rooms/{ROOM}")
            assert response.status_code == 200, response.text
            body = response.json()
        assert body["room_id"] == ROOM and body["participant_count"] == 2
        people = body["participants"]
        assert [(p["user_id"], p["username"]) for p in people] == [
            ("alice", "Alice"),
            ("bob", "Bob"),
        ]
        assert all(len(p["session_id"]) == 16 for p in people)
        assert people[0]["session_id"] != people[1]["session_id"]
        for room in (ROOM, "never-used"):  # emptied, and unknown
            response = await call(server.http, "GET", f"/webrtc/admin/rooms/{room}")
            assert room in error_of(response, 404, "not_found")


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("GET", "/webrtc/admin/rooms/bad.room"),
        ("DELETE", "/webrtc/admin/rooms/bad.room"),
        ("DELETE", "/webrtc/admin/rooms/bad.room/participants/alice"),
        ("GET", f"/webrtc/admin/rooms/{'x' * 65}"),
    ],
)
async def test_a_bad_room_id_is_refused_as_the_participants_route_does(
    method: str, path: str
) -> None:
    async with running_server() as server:
        response = await call(server.http, method, path)
    assert error_of(response, 400, "invalid_message")


async def test_kicked_member_is_told_and_closed_and_the_others_see_it_leave_once() -> None:
    async with running_server() as server:
        urls = [(u, server.ws_url(ROOM, token(u))) for u in ("alice", "bob", "carol")]
        async with room_of(urls) as clients:
            path = f"/webrtc/admin/rooms/{ROOM}/participants/bob"
            response = await call(server.http, "DELETE", path)
            assert response.status_code == 204, response.text
            assert response.content == b""
            await expect_ended(clients["bob"], "kicked", 4002)
            for name in ("alice", "carol"):
                frames = await pending_frames(clients[name])
                assert [(f["type"], f["payload"]) for f in frames] == [
                    ("user_left", {"user_id": "bob", "username": "bob", "reason": "kicked"})
                ], frames
            response = await call(server.http, "DELETE", path)
            assert "bob" in error_of(response, 404, "not_found")
            response = await call(server.http, "GET", f"/webrtc/admin/rooms/{ROOM}")
            assert [p["user_id"] for p in response.json()["participants"]] == ["alice", "carol"]
            # A kick is not a ban: the same token joins again.
            async with joined(server.ws_url(ROOM, token("bob"))) as (_, state):
                assert user_ids(state) == {"alice", "bob", "carol"}
        response = await call(server.http, "DELETE", f"/webrtc/admin/rooms/{ROOM}/participants/x")
        error_of(response, 404, "not_found")


async def test_closing_a_room_disconnects_everyone_with_room_closed() -> None:
    async with running_server() as server:
        urls = [(u, server.ws_url(ROOM, token(u))) for u in ("alice", "bob", "carol")]
        async with (
            room_of(urls) as clients,
            joined(server.ws_url("other-room", token("dave"))) as (dave, _),
        ):
            response = await call(server.http, "DELETE", f"/webrtc/admin/rooms/{ROOM}")
            assert response.status_code == 204, response.text
            # Each gets the error and the close, and no user_left for the others first.
            for client in clients.values():
                await expect_ended(client, "room_closed", 4003)
            response = await call(server.http, "DELETE", f"/webrtc/admin/rooms/{ROOM}")
            error_of(response, 404, "not_found")
            listed = await call(server.http, "GET", "/webrtc/admin/rooms")
            assert listed.json()["rooms"] == [{"room_id": "other-room", "participant_count": 1}]
            await dave.expect_silence()
            async with joined(server.ws_url(ROOM, token("alice"))) as (_, state):
                assert user_ids(state) == {"alice"}  # not a ban, and nobody left behind


# Two instances sharing a real redis-server.


@pytest.fixture
async def redis(tmp_path: Path) -> AsyncIterator[RedisServer]:
    """A fresh real redis-server for the test (tests/support/redis.py)."""
    async with RedisServer(tmp_path / "redis") as server:
        yield server


@contextlib.asynccontextmanager
async def two_instances(
    tmp_path: Path, redis: RedisServer, **variables: str
) -> AsyncIterator[list[Instance]]:
    env = instance_env(tmp_path, redis_url=redis.url, **variables)
    async with running_instances(2, env=env, log_dir=tmp_path) as instances:
        yield instances


async def test_rooms_on_both_instances_are_listed_from_either(
    tmp_path: Path, redis: RedisServer
) -> None:
    sizes = {f"room-{n}": n % 3 + 1 for n in range(7)}
    async with two_instances(tmp_path, redis) as (a, b), contextlib.AsyncExitStack() as s:
        for room, size in sizes.items():
            for n in range(size):
                where = (a, b)[n % 2]
                await s.enter_async_context(joined(where.ws_url(room, token(f"u{n}"))))
        expected = [{"room_id": r, "participant_count": n} for r, n in sorted(sizes.items())]
        for instance in (a, b):
            pages = await walk_pages(instance.http, limit=3)
            assert [p["next_cursor"] for p in pages] == ["room-2", "room-5", None]
            assert [room for page in pages for room in page["rooms"]] == expected
        response = await call(b.http, "GET", "/webrtc/admin/rooms/room-2")
        assert [p["user_id"] for p in response.json()["participants"]] == ["u0", "u1", "u2"]


async def test_a_member_on_the_other_instance_is_kicked(tmp_path: Path, redis: RedisServer) -> None:
    async with two_instances(tmp_path, redis) as (a, b):
        urls = [("alice", a.ws_url(ROOM, token("alice")))]
        urls += [(u, b.ws_url(ROOM, token(u))) for u in ("bob", "carol")]
        async with room_of(urls) as clients:
            response = await call(a.http, "DELETE", f"/webrtc/admin/rooms/{ROOM}/participants/bob")
            assert response.status_code == 204, response.text
            assert await participants(b, ROOM) == ["alice", "carol"]  # before bob's socket ends
            await expect_ended(clients["bob"], "kicked", 4002)
            for name in ("alice", "carol"):  # one on each instance
                frames = await pending_frames(clients[name], quiet=1.0)
                assert [(f["type"], f["payload"]["reason"]) for f in frames] == [
                    ("user_left", "kicked")
                ], frames
                assert frames[0]["payload"]["user_id"] == "bob"
            assert await participants(a, ROOM) == await participants(b, ROOM) == ["alice", "carol"]
            response = await call(b.http, "DELETE", f"/webrtc/admin/rooms/{ROOM}/participants/bob")
            error_of(response, 404, "not_found")


async def test_an_instance_with_nobody_in_the_room_can_kick(
    tmp_path: Path, redis: RedisServer
) -> None:
    async with two_instances(tmp_path, redis) as (a, b):
        urls = [(u, b.ws_url(ROOM, token(u))) for u in ("alice", "bob")]
        async with room_of(urls) as clients:
            response = await call(a.http, "DELETE", f"/webrtc/admin/rooms/{ROOM}/participants/bob")
            assert response.status_code == 204, response.text
            await expect_ended(clients["bob"], "kicked", 4002)
            await expect_event(clients["alice"], "user_left", "bob", reason="kicked")
            await clients["alice"].expect_silence(1.0)
            assert await participants(b, ROOM) == ["alice"]


async def test_a_member_of_a_dead_instance_is_kicked_and_announced_once(
    tmp_path: Path, redis: RedisServer
) -> None:
    """Its instance cannot close it, but the kick still removes it at once, and the
    reaper, once its presence would have expired, finds nothing more to announce."""
    ttl = 2.0
    timing = {"WEBRTC_ROOM_PRESENCE_TTL": str(ttl), "WEBRTC_WS_PING_INTERVAL": str(ttl / 4)}
    async with two_instances(tmp_path, redis, **timing) as (a, b):
        urls = [("alice", a.ws_url(ROOM, token("alice"))), ("bob", b.ws_url(ROOM, token("bob")))]
        async with room_of(urls) as clients:
            await b.kill()
            response = await call(a.http, "DELETE", f"/webrtc/admin/rooms/{ROOM}/participants/bob")
            assert response.status_code == 204, response.text
            assert await participants(a, ROOM) == ["alice"]  # at once, not at its expiry
            await expect_event(clients["alice"], "user_left", "bob", reason="kicked")
            await asyncio.sleep(2 * ttl)  # past bob's expiry and a reaper tick or two
            assert await pending_frames(clients["alice"], quiet=1.0) == []  # no `timeout`
            assert await participants(a, ROOM) == ["alice"]


async def test_closing_a_room_that_spans_both_instances(tmp_path: Path, redis: RedisServer) -> None:
    async with two_instances(tmp_path, redis) as (a, b):
        urls = [("alice", a.ws_url(ROOM, token("alice")))]
        urls += [(u, b.ws_url(ROOM, token(u))) for u in ("bob", "carol")]
        async with room_of(urls) as clients:
            response = await call(a.http, "DELETE", f"/webrtc/admin/rooms/{ROOM}")
            assert response.status_code == 204, response.text
            for client in clients.values():
                await expect_ended(client, "room_closed", 4003)
            assert await participants(a, ROOM) == await participants(b, ROOM) == []
            for instance in (a, b):
                response = await call(instance.http, "DELETE", f"/webrtc/admin/rooms/{ROOM}")
                error_of(response, 404, "not_found")
                listed = await call(instance.http, "GET", "/webrtc/admin/rooms")
                assert listed.json() == {"rooms": [], "next_cursor": None}
        async with joined(b.ws_url(ROOM, token("bob"))) as (_, state):
            assert user_ids(state) == {"bob"}
