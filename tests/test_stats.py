"""Call-quality `stats` frames: a report is checked field by field (a bad field refuses it
whole, naming the field), recorded in `/metrics` by exactly its figures, never relayed to
anyone (on this instance or another) and never answered; it costs a rate-limit token like
any frame; with tracing on its figures are an event on its frame's span. And the demo
page's stats.js, run in node over getStats-like Maps, builds reports the server accepts."""

from __future__ import annotations

import contextlib
import json
import math
import subprocess
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from rendezvous.api.demo import WEB_DIRECTORY
from rendezvous.backends.memory import MemoryBackend, MemoryBroker
from rendezvous.protocol import ErrorCode, MessageType, SignalingError, parse_client_frame
from rendezvous.stats import StatsReport, parse_report
from tests.support.client import Client, joined
from tests.support.otlp import OtlpReceiver
from tests.support.process import require_program
from tests.support.server import RunningServer, running_server, test_settings
from tests.support.tokens import token

ROOM = "stats-room-k4"
ALICE, BOB, CAROL = "alice-k4", "bob-k4", "carol-k4"
NODE_TIMEOUT_SECONDS = 30

Key = tuple[str, frozenset[tuple[str, str]]]


# parse_report: the fields, without a socket


def test_a_full_report_is_read_and_unknown_fields_are_ignored() -> None:
    payload = {
        "rtt_ms": 42,
        "jitter_ms": 3.5,
        "packet_loss": 0.02,
        "bitrate_kbps": 1500.25,
        "candidate_pair": "relay",
        "target_user_id": BOB,
        "codec": "VP8",  # unknown: ignored
        "nested": {"deep": [1, 2]},
    }
    assert parse_report(payload) == StatsReport(
        rtt_ms=42.0,
        jitter_ms=3.5,
        packet_loss=0.02,
        bitrate_kbps=1500.25,
        candidate_pair="relay",
        target_user_id=BOB,
    )


def test_every_field_is_optional_and_null_means_left_out() -> None:
    assert parse_report({}) == StatsReport()
    assert parse_report({"rtt_ms": None, "candidate_pair": None}) == StatsReport()


@pytest.mark.parametrize(
    "field, value",
    [
        ("rtt_ms", 0),
        ("rtt_ms", 60_000),
        ("jitter_ms", 60_000.0),
        ("packet_loss", 0),
        ("packet_loss", 1),
        ("bitrate_kbps", 10_000_000),
        ("rtt_ms", -0.0),
    ],
)
def test_the_bounds_are_inclusive(field: str, value: float) -> None:
    assert getattr(parse_report({field: value}), field) == value


@pytest.mark.parametrize(
    "field, value",
    [
        ("rtt_ms", True),  # a bool is an int to Python, never a number on the wire
        ("rtt_ms", False),
        ("rtt_ms", "42"),
        ("rtt_ms", -1),
        ("rtt_ms", 60_000.5),
        ("rtt_ms", math.nan),
        ("rtt_ms", math.inf),
        ("jitter_ms", [1]),
        ("jitter_ms", -0.001),
        ("jitter_ms", 10**400),  # JSON integers have no size limit
        ("packet_loss", 1.0001),
        ("packet_loss", -math.inf),
        ("packet_loss", True),
        ("bitrate_kbps", 10_000_001),
        ("bitrate_kbps", {}),
        ("candidate_pair", "turn"),
        ("candidate_pair", "RELAY"),
        ("candidate_pair", ""),
        ("candidate_pair", 1),
        ("candidate_pair", ["relay"]),
        ("target_user_id", 7),
        ("target_user_id", True),
    ],
)
def test_a_bad_field_refuses_the_report_and_names_the_field(field: str, value: Any) -> None:
    payload = {"rtt_ms": 10, "candidate_pair": "host", field: value}
    with pytest.raises(SignalingError) as raised:
        parse_report(payload)
    assert raised.value.code is ErrorCode.INVALID_MESSAGE
    assert raised.value.close_code is None  # the connection stays
    assert f"'payload.{field}'" in raised.value.message


# The frame: a client-only type


def test_stats_is_a_client_type_whose_payload_passes_as_sent() -> None:
    payload = {"rtt_ms": 5, "extra": "kept for nobody"}
    text = json.dumps({"type": "stats", "payload": payload, "room_id": "r1"})
    assert parse_client_frame(text, room_id="r1") == (MessageType.STATS, payload)


@pytest.mark.parametrize(
    "text",
    [
        '{"type": "stats"}',
        '{"type": "stats", "payload": [1]}',
        '{"type": "stats", "payload": {"rtt_ms": 1e400}}',  # orjson: infinity, refused
        '{"type": "stats", "payload": {"rtt_ms": NaN}}',
        '{"type": "stats", "payload": {"rtt_ms": Infinity}}',
        '{"type": "stats", "payload": {"target_user_id": ["bob"]}}',
    ],
)
def test_a_frame_that_cannot_carry_a_report_is_invalid(text: str) -> None:
    with pytest.raises(SignalingError) as raised:
        parse_client_frame(text, room_id="r1")
    assert raised.value.code is ErrorCode.INVALID_MESSAGE


# A real server: what /metrics says, and who hears of it


class Scrape:
    """One parsed `/metrics` answer: (name, labels) -> value."""

    def __init__(self, text: str) -> None:
        self.samples: dict[Key, float] = {
            (sample.name, frozenset(sample.labels.items())): sample.value
            for family in text_string_to_metric_families(text)
            for sample in family.samples
        }

    def value(self, name: str, **labels: str) -> float:
        return self.samples.get((name, frozenset(labels.items())), 0.0)

    def moved(self, before: Scrape, prefix: str) -> dict[Key, float]:
        """The samples named `prefix...` that moved since `before`, by how much."""
        return {
            key: value - before.samples.get(key, 0.0)
            for key, value in self.samples.items()
            if key[0].startswith(prefix)
            and not key[0].endswith("_created")
            and value != before.samples.get(key, 0.0)
        }


def key(name: str, **labels: str) -> Key:
    return name, frozenset(labels.items())


async def scrape(server: RunningServer) -> Scrape:
    async with httpx.AsyncClient(base_url=server.http, timeout=5, trust_env=False) as http:
        response = await http.get("/metrics")
    assert response.status_code == 200
    return Scrape(response.text)


def stats(**payload: Any) -> dict[str, Any]:
    return {"type": "stats", "payload": payload}


async def in_step(client: Client) -> None:
    """A ping's pong is the next frame `client` gets: nothing was sent it before (frames
    to one client keep their order), and everything it sent before was handled."""
    await client.send({"type": "ping", "payload": {"sync": True}})
    assert (await client.expect("pong"))["payload"] == {"sync": True}


@contextlib.asynccontextmanager
async def room_on_two_instances() -> AsyncIterator[tuple[RunningServer, dict[str, Client]]]:
    """alice and bob on one instance, carol on another sharing its bus; yields the first
    instance and the three clients, each told of the later ones."""
    broker = MemoryBroker()
    async with contextlib.AsyncExitStack() as stack:
        servers = [
            await stack.enter_async_context(
                running_server(
                    test_settings(),
                    backend=MemoryBackend(presence_ttl_seconds=30, broker=broker),
                )
            )
            for _ in range(2)
        ]
        clients: dict[str, Client] = {}
        for user, server in ((ALICE, servers[0]), (BOB, servers[0]), (CAROL, servers[1])):
            client, _ = await stack.enter_async_context(joined(server.ws_url(ROOM, token(user))))
            for earlier in clients.values():
                assert (await earlier.expect("user_joined"))["payload"]["user_id"] == user
            clients[user] = client
        yield servers[0], clients


async def test_valid_reports_move_exactly_their_figures_and_reach_nobody() -> None:
    async with room_on_two_instances() as (server, clients):
        alice, bob, carol = clients[ALICE], clients[BOB], clients[CAROL]
        await in_step(alice)
        before = await scrape(server)
        await alice.send(
            stats(
                rtt_ms=42.5,
                jitter_ms=3,
                packet_loss=0.0,
                bitrate_kbps=1500,
                candidate_pair="relay",
                target_user_id=BOB,
                codec="opus",
            )
        )
        await alice.send(stats(rtt_ms=8, packet_loss=0.02, candidate_pair="host"))
        await alice.send(stats(target_user_id=CAROL))  # nothing measured yet: counted only
        await in_step(alice)  # no answer to any report came before the pong
        for member in (bob, carol):
            await member.expect_silence()
        after = await scrape(server)

    assert after.moved(before, "rendezvous_call_stats_reports") == {
        key("rendezvous_call_stats_reports_total", candidate_pair="relay"): 1,
        key("rendezvous_call_stats_reports_total", candidate_pair="host"): 1,
        key("rendezvous_call_stats_reports_total", candidate_pair="unknown"): 1,
    }
    counts = {
        name: (after.value(f"{name}_count") - before.value(f"{name}_count"))
        for name in (
            "rendezvous_call_rtt_seconds",
            "rendezvous_call_jitter_seconds",
            "rendezvous_call_packet_loss_ratio",
            "rendezvous_call_bitrate_kbps",
        )
    }
    assert counts == {
        "rendezvous_call_rtt_seconds": 2,
        "rendezvous_call_jitter_seconds": 1,
        "rendezvous_call_packet_loss_ratio": 2,
        "rendezvous_call_bitrate_kbps": 1,
    }
    sums = {
        name: after.value(f"{name}_sum") - before.value(f"{name}_sum")
        for name in counts  # milliseconds are recorded in seconds
    }
    assert sums == pytest.approx(
        {
            "rendezvous_call_rtt_seconds": 0.0505,
            "rendezvous_call_jitter_seconds": 0.003,
            "rendezvous_call_packet_loss_ratio": 0.02,
            "rendezvous_call_bitrate_kbps": 1500,
        }
    )

    def bucket(name: str, le: str) -> float:
        return after.value(f"{name}_bucket", le=le) - before.value(f"{name}_bucket", le=le)

    rtt = "rendezvous_call_rtt_seconds"
    assert [bucket(rtt, le) for le in ("0.005", "0.01", "0.025", "0.05", "+Inf")] == [0, 1, 1, 2, 2]
    loss = "rendezvous_call_packet_loss_ratio"  # `le` is inclusive: no loss has its bucket
    assert [bucket(loss, le) for le in ("0.0", "0.01", "0.02", "+Inf")] == [1, 1, 2, 2]
    # Counted as frames handled, relayed to nobody, published to no other instance.
    assert after.moved(before, "rendezvous_messages") == {
        key("rendezvous_messages_total", type="stats", outcome="ok"): 3,
        key("rendezvous_messages_total", type="ping", outcome="ok"): 1,
    }
    publishes = "rendezvous_backend_publish_seconds_count"
    assert after.value(publishes) == before.value(publishes)
    # Low cardinality: no label names the room or a member, the target included.
    labels = {value for _, pairs in after.samples for _, value in pairs}
    assert not {v for v in labels if any(i in v for i in (ROOM, ALICE, BOB, CAROL))}


async def test_a_bad_report_gets_invalid_message_and_records_nothing() -> None:
    refused_fields = [
        (stats(rtt_ms=True), "rtt_ms"),
        (stats(rtt_ms=10, packet_loss=1.5), "packet_loss"),  # its good rtt is not kept
        (stats(jitter_ms=-1, candidate_pair="relay"), "jitter_ms"),
        (stats(bitrate_kbps="fast"), "bitrate_kbps"),
        (stats(candidate_pair="turn", rtt_ms=10), "candidate_pair"),
    ]
    unreadable = [  # numbers JSON cannot carry (orjson refuses 1e400: infinity)
        '{"type": "stats", "payload": {"rtt_ms": 1e400}}',
        '{"type": "stats", "payload": {"rtt_ms": NaN}}',
    ]
    async with room_on_two_instances() as (server, clients):
        alice = clients[ALICE]
        await in_step(alice)
        before = await scrape(server)
        for frame, field in refused_fields:
            await alice.send(frame)
            error = await alice.expect_error("invalid_message")
            assert f"'payload.{field}'" in error["payload"]["message"]
        for text in unreadable:
            await alice.connection.send(text)
            await alice.expect_error("invalid_message")
        await alice.send({"type": "stats", "payload": "rtt=10"})
        await alice.expect_error("invalid_message")
        await in_step(alice)  # still connected
        for member in (clients[BOB], clients[CAROL]):
            await member.expect_silence()
        after = await scrape(server)

    assert after.moved(before, "rendezvous_call") == {}
    messages = "rendezvous_messages_total"
    assert after.moved(before, messages) == {
        key(messages, type="stats", outcome="invalid_message"): len(refused_fields),
        # Refused before the frame was read whole (as every type's are): the unreadable
        # ones and the one whose payload is no object.
        key(messages, type="invalid", outcome="invalid_message"): len(unreadable) + 1,
        key(messages, type="ping", outcome="ok"): 1,
    }


async def test_a_report_costs_a_rate_limit_token_like_any_frame() -> None:
    burst = 12
    settings = test_settings(rate_limit_per_second=0.001, rate_limit_burst=burst)
    async with (
        running_server(settings) as server,
        joined(server.ws_url(ROOM, token(ALICE))) as (alice, _),
    ):
        before = await scrape(server)
        for _ in range(burst):
            await alice.send(stats(rtt_ms=20, candidate_pair="srflx"))
        await alice.send({"type": "ping", "payload": {}})
        await alice.expect_error("rate_limited")  # the only answer: the reports got none
        await alice.send(stats(rtt_ms=20, candidate_pair="srflx"))
        await alice.expect_error("rate_limited")
        after = await scrape(server)
    reports = "rendezvous_call_stats_reports_total"
    recorded = after.value(reports, candidate_pair="srflx") - before.value(
        reports, candidate_pair="srflx"
    )
    assert recorded == burst


# Tracing: an event on the frame's span


async def test_a_report_is_an_event_on_its_frames_span(monkeypatch: pytest.MonkeyPatch) -> None:
    alice_token = token(ALICE)
    async with OtlpReceiver() as receiver:
        monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", receiver.endpoint)
        async with (
            running_server() as server,
            joined(server.ws_url(ROOM, alice_token)) as (alice, _),
            joined(server.ws_url(ROOM, token(BOB))) as (bob, _),
        ):
            await alice.expect("user_joined")
            await alice.send(
                stats(rtt_ms=42.5, packet_loss=0.01, candidate_pair="prflx", target_user_id=BOB)
            )
            await alice.send(stats(rtt_ms=-5))
            await alice.expect_error("invalid_message")
            await in_step(alice)
            await bob.expect_silence()
        spans = receiver.received()

    frames = [
        s
        for s in spans
        if s.name == "rendezvous.relay" and s.attributes.get("rendezvous.message.type") == "stats"
    ]
    recorded = [s for s in frames if s.attributes["rendezvous.outcome"] == "recorded"]
    refused = [s for s in frames if s.attributes["rendezvous.outcome"] == "invalid_message"]
    assert (len(recorded), len(refused), len(frames)) == (1, 1, 2)
    (span,) = recorded
    assert span.attributes["rendezvous.target.id"] == BOB
    assert "rendezvous.delivered" not in span.attributes  # relayed to nobody
    assert span.events == ["rendezvous.stats"]
    assert span.event_attributes == [
        {
            "rendezvous.stats.rtt_ms": 42.5,
            "rendezvous.stats.packet_loss": 0.01,
            "rendezvous.stats.candidate_pair": "prflx",
        }
    ]
    assert refused[0].events == ["exception"]  # no figures from a refused report
    assert [s for s in spans if s.name == "rendezvous.publish"] == []
    exported = json.dumps([[s.attributes, s.event_attributes] for s in spans])
    assert alice_token.split(".")[-1] not in exported


# The demo page's stats.js, in node

STATS_JS = WEB_DIRECTORY / "stats.js"


def run_node(harness: str) -> Any:
    """Run stats.js followed by `harness` as one ES module (stats.js imports nothing);
    what the harness prints last, as JSON."""
    node = require_program("node", package="nodejs")
    result = subprocess.run(
        [node, "--input-type=module"],
        input=STATS_JS.read_text() + "\n" + harness,
        capture_output=True,
        text=True,
        timeout=NODE_TIMEOUT_SECONDS,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout.strip().splitlines()[-1])


# getStats-like reports, as Chromium words them (a transport names the selected pair) and
# as Firefox does (no transport: the succeeded nominated pair).
BUILD_HARNESS = """
const chromium = (t, bytes, audio, video) => new Map(Object.entries({
  T01: { id: "T01", type: "transport", selectedCandidatePairId: "CP1" },
  CP0: { id: "CP0", type: "candidate-pair", state: "failed", nominated: false,
         localCandidateId: "L0", remoteCandidateId: "R0", currentRoundTripTime: 9 },
  CP1: { id: "CP1", type: "candidate-pair", state: "succeeded", nominated: true,
         localCandidateId: "L1", remoteCandidateId: "R1", currentRoundTripTime: 0.0423,
         bytesReceived: bytes, timestamp: t },
  L1: { id: "L1", type: "local-candidate", candidateType: "relay" },
  R1: { id: "R1", type: "remote-candidate", candidateType: "host" },
  IA: { id: "IA", type: "inbound-rtp", kind: "audio", jitter: 0.004, ...audio },
  IV: { id: "IV", type: "inbound-rtp", kind: "video", jitter: 0.012, ...video },
}));
const firefox = new Map(Object.entries({
  P: { id: "P", type: "candidate-pair", state: "succeeded", nominated: true,
       localCandidateId: "l", remoteCandidateId: "r", bytesReceived: 10, timestamp: 1 },
  l: { id: "l", type: "local-candidate", candidateType: "srflx" },
  r: { id: "r", type: "remote-candidate", candidateType: "prflx" },
}));
const odd = new Map(Object.entries({
  T: { id: "T", type: "transport", selectedCandidatePairId: "P" },
  P: { id: "P", type: "candidate-pair", localCandidateId: "l", remoteCandidateId: "r",
       currentRoundTripTime: 120, bytesReceived: 5, timestamp: 2000 },
  l: { id: "l", type: "local-candidate", candidateType: "host" },
  r: { id: "r", type: "remote-candidate", candidateType: "host" },
  I: { id: "I", type: "inbound-rtp", jitter: Infinity, packetsLost: -3, packetsReceived: 50 },
}));
const first = buildReport(
  chromium(10000, 1000000, { packetsLost: 5, packetsReceived: 995 },
           { packetsLost: 10, packetsReceived: 1990 }),
  null, "bob");
const second = buildReport(
  chromium(15000, 1625000, { packetsLost: 5, packetsReceived: 1495 },
           { packetsLost: 30, packetsReceived: 2470 }),
  first.sample, "bob");
const restarted = buildReport(chromium(20000, 100, {}, {}), second.sample, "bob");
console.log(JSON.stringify({
  first: first.payload,
  second: second.payload,
  restarted: restarted.payload,
  firefox: buildReport(firefox).payload,
  odd: buildReport(odd, { timestamp: 1000, bytesReceived: 10 }).payload,
  empty: buildReport(new Map(), null, "carol").payload,
}));
"""


def test_stats_js_builds_reports_the_server_accepts() -> None:
    reports = run_node(BUILD_HARNESS)
    assert reports == {
        # Loss since the start: 15 of 3000 packets; no bitrate from a single sample.
        "first": {
            "target_user_id": "bob",
            "rtt_ms": 42.3,
            "candidate_pair": "relay",
            "jitter_ms": 12,
            "packet_loss": 0.005,
        },
        # Since the first: 625000 bytes in 5 s = 1000 kbit/s; 20 of 1000 packets lost.
        "second": {
            "target_user_id": "bob",
            "rtt_ms": 42.3,
            "candidate_pair": "relay",
            "bitrate_kbps": 1000,
            "jitter_ms": 12,
            "packet_loss": 0.02,
        },
        # Counters that went back (a restarted connection) give no bitrate and no loss.
        "restarted": {
            "target_user_id": "bob",
            "rtt_ms": 42.3,
            "candidate_pair": "relay",
            "jitter_ms": 12,
        },
        # No round trip reported; the more indirect end of an srflx-prflx pair.
        "firefox": {"candidate_pair": "srflx"},
        # A two-minute rtt and an infinite jitter are left out (the server would refuse
        # the report); negative loss counts as none; bytes that went back give no bitrate.
        "odd": {"candidate_pair": "host", "packet_loss": 0},
        "empty": {"target_user_id": "carol"},
    }
    for payload in reports.values():
        parse_report(payload)  # every one valid: raises otherwise


REPORTER_HARNESS = """
const stats = (t) => new Map(Object.entries({
  T: { id: "T", type: "transport", selectedCandidatePairId: "P" },
  P: { id: "P", type: "candidate-pair", localCandidateId: "l", remoteCandidateId: "r",
       currentRoundTripTime: 0.02, bytesReceived: t * 100, timestamp: t },
  l: { id: "l", type: "local-candidate", candidateType: "host" },
  r: { id: "r", type: "remote-candidate", candidateType: "srflx" },
}));
let clock = 0;
const peer = (userId, connectionState) => ({
  userId, closed: false,
  pc: { connectionState, getStats: async () => stats((clock += 1000)) },
});
const peers = new Map([["bob", peer("bob", "connected")], ["carol", peer("carol", "connecting")]]);
const sent = [];
const reporter = new StatsReporter({
  peers, intervalMs: 20, send: (type, payload) => sent.push({ type, payload }),
});
reporter.start();
const waitFor = async (condition) => {
  for (let i = 0; i < 500 && !condition(); i++) await new Promise((r) => setTimeout(r, 5));
};
await waitFor(() => sent.length >= 3);
reporter.stop();
const stopped = sent.length;
await new Promise((r) => setTimeout(r, 100));
console.log(JSON.stringify({ sent, stopped }));
"""


def test_the_reporter_sends_a_report_per_connected_peer_until_stopped() -> None:
    result = run_node(REPORTER_HARNESS)
    sent = result["sent"]
    assert len(sent) == result["stopped"] >= 3  # nothing after stop()
    assert {frame["type"] for frame in sent} == {"stats"}
    payloads = [frame["payload"] for frame in sent]
    assert {p["target_user_id"] for p in payloads} == {"bob"}  # carol is not connected
    assert "bitrate_kbps" not in payloads[0]
    # 100 bytes per ms: 800 kbit/s from the second report on.
    assert [p.get("bitrate_kbps") for p in payloads[1:]] == [800] * (len(payloads) - 1)
    for payload in payloads:
        assert payload["candidate_pair"] == "srflx"
        assert parse_report(payload).rtt_ms == 20
