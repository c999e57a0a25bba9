"""What monitoring reads: liveness and readiness (plain and under the Open Inference Protocol's
``/v2/health/*`` paths) and ``/metrics`` (Prometheus).

Liveness notices a stuck model: the batch collector task's death, or a batch that has run
for longer than ``RDAD_STUCK_BATCH_S`` (a hung CUDA call, a deadlocked provider).

Either way every request would end in 503/504 while the process itself looks fine, so
``/healthz`` answers 503 with the reasons and Kubernetes restarts the pod. The check
(:mod:`service.liveness`) is computed when asked (``/healthz``, ``/v2/health/live``, ``/metrics``),
not by another background task that could itself die unnoticed.

Under ``rdad serve --workers N`` liveness and readiness are those of the worker that answers (each
has its own models); ``/metrics`` merges every worker's (:mod:`service.worker_metrics`).
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST

from ..deps import RuntimeDep, require_key_for_health, require_key_for_metrics
from ..liveness import liveness_failures
from ..runtime import ServiceRuntime
from ..schemas import HealthStatus

health = APIRouter(tags=["health"], dependencies=[Depends(require_key_for_health)])


def _readiness(runtime: ServiceRuntime) -> tuple[int, HealthStatus]:
    repository = runtime.repository
    models = {name: str(m.state) for name, m in repository.pending.items()}
    models.update({name: str(m.state) for name, m in runtime.models.items()})
    models = dict(sorted(models.items()))
    providers = {name: m.engine.provider for name, m in sorted(runtime.models.items())}
    if runtime.draining:
        return 503, HealthStatus(
            status="draining", models=models, detail="shutting down", providers=providers
        )
    ready, why = repository.readiness()
    if ready:
        return 200, HealthStatus(status="ready", models=models, providers=providers)
    return 503, HealthStatus(status="not ready", models=models, detail=why, providers=providers)


_NOT_LIVE: dict[int | str, dict[str, Any]] = {
    503: {"model": HealthStatus, "description": "a batch collector died or a batch is stuck"}
}


@health.get(
    "/healthz",
    response_model=HealthStatus,
    responses=_NOT_LIVE,
    summary="The process is alive and no model is stuck (503 with the reasons otherwise)",
)
async def healthz(runtime: RuntimeDep) -> JSONResponse:
    reasons = liveness_failures(runtime)
    if reasons:
        body = HealthStatus(status="not alive", reasons=reasons)
        return JSONResponse(body.model_dump(exclude_none=True), status_code=503)
    return JSONResponse(HealthStatus(status="alive").model_dump(exclude_none=True))


@health.get(
    "/readyz",
    response_model=HealthStatus,
    responses={
        503: {
            "model": HealthStatus,
            "description": "warming up, no model can serve (detail says why), or draining",
        }
    },
    summary="The models found at start are warm and at least one serves (503 while warming "
    "up, while no model can serve, or after SIGTERM)",
)
async def readyz(runtime: RuntimeDep) -> JSONResponse:
    code, body = _readiness(runtime)
    return JSONResponse(body.model_dump(exclude_none=True), status_code=code)


@health.get("/v2/health/live", responses=_NOT_LIVE, summary="Open Inference Protocol liveness")
async def v2_live(runtime: RuntimeDep) -> JSONResponse:
    live = not liveness_failures(runtime)
    return JSONResponse({"live": live}, status_code=200 if live else 503)


@health.get(
    "/v2/health/ready",
    responses={503: {"description": "warming up or draining"}},
    summary="Open Inference Protocol readiness",
)
async def v2_ready(runtime: RuntimeDep) -> JSONResponse:
    code, _ = _readiness(runtime)
    return JSONResponse({"ready": code == 200}, status_code=code)


metrics = APIRouter(tags=["metrics"], dependencies=[Depends(require_key_for_metrics)])


@metrics.get("/metrics", summary="Prometheus metrics", response_class=Response)
async def prometheus(runtime: RuntimeDep) -> Response:
    liveness_failures(runtime)  # refreshes rdad_live and its companions before the scrape
    return Response(runtime.metrics.render(), media_type=CONTENT_TYPE_LATEST)
