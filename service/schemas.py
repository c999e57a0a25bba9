"""Pydantic models of the API: the predict query flags, what clients get, what ``/docs`` shows."""

from __future__ import annotations

import base64
from typing import TYPE_CHECKING, Any, Literal

from pydantic import BaseModel, ConfigDict, Field

if TYPE_CHECKING:
    from .scoring_types import Scored


class ModelRef(BaseModel):
    name: str
    version: str


class Region(BaseModel):
    """A connected component of the mask, in original-image pixel coordinates."""

    x: int
    y: int
    width: int
    height: int
    area: int = Field(description="pixels of the component, in original-image pixels")
    max_score: float = Field(description="highest raw anomaly-map value inside the component")


class Timings(BaseModel):
    """Milliseconds spent per stage for this image (inference is its batch's run time)."""

    decode: float
    queue: float
    inference: float
    encode: float


class PredictionResult(BaseModel):
    score: float = Field(description="raw image score (max of the anomaly map)")
    normalized_score: float = Field(description="0-1, exactly 0.5 at the calibrated threshold")
    is_anomalous: bool = Field(description="normalized_score > normalized_threshold")
    threshold: float = Field(
        description="raw image-score threshold of the verdict (the calibrated one unless the "
        "request gave threshold=)"
    )
    normalized_threshold: float = Field(
        0.5, description="the verdict's threshold in normalised units (0.5 = calibrated)"
    )
    width: int = Field(description="image width in pixels (EXIF orientation applied)")
    height: int
    heatmap_png: str | None = Field(
        None, description="base64 PNG of the colour-mapped anomaly map (model size by default)"
    )
    overlay_png: str | None = Field(None, description="base64 PNG: heatmap blended over the image")
    mask_png: str | None = Field(None, description="base64 binary PNG from the pixel threshold")
    regions: list[Region] | None = None
    filename: str | None = None
    model: ModelRef
    timings_ms: Timings


def _b64(png: bytes | None) -> str | None:
    return None if png is None else base64.b64encode(png).decode("ascii")


def prediction_result(scored: Scored, model: ModelRef) -> PredictionResult:
    """The JSON answer for one scored file."""
    rendered, verdict, timings = scored.rendered, scored.verdict, scored.timings
    assert verdict is not None  # served and predicted models are calibrated
    regions = None
    if rendered.regions is not None:
        regions = [Region(**vars(r)) for r in rendered.regions]
    return PredictionResult(
        score=scored.score,
        normalized_score=verdict.normalized_score,
        is_anomalous=verdict.is_anomalous,
        threshold=verdict.threshold,
        normalized_threshold=verdict.normalized_threshold,
        width=scored.width,
        height=scored.height,
        heatmap_png=_b64(rendered.heatmap_png),
        overlay_png=_b64(rendered.overlay_png),
        mask_png=_b64(rendered.mask_png),
        regions=regions,
        filename=scored.filename or None,
        model=model,
        timings_ms=Timings(
            decode=round(timings.decode_s * 1000, 3),
            queue=round(timings.queue_s * 1000, 3),
            inference=round(timings.inference_s * 1000, 3),
            encode=round(timings.encode_s * 1000, 3),
        ),
    )


class FileError(BaseModel):
    """One file of a multi-file request that could not be scored."""

    filename: str
    status: int = Field(description="the HTTP status this file alone would have got")
    error: str = Field(description="machine-readable error code")
    detail: str


def file_error(exc: Any, filename: str) -> FileError:
    """``exc`` is a service error (see service.errors); imported lazily to keep schemas plain."""
    from .errors import status_for

    return FileError(filename=filename, status=status_for(exc), error=exc.code, detail=exc.detail)


class PredictBatchResponse(BaseModel):
    """Answer to a multi-file request: one result or error object per file, in request order.
    The request is 200 when at least one file was scored."""

    results: list[PredictionResult | FileError]


class ModelInfo(BaseModel):
    """One model version or file. Fields read from the model's metadata are ``null`` for a file
    that has not loaded (state ``loading`` or ``failed``)."""

    name: str
    version: str | None
    default: bool
    state: str = Field(description="loading | warming | ready | failed | draining")
    error: str | None = Field(default=None, description="why the file failed to load or warm up")
    file: str | None = Field(
        default=None, description="NAME.onnx or NAME/model.onnx in the model folder"
    )
    provider: str | None = Field(description="ONNX Runtime execution provider actually in use")
    runtime_reason: str | None = Field(
        default=None, description="why this runtime runs the model (RDAD_RUNTIME and the rule)"
    )
    sha256: str | None = Field(
        default=None, description="SHA-256 of the model file's bytes, read once at load"
    )
    node_placement: dict[str, int] = Field(
        default_factory=dict,
        description="graph nodes per execution provider in a real run (from ONNX Runtime's "
        "profile): shows any node left on the CPU",
    )
    image_size: int | None
    backbone: str | None
    precision: str | None = Field(description="the graph's precision (fp32, fp16 or int8)")
    compute_precision: str | None = Field(
        default=None,
        description="what the runtime actually runs: fp32, fp16, int8, bf16 or int8+bf16 "
        "(RDAD_CPU_PRECISION)",
    )
    precision_reason: str | None = Field(
        default=None,
        description="why: requested, or auto's choice, with the bf16-vs-fp32 parity figures",
    )
    teacher_weights: str | None
    image_threshold: float | None
    pixel_threshold: float | None
    metadata: dict[str, Any] | None = Field(
        description="the full rdad metadata stored in the ONNX file"
    )


class ModelList(BaseModel):
    default: str | None
    models: list[ModelInfo] = Field(
        description="serving versions, then files loading or failed, then old versions draining "
        "after a reload (a name can appear more than once, each with its state)"
    )
    problem: str | None = Field(
        None, description="why nothing can serve (empty or missing model folder, ...)"
    )


class HealthStatus(BaseModel):
    status: str
    models: dict[str, str] = Field(
        default_factory=dict, description="state of each model name (its serving version first)"
    )
    reasons: list[str] | None = Field(default=None, description="why /healthz is not alive")
    detail: str | None = Field(default=None, description="why the service is not ready")
    providers: dict[str, str] = Field(
        default_factory=dict, description="execution provider each model actually runs on"
    )


class ErrorBody(BaseModel):
    error: str = Field(description="machine-readable error code")
    detail: Any = Field(description="human-readable explanation")


# --- POST /predict in the OpenAPI schema -----------------------------------------------------


_PREDICT_ERRORS: dict[int | str, dict[str, Any]] = {
    code: {"model": ErrorBody, "description": text}
    for code, text in {
        400: "not an image, or corrupt / truncated",
        401: "API key missing or wrong",
        404: "unknown model",
        408: "the upload stalled or came slower than the minimum rate (RDAD_READ_TIMEOUT_S, "
        "RDAD_MIN_UPLOAD_RATE_KB_S): cut off",
        413: "upload over the size limit, or image over the pixel limit",
        415: "not multipart/form-data, or a file that is not an image",
        422: "no file, too many files, malformed multipart, or bad query flags",
        500: "inference failed for the batch this request was in",
        503: "refused before any work: queue full, cannot finish before its deadline or no "
        "memory for the upload (overloaded), or not ready; see Retry-After",
        504: "accepted, but timed out (counted from the end of the upload) before it finished",
    }.items()
}
_PREDICT_OK: dict[int | str, dict[str, Any]] = {
    200: {
        "model": PredictionResult | PredictBatchResponse,
        "content": {"image/png": {}},
        "description": "one JSON object per single-file request; {results: [...]} for `files`, "
        "one result or error object per file, 200 when at least one file was scored; "
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
    threshold: float | None = Field(
        None,
        gt=0.0,
        lt=1.0,
        description="verdict threshold in normalised units, 0-1 exclusive (default: the model's "
        "calibrated threshold, which is 0.5). Lower = more sensitive. The mask and regions keep "
        "the calibrated pixel threshold.",
    )


PREDICT_RESPONSES: dict[int | str, dict[str, Any]] = {**_PREDICT_OK, **_PREDICT_ERRORS}

# The body is read by the route itself (service.multipart): its multipart schema is declared here.
PREDICT_REQUEST_BODY: dict[str, Any] = {
    "requestBody": {
        "required": True,
        "content": {
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "properties": {
                        "file": {"type": "string", "format": "binary", "description": "one image"},
                        "files": {
                            "type": "array",
                            "items": {"type": "string", "format": "binary"},
                            "description": "several images: one result or error object each",
                        },
                    },
                }
            }
        },
    }
}
