"""Probes and metrics: liveness never depends on the backend; readiness does."""

from __future__ import annotations

from fastapi import APIRouter
from fastapi.responses import JSONResponse, PlainTextResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST

from rendezvous.api.deps import ServicesDep

router = APIRouter()


@router.get("/healthz")
async def healthz() -> dict[str, str]:
    return {"status": "ok"}


@router.get("/readyz")
async def readyz(services: ServicesDep) -> JSONResponse:
    backend_up = services.backend.ready
    draining = services.drainer.draining
    ready = backend_up and not draining
    body: dict[str, object] = {
        "status": "ready" if ready else "not ready",
        "backend": "ok" if backend_up else "down",
        "draining": draining,
        # TURN never decides readiness: a call without TURN still works for most peers.
        "turn": services.ice.turn_status,
    }
    if services.ice.turn_problem:
        body["turn_problem"] = services.ice.turn_problem
    # A refused policy version never makes an instance unready: the last good one serves.
    body["policy"] = services.policy.status.as_json()
    return JSONResponse(body, status_code=200 if ready else 503)


# Documented as what it is (text/plain, Prometheus' format), not FastAPI's default JSON.
@router.get("/metrics", response_class=PlainTextResponse)
async def metrics(services: ServicesDep) -> Response:
    return Response(services.metrics.render(), media_type=CONTENT_TYPE_LATEST)
