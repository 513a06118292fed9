"""`rendezvous turn-sidecar`: the container that alone holds coturn's shared secret. It
watches the secret, keeps the pod's TURN credential fresh in a file on the shared
`emptyDir`, and answers probes: /healthz (its loops are running), /readyz (a credential
has been written) and /metrics."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from collections.abc import AsyncIterator

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from rendezvous.settings import ConfigError
from rendezvous.turn.directory_watching import DirectorySecretSource
from rendezvous.turn.rotating import Rotator, RotatorMetrics
from rendezvous.turn.secrets import SecretSource
from rendezvous.turn.sidecar_settings import SidecarSettings

log = logging.getLogger(__name__)


def secret_source(settings: SidecarSettings) -> SecretSource:
    """The configured source; ConfigError when it cannot work at all."""
    if settings.secret_dir is not None:
        if not settings.secret_dir.is_dir():
            raise ConfigError(f"WEBRTC_TURN_SECRET_DIR: {settings.secret_dir} is not a directory")
        return DirectorySecretSource(settings.secret_dir, settings.secret_key)
    from rendezvous.turn.kubernetes_watching import kubernetes_secret_source  # only when used

    return kubernetes_secret_source(settings)


def check_output_directory(settings: SidecarSettings) -> None:
    directory = settings.credentials_file.parent
    if not directory.is_dir():
        raise ConfigError(f"WEBRTC_TURN_CREDENTIALS_FILE: {directory} is not a directory")
    if not os.access(directory, os.W_OK | os.X_OK):
        raise ConfigError(f"WEBRTC_TURN_CREDENTIALS_FILE: {directory} is not writable")


def create_sidecar_app(settings: SidecarSettings, *, source: SecretSource) -> Starlette:
    registry = CollectorRegistry(auto_describe=True)
    rotator = Rotator(
        path=settings.credentials_file,
        urls=settings.turn_url_list,
        user=settings.user,
        ttl_seconds=settings.ttl_seconds,
        rotate_after_seconds=settings.rotate_after_seconds,
        metrics=RotatorMetrics(registry),
    )
    tasks: list[asyncio.Task[None]] = []

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        tasks.append(asyncio.create_task(rotator.run(), name="rendezvous.turn.rotating"))
        tasks.append(
            asyncio.create_task(source.run(rotator.on_reading), name="rendezvous.turn.source")
        )
        for task in tasks:
            task.add_done_callback(_report_exit)
        log.info(
            "TURN sidecar started: reading %s, writing %s every %.0fs",
            source.description,
            settings.credentials_file,
            settings.rotate_after_seconds,
        )
        try:
            yield
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

    async def healthz(request: Request) -> JSONResponse:
        dead = [task.get_name() for task in tasks if task.done()]
        if dead:
            return JSONResponse({"status": "dead", "stopped": dead}, status_code=503)
        return JSONResponse({"status": "ok"})

    async def readyz(request: Request) -> JSONResponse:
        status = rotator.status
        body = {
            "status": "ready" if status.ready else "not ready",
            "credentials": status.credentials,
            "source": status.source,
            "expires_at": status.expires_at,
            "rotated_at": status.rotated_at,
        }
        return JSONResponse(body, status_code=200 if status.ready else 503)

    async def metrics(request: Request) -> Response:
        return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)

    routes = [
        Route("/healthz", healthz),
        Route("/readyz", readyz),
        Route("/metrics", metrics),
    ]
    return Starlette(routes=routes, lifespan=lifespan)


def _report_exit(task: asyncio.Task[None]) -> None:
    if task.cancelled():
        return
    # Neither loop ends by itself: whatever ended it, /healthz now fails and the kubelet
    # restarts the container.
    log.error("%s stopped; /healthz now fails", task.get_name(), exc_info=task.exception())
