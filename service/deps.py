"""FastAPI dependencies: the runtime, and the optional API key check."""

from __future__ import annotations

import hmac
from typing import Annotated

from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from pydantic import SecretStr

from .errors import ForbiddenError, UnauthorizedError
from .runtime import ServiceRuntime

# Dependencies are async on purpose: FastAPI runs sync ones in a thread pool, a needless hop here.
# auto_error=False: a missing header must give our 401 JSON, not FastAPI's default 403.
_bearer = HTTPBearer(auto_error=False, description="RDAD_API_KEY, when the server sets one")


async def get_runtime(request: Request) -> ServiceRuntime:
    runtime: ServiceRuntime = request.app.state.runtime
    return runtime


RuntimeDep = Annotated[ServiceRuntime, Depends(get_runtime)]
Credentials = Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)]


UNAUTHORIZED = "missing or invalid API key: send 'Authorization: Bearer <key>'"


def token_is_valid(key: SecretStr, authorization: str | None) -> bool:
    """``authorization`` is the raw header value (``"Bearer <token>"``) or ``None``."""
    scheme, _, token = (authorization or "").partition(" ")
    if scheme.lower() != "bearer":
        token = ""  # nosec B105: an empty guess, never a credential (an empty key is refused)
    # Constant-time comparison: response timing must not reveal how much of a guess was right.
    return hmac.compare_digest(token.strip().encode(), key.get_secret_value().encode())


def _check(runtime: ServiceRuntime, credentials: HTTPAuthorizationCredentials | None) -> None:
    key = runtime.settings.api_key
    if key is None:
        return
    header = f"Bearer {credentials.credentials}" if credentials is not None else None
    if not token_is_valid(key, header):
        raise UnauthorizedError(UNAUTHORIZED)


async def require_api_key(runtime: RuntimeDep, credentials: Credentials) -> None:
    """Predict and model routes: need the key whenever ``RDAD_API_KEY`` is set."""
    _check(runtime, credentials)


async def require_key_for_health(runtime: RuntimeDep, credentials: Credentials) -> None:
    """Health routes: open unless ``RDAD_AUTH_HEALTH`` is true (probes rarely carry keys)."""
    if runtime.settings.auth_health:
        _check(runtime, credentials)


async def require_key_for_metrics(runtime: RuntimeDep, credentials: Credentials) -> None:
    """``/metrics``: open unless ``RDAD_AUTH_METRICS`` is true."""
    if runtime.settings.auth_metrics:
        _check(runtime, credentials)


def _is_cross_site(request: Request) -> bool:
    """A browser's cross-site request: ``Sec-Fetch-Site`` says so, or ``Origin`` names another
    host than the one addressed (browsers send ``Origin`` on every cross-origin POST)."""
    if request.headers.get("sec-fetch-site", "").lower() == "cross-site":
        return True
    origin = request.headers.get("origin")
    if origin is None:
        return False
    host = request.headers.get("host", "")
    return origin.split("://", 1)[-1].rstrip("/").lower() != host.lower()


async def require_model_changes_allowed(request: Request, runtime: RuntimeDep) -> None:
    """Routes that change what is served (``POST /models/{name}/reload``): never from another
    site's page, and with no API key set only when ``RDAD_RELOAD_WITHOUT_KEY`` allows it (the
    key itself is checked by :func:`require_api_key` and the gate middleware)."""
    if _is_cross_site(request):
        raise ForbiddenError("cross-site requests may not change the served models")
    settings = runtime.settings
    if settings.api_key is None and not settings.reload_without_key:
        raise ForbiddenError(
            "reloading models is off while no API key is set: set RDAD_API_KEY and send it, "
            "or set RDAD_RELOAD_WITHOUT_KEY=true on a trusted network"
        )
