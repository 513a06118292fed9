"""A real uvicorn server running the app in the test's event loop, on a free loopback port."""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import uvicorn
from fastapi import FastAPI

from rendezvous.app import create_app
from rendezvous.backends.base import Backend
from rendezvous.services import Services
from rendezvous.serving import uvicorn_config
from rendezvous.settings import Settings, load_settings
from tests.support.tokens import TEST_SECRET

STARTUP_TIMEOUT_SECONDS = 10.0


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def test_settings(**overrides: Any) -> Settings:
    """Settings for tests: a known HS256 key, no ICE servers (never a public STUN), and no
    holding of dropped participants unless a test asks for a resume grace (a dropped
    socket then leaves at once, as the tests of other mechanisms expect)."""
    values: dict[str, Any] = {
        "jwt_secret_key": TEST_SECRET,
        "stun_urls": "",
        "resume_grace_seconds": 0,
    }
    values.update(overrides)
    return load_settings(**values)


test_settings.__test__ = False  # type: ignore[attr-defined]  # a helper, not a test


@dataclass
class RunningServer:
    app: FastAPI
    port: int

    @property
    def http(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def ws_url(self, room: str, token: str | None = None) -> str:
        query = f"?token={token}" if token is not None else ""
        return f"ws://127.0.0.1:{self.port}/webrtc/ws/{room}{query}"

    @property
    def services(self) -> Services:
        services: Services = self.app.state.services
        return services


@contextlib.asynccontextmanager
async def running_server(
    settings: Settings | None = None, *, backend: Backend | None = None
) -> AsyncIterator[RunningServer]:
    settings = settings or test_settings()
    app = create_app(settings, backend=backend)
    port = free_port()
    server = uvicorn.Server(
        uvicorn_config(app, settings, host="127.0.0.1", port=port, log_config=None)
    )
    task = asyncio.create_task(server.serve(), name=f"uvicorn:{port}")
    try:
        async with asyncio.timeout(STARTUP_TIMEOUT_SECONDS):
            while not server.started:
                if task.done():
                    task.result()
                await asyncio.sleep(0.01)
        yield RunningServer(app=app, port=port)
    finally:
        server.should_exit = True
        await asyncio.wait_for(task, STARTUP_TIMEOUT_SECONDS)
