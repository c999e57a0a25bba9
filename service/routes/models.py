"""``GET /models``, ``GET /models/{name}``: every model with its state and metadata;
``POST /models/{name}/reload``: hot reload of one model (see :mod:`service.repository`)."""

from __future__ import annotations

from dataclasses import asdict
from pathlib import PurePath
from typing import Any

from fastapi import APIRouter, Depends

from ..deps import RuntimeDep, require_api_key, require_model_changes_allowed
from ..errors import ModelNotFoundError
from ..model_folder import is_valid_name
from ..model_version import PendingModel, ServedModel
from ..schemas import ErrorBody, ModelInfo, ModelList

router = APIRouter(tags=["models"], dependencies=[Depends(require_api_key)])


def _strip_paths(value: Any) -> Any:
    """Training-side file paths (data folder, teacher file) shown by base name only: responses
    never reveal paths of the machine that trained or serves the model."""
    if isinstance(value, dict):
        return {k: _strip_paths(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_strip_paths(v) for v in value]
    if isinstance(value, str) and ("/" in value or "\\" in value):
        return PurePath(value.replace("\\", "/")).name
    return value


def model_info(model: ServedModel, default: str | None) -> ModelInfo:
    meta = model.engine.metadata
    calibration = meta.calibration
    assert calibration is not None  # Engine.load refuses uncalibrated models
    return ModelInfo(
        name=model.name,
        version=meta.model_version,
        default=model.name == default,
        state=str(model.state),
        error=model.error,
        file=model.file or None,
        provider=model.engine.provider,
        runtime_reason=model.engine.identity.runtime_reason,
        sha256=model.engine.identity.sha256,
        node_placement=model.engine.placement,
        image_size=meta.image_size,
        backbone=meta.backbone,
        precision=meta.precision,
        compute_precision=model.engine.compute_precision,
        precision_reason=model.engine.precision_reason,
        teacher_weights=_strip_paths(meta.teacher_weights),
        image_threshold=calibration.image_threshold,
        pixel_threshold=calibration.pixel_threshold,
        metadata=_strip_paths(asdict(meta)),
    )


def pending_info(entry: PendingModel, default: str | None) -> ModelInfo:
    """A file with nothing loaded from it (yet): loading, warming or failed."""
    return ModelInfo(
        name=entry.name,
        version=None,
        default=entry.name == default,
        state=str(entry.state),
        error=entry.error,
        file=entry.file or None,
        provider=None,
        runtime_reason=None,
        sha256=None,
        image_size=None,
        backbone=None,
        precision=None,
        teacher_weights=None,
        image_threshold=None,
        pixel_threshold=None,
        metadata=None,
    )


@router.get("/models", response_model=ModelList, summary="List models and their states")
async def list_models(runtime: RuntimeDep) -> ModelList:
    repository = runtime.repository
    default = runtime.default_model
    infos = [model_info(m, default) for m in runtime.models.values()]
    infos += [pending_info(p, default) for p in repository.pending.values()]
    infos += [model_info(m, None) for m in repository.draining]
    infos.sort(key=lambda info: info.name)  # stable: per name serving, pending, draining
    problem = None if runtime.ready else repository.readiness()[1]
    return ModelList(default=default, models=infos, problem=problem)


@router.get(
    "/models/{name}",
    response_model=ModelInfo,
    responses={404: {"model": ErrorBody}},
    summary="One model and its metadata (its serving version, else the file's state)",
)
async def get_model(name: str, runtime: RuntimeDep) -> ModelInfo:
    model = runtime.models.get(name)
    if model is not None:
        return model_info(model, runtime.default_model)
    pending = runtime.repository.pending.get(name)
    if pending is not None:
        return pending_info(pending, runtime.default_model)
    return model_info(runtime.get(name), runtime.default_model)  # raises the 404


@router.post(
    "/models/{name}/reload",
    response_model=ModelInfo,
    responses={
        403: {
            "model": ErrorBody,
            "description": "no API key set and RDAD_RELOAD_WITHOUT_KEY off, or a cross-site "
            "request",
        },
        404: {"model": ErrorBody, "description": "no file for this model in the model folder"},
        422: {
            "model": ErrorBody,
            "description": "the file cannot be loaded or warmed up; the previous version, if "
            "any, keeps serving",
        },
    },
    summary="Load the model's file again and swap it in without failing requests in flight",
    dependencies=[Depends(require_model_changes_allowed)],
)
async def reload_model(name: str, runtime: RuntimeDep) -> ModelInfo:
    """Reads ``NAME.onnx`` / ``NAME/model.onnx`` now (also a file that is not served yet),
    warms it up, then routes new requests to it; the replaced version finishes the requests it
    already has. Answers once the new version serves. Needs the API key when one is set; with
    none set it is off (403) unless ``RDAD_RELOAD_WITHOUT_KEY=true``; a request from another
    site's page (``Origin`` / ``Sec-Fetch-Site``) is refused either way."""
    if not is_valid_name(name):
        raise ModelNotFoundError(f"unknown model '{name[:64]}'")
    model = await runtime.repository.reload(name)
    return model_info(model, runtime.default_model)
