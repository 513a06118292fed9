"""Test-wide fixtures: an environment free of the machine's Rendezvous settings."""

from __future__ import annotations

import os

import pytest

_OUR_PREFIXES = ("WEBRTC_", "JWT_", "REDIS_", "OTEL_")


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """Tests set what they need; nothing leaks in from the shell that runs them."""
    for name in list(os.environ):
        if name.startswith(_OUR_PREFIXES) or name == "DEBUG":
            monkeypatch.delenv(name)
