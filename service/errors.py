"""Domain errors and their HTTP mapping: the one place where a failure becomes a status code.

Engine, batcher and imaging code raise the plain exceptions below (no HTTP in them); the
handlers installed by :func:`install_error_handlers` turn each into
``{"error": CODE, "detail": TEXT}`` with the status from :data:`_HTTP_STATUS`. Unknown
exceptions become a bare 500: no stack trace, no paths.
"""

from __future__ import annotations

import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from rdad.imaging import ImageDecodeError

log = logging.getLogger("rdad.service")


class ServiceError(Exception):
    """Base of every expected failure; ``detail`` is safe to show to the client."""

    code = "service_error"

    def __init__(self, detail: str, *, retry_after_s: int | None = None) -> None:
        super().__init__(detail)
        self.detail = detail
        self.retry_after_s = retry_after_s


class BadImageError(ServiceError):
    code = "bad_image"


class ImageTooLargeError(ServiceError):
    code = "image_too_large"


class UnsupportedMediaTypeError(ServiceError):
    code = "unsupported_media_type"


class InvalidRequestError(ServiceError):
    code = "invalid_request"


class ModelNotFoundError(ServiceError):
    code = "model_not_found"


class ModelLoadError(ServiceError):
    """A model file cannot be served: fails the start (polling off, nothing loads), or answers a
    reload with 422 (the request was understood; the file is what cannot be used)."""

    code = "model_load_failed"


class UnauthorizedError(ServiceError):
    code = "unauthorized"


class QueueFullError(ServiceError):
    code = "queue_full"


class NotReadyError(ServiceError):
    code = "not_ready"


class RequestTimeoutError(ServiceError):
    code = "timeout"


class InferenceError(ServiceError):
    code = "inference_failed"


class ClientDisconnectedError(ServiceError):
    """The client hung up: its work is dropped; 499 only shows in logs and metrics."""

    code = "client_closed_request"


_HTTP_STATUS: dict[type[Exception], int] = {
    BadImageError: 400,
    ImageDecodeError: 400,
    UnauthorizedError: 401,
    ModelNotFoundError: 404,
    ImageTooLargeError: 413,
    UnsupportedMediaTypeError: 415,
    InvalidRequestError: 422,
    ModelLoadError: 422,
    InferenceError: 500,
    QueueFullError: 503,
    NotReadyError: 503,
    RequestTimeoutError: 504,
    ClientDisconnectedError: 499,  # nginx's "client closed request": nobody reads it
}


def status_for(exc: Exception) -> int:
    for cls in type(exc).__mro__:
        if cls in _HTTP_STATUS:
            return _HTTP_STATUS[cls]
    return 500


def error_response(
    status: int, error: str, detail: Any, headers: dict[str, str] | None = None
) -> JSONResponse:
    return JSONResponse({"error": error, "detail": detail}, status_code=status, headers=headers)


async def _service_error(request: Request, exc: Exception) -> JSONResponse:
    status = status_for(exc)
    if isinstance(exc, ServiceError):
        headers: dict[str, str] = {}
        if exc.retry_after_s is not None:
            headers["Retry-After"] = str(exc.retry_after_s)
        if isinstance(exc, UnauthorizedError):
            headers["WWW-Authenticate"] = "Bearer"
        return error_response(status, exc.code, exc.detail, headers or None)
    # ImageDecodeError carries a fixed, path-free message from rdad.imaging.
    return error_response(status, "bad_image", str(exc))


async def _http_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, StarletteHTTPException)
    code = {404: "not_found", 405: "method_not_allowed", 413: "payload_too_large"}.get(
        exc.status_code, "http_error"
    )
    return error_response(exc.status_code, code, exc.detail, dict(exc.headers or {}) or None)


async def _validation_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    # Only where and what: the offending input is not echoed back (it may be a whole file).
    detail = [
        {"loc": [str(part) for part in err.get("loc", ())], "msg": err.get("msg", "")}
        for err in exc.errors()
    ]
    return error_response(422, "validation_error", detail)


async def _unexpected_error(request: Request, exc: Exception) -> JSONResponse:
    log.error("unhandled error on %s %s", request.method, request.url.path, exc_info=exc)
    return error_response(500, "internal_error", "internal server error")


def install_error_handlers(app: FastAPI) -> None:
    for exc_type in (ServiceError, ImageDecodeError):
        app.add_exception_handler(exc_type, _service_error)
    app.add_exception_handler(StarletteHTTPException, _http_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(Exception, _unexpected_error)
