"""``GET /metrics``: Prometheus text exposition of this instance's registry."""

from __future__ import annotations

from fastapi import APIRouter, Depends
from fastapi.responses import Response
from prometheus_client import CONTENT_TYPE_LATEST

from ..deps import RuntimeDep, require_key_for_metrics
from ..watchdog import liveness_failures

router = APIRouter(tags=["metrics"], dependencies=[Depends(require_key_for_metrics)])


@router.get("/metrics", summary="Prometheus metrics", response_class=Response)
async def metrics(runtime: RuntimeDep) -> Response:
    liveness_failures(runtime)  # refreshes rdad_live and its companions before the scrape
    return Response(runtime.metrics.render(), media_type=CONTENT_TYPE_LATEST)
