"""Offers, answers and ICE candidates shaped like a browser's: an audio + video session
with the codec list, header extensions and feedback lines Chromium writes, cut or padded
to a chosen size. The service never parses SDP; what matters is realistic size and shape.
Addresses are documentation ranges (RFC 5737) and mDNS names: nothing is ever sent there."""

from __future__ import annotations

import functools
import random
import uuid

_AUDIO_EXTMAPS = (
    "urn:ietf:params:rtp-hdrext:ssrc-audio-level",
    "http://www.webrtc.org/experiments/rtp-hdrext/abs-send-time",
    "http://www.ietf.org/id/draft-holmer-rmcat-transport-wide-cc-extensions-01",
    "urn:ietf:params:rtp-hdrext:sdes:mid",
)
_VIDEO_EXTMAPS = (
    "urn:ietf:params:rtp-hdrext:toffset",
    "http://www.webrtc.org/experiments/rtp-hdrext/abs-send-time",
    "urn:3gpp:video-orientation",
    "http://www.ietf.org/id/draft-holmer-rmcat-transport-wide-cc-extensions-01",
    "http://www.webrtc.org/experiments/rtp-hdrext/playout-delay",
    "http://www.webrtc.org/experiments/rtp-hdrext/video-content-type",
    "http://www.webrtc.org/experiments/rtp-hdrext/video-timing",
    "http://www.webrtc.org/experiments/rtp-hdrext/color-space",
    "urn:ietf:params:rtp-hdrext:sdes:mid",
    "urn:ietf:params:rtp-hdrext:sdes:rtp-stream-id",
    "urn:ietf:params:rtp-hdrext:sdes:repaired-rtp-stream-id",
)
_AUDIO_CODECS = (
    (111, "opus/48000/2", ("minptime=10;useinbandfec=1",), ("transport-cc",)),
    (63, "red/48000/2", ("111/111",), ()),
    (9, "G722/8000", (), ()),
    (0, "PCMU/8000", (), ()),
    (8, "PCMA/8000", (), ()),
    (13, "CN/8000", (), ()),
    (110, "telephone-event/48000", (), ()),
    (126, "telephone-event/8000", (), ()),
)
_VIDEO_FEEDBACK = ("goog-remb", "transport-cc", "ccm fir", "nack", "nack pli")
# (payload type, codec, fmtp): each is followed by its rtx payload type (pt + 1).
_VIDEO_CODECS = (
    (96, "VP8/90000", ""),
    (98, "VP9/90000", "profile-id=0"),
    (100, "VP9/90000", "profile-id=2"),
    (102, "H264/90000", "level-asymmetry-allowed=1;packetization-mode=1;profile-level-id=42001f"),
    (104, "H264/90000", "level-asymmetry-allowed=1;packetization-mode=0;profile-level-id=42001f"),
    (106, "H264/90000", "level-asymmetry-allowed=1;packetization-mode=1;profile-level-id=42e01f"),
    (108, "H264/90000", "level-asymmetry-allowed=1;packetization-mode=0;profile-level-id=42e01f"),
    (112, "H264/90000", "level-asymmetry-allowed=1;packetization-mode=1;profile-level-id=4d001f"),
    (127, "H264/90000", "level-asymmetry-allowed=1;packetization-mode=1;profile-level-id=f4001f"),
    (39, "AV1/90000", "level-idx=5;profile=0;tier=0"),
    (45, "AV1/90000", "level-idx=5;profile=1;tier=0"),
)
_PADDING_ATTRIBUTE = "a=x-loadtest-padding:"


def session_description(kind: str, size: int, rng: random.Random) -> str:
    """An offer (`kind` "offer") or answer of exactly `size` bytes (ASCII): as many video
    codecs as fit, then a padding line; where no padding line fits, a longer one cut."""
    for codecs in range(len(_VIDEO_CODECS), 0, -1):
        template, length = _template(kind, codecs)
        missing = size - length - len(_PADDING_ATTRIBUTE) - 2
        if length == size or missing >= 0:
            sdp = _fill(template, rng)
            return sdp if length == size else f"{sdp}{_PADDING_ATTRIBUTE}{'x' * missing}\r\n"
    longer = next((c for c in range(1, len(_VIDEO_CODECS)) if _template(kind, c)[1] >= size), 1)
    return _fill(_template(kind, longer)[0], rng)[:size]


def candidates(count: int, ufrag: str, rng: random.Random) -> list[str]:
    """`count` candidate lines as Chromium trickles them: mDNS host candidates (UDP, then
    TCP), server-reflexive ones, then TURN relays."""
    lines: list[str] = []
    host = f"{uuid.UUID(int=rng.getrandbits(128))}.local"
    for index in range(count):
        foundation = rng.getrandbits(32)
        port = rng.randrange(49152, 65535)
        tail = f"generation 0 ufrag {ufrag} network-id {1 + index % 2} network-cost 10"
        if index % 4 == 0:
            line = f"candidate:{foundation} 1 udp 2122260223 {host} {port} typ host {tail}"
        elif index % 4 == 1:
            line = (
                f"candidate:{foundation} 1 tcp 1518280447 {host} 9 typ host tcptype active {tail}"
            )
        elif index % 4 == 2:
            public = f"203.0.113.{rng.randrange(1, 255)}"
            line = (
                f"candidate:{foundation} 1 udp 1686052607 {public} {port} typ srflx "
                f"raddr 0.0.0.0 rport 0 {tail}"
            )
        else:
            relay = f"198.51.100.{rng.randrange(1, 255)}"
            line = (
                f"candidate:{foundation} 1 udp 41885439 {relay} {port} typ relay "
                f"raddr 203.0.113.7 rport {port} {tail}"
            )
        lines.append(line)
    return lines


def ice_ufrag(rng: random.Random) -> str:
    return "".join(rng.choices("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ", k=4))


@functools.cache
def _template(kind: str, video_codecs: int) -> tuple[str, int]:
    """The description with `{field}`s for its random parts, and its length once filled
    (every field has a fixed width)."""
    template = _build(kind, video_codecs)
    return template, len(_fill(template, random.Random(0)))


def _fill(template: str, rng: random.Random) -> str:
    return template.format(
        session=rng.randrange(10**18, 10**19),
        ufrag=ice_ufrag(rng),
        pwd="".join(rng.choices("abcdef0123456789", k=24)),
        fingerprint=":".join(f"{rng.getrandbits(8):02X}" for _ in range(32)),
        stream=uuid.UUID(int=rng.getrandbits(128)),
        track=uuid.UUID(int=rng.getrandbits(128)),
        ssrc=rng.randrange(10**9, 2**32),
        cname="".join(rng.choices("abcdefghijklmnopqrstuvwxyz0123456789", k=16)),
    )


def _build(kind: str, video_codecs: int) -> str:
    setup = "actpass" if kind == "offer" else "active"
    lines = [
        "v=0",
        "o=- {session} 2 IN IP4 127.0.0.1",
        "s=-",
        "t=0 0",
        "a=group:BUNDLE 0 1",
        "a=extmap-allow-mixed",
        "a=msid-semantic: WMS {stream}",
    ]
    transport = [
        "c=IN IP4 0.0.0.0",
        "a=ice-ufrag:{ufrag}",
        "a=ice-pwd:{pwd}",
        "a=ice-options:trickle",
        "a=fingerprint:sha-256 {fingerprint}",
        f"a=setup:{setup}",
    ]
    audio_types = " ".join(str(pt) for pt, *_ in _AUDIO_CODECS)
    lines += [f"m=audio 9 UDP/TLS/RTP/SAVPF {audio_types}", *transport, "a=mid:0"]
    lines += [f"a=extmap:{i + 1} {uri}" for i, uri in enumerate(_AUDIO_EXTMAPS)]
    lines += _MEDIA_TAIL
    for pt, codec, fmtps, feedback in _AUDIO_CODECS:
        lines.append(f"a=rtpmap:{pt} {codec}")
        lines += [f"a=rtcp-fb:{pt} {fb}" for fb in feedback]
        lines += [f"a=fmtp:{pt} {fmtp}" for fmtp in fmtps]
    chosen = _VIDEO_CODECS[:video_codecs]
    video_types = " ".join(f"{pt} {pt + 1}" for pt, *_ in chosen)
    lines += [f"m=video 9 UDP/TLS/RTP/SAVPF {video_types}", *transport, "a=mid:1"]
    lines += [f"a=extmap:{i + 1} {uri}" for i, uri in enumerate(_VIDEO_EXTMAPS)]
    lines += _MEDIA_TAIL
    for pt, codec, fmtp in chosen:
        lines.append(f"a=rtpmap:{pt} {codec}")
        lines += [f"a=rtcp-fb:{pt} {fb}" for fb in _VIDEO_FEEDBACK]
        if fmtp:
            lines.append(f"a=fmtp:{pt} {fmtp}")
        lines += [f"a=rtpmap:{pt + 1} rtx/90000", f"a=fmtp:{pt + 1} apt={pt}"]
    return "".join(line + "\r\n" for line in lines)


# One track per media section; the audio and video sections share the random values.
_MEDIA_TAIL = [
    "a=sendrecv",
    "a=msid:{stream} {track}",
    "a=rtcp-mux",
    "a=rtcp-rsize",
    "a=ssrc:{ssrc} cname:{cname}",
    "a=ssrc:{ssrc} msid:{stream} {track}",
]
