"""One prediction request, end to end: decode (CPU pool) → batcher → render (CPU pool).

The event loop only orchestrates: every step that touches pixels runs in the runtime's CPU thread
pool (OpenCV releases the GIL), and inference runs on the model's own thread via the batcher.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from typing import TypeVar

import numpy as np

from rdad.imaging import ImageDecodeError

from . import imaging
from .batcher import ItemResult
from .errors import BadImageError, ImageTooLargeError, NotReadyError
from .runtime import ModelState, ServedModel, ServiceRuntime
from .schemas import ModelRef, PredictionResult, Region, Timings

T = TypeVar("T")


@dataclass(frozen=True)
class Upload:
    filename: str
    data: bytes


@dataclass(frozen=True)
class Prediction:
    decoded: imaging.DecodedImage
    item: ItemResult
    rendered: imaging.RenderedOutputs
    decode_s: float
    encode_s: float


async def _in_pool(runtime: ServiceRuntime, fn: Callable[[], T]) -> tuple[T, float]:
    """Run ``fn`` in the CPU pool; return its result and its own run time (not the pool wait)."""

    def timed() -> tuple[T, float]:
        start = time.perf_counter()
        result = fn()
        return result, time.perf_counter() - start

    return await asyncio.get_running_loop().run_in_executor(runtime.cpu_pool, timed)


def _decode(
    upload: Upload, size: int, max_pixels: int, overlay: int | None
) -> imaging.DecodedImage:
    try:
        return imaging.decode_upload(
            upload.data, model_size=size, max_pixels=max_pixels, overlay_max_side=overlay
        )
    except ImageTooLargeError as exc:
        raise ImageTooLargeError(f"{upload.filename}: {exc.detail}") from None
    except (ImageDecodeError, BadImageError) as exc:
        raise BadImageError(f"{upload.filename}: {exc}") from None


async def predict(
    runtime: ServiceRuntime,
    model: ServedModel,
    uploads: list[Upload],
    options: imaging.OutputOptions,
    *,
    deadline: float,
) -> list[Prediction]:
    """Score ``uploads`` with ``model``; results in upload order."""
    if model.state is not ModelState.READY:
        reason = model.error or "the model is still warming up"
        raise NotReadyError(reason, retry_after_s=runtime.settings.retry_after_s)
    size = model.engine.image_size
    overlay = options.overlay_max_side if options.overlay else None
    max_pixels = runtime.settings.max_pixels
    with model.batcher.incoming(len(uploads)):
        decoded = await asyncio.gather(
            *(_in_pool(runtime, partial(_decode, u, size, max_pixels, overlay)) for u in uploads)
        )
    items = await model.batcher.infer([d.model_input for d, _ in decoded], deadline=deadline)
    calibration = model.engine.metadata.calibration
    assert calibration is not None  # Engine.load refuses uncalibrated models
    render = imaging.render_outputs
    rendered = await asyncio.gather(
        *(
            _in_pool(runtime, partial(render, d, it.anomaly_map, calibration, options))
            for (d, _), it in zip(decoded, items, strict=True)
        )
    )
    for item in items:
        runtime.metrics.observe_prediction(
            model.name, calibration.normalize(item.score), calibration.is_anomalous(item.score)
        )
    return [
        Prediction(d, it, r, decode_s, encode_s)
        for (d, decode_s), it, (r, encode_s) in zip(decoded, items, rendered, strict=True)
    ]


def to_result(model: ServedModel, upload: Upload, prediction: Prediction) -> PredictionResult:
    """The JSON view of one prediction."""
    meta = model.engine.metadata
    calibration = meta.calibration
    assert calibration is not None
    score = prediction.item.score
    normalized = calibration.normalize(score)
    anomalous = calibration.is_anomalous(score)
    rendered = prediction.rendered
    regions = None
    if rendered.regions is not None:
        regions = [Region(**vars(r)) for r in rendered.regions]
    return PredictionResult(
        score=score,
        normalized_score=normalized,
        is_anomalous=anomalous,
        threshold=calibration.image_threshold,
        width=prediction.decoded.width,
        height=prediction.decoded.height,
        heatmap_png=rendered.heatmap_png,
        overlay_png=rendered.overlay_png,
        mask_png=rendered.mask_png,
        regions=regions,
        filename=upload.filename or None,
        model=ModelRef(name=model.name, version=meta.model_version),
        timings_ms=Timings(
            decode=round(prediction.decode_s * 1000, 3),
            queue=round(prediction.item.queue_s * 1000, 3),
            inference=round(prediction.item.inference_s * 1000, 3),
            encode=round(prediction.encode_s * 1000, 3),
        ),
    )


async def heatmap_png_bytes(
    runtime: ServiceRuntime, model: ServedModel, prediction: Prediction, original_size: bool
) -> tuple[bytes, float]:
    """The raw heatmap PNG for ``Accept: image/png`` answers, encoded in the CPU pool."""
    calibration = model.engine.metadata.calibration
    assert calibration is not None
    decoded = prediction.decoded

    def encode() -> bytes:
        grid = prediction.item.anomaly_map
        if original_size:
            grid = imaging.resize_map(grid, decoded.width, decoded.height)
        return imaging.heatmap_png(np.asarray(grid), calibration.pixel_threshold)

    return await _in_pool(runtime, encode)
