"""The Open Inference Protocol v2 (KServe, Triton, Seldon MLServer): server and model metadata,
model readiness and ``infer``, with the binary tensor extension. The health paths
(``/v2/health/*``) are in :mod:`service.routes.monitoring`.

``infer`` is ``POST /predict`` in the protocol's clothes: the same admission, memory budget,
batcher (images from both routes share batches), deadlines, API key, metrics and errors (in the
protocol's ``{"error": TEXT}`` shape) — only the body is read and the answer written differently.
A model takes, as its one input, either

- ``images``: ``UINT8 [N, H, W, 3]`` RGB pixels (the exported graph's own input; at the model's
  size they reach it unchanged, other sizes are resized or tiled like an uploaded image), or
- ``files``: ``BYTES [N]``, encoded images (PNG, JPEG, … as ``/predict`` takes them),

and answers, by name: ``score`` / ``normalized_score`` (``FP32 [N]``), ``verdict`` (``BOOL [N]``,
true = anomalous), ``anomaly_map`` (``FP32 [N, H, W]``) and the ``heatmap_png`` /
``overlay_png`` / ``mask_png`` renders (``BYTES [N]``). With no outputs named: the three scores.
Request parameter ``threshold``: the verdict threshold in normalised units, as on ``/predict``.
A file that cannot be scored fails the whole request (a tensor has no place for one item's error).
"""

from __future__ import annotations

import math
from dataclasses import replace
from typing import Any

import numpy as np
from fastapi import APIRouter, Depends, Request
from fastapi.responses import Response

from rdad import __version__

from ..deps import RuntimeDep, require_api_key, require_key_for_health
from ..errors import InvalidRequestError, ModelNotFoundError, NotReadyError, ServiceError
from ..memory import Grant
from ..multipart import body_chunks
from ..open_inference import (
    JSON_PARSE_FACTOR,
    InferRequest,
    Tensor,
    encode_message,
    parse_infer_request,
)
from ..open_inference_schemas import (
    INFER_REQUEST_BODY,
    INFER_RESPONSES,
    METADATA_RESPONSES,
    READY_RESPONSES,
    ModelMetadata,
    ModelReady,
    ServerMetadata,
    TensorMetadata,
)
from ..render import OutputOptions
from ..runtime import ServedModel, ServiceRuntime
from ..scoring_request import admitted, until_disconnect
from ..scoring_types import Scored, Upload
from ..settings import Settings

HEADER_LENGTH = "inference-header-content-length"
PIXELS, FILES = "images", "files"
SCORES = ("score", "normalized_score", "verdict")
RENDERS = {"heatmap_png": "heatmap", "overlay_png": "overlay", "mask_png": "mask"}
OUTPUTS = (*SCORES, "anomaly_map", *RENDERS)

server = APIRouter(tags=["open inference protocol"], dependencies=[Depends(require_key_for_health)])
models = APIRouter(tags=["open inference protocol"], dependencies=[Depends(require_api_key)])


@server.get("/v2", summary="Server metadata", response_model=ServerMetadata)
async def server_metadata() -> ServerMetadata:
    return ServerMetadata(name="rdad", version=__version__, extensions=["binary_tensor_data"])


def _served(runtime: ServiceRuntime, name: str, version: str | None) -> ServedModel:
    model = runtime.get(name)
    _check_version(model, version)
    return model


def _check_version(model: ServedModel, version: str | None) -> None:
    if version is not None and version != model.version:
        raise ModelNotFoundError(
            f"model '{model.name}' serves version '{model.version}', not '{version[:32]}'"
        )


def _metadata(model: ServedModel) -> ModelMetadata:
    tiled = model.engine.metadata.tiling is not None
    side = -1 if tiled else model.engine.image_size

    def tensor(name: str, datatype: str, shape: list[int]) -> TensorMetadata:
        return TensorMetadata(name=name, datatype=datatype, shape=shape)

    return ModelMetadata(
        name=model.name,
        versions=[model.version],
        platform="rdad",
        inputs=[tensor(PIXELS, "UINT8", [-1, side, side, 3]), tensor(FILES, "BYTES", [-1])],
        outputs=[
            tensor("score", "FP32", [-1]),
            tensor("normalized_score", "FP32", [-1]),
            tensor("verdict", "BOOL", [-1]),
            tensor("anomaly_map", "FP32", [-1, side, side]),
            *(tensor(name, "BYTES", [-1]) for name in RENDERS),
        ],
    )


def _ready(runtime: ServiceRuntime, name: str, version: str | None) -> ModelReady:
    model = _served(runtime, name, version)
    if not model.state.serves:
        raise NotReadyError(model.error or "the model is still warming up")
    return ModelReady(name=model.name, ready=True)


@models.get("/v2/models/{name}", summary="Model metadata", responses=METADATA_RESPONSES)
async def model_metadata(name: str, runtime: RuntimeDep) -> ModelMetadata:
    return _metadata(_served(runtime, name, None))


@models.get(
    "/v2/models/{name}/versions/{version}",
    summary="Model metadata (version)",
    responses=METADATA_RESPONSES,
)
async def version_metadata(name: str, version: str, runtime: RuntimeDep) -> ModelMetadata:
    return _metadata(_served(runtime, name, version))


@models.get("/v2/models/{name}/ready", summary="Model readiness", responses=READY_RESPONSES)
async def model_ready(name: str, runtime: RuntimeDep) -> ModelReady:
    return _ready(runtime, name, None)


@models.get(
    "/v2/models/{name}/versions/{version}/ready",
    summary="Model readiness (version)",
    responses=READY_RESPONSES,
)
async def version_ready(name: str, version: str, runtime: RuntimeDep) -> ModelReady:
    return _ready(runtime, name, version)


@models.post(
    "/v2/models/{name}/infer",
    summary="Score images",
    response_model=None,
    responses=INFER_RESPONSES,
    openapi_extra=INFER_REQUEST_BODY,
)
async def infer(name: str, request: Request, runtime: RuntimeDep) -> Response:
    return await _infer(request, runtime, name, None)


@models.post(
    "/v2/models/{name}/versions/{version}/infer",
    summary="Score images (version)",
    response_model=None,
    responses=INFER_RESPONSES,
    openapi_extra=INFER_REQUEST_BODY,
)
async def version_infer(name: str, version: str, request: Request, runtime: RuntimeDep) -> Response:
    return await _infer(request, runtime, name, version)


async def _infer(
    request: Request, runtime: ServiceRuntime, name: str, version: str | None
) -> Response:
    settings = runtime.settings
    async with admitted(request, runtime, name) as admission:
        model = admission.model
        _check_version(model, version)
        parsed, uploads = await _read_request(request, admission.body, settings)
        admission.hold_images(len(uploads))
        wanted = _wanted(parsed)
        options = OutputOptions(
            **{flag: name in wanted for name, flag in RENDERS.items()},
            overlay_max_side=settings.overlay_max_side,
            original_max_side=settings.original_max_side,
        )
        work = model.scorer.score(
            uploads,
            options,
            deadline=admission.deadline(),
            threshold=_threshold(parsed.parameters),
            slots=admission.reservation,
            body=admission.body,
            keep_maps="anomaly_map" in wanted,
        )
        outcomes = await until_disconnect(request, work)
    scored = []
    for outcome in outcomes:
        if isinstance(outcome, ServiceError):
            raise outcome
        scored.append(outcome)
    head = {"model_name": model.name, "model_version": model.version}
    if parsed.id is not None:
        head["id"] = parsed.id
    outputs = [(_output(name, scored), binary) for name, binary in wanted.items()]
    content, length = encode_message(head, "outputs", outputs)
    if length is None:
        return Response(content, media_type="application/json")
    return Response(
        content, media_type="application/octet-stream", headers={HEADER_LENGTH: str(length)}
    )


async def _read_request(
    request: Request, grant: Grant, settings: Settings
) -> tuple[InferRequest, list[Upload]]:
    """The request (its parameters and requested outputs) and its images as uploads with bytes
    of their own. Every byte is charged to ``grant`` before it is held: the body as it arrives;
    then, while the body is still alive, the JSON parse's objects and the uploads' copies; in
    the end the uploads alone."""
    body = bytearray()
    async for chunk in body_chunks(request):
        grant.grow_now(len(chunk))
        body += chunk
    header = request.headers.get(HEADER_LENGTH)
    if header is not None and not header.isdigit():
        raise InvalidRequestError("Inference-Header-Content-Length must be a number of bytes")
    header_length = None if header is None else int(header)
    json_bytes = len(body) if header_length is None else min(header_length, len(body))
    limit = settings.v2_max_json_bytes
    grant.grow_now(min(json_bytes, limit) * JSON_PARSE_FACTOR + len(body))
    parsed = parse_infer_request(memoryview(body), header_length, max_json_bytes=limit)
    uploads = _uploads(parsed, settings.max_files)
    del body  # the uploads hold their own bytes now
    grant.shrink(sum(upload.size for upload in uploads))
    return replace(parsed, inputs=[]), uploads


def _ppm(pixels: np.ndarray) -> bytes:
    """RGB ``(H, W, 3)`` as a binary PPM: the decoder reads it back to exactly these pixels."""
    height, width = pixels.shape[:2]
    return f"P6 {width} {height} 255\n".encode() + np.ascontiguousarray(pixels).tobytes()


def _uploads(parsed: InferRequest, max_files: int) -> list[Upload]:
    """The request's one input as uploads with bytes of their own (not views of the body)."""
    if len(parsed.inputs) != 1:
        raise InvalidRequestError(f"send one input, '{PIXELS}' or '{FILES}'")
    tensor = parsed.inputs[0]
    count = tensor.shape[0] if tensor.shape else 0
    if count > max_files:
        raise InvalidRequestError(f"more than {max_files} images in one request")
    if tensor.name == PIXELS:
        if tensor.datatype != "UINT8" or len(tensor.shape) != 4 or tensor.shape[3] != 3:
            raise InvalidRequestError(f"'{PIXELS}' is UINT8 [N, H, W, 3] (RGB)")
        assert tensor.array is not None
        if math.prod(tensor.shape) == 0:
            raise InvalidRequestError(f"'{PIXELS}' has no pixels")
        return [Upload(f"{PIXELS}[{i}]", _ppm(image)) for i, image in enumerate(tensor.array)]
    if tensor.name == FILES:
        if tensor.datatype != "BYTES" or len(tensor.shape) != 1:
            raise InvalidRequestError(f"'{FILES}' is BYTES [N] (encoded images)")
        assert tensor.items is not None
        return [Upload(f"{FILES}[{i}]", bytes(item)) for i, item in enumerate(tensor.items)]
    raise InvalidRequestError(f"unknown input '{tensor.name[:64]}': send '{PIXELS}' or '{FILES}'")


def _wanted(parsed: InferRequest) -> dict[str, bool]:
    """Output name → whether it goes in binary."""
    if parsed.outputs is None:
        return {name: parsed.binary_outputs for name in SCORES}
    wanted = {}
    for output in parsed.outputs:
        if output.name not in OUTPUTS:
            raise InvalidRequestError(
                f"unknown output '{output.name[:64]}': one of {', '.join(OUTPUTS)}"
            )
        wanted[output.name] = output.binary or parsed.binary_outputs
    return wanted


def _threshold(parameters: dict[str, Any]) -> float | None:
    value = parameters.get("threshold")
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0 < value < 1:
        raise InvalidRequestError("parameter 'threshold' is a normalised score in (0, 1)")
    return float(value)


def _output(name: str, scored: list[Scored]) -> Tensor:
    count = (len(scored),)
    if name in RENDERS:
        pngs = [getattr(s.rendered, name) for s in scored]
        return Tensor(name, "BYTES", count, items=pngs)
    if name == "anomaly_map":
        maps = [s.anomaly_map for s in scored if s.anomaly_map is not None]
        if len({m.shape for m in maps}) > 1:
            raise InvalidRequestError(
                "the images' anomaly maps differ in size (a tiled model keeps each image's "
                "aspect): ask for 'anomaly_map' one image per request"
            )
        return Tensor(name, "FP32", (len(maps), *maps[0].shape), array=np.stack(maps))
    verdicts = [s.verdict for s in scored if s.verdict is not None]
    assert len(verdicts) == len(scored)  # served models are calibrated
    values = {
        "score": np.array([s.score for s in scored], np.float32),
        "normalized_score": np.array([v.normalized_score for v in verdicts], np.float32),
        "verdict": np.array([v.is_anomalous for v in verdicts], np.bool_),
    }[name]
    return Tensor(name, "FP32" if values.dtype != np.bool_ else "BOOL", count, array=values)
