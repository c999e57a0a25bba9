"""Failures as HTTP answers: ``{"error": CODE, "detail": TEXT}`` with the status that
:mod:`service.errors` gives each domain error. Unknown exceptions become a bare 500: no stack
trace, no paths.

Under ``/v2`` (the Open Inference Protocol) the same failures take that protocol's shape,
``{"error": TEXT}``, and a malformed request is its 400 (rdad's own routes say 422): v2 clients
read the message from ``error`` and nothing else."""

from __future__ import annotations

import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import Scope

from rdad.imaging import ImageDecodeError

from .errors import ServiceError, UnauthorizedError, UploadTimeoutError, status_for

log = logging.getLogger("rdad.service")


def route_path(scope: Scope) -> str:
    """The path the router matches: behind a ``root_path`` (a proxy prefix, ``RDAD_ROOT_PATH`` or
    uvicorn's ``--root-path``) ``scope["path"]`` holds the full path, prefix included, and the
    router strips it; the gate must judge the same path the router will route."""
    path = str(scope["path"])
    root = str(scope.get("root_path") or "")
    if root and path.startswith(root) and path[len(root) : len(root) + 1] in ("/", ""):
        return path[len(root) :]
    return path


def is_open_inference(path: str) -> bool:
    return path == "/v2" or path.startswith("/v2/")


def error_response(
    status: int,
    error: str,
    detail: Any,
    headers: dict[str, str] | None = None,
    *,
    path: str = "",
) -> JSONResponse:
    """The answer for a failure of a request to ``path`` (the routed path)."""
    if is_open_inference(path):
        status = 400 if status == 422 else status
        text = detail if isinstance(detail, str) else f"{error}: {detail}"
        return JSONResponse({"error": text}, status_code=status, headers=headers)
    return JSONResponse({"error": error, "detail": detail}, status_code=status, headers=headers)


def _path(request: Request) -> str:
    return route_path(request.scope)


async def _service_error(request: Request, exc: Exception) -> JSONResponse:
    status = status_for(exc)
    if isinstance(exc, ServiceError):
        headers: dict[str, str] = {}
        if exc.retry_after_s is not None:
            headers["Retry-After"] = str(exc.retry_after_s)
        if isinstance(exc, UnauthorizedError):
            headers["WWW-Authenticate"] = "Bearer"
        if isinstance(exc, UploadTimeoutError):
            headers["Connection"] = "close"  # the rest of the body is never read
        return error_response(status, exc.code, exc.detail, headers or None, path=_path(request))
    # ImageDecodeError carries a fixed, path-free message from rdad.imaging.
    return error_response(status, "bad_image", str(exc), path=_path(request))


async def _http_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, StarletteHTTPException)
    code = {404: "not_found", 405: "method_not_allowed", 413: "payload_too_large"}.get(
        exc.status_code, "http_error"
    )
    headers = dict(exc.headers or {}) or None
    return error_response(exc.status_code, code, exc.detail, headers, path=_path(request))


async def _validation_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    # Only where and what: the offending input is not echoed back (it may be a whole file).
    detail = [
        {"loc": [str(part) for part in err.get("loc", ())], "msg": err.get("msg", "")}
        for err in exc.errors()
    ]
    return error_response(422, "validation_error", detail, path=_path(request))


async def _unexpected_error(request: Request, exc: Exception) -> JSONResponse:
    log.error("unhandled error on %s %s", request.method, request.url.path, exc_info=exc)
    return error_response(500, "internal_error", "internal server error", path=_path(request))


def install_error_handlers(app: FastAPI) -> None:
    for exc_type in (ServiceError, ImageDecodeError):
        app.add_exception_handler(exc_type, _service_error)
    app.add_exception_handler(StarletteHTTPException, _http_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(Exception, _unexpected_error)
