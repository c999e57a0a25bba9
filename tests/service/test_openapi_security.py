"""``/openapi.json`` (what ``/docs`` draws its *Authorize* button and locks from) declares the
Bearer key only when the server has one."""

from __future__ import annotations

import json
from pathlib import Path

import httpx

from rdad.service.app import create_app
from rdad.service.settings import Settings


async def schema(settings: Settings) -> dict[str, object]:
    # No lifespan: the schema needs no model, and /openapi.json is what /docs reads.
    transport = httpx.ASGITransport(app=create_app(settings))
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
        response = await client.get("/openapi.json")
    assert response.status_code == 200
    answer: dict[str, object] = response.json()
    return answer


async def test_no_key_no_security_in_the_schema(tmp_path: Path) -> None:
    served = await schema(Settings(model_dir=tmp_path, api_key=None))
    text = json.dumps(served)
    assert "securitySchemes" not in text and '"security"' not in text
    assert "/predict" in served["paths"]  # type: ignore[operator]


async def test_a_key_is_declared_on_the_routes_that_check_it(tmp_path: Path) -> None:
    served = await schema(Settings(model_dir=tmp_path, api_key="s3cret"))
    schemes = served["components"]["securitySchemes"]  # type: ignore[index]
    assert [s["scheme"] for s in schemes.values()] == ["bearer"]
    predict = served["paths"]["/predict"]["post"]  # type: ignore[index]
    assert predict["security"] == [{name: []} for name in schemes]
