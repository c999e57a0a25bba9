"""``GET /models`` and ``GET /models/{name}``: what is served, with its metadata."""

from __future__ import annotations

from dataclasses import asdict
from pathlib import PurePath
from typing import Any

from fastapi import APIRouter, Depends

from ..deps import RuntimeDep, require_api_key
from ..runtime import ServedModel
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
        provider=model.engine.provider,
        image_size=meta.image_size,
        backbone=meta.backbone,
        precision=meta.precision,
        teacher_weights=_strip_paths(meta.teacher_weights),
        image_threshold=calibration.image_threshold,
        pixel_threshold=calibration.pixel_threshold,
        metadata=_strip_paths(asdict(meta)),
    )


@router.get("/models", response_model=ModelList, summary="List served models")
async def list_models(runtime: RuntimeDep) -> ModelList:
    infos = [model_info(m, runtime.default_model) for m in runtime.models.values()]
    return ModelList(default=runtime.default_model, models=infos)


@router.get(
    "/models/{name}",
    response_model=ModelInfo,
    responses={404: {"model": ErrorBody}},
    summary="One model and its metadata",
)
async def get_model(name: str, runtime: RuntimeDep) -> ModelInfo:
    return model_info(runtime.get(name), runtime.default_model)
