"""Real WebRTC through the service: two aiortc peers take their ICE servers from
`/webrtc/config`, negotiate only over the signaling WebSocket with trickled candidates
(offer, then candidates, then end-of-candidates), and open a data channel.

Everything stays on loopback: aioice's host gathering is pinned to 127.0.0.1, and the
only ICE server is a STUN binding responder on 127.0.0.1 (aioice's own STUN codec over
a real UDP socket) so the test can see that both peers used what the service handed out.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any, cast

import aioice.ice
import httpx
import pytest
from aioice import stun
from aiortc import (
    RTCBundlePolicy,
    RTCConfiguration,
    RTCDataChannel,
    RTCIceServer,
    RTCIceTransportPolicy,
    RTCPeerConnection,
    RTCSessionDescription,
)
from aiortc.sdp import candidate_from_sdp

from tests.support.client import Client, joined
from tests.support.server import running_server
from tests.support.server import test_settings as settings_for_test
from tests.support.tokens import token

LOOPBACK = "127.0.0.1"
# Generous: ICE, DTLS and SCTP on a loaded 2-core machine usually take about a second.
NEGOTIATION_TIMEOUT_SECONDS = 30.0
FRAME_TIMEOUT_SECONDS = 10.0


# A STUN server on loopback.


class _StunResponder(asyncio.DatagramProtocol):
    """Answers STUN Binding requests with the sender's address and records who asked."""

    def __init__(self) -> None:
        self.transport: asyncio.DatagramTransport | None = None
        self.requesters: set[tuple[str, int]] = set()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # A datagram endpoint's transport (not an asyncio.DatagramTransport subclass in 3.11).
        self.transport = cast(asyncio.DatagramTransport, transport)

    def datagram_received(self, data: bytes, addr: tuple[str | Any, int]) -> None:
        try:
            request = stun.parse_message(data)
        except ValueError:
            return
        if request.message_method != stun.Method.BINDING or (
            request.message_class != stun.Class.REQUEST
        ):
            return
        self.requesters.add((addr[0], addr[1]))
        response = stun.Message(
            message_method=stun.Method.BINDING,
            message_class=stun.Class.RESPONSE,
            transaction_id=request.transaction_id,
        )
        response.attributes["XOR-MAPPED-ADDRESS"] = (addr[0], addr[1])
        response.add_fingerprint()
        assert self.transport is not None
        self.transport.sendto(bytes(response), addr)


@dataclass
class StunServer:
    port: int
    responder: _StunResponder

    @property
    def url(self) -> str:
        return f"stun:{LOOPBACK}:{self.port}"


@contextlib.asynccontextmanager
async def stun_server() -> AsyncIterator[StunServer]:
    loop = asyncio.get_running_loop()
    transport, responder = await loop.create_datagram_endpoint(
        _StunResponder, local_addr=(LOOPBACK, 0)
    )
    try:
        yield StunServer(port=transport.get_extra_info("sockname")[1], responder=responder)
    finally:
        transport.close()


# What a web app does: fetch the configuration, then signal with trickle ICE.


async def fetch_rtc_configuration(
    http: str, bearer: str
) -> tuple[dict[str, Any], RTCConfiguration]:
    """`GET /webrtc/config`, as the app would, and the explicit aiortc configuration it gives
    (never `None` servers: aiortc would fall back to Google's public STUN)."""
    async with httpx.AsyncClient(
        base_url=http,
        timeout=FRAME_TIMEOUT_SECONDS,
        trust_env=False,  # no proxy for loopback
    ) as client:
        response = await client.get("/webrtc/config", headers={"Authorization": f"Bearer {bearer}"})
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    servers = [
        RTCIceServer(
            urls=server["urls"],
            username=server.get("username"),
            credential=server.get("credential"),
        )
        for server in body["iceServers"]
    ]
    configuration = RTCConfiguration(
        iceServers=servers,
        iceTransportPolicy=RTCIceTransportPolicy(body["iceTransportPolicy"]),
        bundlePolicy=RTCBundlePolicy(body["bundlePolicy"]),
    )
    return body, configuration


@dataclass(frozen=True)
class TrickledCandidate:
    candidate: str  # "candidate:..." as RTCIceCandidate.candidate has it
    sdp_mid: str
    sdp_m_line_index: int
    username_fragment: str


def split_candidates(sdp: str) -> tuple[str, list[TrickledCandidate], list[tuple[str, int]]]:
    """Cut the candidates (and end-of-candidates) out of an SDP, as if gathering were still
    running. Returns the bare SDP, the candidates, and every media section's (mid, index)."""
    kept: list[str] = []
    candidates: list[TrickledCandidate] = []
    sections: list[tuple[str, int]] = []
    index = -1
    mid = ""
    ufrag = ""
    pending: list[str] = []  # a section's candidates may come before its a=mid line
    for line in sdp.splitlines():
        if line.startswith("m="):
            candidates += _section_candidates(pending, mid, index, ufrag)
            pending, mid, index = [], "", index + 1
        elif line.startswith("a=mid:"):
            mid = line.removeprefix("a=mid:")
            sections.append((mid, index))
        elif line.startswith("a=ice-ufrag:"):
            ufrag = line.removeprefix("a=ice-ufrag:")
        if line.startswith("a=candidate:"):
            pending.append(line.removeprefix("a="))
        elif line != "a=end-of-candidates":
            kept.append(line)
    candidates += _section_candidates(pending, mid, index, ufrag)
    return "\r\n".join(kept) + "\r\n", candidates, sections


def _section_candidates(
    lines: list[str], mid: str, index: int, ufrag: str
) -> list[TrickledCandidate]:
    return [TrickledCandidate(line, mid, index, ufrag) for line in lines]


async def send_description(
    client: Client, pc: RTCPeerConnection, *, kind: str, target: str
) -> list[dict[str, Any]]:
    """Send our local description without candidates, then each candidate in the browser's
    `RTCIceCandidate.toJSON()` form, then end-of-candidates; all targeted at `target`.
    Returns the `ice_candidate` payloads sent."""
    bare_sdp, candidates, sections = split_candidates(pc.localDescription.sdp)
    await client.send(
        {"type": kind, "payload": {"type": kind, "sdp": bare_sdp, "target_user_id": target}}
    )
    payloads = [
        {
            "candidate": candidate.candidate,
            "sdpMid": candidate.sdp_mid,
            "sdpMLineIndex": candidate.sdp_m_line_index,
            "usernameFragment": candidate.username_fragment,
            "target_user_id": target,
        }
        for candidate in candidates
    ]
    payloads += [
        {"candidate": "", "sdpMid": mid, "sdpMLineIndex": index, "target_user_id": target}
        for mid, index in sections
    ]
    for payload in payloads:
        await client.send({"type": "ice_candidate", "payload": payload})
    return payloads


@dataclass
class Peer:
    user_id: str
    client: Client
    pc: RTCPeerConnection
    relayed_descriptions: list[dict[str, Any]] = field(default_factory=list)
    relayed_candidates: list[dict[str, Any]] = field(default_factory=list)
    sent_candidates: list[dict[str, Any]] = field(default_factory=list)
    inbox: asyncio.Queue[str] = field(default_factory=asyncio.Queue)

    async def receive_description(self, kind: str, *, sender: str) -> None:
        frame = await self.client.expect(kind, FRAME_TIMEOUT_SECONDS)
        assert frame["sender_id"] == sender
        assert frame["payload"]["target_user_id"] == self.user_id
        self.relayed_descriptions.append(frame)
        payload = frame["payload"]
        await self.pc.setRemoteDescription(RTCSessionDescription(payload["sdp"], payload["type"]))

    async def apply_remote_candidates(self, *, sender: str) -> None:
        """Read trickled candidates (after the remote description) until end-of-candidates."""
        while True:
            frame = await self.client.expect("ice_candidate", FRAME_TIMEOUT_SECONDS)
            assert frame["sender_id"] == sender
            payload = frame["payload"]
            self.relayed_candidates.append(payload)
            if payload["candidate"] == "":
                await self.pc.addIceCandidate(None)
                return
            candidate = candidate_from_sdp(payload["candidate"].removeprefix("candidate:"))
            candidate.sdpMid = payload["sdpMid"]
            candidate.sdpMLineIndex = payload["sdpMLineIndex"]
            await self.pc.addIceCandidate(candidate)

    def collect_messages(self, channel: RTCDataChannel) -> None:
        channel.on("message", self.inbox.put_nowait)


async def offer(alice: Peer, *, to: str) -> RTCDataChannel:
    channel = alice.pc.createDataChannel("chat")
    alice.collect_messages(channel)
    await alice.pc.setLocalDescription(await alice.pc.createOffer())  # gathers candidates
    alice.sent_candidates = await send_description(alice.client, alice.pc, kind="offer", target=to)
    await alice.receive_description("answer", sender=to)
    await alice.apply_remote_candidates(sender=to)
    return channel


async def answer(bob: Peer, *, to: str) -> None:
    await bob.receive_description("offer", sender=to)
    await bob.pc.setLocalDescription(await bob.pc.createAnswer())
    bob.sent_candidates = await send_description(bob.client, bob.pc, kind="answer", target=to)
    await bob.apply_remote_candidates(sender=to)  # queued on the socket meanwhile, in order


async def chat(alice: Peer, bob: Peer, *, greeting: str, reply: str) -> RTCDataChannel:
    """Negotiate (alice offers to bob, both trickle), then greet over a data channel and
    read bob's reply; return bob's end of the channel."""
    bob_channels: asyncio.Queue[RTCDataChannel] = asyncio.Queue()
    bob.pc.on("datachannel", bob_channels.put_nowait)
    async with asyncio.timeout(NEGOTIATION_TIMEOUT_SECONDS):
        async with asyncio.TaskGroup() as negotiation:
            offering = negotiation.create_task(offer(alice, to=bob.user_id))
            negotiation.create_task(answer(bob, to=alice.user_id))
        alice_channel = offering.result()
        await wait_open(alice_channel)
        alice_channel.send(greeting)
        bob_channel = await bob_channels.get()
        bob.collect_messages(bob_channel)
        assert await bob.inbox.get() == greeting
        bob_channel.send(reply)
        assert await alice.inbox.get() == reply
    return bob_channel


async def wait_open(channel: RTCDataChannel) -> None:
    opened = asyncio.Event()
    channel.on("open", opened.set)
    if channel.readyState != "open":
        await opened.wait()


def with_both_spellings(sent: dict[str, Any]) -> dict[str, Any]:
    """What the service relays for a camelCase candidate: as sent, plus SEED.md's snake_case."""
    return {**sent, "sdp_mid": sent["sdpMid"], "sdp_m_line_index": sent["sdpMLineIndex"]}


async def test_aiortc_peers_open_a_data_channel_with_trickled_candidates(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # aioice skips loopback when gathering; pin host candidates to 127.0.0.1.
    monkeypatch.setattr(
        aioice.ice, "get_host_addresses", lambda use_ipv4=True, use_ipv6=True: [LOOPBACK]
    )
    async with (
        stun_server() as stun_srv,
        running_server(settings_for_test(stun_urls=stun_srv.url)) as server,
    ):
        alice_token, bob_token = token("alice", rooms=["call-1"]), token("bob", rooms=["call-1"])
        alice_config, alice_rtc = await fetch_rtc_configuration(server.http, alice_token)
        bob_config, bob_rtc = await fetch_rtc_configuration(server.http, bob_token)
        for config in (alice_config, bob_config):
            assert config["iceServers"] == [{"urls": [stun_srv.url]}]

        alice_pc, bob_pc = RTCPeerConnection(alice_rtc), RTCPeerConnection(bob_rtc)
        try:
            async with joined(server.ws_url("call-1", alice_token)) as (alice_ws, _):
                async with joined(server.ws_url("call-1", bob_token)) as (bob_ws, bob_state):
                    present = {p["user_id"] for p in bob_state["payload"]["participants"]}
                    assert present == {"alice", "bob"}
                    arrival = await alice_ws.expect("user_joined", FRAME_TIMEOUT_SECONDS)
                    assert arrival["payload"]["user_id"] == "bob"

                    alice = Peer("alice", alice_ws, alice_pc)
                    bob = Peer("bob", bob_ws, bob_pc)
                    bob_channel = await chat(
                        alice, bob, greeting="hello from alice", reply="hello back from bob"
                    )
                    assert bob_channel.label == "chat"

                    # Candidates could only have travelled as trickled ice_candidate frames.
                    for peer in (alice, bob):
                        (description,) = peer.relayed_descriptions
                        assert "a=candidate:" not in description["payload"]["sdp"]
                    assert alice_pc.connectionState == "connected"
                    assert bob_pc.connectionState == "connected"
                    for receiver, sender in ((alice, bob), (bob, alice)):
                        # A server-reflexive candidate exists only if the advertised STUN
                        # server answered: the peer used the ICE servers it was given.
                        sent = sender.sent_candidates
                        kinds = {p["candidate"].split()[7] for p in sent if p["candidate"]}
                        assert kinds == {"host", "srflx"}, sent
                        assert sent[-1]["candidate"] == ""
                        assert receiver.relayed_candidates == [with_both_spellings(p) for p in sent]
        finally:
            await asyncio.wait_for(
                asyncio.gather(alice_pc.close(), bob_pc.close()), FRAME_TIMEOUT_SECONDS
            )

    # Both peers queried the STUN server the service advertised, from their own sockets.
    assert len(stun_srv.responder.requesters) >= 2
    assert all(host == LOOPBACK for host, _ in stun_srv.responder.requesters)
