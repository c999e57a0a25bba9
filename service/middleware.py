"""Pure ASGI middlewares: the API-key gate, the upload's size limit and read deadline, and request
metrics (which see every answer)."""

from __future__ import annotations

import asyncio
import time

from pydantic import SecretStr
from starlette.datastructures import Headers
from starlette.exceptions import HTTPException
from starlette.routing import Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from .deps import UNAUTHORIZED, token_is_valid
from .errors import UploadTimeoutError
from .http_errors import error_response, route_path
from .runtime import ServiceRuntime

ARRIVAL_KEY = "rdad_arrival"
"""``scope["state"][ARRIVAL_KEY]``: ``loop.time()`` when the request reached the app."""


class UploadTooLarge(HTTPException):
    """Raised from ``receive`` once a streamed body passes the limit. An ``HTTPException`` because
    FastAPI re-raises those from body parsing (anything else becomes a 400 "error parsing body")."""

    def __init__(self, limit: int) -> None:
        super().__init__(413, f"request body is over the upload limit of {limit:,} bytes")


class BodyLimitMiddleware:
    """Bounds how much a request body may hold and how long it may take, without holding it.

    *Size*: a declared ``Content-Length`` over ``max_bytes`` is answered 413 before one byte of
    the body is read; a chunked body is counted as it streams and cut off the moment it passes
    the limit. (Starlette's own limiter answers in plain text; this one keeps the JSON format.)

    *Time*: from the app's first read, the body must arrive within ``timeout_s`` plus the time
    its bytes take at ``min_rate`` bytes/s (Apache's ``mod_reqtimeout`` rule). A stalled or
    trickling upload is cut off with 408 (:class:`UploadTimeoutError`, ``Connection: close``),
    and everything it held — its admission slot, its memory — is given back as the error unwinds
    the route. The clock starts at the first read, not at arrival: a request waiting for
    admission is not the client's delay.
    """

    def __init__(self, app: ASGIApp, max_bytes: int, timeout_s: float, min_rate: float) -> None:
        self.app = app
        self.max_bytes = max_bytes
        self.timeout_s = timeout_s
        self.min_rate = min_rate

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = Headers(scope=scope).get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.max_bytes:
            detail = UploadTooLarge(self.max_bytes).detail
            response = error_response(
                413, "payload_too_large", detail, {"Connection": "close"}, path=route_path(scope)
            )
            await response(scope, receive, send)
            return
        received = 0
        started: float | None = None
        complete = False

        async def limited_receive() -> Message:
            nonlocal received, started, complete
            if complete:  # after the body: only the disconnect is left to wait for
                return await receive()
            loop = asyncio.get_running_loop()
            if started is None:
                started = loop.time()
            due = started + self.timeout_s + received / self.min_rate
            try:
                async with asyncio.timeout_at(due):
                    message = await receive()
            except TimeoutError:
                raise UploadTimeoutError(
                    f"the upload stalled: {received:,} bytes in {loop.time() - started:.1f} s "
                    f"(at least {self.min_rate / 1024:g} KiB/s after the first "
                    f"{self.timeout_s:g} s); send it again"
                ) from None
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_bytes:
                    raise UploadTooLarge(self.max_bytes)
                complete = not message.get("more_body", False)
            return message

        await self.app(scope, limited_receive, send)


MAX_HEADER_BYTES = 64 * 1024
"""All request headers together; real clients send well under 8 KiB. The server's protocol
(:mod:`service.server`) closes a connection whose headers pass it before they are even complete
(httptools, uvicorn's default parser, would buffer them without end); this middleware answers
complete ones over it."""


class HeaderLimitMiddleware:
    """431 (JSON) for requests whose headers total more than :data:`MAX_HEADER_BYTES`."""

    def __init__(self, app: ASGIApp, max_bytes: int = MAX_HEADER_BYTES) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            size = sum(len(k) + len(v) + 4 for k, v in scope.get("headers", ()))
            if size > self.max_bytes:
                detail = f"request headers total {size:,} bytes, over {self.max_bytes:,}"
                response = error_response(
                    431,
                    "headers_too_large",
                    detail,
                    {"Connection": "close"},
                    path=route_path(scope),
                )
                await response(scope, receive, send)
                return
        await self.app(scope, receive, send)


class ApiKeyGateMiddleware:
    """401 for unauthenticated predict/model requests *before* the body is read.

    FastAPI parses a multipart body before it runs dependencies, so the ``require_api_key``
    dependency alone would let anyone without a key make the server read a full upload. This gate
    answers first; the dependency stays for the OpenAPI security scheme and direct route use.
    """

    PROTECTED = ("/predict", "/models")

    def __init__(self, app: ASGIApp, api_key: SecretStr | None) -> None:
        self.app = app
        self.api_key = api_key

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if (
            scope["type"] == "http"
            and self.api_key is not None
            and route_path(scope).startswith(self.PROTECTED)
            and not token_is_valid(self.api_key, Headers(scope=scope).get("authorization"))
        ):
            headers = {"WWW-Authenticate": "Bearer", "Connection": "close"}
            response = error_response(
                401, "unauthorized", UNAUTHORIZED, headers, path=route_path(scope)
            )
            await response(scope, receive, send)
            return
        await self.app(scope, receive, send)


class RequestMetricsMiddleware:
    """Counts requests by model/endpoint/status and times them into ``rdad_request_*``.

    Labels are bounded: the endpoint is the route template (``/models/{name}/predict``), unmatched
    paths share ``other``, and a model label is only ever a served model's name.
    """

    def __init__(self, app: ASGIApp, runtime: ServiceRuntime) -> None:
        self.app = app
        self.runtime = runtime

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        scope.setdefault("state", {})[ARRIVAL_KEY] = asyncio.get_running_loop().time()
        status = 500  # if the app raises before answering, the server sends a 500

        async def send_wrapper(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
            await send(message)

        try:
            await self.app(scope, receive, send_wrapper)
        finally:
            endpoint, model = self._labels(scope)
            metrics = self.runtime.metrics
            metrics.requests.labels(model, endpoint, str(status)).inc()
            metrics.request_latency.labels(model, endpoint).observe(time.perf_counter() - start)

    def _labels(self, scope: Scope) -> tuple[str, str]:
        # The router stores the matched route in the (shared) scope dict.
        route = scope.get("route")
        endpoint = route.path if isinstance(route, Route) else "other"
        name = scope.get("path_params", {}).get("name")
        if endpoint == "/predict":
            name = self.runtime.default_model
        return endpoint, name if name in self.runtime.models else ""
