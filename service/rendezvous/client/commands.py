"""What the client sends: the prompt's commands, pings, a minimal valid SDP offer."""

from __future__ import annotations

import secrets
from dataclasses import dataclass
from typing import Any

from rendezvous.protocol import MessageType

PROMPT_HELP = "commands: ping [text] | offer [target] | raw {json} | quit"


@dataclass(frozen=True)
class Ping:
    text: str | None = None


@dataclass(frozen=True)
class Offer:
    target: str | None = None  # None: to every other member


@dataclass(frozen=True)
class Raw:
    text: str


@dataclass(frozen=True)
class Quit:
    pass


Command = Ping | Offer | Raw | Quit


class CommandError(Exception):
    """A prompt line that is not a command."""


def parse_command(line: str) -> Command | None:
    """One prompt line as a command; None for a blank line."""
    word, _, rest = line.strip().partition(" ")
    rest = rest.strip()
    if not word:
        return None
    if word == "ping":
        return Ping(rest or None)
    if word == "offer":
        return Offer(rest or None)
    if word == "raw":
        if not rest:
            raise CommandError('raw needs a frame, e.g. raw {"type": "ping"}')
        return Raw(rest)
    if word in ("quit", "exit"):
        return Quit()
    raise CommandError(f"unknown command {word!r}; {PROMPT_HELP}")


def ping_frame(room: str, *, seq: int, text: str | None) -> dict[str, Any]:
    payload: dict[str, Any] = {"seq": seq}
    if text is not None:
        payload["text"] = text
    return {"type": MessageType.PING.value, "payload": payload, "room_id": room}


def offer_frame(room: str, *, target: str | None) -> dict[str, Any]:
    payload: dict[str, Any] = {"type": MessageType.OFFER.value, "sdp": minimal_offer_sdp()}
    if target is not None:
        payload["target_user_id"] = target
    return {"type": MessageType.OFFER.value, "payload": payload, "room_id": room}


def minimal_offer_sdp() -> str:
    """A complete offer for one data channel, as a browser would write it, so a real peer
    accepts it; its DTLS fingerprint is random, so no call can follow (a signaling check)."""
    fingerprint = ":".join(f"{byte:02X}" for byte in secrets.token_bytes(32))
    lines = [
        "v=0",
        f"o=- {secrets.randbelow(2**62)} 2 IN IP4 127.0.0.1",
        "s=-",
        "t=0 0",
        "a=group:BUNDLE 0",
        "a=msid-semantic:WMS",
        "m=application 9 UDP/DTLS/SCTP webrtc-datachannel",
        "c=IN IP4 0.0.0.0",
        f"a=ice-ufrag:{secrets.token_hex(4)}",  # ICE wants 4 to 256 characters
        f"a=ice-pwd:{secrets.token_hex(12)}",  # and 22 to 256 here
        "a=ice-options:trickle",
        f"a=fingerprint:sha-256 {fingerprint}",
        "a=setup:actpass",
        "a=mid:0",
        "a=sctp-port:5000",
        "a=max-message-size:262144",
    ]
    return "\r\n".join(lines) + "\r\n"
