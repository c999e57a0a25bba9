"""``GET /``: the inspection page, one self-contained HTML file shipped in the package.

It calls the public API (``/models``, ``/models/{name}/predict``) like any client, so it needs no
route of its own beyond this one and holds no secret: the API key, when the server sets one, is
typed into the page and sent as a Bearer header.
"""

from __future__ import annotations

from functools import cache
from importlib import resources

from fastapi import APIRouter
from fastapi.responses import HTMLResponse

router = APIRouter(tags=["ui"])


@cache
def page() -> str:
    return resources.files("rdad.service").joinpath("static/index.html").read_text("utf-8")


@router.get("/", response_class=HTMLResponse, include_in_schema=False)
async def index() -> HTMLResponse:
    # The page is read once; no-cache so that an upgraded server's page is picked up.
    return HTMLResponse(page(), headers={"Cache-Control": "no-cache"})
