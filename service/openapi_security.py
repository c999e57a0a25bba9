"""The OpenAPI schema declares the Bearer key only when the server has one (``RDAD_API_KEY``).

Every route depends on the optional Bearer check (:mod:`service.deps`), so FastAPI lists the
scheme on all of them, and ``/docs`` shows an *Authorize* button and a lock on every route even
when no key is configured and nothing would check one. Without a key the schema says so.
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI
from pydantic import SecretStr


def _drop_security(schema: dict[str, Any]) -> None:
    components = schema.get("components", {})
    components.pop("securitySchemes", None)
    if not components:
        schema.pop("components", None)
    for path_item in schema.get("paths", {}).values():
        for operation in path_item.values():
            if isinstance(operation, dict):
                operation.pop("security", None)


def declare_security_only_with_key(app: FastAPI, api_key: SecretStr | None) -> None:
    """With no ``api_key``, ``app``'s schema (``/openapi.json``, ``/docs``) declares no
    security scheme and no route asks for one."""
    if api_key is not None:
        return
    build = app.openapi

    def openapi() -> dict[str, Any]:
        schema = build()  # FastAPI builds it once and caches it; dropping again is a no-op
        _drop_security(schema)
        return schema

    app.openapi = openapi  # type: ignore[method-assign]
