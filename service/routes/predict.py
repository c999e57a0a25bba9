"""``POST /predict`` (default model) and ``POST /models/{name}/predict``.

Multipart upload: one ``file`` (answer: one JSON object) or several ``files`` (answer:
``{"results": [...]}`` in request order). ``Accept: image/png`` on a single-image request answers
the heatmap PNG itself, with the verdict in ``X-Anomaly-*`` headers.
"""

from __future__ import annotations

import asyncio
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, File, Query, Request, UploadFile
from fastapi.responses import Response
from pydantic import BaseModel, ConfigDict, Field

from .. import pipeline
from ..deps import RuntimeDep, require_api_key
from ..errors import InvalidRequestError, UnsupportedMediaTypeError
from ..imaging import OutputOptions
from ..runtime import ServiceRuntime
from ..schemas import ErrorBody, PredictBatchResponse, PredictionResult

router = APIRouter(tags=["predict"], dependencies=[Depends(require_api_key)])

_ERRORS: dict[int | str, dict[str, Any]] = {
    code: {"model": ErrorBody, "description": text}
    for code, text in {
        400: "not an image, or corrupt / truncated",
        401: "API key missing or wrong",
        404: "unknown model",
        413: "upload over the size limit, or image over the pixel limit",
        415: "not multipart/form-data, or a file that is not an image",
        422: "no file, too many files, or bad query flags",
        500: "inference failed for the batch this request was in",
        503: "queue full or not ready (see Retry-After)",
        504: "timed out before inference finished",
    }.items()
}
_OK: dict[int | str, dict[str, Any]] = {
    200: {
        "content": {"image/png": {}},
        "description": "one JSON object per single-file request, {results: [...]} for `files`; "
        "the heatmap PNG with `Accept: image/png`",
    }
}


class PredictQuery(BaseModel):
    model_config = ConfigDict(extra="forbid")

    heatmap: bool = Field(True, description="include heatmap_png")
    overlay: bool = Field(False, description="include overlay_png (heatmap over the image)")
    mask: bool = Field(False, description="include mask_png (binary, calibrated pixel threshold)")
    regions: bool = Field(False, description="include connected regions of the mask")
    heatmap_size: Literal["model", "original"] = Field(
        "model", description="heatmap and mask at the model's resolution or the image's own size"
    )


Flags = Annotated[PredictQuery, Query()]
FileField = Annotated[UploadFile | None, File(description="one image")]
FilesField = Annotated[list[UploadFile] | None, File(description="several images")]


def _wants_png(accept: str | None) -> bool:
    """``Accept`` prefers image/png over JSON (highest q, earlier entry on ties)."""
    best: tuple[float, int, str] | None = None
    for index, part in enumerate((accept or "").split(",")):
        media, *params = (p.strip() for p in part.split(";"))
        if media not in ("image/png", "application/json", "*/*", "application/*", "image/*"):
            continue
        q = 1.0
        for param in params:
            key, _, value = param.partition("=")
            if key.strip() == "q":
                try:
                    q = float(value)
                except ValueError:
                    q = 0.0
        kind = "png" if media in ("image/png", "image/*") else "json"
        if q > 0 and (best is None or q > best[0]):
            best = (q, index, kind)
    return best is not None and best[2] == "png"


def _check_content_type(request: Request) -> None:
    media = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if media != "multipart/form-data":
        raise UnsupportedMediaTypeError(
            f"expected multipart/form-data with the image in field 'file', got '{media[:64]}'"
        )


async def _read_uploads(
    runtime: ServiceRuntime, file: UploadFile | None, files: list[UploadFile] | None
) -> list[pipeline.Upload]:
    if file is not None and files:
        raise InvalidRequestError("send either one 'file' or several 'files', not both")
    chosen = [file] if file is not None else list(files or [])
    if not chosen:
        raise InvalidRequestError("no image: send it as multipart field 'file' (or 'files')")
    if len(chosen) > runtime.settings.max_files:
        raise InvalidRequestError(
            f"{len(chosen)} files in one request; the limit is {runtime.settings.max_files}"
        )
    uploads = []
    for index, upload in enumerate(chosen):
        name = (upload.filename or f"file {index + 1}")[:128]
        media = (upload.content_type or "").split(";")[0].strip().lower()
        if media and not (media.startswith("image/") or media == "application/octet-stream"):
            raise UnsupportedMediaTypeError(f"{name}: content type '{media[:64]}' is not an image")
        uploads.append(pipeline.Upload(name, await upload.read()))
    return uploads


async def _predict(
    request: Request,
    runtime: ServiceRuntime,
    name: str | None,
    query: PredictQuery,
    file: UploadFile | None,
    files: list[UploadFile] | None,
) -> Response | PredictionResult | PredictBatchResponse:
    deadline = asyncio.get_running_loop().time() + runtime.settings.request_timeout_s
    _check_content_type(request)
    model = runtime.get(name)
    uploads = await _read_uploads(runtime, file, files)
    multi = files is not None
    png = not multi and _wants_png(request.headers.get("accept"))
    options = OutputOptions(
        heatmap=query.heatmap and not png,  # the PNG answer encodes its own heatmap
        overlay=query.overlay and not png,
        mask=query.mask and not png,
        regions=query.regions and not png,
        original_size=query.heatmap_size == "original",
        overlay_max_side=runtime.settings.overlay_max_side,
    )
    predictions = await pipeline.predict(runtime, model, uploads, options, deadline=deadline)
    results = [pipeline.to_result(model, u, p) for u, p in zip(uploads, predictions, strict=True)]
    if png:
        body, _ = await pipeline.heatmap_png_bytes(
            runtime, model, predictions[0], options.original_size
        )
        result = results[0]
        headers = {
            "X-Anomaly-Score": f"{result.score:.6g}",
            "X-Anomaly-Normalized-Score": f"{result.normalized_score:.6f}",
            "X-Anomaly-Verdict": "anomalous" if result.is_anomalous else "normal",
        }
        return Response(body, media_type="image/png", headers=headers)
    return PredictBatchResponse(results=results) if multi else results[0]


RESPONSES: dict[int | str, dict[str, Any]] = {**_OK, **_ERRORS}
ResultModel = PredictionResult | PredictBatchResponse


@router.post(
    "/predict",
    summary="Score images with the default model",
    response_model=ResultModel,
    response_model_exclude_none=True,
    responses=RESPONSES,
)
async def predict_default(
    request: Request,
    runtime: RuntimeDep,
    flags: Flags,
    file: FileField = None,
    files: FilesField = None,
) -> Response | PredictionResult | PredictBatchResponse:
    return await _predict(request, runtime, None, flags, file, files)


@router.post(
    "/models/{name}/predict",
    summary="Score images with a named model",
    response_model=ResultModel,
    response_model_exclude_none=True,
    responses=RESPONSES,
)
async def predict_named(
    name: str,
    request: Request,
    runtime: RuntimeDep,
    flags: Flags,
    file: FileField = None,
    files: FilesField = None,
) -> Response | PredictionResult | PredictBatchResponse:
    return await _predict(request, runtime, name, flags, file, files)
