"""Domain errors and their HTTP status: the one place where a failure gets its status code.

Engine, batcher, scoring and imaging code raise the plain exceptions below (no HTTP in them, and
no web framework imported: ``rdad eval`` and ``rdad predict --model`` raise them too);
:mod:`service.http_errors` turns each into ``{"error": CODE, "detail": TEXT}`` with the status from
:data:`HTTP_STATUS`.
"""

from __future__ import annotations

from rdad.imaging import ImageDecodeError


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


class PayloadTooLargeError(ServiceError):
    """A part of the request over a size limit of its own (the body's limit is the middleware's)."""

    code = "payload_too_large"


class ModelNotFoundError(ServiceError):
    code = "model_not_found"


class ModelLoadError(ServiceError):
    """A model file cannot be served: fails the start (polling off, nothing loads), or answers a
    reload with 422 (the request was understood; the file is what cannot be used)."""

    code = "model_load_failed"


class UnauthorizedError(ServiceError):
    code = "unauthorized"


class ForbiddenError(ServiceError):
    code = "forbidden"


class QueueFullError(ServiceError):
    code = "queue_full"


class OverloadedError(QueueFullError):
    """The request would not finish before its deadline: refused before any work (503)."""

    code = "overloaded"


class NotReadyError(ServiceError):
    code = "not_ready"


class RequestTimeoutError(ServiceError):
    code = "timeout"


class UploadTimeoutError(ServiceError):
    """The client did not send its request (headers or body) in time: cut off (408)."""

    code = "upload_timeout"


class InferenceError(ServiceError):
    code = "inference_failed"


class ClientDisconnectedError(ServiceError):
    """The client hung up: its work is dropped; 499 only shows in logs and metrics."""

    code = "client_closed_request"


HTTP_STATUS: dict[type[Exception], int] = {
    BadImageError: 400,
    ImageDecodeError: 400,
    UnauthorizedError: 401,
    ForbiddenError: 403,
    ModelNotFoundError: 404,
    UploadTimeoutError: 408,
    ImageTooLargeError: 413,
    PayloadTooLargeError: 413,
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
        if cls in HTTP_STATUS:
            return HTTP_STATUS[cls]
    return 500
