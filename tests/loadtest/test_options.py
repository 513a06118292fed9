"""The locust suite's tunables: parsed as loadtest/README.md documents them, refused with
a message naming the tunable otherwise."""

from __future__ import annotations

import random

import pytest
from loadtest.signaling.options import (
    Endpoint,
    OptionError,
    Span,
    parse_list,
    parse_probability,
    parse_room_sizes,
)


def test_room_sizes_are_weighted() -> None:
    assert parse_room_sizes("2:3, 4:1,6") == ((2, 3.0), (4, 1.0), (6, 1.0))
    for bad in ("1:1", "2:x", "", "2:0"):
        with pytest.raises(OptionError, match="room sizes"):
            parse_room_sizes(bad)


def test_spans_are_ranges_or_one_number() -> None:
    span = Span.parse("hold seconds", "1-3")
    assert all(1 <= span.draw(random.Random(i)) <= 3 for i in range(50))
    assert Span.parse("candidates", "7").draw_int(random.Random()) == 7
    with pytest.raises(OptionError, match="hold seconds"):
        Span.parse("hold seconds", "3-1")


def test_endpoints_give_websocket_and_config_urls() -> None:
    plain = Endpoint.parse("http://127.0.0.1:8000")
    assert plain.ws_url("r1") == "ws://127.0.0.1:8000/webrtc/ws/r1"
    assert plain.config_path == "/webrtc/config"
    behind = Endpoint.parse("https://example.test/signaling/")
    assert behind.ws_url("r1") == "wss://example.test:443/signaling/webrtc/ws/r1"
    assert behind.config_path == "/signaling/webrtc/config"
    with pytest.raises(OptionError):
        Endpoint.parse("127.0.0.1:8000")


def test_lists_and_probabilities() -> None:
    assert parse_list(" 127.0.1.1, ,127.0.2.1 ") == ("127.0.1.1", "127.0.2.1")
    assert parse_probability("churn probability", "0.5") == 0.5
    with pytest.raises(OptionError, match="churn probability"):
        parse_probability("churn probability", "1.5")
