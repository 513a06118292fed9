"""The application factory: `uvicorn --factory rendezvous.app:create_app` or `rendezvous serve`."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

from rendezvous.api import admin, demo, health, ice, rooms, websocket
from rendezvous.api.deps import ApiError
from rendezvous.auth import Authenticator
from rendezvous.backends import create_backend
from rendezvous.backends.base import Backend
from rendezvous.backends.memory import MemoryBackend
from rendezvous.draining import Drainer
from rendezvous.hub import Hub
from rendezvous.policy.reconciling import PolicyReconciler, initial_policy
from rendezvous.presence import PresenceKeeper
from rendezvous.services import Services
from rendezvous.settings import Settings, load_settings
from rendezvous.telemetry.logging import RedactTokens
from rendezvous.telemetry.metrics import Metrics
from rendezvous.telemetry.tracing import Tracing, read_tracing_config, setup_tracing
from rendezvous.turn.ice_servers import ice_server_provider

log = logging.getLogger(__name__)

BACKEND_STOP_SECONDS = 0.5  # part of the drain deadline's shutdown reserve


def create_app(
    settings: Settings | None = None, *, backend: Backend | None = None, dev_mode: bool = False
) -> FastAPI:
    """Build the app; `backend` lets tests share one broker between several apps.
    `dev_mode` (only `rendezvous serve --dev` with no key of its own sets it) adds the
    demo page's token endpoint, signing with `settings.jwt_secret_key`, the dev key."""
    settings = settings or load_settings()
    if dev_mode and not settings.jwt_secret_key:
        raise ValueError("dev mode signs tokens with the dev key: jwt_secret_key must be set")
    tracing_config = read_tracing_config()  # a bad OTEL_* value: ConfigError before anything starts
    _redact_server_logs()
    backend = backend or create_backend(settings)
    app = FastAPI(title="Rendezvous", version="0.1.0", lifespan=_lifespan)
    tracing = app.state.tracing = setup_tracing(
        app, instance_id=backend.instance_id, config=tracing_config
    )
    spans = tracing.spans(bus="memory" if isinstance(backend, MemoryBackend) else "redis")
    metrics = Metrics()
    metrics.watch_backend(backend)
    policy = initial_policy(settings)
    hub = Hub(
        backend,
        metrics=metrics,
        spans=spans,
        join_buffer_limit=lambda: policy.limits.queue_max_messages,
        hold_bounds=lambda: (policy.limits.queue_max_messages, policy.limits.queue_max_bytes),
        resume_grace_seconds=settings.resume_grace_seconds,
        debug=settings.debug,
    )
    metrics.held.set_function(lambda: hub.holding)
    app.state.services = Services(
        settings=settings,
        backend=backend,
        hub=hub,
        authenticator=Authenticator(settings),
        ice=ice_server_provider(settings),
        metrics=metrics,
        policy=policy,
        drainer=Drainer(hub, window_seconds=settings.drain_window_seconds),
        spans=spans,
    )
    for module in (websocket, ice, rooms, health, admin, demo):
        app.include_router(module.router)
    if dev_mode:
        app.include_router(demo.dev_router(key=settings.jwt_secret_key or ""))
    app.add_exception_handler(ApiError, _api_error)  # type: ignore[arg-type]
    return app


@contextlib.asynccontextmanager
async def _lifespan(app: FastAPI) -> AsyncIterator[None]:
    services: Services = app.state.services
    tracing: Tracing = app.state.tracing
    keeper = PresenceKeeper(
        services.hub, services.backend, ttl_seconds=services.settings.presence_ttl_seconds
    )
    await services.backend.start(services.hub.on_bus_message, keeper.backend_recovered)
    upkeep = asyncio.create_task(keeper.run(), name="rendezvous.presence")
    upkeep.add_done_callback(_report_exit)
    ice_watch = asyncio.create_task(services.ice.watch(), name="rendezvous.turn.file")
    ice_watch.add_done_callback(_report_exit)
    background = [upkeep, ice_watch]
    if services.settings.policy_file is not None:
        reconciler = PolicyReconciler(services.settings, services.policy, metrics=services.metrics)
        background.append(asyncio.create_task(reconciler.run(), name="rendezvous.policy"))
        background[-1].add_done_callback(_report_exit)
    tracing.start()
    log.info("rendezvous started", extra={"instance_id": services.backend.instance_id})
    try:
        yield
    finally:
        for task in background:
            task.cancel()
        await asyncio.gather(*background, return_exceptions=True)
        await services.hub.stop_holding()
        try:
            await asyncio.wait_for(services.backend.stop(), BACKEND_STOP_SECONDS)
        except TimeoutError:
            log.warning("the backend did not stop within %.1fs", BACKEND_STOP_SECONDS)
        await tracing.shutdown()  # last: the spans of the shutdown itself are flushed too


def _redact_server_logs() -> None:
    """Keep tokens out of uvicorn's own lines even under a bare `uvicorn --factory`, where
    `rendezvous serve`'s logging configuration (which redacts at the handler) is absent."""
    for name in ("uvicorn.error", "uvicorn.access"):
        logger = logging.getLogger(name)
        if not any(isinstance(f, RedactTokens) for f in logger.filters):
            logger.addFilter(RedactTokens())


def _report_exit(task: asyncio.Task[None]) -> None:
    if not task.cancelled() and task.exception() is not None:
        log.error("background task %s died", task.get_name(), exc_info=task.exception())


async def _api_error(request: Request, exc: ApiError) -> JSONResponse:
    return JSONResponse(
        {"code": exc.code.value, "message": exc.detail},
        status_code=exc.status_code,
        headers=exc.headers,
    )
