"""Liveness and readiness, plain and under the Open Inference Protocol (``/v2/health/*``) paths."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends
from fastapi.responses import JSONResponse

from ..deps import RuntimeDep, require_key_for_health
from ..runtime import ServiceRuntime
from ..schemas import HealthStatus
from ..watchdog import liveness_failures

router = APIRouter(tags=["health"], dependencies=[Depends(require_key_for_health)])


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


@router.get(
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


@router.get(
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


@router.get("/v2/health/live", responses=_NOT_LIVE, summary="Open Inference Protocol liveness")
async def v2_live(runtime: RuntimeDep) -> JSONResponse:
    live = not liveness_failures(runtime)
    return JSONResponse({"live": live}, status_code=200 if live else 503)


@router.get(
    "/v2/health/ready",
    responses={503: {"description": "warming up or draining"}},
    summary="Open Inference Protocol readiness",
)
async def v2_ready(runtime: RuntimeDep) -> JSONResponse:
    code, _ = _readiness(runtime)
    return JSONResponse({"ready": code == 200}, status_code=code)
