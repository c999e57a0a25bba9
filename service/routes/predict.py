"""``POST /predict`` (default model) and ``POST /models/{name}/predict``.

Multipart upload: one ``file`` (answer: one JSON object) or several ``files`` (answer:
``{"results": [...]}`` in request order). ``Accept: image/png`` on a single-image request answers
the heatmap PNG itself, with the verdict in ``X-Anomaly-*`` headers.
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel

from ..deps import RuntimeDep, require_api_key
from ..errors import InvalidRequestError, ServiceError, UnsupportedMediaTypeError
from ..multipart import FilePart, boundary_of, read_files
from ..render import OutputOptions
from ..runtime import ServiceRuntime
from ..schemas import (
    PREDICT_REQUEST_BODY,
    PREDICT_RESPONSES,
    FileError,
    ModelRef,
    PredictBatchResponse,
    PredictionResult,
    PredictQuery,
    file_error,
    prediction_result,
)
from ..scoring_request import AdmittedRequest, admitted, until_disconnect
from ..scoring_types import Upload

router = APIRouter(tags=["predict"], dependencies=[Depends(require_api_key)])

Flags = Annotated[PredictQuery, Query()]


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


def _as_upload(part: FilePart, index: int, multi: bool) -> Upload | ServiceError:
    name = part.filename or f"file {index + 1}"
    media = part.content_type
    if media and not (media.startswith("image/") or media == "application/octet-stream"):
        error = UnsupportedMediaTypeError(f"{name}: content type '{media[:64]}' is not an image")
        if not multi:
            raise error
        return error
    return Upload(name, part.data)  # the part's buffer itself: no copy of the upload


def _choose(files: list[FilePart]) -> bool:
    """Whether the request is multi-file (field ``files``); checks the field combination."""
    fields = {part.name for part in files}
    if fields == {"file", "files"}:
        raise InvalidRequestError("send either one 'file' or several 'files', not both")
    if not files:
        raise InvalidRequestError("no image: send it as multipart field 'file' (or 'files')")
    if fields == {"file"} and len(files) > 1:
        raise InvalidRequestError("field 'file' takes one image; send several as 'files'")
    return fields == {"files"}


async def _predict(
    request: Request, runtime: ServiceRuntime, name: str | None, query: PredictQuery
) -> Response:
    """Admission (images, then upload bytes) before the body is read; the body as it streams,
    every file part admitted as it begins; then the scoring flow, until the answer or the
    client hanging up."""
    settings = runtime.settings
    boundary_of(request.headers.get("content-type", ""))  # 415 before anything else
    async with admitted(request, runtime, name) as admission:
        seen = 0

        def on_file(part: FilePart) -> None:
            nonlocal seen
            seen += 1
            if seen > settings.max_files:
                raise InvalidRequestError(f"more than {settings.max_files} files in one request")
            admission.hold_images(seen)

        files = await read_files(request, on_file, admission.body.grow_now)
        deadline = admission.deadline()
        multi = _choose(files)
        uploads = [_as_upload(part, i, multi) for i, part in enumerate(files)]
        del files  # the uploads hold the bytes now, and give them up as they decode
        work = _score(request, runtime, admission, query, uploads, multi, deadline)
        return await until_disconnect(request, work)


async def _score(
    request: Request,
    runtime: ServiceRuntime,
    admission: AdmittedRequest,
    query: PredictQuery,
    uploads: list[Upload | ServiceError],
    multi: bool,
    deadline: float,
) -> Response:
    model = admission.model
    png = not multi and _wants_png(request.headers.get("accept"))
    options = OutputOptions(
        heatmap=query.heatmap or png,  # the PNG answer is the heatmap itself
        overlay=query.overlay and not png,
        mask=query.mask and not png,
        regions=query.regions and not png,
        original_size=query.heatmap_size == "original",
        overlay_max_side=runtime.settings.overlay_max_side,
        original_max_side=runtime.settings.original_max_side,
    )
    outcomes = await model.scorer.score(
        uploads,
        options,
        deadline=deadline,
        threshold=query.threshold,
        slots=admission.reservation,
        body=admission.body,
    )
    ref = ModelRef(name=model.name, version=model.version)
    if not multi:
        scored = outcomes[0]
        if isinstance(scored, ServiceError):
            raise scored
        if png:
            verdict = scored.verdict
            assert verdict is not None  # served models are calibrated
            headers = {
                "X-Anomaly-Score": f"{scored.score:.6g}",
                "X-Anomaly-Normalized-Score": f"{verdict.normalized_score:.6f}",
                "X-Anomaly-Verdict": "anomalous" if verdict.is_anomalous else "normal",
            }
            return Response(scored.rendered.heatmap_png, media_type="image/png", headers=headers)
        return _json(prediction_result(scored, ref), 200)
    results: list[PredictionResult | FileError] = []
    for index, (upload, outcome) in enumerate(zip(uploads, outcomes, strict=True)):
        if isinstance(outcome, ServiceError):
            filename = upload.filename if isinstance(upload, Upload) else None
            results.append(file_error(outcome, filename or f"file {index + 1}"))
        else:
            results.append(prediction_result(outcome, ref))
    errors = [r for r in results if isinstance(r, FileError)]
    # 200 when any file was scored; when none was, the first file's status (all errors listed).
    status = 200 if len(errors) < len(results) else errors[0].status
    answer = PredictBatchResponse(results=results)
    if status != 200:
        return JSONResponse(
            {"error": errors[0].error, "detail": "no file could be scored", **_dump(answer)},
            status_code=status,
        )
    return _json(answer, 200)


def _dump(model: BaseModel) -> dict[str, Any]:
    return model.model_dump(mode="json", exclude_none=True)


def _json(model: BaseModel, status: int) -> JSONResponse:
    return JSONResponse(_dump(model), status_code=status)


@router.post(
    "/predict",
    summary="Score images with the default model",
    response_model=None,
    responses=PREDICT_RESPONSES,
    openapi_extra=PREDICT_REQUEST_BODY,
)
async def predict_default(request: Request, runtime: RuntimeDep, flags: Flags) -> Response:
    return await _predict(request, runtime, None, flags)


@router.post(
    "/models/{name}/predict",
    summary="Score images with a named model",
    response_model=None,
    responses=PREDICT_RESPONSES,
    openapi_extra=PREDICT_REQUEST_BODY,
)
async def predict_named(name: str, request: Request, runtime: RuntimeDep, flags: Flags) -> Response:
    return await _predict(request, runtime, name, flags)
