"""Liveness and readiness, plain and under the Open Inference Protocol (``/v2/health/*``) paths."""

from __future__ import annotations

from fastapi import APIRouter, Depends
from fastapi.responses import JSONResponse

from ..deps import RuntimeDep, require_key_for_health
from ..runtime import ServiceRuntime
from ..schemas import HealthStatus

router = APIRouter(tags=["health"], dependencies=[Depends(require_key_for_health)])


def _readiness(runtime: ServiceRuntime) -> tuple[int, HealthStatus]:
    models = {name: str(m.state) for name, m in runtime.models.items()}
    if runtime.ready:
        return 200, HealthStatus(status="ready", models=models)
    status = "draining" if runtime.draining else "not ready"
    return 503, HealthStatus(status=status, models=models)


@router.get("/healthz", response_model=HealthStatus, summary="The process is alive")
async def healthz() -> HealthStatus:
    return HealthStatus(status="alive")


@router.get(
    "/readyz",
    response_model=HealthStatus,
    responses={503: {"model": HealthStatus, "description": "warming up or draining"}},
    summary="Every model is loaded and warm (503 while warming up or after SIGTERM)",
)
async def readyz(runtime: RuntimeDep) -> JSONResponse:
    code, body = _readiness(runtime)
    return JSONResponse(body.model_dump(), status_code=code)


@router.get("/v2/health/live", summary="Open Inference Protocol liveness")
async def v2_live() -> dict[str, bool]:
    return {"live": True}


@router.get(
    "/v2/health/ready",
    responses={503: {"description": "warming up or draining"}},
    summary="Open Inference Protocol readiness",
)
async def v2_ready(runtime: RuntimeDep) -> JSONResponse:
    code, _ = _readiness(runtime)
    return JSONResponse({"ready": code == 200}, status_code=code)
