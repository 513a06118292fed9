"""`/metrics` over HTTP from real servers driven by real WebSocket clients: every counter
moves by exactly what a scripted session did (two instances sharing the in-process bus,
or a real redis-server), the relay histogram counts every relayed message (on the
instance that delivers it, across instances too), the backend publish histogram every
message published, no label carries a room or user id, and the README's metrics table
lists exactly what `/metrics` exports."""

from __future__ import annotations

import asyncio
import contextlib
import re
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from prometheus_client.metrics_core import Metric
from prometheus_client.parser import text_string_to_metric_families

from rendezvous.backends.memory import MemoryBackend, MemoryBroker
from rendezvous.bus import BusKind, BusMessage, decode_bus, encode_bus
from rendezvous.protocol import RELAYED_TYPES, MessageType, encode
from rendezvous.settings import Settings
from tests.support.client import Client, joined
from tests.support.redis import RedisServer
from tests.support.redis import redis_server as redis_server  # a fixture, for getfixturevalue
from tests.support.server import RunningServer, running_server, test_settings
from tests.support.tokens import token

README = Path(__file__).resolve().parents[1] / "README.md"

ROOM = "metrics-room-q7"
USERS = ("alice-q7", "bob-q7", "carol-q7", "dave-q7")
SDP = "v=0\r\no=- 1 2 IN IP4 127.0.0.1\r\ns=-\r\nt=0 0\r\n"
CANDIDATE = "candidate:1 1 UDP 2122252543 127.0.0.1 50000 typ host"
BURST = 20  # tokens per connection; the refill rate below adds none during a test
EXTRA_PINGS = 5  # a burst this far over BURST is refused
MAX_MESSAGE_BYTES = 2048
# A publish is observed when Redis's reply is read, which may come just after the message
# reached the other instance's clients: its count is awaited, then asserted exactly.
PUBLISH_SETTLE_SECONDS = 10.0

Key = tuple[str, frozenset[tuple[str, str]]]


class Scrape:
    """One parsed `/metrics` answer."""

    def __init__(self, text: str) -> None:
        self.families: dict[str, Metric] = {
            family.name: family for family in text_string_to_metric_families(text)
        }
        self.samples: dict[Key, float] = {
            (sample.name, frozenset(sample.labels.items())): sample.value
            for family in self.families.values()
            for sample in family.samples
        }

    def value(self, name: str, **labels: str) -> float:
        return self.samples.get((name, frozenset(labels.items())), 0.0)

    def label_values(self) -> set[str]:
        return {value for _, labels in self.samples for _, value in labels}


def delta(after: Scrape, before: Scrape, prefix: str | tuple[str, ...]) -> dict[Key, float]:
    """The samples named `prefix...` that moved between two scrapes, and by how much
    (leaving out the `_created` timestamps)."""
    moved = {}
    for key, value in after.samples.items():
        name = key[0]
        if name.endswith("_created") or not name.startswith(prefix):
            continue
        if value != before.samples.get(key, 0.0):
            moved[key] = value - before.samples.get(key, 0.0)
    return moved


def key(name: str, **labels: str) -> Key:
    return name, frozenset(labels.items())


async def scrape(server: RunningServer) -> Scrape:
    async with httpx.AsyncClient(base_url=server.http, timeout=5, trust_env=False) as http:
        response = await http.get("/metrics")
    assert response.status_code == 200
    return Scrape(response.text)


def settings(**overrides: Any) -> Settings:
    return test_settings(
        rate_limit_per_second=0.001,
        rate_limit_burst=BURST,
        max_message_bytes=MAX_MESSAGE_BYTES,
        **overrides,
    )


def offer(target: str | None = None, kind: str = "offer") -> dict[str, Any]:
    payload: dict[str, Any] = {"type": kind, "sdp": SDP}
    if target is not None:
        payload["target_user_id"] = target
    return {"type": kind, "payload": payload}


def candidate(target: str | None = None) -> dict[str, Any]:
    payload: dict[str, Any] = {"candidate": CANDIDATE, "sdpMid": "0", "sdpMLineIndex": 0}
    if target is not None:
        payload["target_user_id"] = target
    return {"type": "ice_candidate", "payload": payload}


@contextlib.asynccontextmanager
async def two_instances(
    store: str, request: pytest.FixtureRequest
) -> AsyncIterator[tuple[RunningServer, RunningServer]]:
    """Two servers sharing a real redis-server, or one in-process broker as two pods
    share Redis."""
    if store == "redis":
        server: RedisServer = request.getfixturevalue("redis_server")
        async with (
            running_server(settings(redis_url=server.url)) as one,
            running_server(settings(redis_url=server.url)) as two,
        ):
            yield one, two
        return
    broker = MemoryBroker()
    async with (
        running_server(
            settings(), backend=MemoryBackend(presence_ttl_seconds=30, broker=broker)
        ) as one,
        running_server(
            settings(), backend=MemoryBackend(presence_ttl_seconds=30, broker=broker)
        ) as two,
    ):
        yield one, two


@contextlib.asynccontextmanager
async def room_across(one: RunningServer, two: RunningServer) -> AsyncIterator[dict[str, Client]]:
    """alice, bob and carol on the first instance, dave on the second, each told of the
    later ones."""
    async with contextlib.AsyncExitStack() as stack:
        clients: dict[str, Client] = {}
        for user, server in zip(USERS, (one, one, one, two), strict=True):
            url = server.ws_url(ROOM, token(user))
            client, _ = await stack.enter_async_context(joined(url))
            for earlier in clients.values():
                assert (await earlier.expect("user_joined"))["payload"]["user_id"] == user
            clients[user] = client
        yield clients


async def publishes_settled(server: RunningServer, count: float) -> None:
    """Wait until `server` has observed `count` backend publishes in all."""
    async with asyncio.timeout(PUBLISH_SETTLE_SECONDS):
        while (await scrape(server)).value("rendezvous_backend_publish_seconds_count") < count:
            await asyncio.sleep(0.02)


@pytest.mark.parametrize("store", ["memory", "redis"])
async def test_counters_move_by_exactly_what_a_scripted_session_did(
    store: str, request: pytest.FixtureRequest
) -> None:
    alice_id, bob_id, _, dave_id = USERS
    publish_count = "rendezvous_backend_publish_seconds_count"
    # Published to the bus by the first instance: three joins, the offer to dave, the
    # broadcast (dave is elsewhere) and bob's departure; by the second: dave's join and
    # his answer. Relays between members of one instance never reach the bus.
    published = (6, 2)
    async with two_instances(store, request) as (one, two):
        before = (await scrape(one), await scrape(two))
        async with room_across(one, two) as clients:
            alice, bob, carol, dave = (clients[user] for user in USERS)
            during = await scrape(one)
            assert during.value("rendezvous_connections") == 3
            assert during.value("rendezvous_participants") == 3
            assert during.value("rendezvous_rooms") == 1

            # On the first instance: an offer, its answer, three ICE candidates.
            await alice.send(offer(bob_id))
            await bob.expect("offer")
            await bob.send(offer(alice_id, kind="answer"))
            await alice.expect("answer")
            for _ in range(3):
                await alice.send(candidate(bob_id))
                await bob.expect("ice_candidate")
            # Across instances: an offer to dave, and his answer.
            await alice.send(offer(dave_id))
            await dave.expect("offer")
            await dave.send(offer(alice_id, kind="answer"))
            await alice.expect("answer")
            # A broadcast: bob and carol here, dave there.
            await alice.send(candidate())
            for member in (bob, carol, dave):
                await member.expect("ice_candidate")
            # A message to someone not in the room.
            await alice.send(offer("nobody-q7"))
            await alice.expect_error("target_not_found")
            # A burst over the rate limit: BURST pings answered, the rest refused.
            for _ in range(BURST + EXTRA_PINGS):
                await carol.send({"type": "ping", "payload": {}})
            replies = [(await carol.recv())["type"] for _ in range(BURST + EXTRA_PINGS)]
            assert replies.count("pong") == BURST
            assert replies.count("error") == EXTRA_PINGS
            # A frame over the size limit closes bob's connection.
            await bob.send(offer(alice_id) | {"padding": "x" * MAX_MESSAGE_BYTES})
            await bob.expect_error("message_too_large")
            await bob.expect_close(1009)
            for member in (alice, carol, dave):
                assert (await member.expect("user_left"))["payload"]["user_id"] == bob_id
            for server, scraped, expected in zip((one, two), before, published, strict=True):
                await publishes_settled(server, scraped.value(publish_count) + expected)
            after = (await scrape(one), await scrape(two))

    messages = "rendezvous_messages_total"
    relayed = "rendezvous_messages_relayed_total"
    dropped = "rendezvous_messages_dropped_total"
    latency = "rendezvous_relay_latency_seconds_count"
    assert delta(after[0], before[0], "rendezvous_messages") == {
        key(messages, type="offer", outcome="ok"): 2,
        key(messages, type="answer", outcome="ok"): 1,
        key(messages, type="ice_candidate", outcome="ok"): 4,
        key(messages, type="ping", outcome="ok"): BURST,
        key(messages, type="offer", outcome="target_not_found"): 1,
        # Refused before their type was read: a rate limit costs no parsing.
        key(messages, type="invalid", outcome="rate_limited"): EXTRA_PINGS,
        key(messages, type="invalid", outcome="message_too_large"): 1,
        # Delivered here: to bob, to alice (from bob and from dave), to bob 3 times
        # and, broadcast, to bob and carol.
        key(relayed, type="offer"): 1,
        key(relayed, type="answer"): 2,
        key(relayed, type="ice_candidate"): 5,
        key(dropped, type="offer", reason="target_not_found"): 1,
        key(dropped, type="invalid", reason="rate_limited"): EXTRA_PINGS,
        key(dropped, type="invalid", reason="message_too_large"): 1,
    }
    assert delta(after[1], before[1], "rendezvous_messages") == {
        key(messages, type="answer", outcome="ok"): 1,
        key(relayed, type="offer"): 1,
        key(relayed, type="ice_candidate"): 1,
    }
    # Every relayed message is observed once on each instance that delivered it: the
    # broadcast once here for bob and carol, once there for dave.
    assert delta(after[0], before[0], "rendezvous_relay_latency_seconds_count") == {
        key(latency, type="offer"): 1,
        key(latency, type="answer"): 2,
        key(latency, type="ice_candidate"): 4,
    }
    assert delta(after[1], before[1], "rendezvous_relay_latency_seconds_count") == {
        key(latency, type="offer"): 1,
        key(latency, type="ice_candidate"): 1,
    }
    for scraped in after:
        for kind in RELAYED_TYPES:
            count = scraped.value(latency, type=kind.value)
            bucket = "rendezvous_relay_latency_seconds_bucket"
            assert scraped.value(bucket, type=kind.value, le="+Inf") == count
    local_sum = after[0].value("rendezvous_relay_latency_seconds_sum", type="offer")
    assert local_sum > 0  # measured, not a constant

    # Every message published is observed once, on the publishing instance.
    for scraped, previously, expected in zip(after, before, published, strict=True):
        assert delta(scraped, previously, "rendezvous_backend_publish_seconds_count") == {
            key(publish_count): expected
        }
        assert scraped.value(publish_count) == scraped.value(
            "rendezvous_backend_publish_seconds_bucket", le="+Inf"
        )
        assert scraped.value("rendezvous_backend_publish_seconds_sum") > 0
        assert scraped.value("rendezvous_backend_publish_dropped_total") == 0

    one_after, two_after = after
    assert delta(one_after, before[0], "rendezvous_errors") == {
        key("rendezvous_errors_total", code="target_not_found"): 1,
        key("rendezvous_errors_total", code="rate_limited"): EXTRA_PINGS,
        key("rendezvous_errors_total", code="message_too_large"): 1,
    }
    assert delta(two_after, before[1], "rendezvous_errors") == {}
    rate_limited = "rendezvous_rate_limited_total"
    assert one_after.value(rate_limited) - before[0].value(rate_limited) == EXTRA_PINGS
    assert two_after.value(rate_limited) == before[1].value(rate_limited)
    slow = "rendezvous_slow_consumer_disconnects_total"
    assert one_after.value(slow) == before[0].value(slow) == 0
    for scraped in after:
        assert scraped.value("rendezvous_backend_up") == 1

    # Low cardinality: no label value names a room or a user.
    ids = {ROOM, *USERS, "nobody-q7"}
    for scraped in (*before, *after):
        assert not {v for v in scraped.label_values() if any(i in v for i in ids)}


async def test_a_slow_consumer_is_counted_with_the_frame_that_overflowed_its_queue() -> None:
    # A send queue of 1024 bytes: one bigger offer overflows it.
    tight = test_settings(send_queue_max_bytes=1024)
    alice_id, bob_id = USERS[:2]
    async with (
        running_server(tight) as server,
        joined(server.ws_url(ROOM, token(alice_id))) as (alice, _),
        joined(server.ws_url(ROOM, token(bob_id))) as (bob, _),
    ):
        await alice.expect("user_joined")
        bob_session = next(
            peer for _, peer in server.services.hub.local_members() if peer.member.user_id == bob_id
        )
        before = await scrape(server)
        big = offer(bob_id)
        big["payload"]["sdp"] = SDP + "a=x-pad:" + "x" * 1100 + "\r\n"
        await alice.send(big)
        await bob.expect_error("slow_consumer")
        await bob.expect_close(1013)
        # Whatever else comes for it while it closes is dropped as such.
        late = encode(MessageType.OFFER, {"sdp": SDP}, room_id=ROOM, sender_id=alice_id)
        assert bob_session.deliver(late) == "recipient_closed"
        after = await scrape(server)
    counters = ("rendezvous_messages", "rendezvous_slow", "rendezvous_errors", "rendezvous_rate")
    assert delta(after, before, counters) == {
        key("rendezvous_messages_total", type="offer", outcome="ok"): 1,
        key("rendezvous_messages_dropped_total", type="offer", reason="slow_consumer"): 1,
        key("rendezvous_slow_consumer_disconnects_total"): 1,
        key("rendezvous_errors_total", code="slow_consumer"): 1,
    }


def readme_metrics_table() -> dict[str, tuple[str, str]]:
    """The README's metrics table: name -> (type, labels as written)."""
    text = README.read_text()
    section = text[text.index("## Endpoints") :]
    section = section[: section.index("\n## ", 1)]
    rows = re.findall(r"^\| `(rendezvous_\w+)` \|\s*(\w+)\s*\|([^|]*)\|", section, re.MULTILINE)
    assert rows, "no metrics table in the README's Endpoints section"
    return {name: (kind, labels.strip()) for name, kind, labels in rows}


async def test_readme_lists_exactly_the_metrics_that_metrics_exports() -> None:
    alice_id, bob_id = USERS[:2]
    async with (
        running_server(settings()) as server,
        joined(server.ws_url(ROOM, token(alice_id))) as (alice, _),
        joined(server.ws_url(ROOM, token(bob_id))) as (bob, _),
    ):
        # Enough traffic that every labelled family has a sample to read its labels from.
        await alice.expect("user_joined")
        await alice.send(offer(bob_id))
        await bob.expect("offer")
        await alice.send(offer("nobody-q7"))
        await alice.expect_error("target_not_found")
        exported = await scrape(server)
    names = {}
    for family in exported.families.values():
        if not family.name.startswith("rendezvous_"):
            continue
        stem = family.name.removesuffix("_created")
        if stem != family.name and stem in exported.families:
            continue  # a counter's creation time, which the text parser splits off
        suffix = "_total" if family.type == "counter" else ""
        labels = sorted({label for sample in family.samples for label in sample.labels} - {"le"})
        names[family.name + suffix] = (family.type, labels)
    table = readme_metrics_table()
    assert set(table) == set(names), (
        f"in the README only: {sorted(set(table) - set(names))}; "
        f"exported only: {sorted(set(names) - set(table))}"
    )
    for name, (kind, labels) in names.items():
        assert table[name][0] == kind, f"{name}: README says {table[name][0]}, it is a {kind}"
        written = re.findall(r"`(\w+)`", table[name][1])
        assert sorted(written) == labels, f"{name}: README labels {written}, got {labels}"


def test_a_relay_on_the_bus_carries_its_type_and_when_it_was_relayed() -> None:
    """What the receiving instance's relay metrics read: no parsing of the frame."""
    frame = encode(MessageType.OFFER, {"sdp": "v=0"}, room_id="r1", sender_id="alice")
    sent = BusMessage(BusKind.RELAY, "alice", frame, "bob", relay_type="offer", sent_at=12.5)
    received = decode_bus(encode_bus(sent))
    assert received == sent
