"""The service's own spans, exported to a real OTLP receiver: a join with its auth and
presence under the WebSocket's span; each relayed frame a trace of its own, linked to
its connection; and a relay that crosses instances through Redis one trace, whose
deliver span on the receiving instance is the child of the publish span on the sender's.
No token and no SDP ever reaches an attribute or an event."""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import pytest

from rendezvous.backends.memory import MemoryBackend, MemoryBroker
from rendezvous.bus import BusDecodeError, BusKind, BusMessage, decode_bus, encode_bus
from tests.support.client import connect, joined
from tests.support.instances import instance_env, running_instances
from tests.support.otlp import OtlpReceiver, ReceivedSpan
from tests.support.redis import RedisServer, redis_server  # noqa: F401
from tests.support.server import running_server, test_settings
from tests.support.tokens import token

WS_SPAN = "HTTP /webrtc/ws/{room_id}"
# A body no attribute may carry: its marker is searched for in everything exported.
SDP_MARKER = "s=never-in-a-span"
SDP = f"v=0\r\no=- 1 2 IN IP4 127.0.0.1\r\n{SDP_MARKER}\r\nt=0 0\r\n"
FAST_EXPORT = {"OTEL_BSP_SCHEDULE_DELAY": "50"}  # ms: spans leave at once, not every 5 s


def named(spans: Iterable[ReceivedSpan], name: str) -> list[ReceivedSpan]:
    return [s for s in spans if s.name == name]


def one(spans: Iterable[ReceivedSpan], name: str, **attributes: Any) -> ReceivedSpan:
    found = [
        s
        for s in named(spans, name)
        if all(s.attributes.get(k) == v for k, v in attributes.items())
    ]
    assert len(found) == 1, (name, attributes, [(s.name, s.attributes) for s in spans])
    return found[0]


def assert_nothing_secret(spans: Iterable[ReceivedSpan], *secrets: str) -> None:
    for span in spans:
        text = json.dumps([span.name, span.attributes, span.event_attributes, span.status_message])
        for secret in (SDP_MARKER, *secrets):
            assert secret not in text, span


async def test_a_join_is_a_span_with_auth_and_presence_under_the_connection(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    tok = token("alice")
    async with OtlpReceiver() as receiver:
        monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", receiver.endpoint)
        settings = test_settings(max_participants_per_room=7)
        async with running_server(settings) as server, joined(server.ws_url("lobby", tok)):
            pass
        spans = receiver.received()

    ws = one(spans, WS_SPAN)
    join = one(spans, "rendezvous.join")
    auth = one(spans, "rendezvous.auth")
    presence = one(spans, "rendezvous.presence")
    assert (join.trace_id, join.parent_span_id) == (ws.trace_id, ws.span_id)
    assert auth.parent_span_id == presence.parent_span_id == join.span_id
    assert join.attributes == {
        "rendezvous.room.id": "lobby",
        "rendezvous.user.id": "alice",
        "rendezvous.outcome": "joined",
    }
    assert presence.attributes == {"rendezvous.room.id": "lobby", "rendezvous.room.capacity": 7}
    assert {s.status_code for s in (join, auth, presence)} == {"UNSET"}
    assert named(spans, "rendezvous.relay") == []  # joining sends no frame
    assert_nothing_secret(spans, tok, tok.split(".")[-1])


async def test_a_refused_join_fails_its_span_with_the_error_code(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    async with OtlpReceiver() as receiver:
        monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", receiver.endpoint)
        settings = test_settings(max_participants_per_room=1)
        async with running_server(settings) as server:
            async with connect(server.ws_url("lobby", "not-a-jwt")) as stranger:
                await stranger.expect_error("unauthorized")
            async with joined(server.ws_url("lobby", token("alice"))):
                async with connect(server.ws_url("lobby", token("bob"))) as bob:
                    await bob.expect_error("room_full")
        spans = receiver.received()

    joins = {s.attributes["rendezvous.outcome"]: s for s in named(spans, "rendezvous.join")}
    assert set(joins) == {"unauthorized", "joined", "room_full"}
    for code in ("unauthorized", "room_full"):
        span = joins[code]
        assert (span.status_code, span.status_message) == ("ERROR", code)
        assert span.attributes["error.type"] == code
        assert span.events == ["exception"]
    unauthorized = [s for s in named(spans, "rendezvous.auth") if s.status_code == "ERROR"]
    assert [s.parent_span_id for s in unauthorized] == [joins["unauthorized"].span_id]
    refused = [s for s in named(spans, "rendezvous.presence") if s.status_code == "ERROR"]
    assert [s.parent_span_id for s in refused] == [joins["room_full"].span_id]
    assert joins["room_full"].attributes["rendezvous.user.id"] == "bob"


async def test_each_frame_is_a_trace_of_its_own_linked_to_its_connection(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    async with OtlpReceiver() as receiver:
        monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", receiver.endpoint)
        async with running_server() as server:
            async with joined(server.ws_url("call", token("alice"))) as (alice, _):
                async with joined(server.ws_url("call", token("bob"))) as (bob, _):
                    await alice.expect("user_joined")
                    offer = {
                        "type": "offer",
                        "payload": {"type": "offer", "sdp": SDP, "target_user_id": "bob"},
                    }
                    await alice.send(offer)
                    assert (await bob.expect("offer"))["payload"]["sdp"] == SDP
                    ice = {"type": "ice_candidate", "payload": {"candidate": ""}}
                    await alice.send(ice)
                    await bob.expect("ice_candidate")
                    await alice.send(
                        {
                            "type": "offer",
                            "payload": {"type": "offer", "sdp": SDP, "target_user_id": "carol"},
                        }
                    )
                    await alice.expect_error("target_not_found")
                    await alice.send({"type": "ping", "payload": {}})
                    await alice.expect("pong")
        spans = receiver.received()

    alice_join = one(spans, "rendezvous.join", **{"rendezvous.user.id": "alice"})
    connection = one([s for s in spans if s.trace_id == alice_join.trace_id], WS_SPAN)
    relays = named(spans, "rendezvous.relay")
    assert len(relays) == 4, [s.attributes for s in relays]
    for span in relays:
        assert span.kind == "SERVER" and not span.parent_span_id
        assert span.links == [(connection.trace_id, connection.span_id)]
        assert span.attributes["rendezvous.sender.id"] == "alice"
        assert span.attributes["rendezvous.room.id"] == "call"
    assert len({s.trace_id for s in relays} | {connection.trace_id}) == 5

    sent = one(
        relays,
        "rendezvous.relay",
        **{"rendezvous.outcome": "relayed"},
        **{"rendezvous.message.type": "offer"},
    )
    assert sent.attributes == {
        "rendezvous.room.id": "call",
        "rendezvous.message.type": "offer",
        "rendezvous.sender.id": "alice",
        "rendezvous.target.id": "bob",
        "messaging.message.body.size": len(json.dumps(offer).encode()),
        "rendezvous.outcome": "relayed",
        "rendezvous.delivered": 1,
    }
    broadcast = one(relays, "rendezvous.relay", **{"rendezvous.message.type": "ice_candidate"})
    assert "rendezvous.target.id" not in broadcast.attributes
    assert broadcast.attributes["rendezvous.delivered"] == 1
    missing = one(relays, "rendezvous.relay", **{"rendezvous.outcome": "target_not_found"})
    assert (missing.status_code, missing.attributes["error.type"]) == ("ERROR", "target_not_found")
    assert missing.attributes["rendezvous.target.id"] == "carol"
    assert missing.events == ["exception"]
    one(relays, "rendezvous.relay", **{"rendezvous.outcome": "pong"})
    assert named(spans, "rendezvous.publish") == []  # nobody on another instance
    assert_nothing_secret(spans)


async def test_a_relay_across_instances_through_redis_is_one_trace(
    tmp_path: Path,
    redis_server: RedisServer,  # noqa: F811
) -> None:
    async with OtlpReceiver() as receiver:
        env = instance_env(
            tmp_path,
            redis_url=redis_server.url,
            OTEL_EXPORTER_OTLP_ENDPOINT=receiver.endpoint,
            **FAST_EXPORT,
        )
        async with running_instances(2, env=env, log_dir=tmp_path) as (a, b):
            async with joined(a.ws_url("span", token("alice"))) as (alice, _):
                async with joined(b.ws_url("span", token("bob"))) as (bob, _):
                    await alice.expect("user_joined")
                    await alice.send(
                        {
                            "type": "offer",
                            "payload": {"type": "offer", "sdp": SDP, "target_user_id": "bob"},
                        }
                    )
                    assert (await bob.expect("offer"))["payload"]["sdp"] == SDP
                    await bob.send({"type": "answer", "payload": {"type": "answer", "sdp": SDP}})
                    await alice.expect("answer")
            spans = await receiver.wait_for(
                lambda spans: len(named(spans, "rendezvous.deliver")) >= 2
            )

    for kind, sender, receiving in (("offer", "alice", "bob"), ("answer", "bob", "alice")):
        relay = one(spans, "rendezvous.relay", **{"rendezvous.message.type": kind})
        publish = one(spans, "rendezvous.publish", **{"rendezvous.message.type": kind})
        deliver = one(spans, "rendezvous.deliver", **{"rendezvous.message.type": kind})
        assert relay.trace_id == publish.trace_id == deliver.trace_id
        assert publish.parent_span_id == relay.span_id
        assert deliver.parent_span_id == publish.span_id
        assert (publish.kind, deliver.kind) == ("PRODUCER", "CONSUMER")
        assert relay.attributes["rendezvous.delivered"] == 0  # nobody for it on its instance
        assert publish.attributes["messaging.system"] == "redis"
        assert publish.attributes["messaging.operation.type"] == "publish"
        assert deliver.attributes["messaging.operation.type"] == "process"
        assert deliver.attributes["rendezvous.sender.id"] == sender
        assert deliver.attributes["rendezvous.delivered"] == 1
        senders_instance = relay.resource["service.instance.id"]
        assert publish.resource["service.instance.id"] == senders_instance
        assert deliver.resource["service.instance.id"] != senders_instance
        receiving_join = one(spans, "rendezvous.join", **{"rendezvous.user.id": receiving})
        assert (
            deliver.resource["service.instance.id"]
            == (receiving_join.resource["service.instance.id"])
        )
    assert (
        one(spans, "rendezvous.deliver", **{"rendezvous.message.type": "offer"}).attributes[
            "rendezvous.target.id"
        ]
        == "bob"
    )
    assert_nothing_secret(spans)


async def test_an_unsampled_relay_carries_no_trace_to_the_other_instance(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The sender's sampler said no: nothing travels, so the receiving instance (which
    samples everything it is asked to) starts no deliver span of its own."""
    broker = MemoryBroker()
    async with OtlpReceiver() as receiver:
        monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", receiver.endpoint)
        monkeypatch.setenv("OTEL_TRACES_SAMPLER", "always_off")
        unsampled = running_server(backend=MemoryBackend(presence_ttl_seconds=30, broker=broker))
        async with unsampled as a:
            monkeypatch.setenv("OTEL_TRACES_SAMPLER", "always_on")
            sampled = running_server(backend=MemoryBackend(presence_ttl_seconds=30, broker=broker))
            async with sampled as b:
                async with joined(a.ws_url("quiet", token("alice"))) as (alice, _):
                    async with joined(b.ws_url("quiet", token("bob"))) as (bob, _):
                        await alice.expect("user_joined")
                        await alice.send(
                            {"type": "offer", "payload": {"type": "offer", "sdp": SDP}}
                        )
                        await bob.expect("offer")
                        await bob.send(
                            {"type": "answer", "payload": {"type": "answer", "sdp": SDP}}
                        )
                        await alice.expect("answer")
        spans = receiver.received()

    assert {s.resource["service.instance.id"] for s in spans} == {b.services.backend.instance_id}
    assert named(spans, "rendezvous.deliver") == []  # alice's offer: not sampled at a
    answer = one(spans, "rendezvous.relay", **{"rendezvous.message.type": "answer"})
    assert one(spans, "rendezvous.publish").parent_span_id == answer.span_id
    assert all(
        s.name != "rendezvous.relay" or s.attributes["rendezvous.sender.id"] == "bob" for s in spans
    )


def test_the_bus_carries_a_traceparent_only_when_there_is_one() -> None:
    traceparent = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
    plain = BusMessage(BusKind.RELAY, "alice", b"{}", "bob", relay_type="offer", sent_at=1.5)
    traced = BusMessage(
        BusKind.RELAY,
        "alice",
        b"{}",
        "bob",
        relay_type="offer",
        sent_at=1.5,
        traceparent=traceparent,
    )
    assert b'"p"' not in encode_bus(plain)
    assert decode_bus(encode_bus(plain)) == plain
    assert decode_bus(encode_bus(traced)) == traced
    with pytest.raises(BusDecodeError):
        decode_bus(b'{"k":"m","u":"alice","y":"offer","a":1.5,"p":7}\n{}')


async def test_the_sampler_ratio_is_the_fraction_of_frames_traced(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The service samples relays itself (a frame left out costs one random draw): with a
    ratio of one half, about half the frames are traces; the connection's own span is
    still the configured sampler's to decide."""
    frames = 200
    async with OtlpReceiver() as receiver:
        monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", receiver.endpoint)
        monkeypatch.setenv("OTEL_TRACES_SAMPLER", "parentbased_traceidratio")
        monkeypatch.setenv("OTEL_TRACES_SAMPLER_ARG", "0.5")
        async with running_server() as server:
            assert server.app.state.tracing.relay_ratio == 0.5
            async with joined(server.ws_url("half", token("alice"))) as (alice, _):
                for n in range(frames):
                    await alice.send({"type": "ping", "payload": {"n": n}})
                    await alice.expect("pong")
        spans = receiver.received()
    relays = named(spans, "rendezvous.relay")
    # Binomial(200, 0.5): 100 +- 7; outside 50..150 is over seven deviations away.
    assert 50 <= len(relays) <= 150, len(relays)
    assert all(s.attributes["rendezvous.outcome"] == "pong" for s in relays)
    assert len(named(spans, WS_SPAN)) <= 1
