"""The FastAPI application factory.

``create_app(settings)`` builds an app and does no work: models load (and a broken model folder
fails the start) and warm up in the lifespan. Run it with one uvicorn worker per GPU
(``rdad serve``, with the connection limits of :mod:`service.server`); concurrency comes from the
batcher, see :mod:`rdad.service.batcher`.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI
from fastapi_offline import FastAPIOffline

from rdad import __version__

from .http_errors import install_error_handlers
from .metrics import Metrics
from .middleware import (
    ApiKeyGateMiddleware,
    BodyLimitMiddleware,
    HeaderLimitMiddleware,
    RequestMetricsMiddleware,
)
from .openapi_security import declare_security_only_with_key
from .routes import models, monitoring, open_inference, predict, ui
from .runtime import RunnerHook, ServiceRuntime
from .settings import Settings

log = logging.getLogger("rdad.service")

DESCRIPTION = """Industrial visual anomaly detection (Reverse Distillation) over ONNX Runtime.

Send an image to `POST /predict` as multipart field `file` (or several as `files`); the answer
holds the score, the verdict against the calibrated threshold (or `threshold=`, in normalised
units) and the heatmap PNG. The inspection page at `/` calls the same API."""


def create_app(
    settings: Settings | None = None, *, runner_hook: RunnerHook | None = None
) -> FastAPI:
    """Build the service. ``runner_hook`` wraps each model's inference function (tests)."""
    settings = settings or Settings()
    runtime = ServiceRuntime(settings, Metrics(max_batch_size=settings.max_batch_size), runner_hook)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        try:
            await runtime.start()
        except BaseException:
            await runtime.stop()
            raise
        try:
            yield
        finally:
            await runtime.stop()

    # /docs and /redoc with Swagger UI and ReDoc served from the fastapi-offline package, not a
    # CDN: factory networks are often air-gapped.
    app = FastAPIOffline(
        title="rdad",
        version=__version__,
        description=DESCRIPTION,
        lifespan=lifespan,
    )
    app.state.runtime = runtime
    install_error_handlers(app)
    app.add_middleware(
        BodyLimitMiddleware,
        max_bytes=settings.max_upload_bytes,
        timeout_s=settings.read_timeout_s,
        min_rate=settings.min_upload_rate_bytes_s,
    )
    app.add_middleware(ApiKeyGateMiddleware, api_key=settings.api_key)  # before any body read
    app.add_middleware(HeaderLimitMiddleware)
    app.add_middleware(RequestMetricsMiddleware, runtime=runtime)  # outermost: counts the 413s
    routers = (
        predict.router,
        models.router,
        open_inference.server,
        open_inference.models,
        monitoring.health,
        monitoring.metrics,
        ui.router,
    )
    for router in routers:
        app.include_router(router)
    declare_security_only_with_key(app, settings.api_key)
    return app
