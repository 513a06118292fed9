"""The locust suite's offers, answers and candidates: the sizes asked for, browser-shaped."""

from __future__ import annotations

import random

import pytest
from loadtest.signaling import sdp


@pytest.mark.parametrize("size", [200, 2000, 2700, 4000, 5248, 6000, 9000])
@pytest.mark.parametrize("kind", ["offer", "answer"])
def test_a_description_has_exactly_the_size_asked_for(kind: str, size: int) -> None:
    description = sdp.session_description(kind, size, random.Random(size))
    assert len(description.encode()) == size
    if size >= 2000:  # room for a whole audio + video session
        assert description.startswith("v=0\r\n")
        assert "m=audio 9 UDP/TLS/RTP/SAVPF" in description
        assert "m=video 9 UDP/TLS/RTP/SAVPF" in description
        assert ("a=setup:actpass" in description) == (kind == "offer")


def test_candidates_are_distinct_trickle_lines_of_every_type() -> None:
    lines = sdp.candidates(12, "abcd", random.Random(1))
    assert len(lines) == len(set(lines)) == 12
    assert all(line.startswith("candidate:") and "ufrag abcd" in line for line in lines)
    assert {line.split(" typ ")[1].split()[0] for line in lines} == {"host", "srflx", "relay"}
