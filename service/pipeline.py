"""One prediction request, end to end: decode (CPU pool) → batcher → render (CPU pool).

The event loop only orchestrates: every step that touches pixels runs in the runtime's CPU thread
pool (OpenCV releases the GIL), and inference runs on the model's own thread via the batcher.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Iterator, Sequence
from dataclasses import dataclass
from functools import partial
from typing import TypeVar

import numpy as np

from rdad.imaging import ImageDecodeError

from . import imaging
from .batcher import ItemResult
from .errors import (
    BadImageError,
    ImageTooLargeError,
    NotReadyError,
    RequestTimeoutError,
    ServiceError,
    UnsupportedMediaTypeError,
)
from .gpu_decode import JpegDecoder
from .runtime import ServedModel, ServiceRuntime
from .schemas import ModelRef, PredictionResult, Region, Timings
from .verdict import judge

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


def timed(fn: Callable[[], T]) -> tuple[T, float]:
    """``fn()`` and its own run time (not a pool's wait); top-level so a process pool can run it."""
    start = time.perf_counter()
    result = fn()
    return result, time.perf_counter() - start


async def _in_pool(runtime: ServiceRuntime, fn: Callable[[], T]) -> tuple[T, float]:
    """Run ``fn`` in the CPU pool; return its result and its own run time (not the pool wait)."""
    return await asyncio.get_running_loop().run_in_executor(runtime.cpu_pool, timed, fn)


FILE_ERRORS = (BadImageError, ImageTooLargeError, UnsupportedMediaTypeError, ImageDecodeError)
"""Failures that belong to one file: in a multi-file request they become that file's result."""


def _decode(
    upload: Upload,
    size: int,
    max_pixels: int,
    overlay: int | None,
    header: imaging.Header,
    deadline: float,
    jpeg_decoder: JpegDecoder | None = None,
) -> imaging.DecodedImage:
    # The pool may have been busy: a request past its deadline is not decoded at all.
    # (loop.time() is time.monotonic() under asyncio's default loop.)
    if time.monotonic() > deadline:
        raise RequestTimeoutError("the request timed out before its images were decoded")
    try:
        return imaging.decode_upload(
            upload.data,
            model_size=size,
            max_pixels=max_pixels,
            overlay_max_side=overlay,
            header=header,
            jpeg_decoder=jpeg_decoder,
        )
    except (ImageDecodeError, BadImageError) as exc:
        raise BadImageError(f"{upload.filename}: {exc}") from None


def ensure_ready(runtime: ServiceRuntime, model: ServedModel) -> None:
    # A draining version (replaced by a hot reload) still answers the requests routed to it.
    if not model.state.serves:
        reason = model.error or "the model is still warming up"
        raise NotReadyError(reason, retry_after_s=runtime.settings.retry_after_s)


def read_header(
    upload: Upload, *, model_size: int, max_pixels: int, overlay_max_side: int | None = None
) -> imaging.Header:
    """:func:`imaging.read_header` with the upload's file name in its error."""
    try:
        return imaging.read_header(
            upload.data,
            model_size=model_size,
            max_pixels=max_pixels,
            overlay_max_side=overlay_max_side,
        )
    except ImageTooLargeError as exc:
        raise ImageTooLargeError(f"{upload.filename}: {exc.detail}") from None
    except (ImageDecodeError, BadImageError) as exc:
        raise BadImageError(f"{upload.filename}: {exc}") from None


async def decode_uploads(
    model: ServedModel, valid: list[Upload], decode: Callable[[Upload], Awaitable[T]]
) -> tuple[list[T | BaseException], list[T]]:
    """Decode every valid upload concurrently while the batcher knows they are on their way.

    Returns every outcome (in upload order) and the successful ones. An error of the file's own
    (:data:`FILE_ERRORS`) stays that file's outcome; any other error (timeout, overload) fails
    the whole request at once: the other decodes are cancelled rather than awaited.
    """
    with model.batcher.incoming(len(valid)):
        if len(valid) == 1:  # awaited in place: no task, so no extra turn of a busy loop
            try:
                one: T | BaseException = await decode(valid[0])
            except FILE_ERRORS as exc:
                one = exc
            return [one], [one] if not isinstance(one, BaseException) else []
        tasks = [asyncio.ensure_future(decode(u)) for u in valid]
        try:
            pending: set[asyncio.Future[T]] = set(tasks)
            while pending:
                done, pending = await asyncio.wait(pending, return_when=asyncio.FIRST_EXCEPTION)
                for task in done:
                    error = task.exception()
                    if error is not None and not isinstance(error, FILE_ERRORS):
                        raise error
        finally:  # a request-level error, or this request cancelled (client gone)
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
    outcomes: list[T | BaseException] = [t.exception() or t.result() for t in tasks]
    return outcomes, [o for o in outcomes if not isinstance(o, BaseException)]


async def _decode_within_budget(
    runtime: ServiceRuntime, upload: Upload, size: int, overlay: int | None, deadline: float
) -> tuple[imaging.DecodedImage, float]:
    """Header check, then the decode once the pixel budget has room for its peak size.

    The budget covers the decodes (where the memory goes: a full-size RGB buffer each) and is
    given back as soon as the decode returns. What a request keeps afterwards — the model input
    and, with an overlay, an overlay-size copy — is bounded by ``max_queue`` images per model and
    is not held against the budget: a request holding it while waiting for room for its next
    decode could otherwise block the very decodes it waits behind.
    """
    max_pixels = runtime.settings.max_pixels
    header = read_header(upload, model_size=size, max_pixels=max_pixels, overlay_max_side=overlay)

    async def decode() -> tuple[imaging.DecodedImage, float]:
        jpeg = runtime.jpeg_decoder
        work = partial(_decode, upload, size, max_pixels, overlay, header, deadline, jpeg)
        if runtime.decode_pool is not None and jpeg is None:
            # Processes (RDAD_DECODE_PROCESSES): small JPEGs hit the GIL in threads. The work
            # travels pickled: a partial of the top-level _decode, no decoder object in it.
            loop = asyncio.get_running_loop()
            return await loop.run_in_executor(runtime.decode_pool, timed, work)
        return await _in_pool(runtime, work)

    return await runtime.pixel_budget.run(header.decode_bytes, decode, deadline=deadline)


async def predict(
    runtime: ServiceRuntime,
    model: ServedModel,
    uploads: list[Upload | ServiceError],
    options: imaging.OutputOptions,
    *,
    deadline: float,
    threshold: float | None = None,
) -> list[Prediction | ServiceError]:
    """Score ``uploads`` with ``model``; results in upload order. ``threshold`` (normalised)
    overrides the calibrated one for the verdicts counted in the metrics.

    An upload that is already an error, or whose decode fails for reasons of its own
    (:data:`FILE_ERRORS`), gets that error as its result; the others are scored. Anything else
    (timeout, inference failure) fails the whole request.
    """
    ensure_ready(runtime, model)
    if model.engine.metadata.tiling is not None:
        from . import tiled  # tiled models: tiles through the batcher, stitched maps

        return await tiled.predict(runtime, model, uploads, options, deadline=deadline)
    size = model.engine.image_size
    overlay = options.overlay_max_side if options.overlay else None
    loop = asyncio.get_running_loop()
    started = loop.time()
    valid = [u for u in uploads if isinstance(u, Upload)]
    outcomes, decoded = await decode_uploads(
        model, valid, lambda u: _decode_within_budget(runtime, u, size, overlay, deadline)
    )
    own_s = loop.time() - started
    items = []
    if decoded:
        images = [d.model_input for d, _ in decoded]
        items = await model.batcher.infer(images, deadline=deadline)
    render_started = loop.time()
    calibration = model.engine.metadata.calibration
    assert calibration is not None  # Engine.load refuses uncalibrated models
    render = imaging.render_outputs
    rendered = await asyncio.gather(
        *(
            _in_pool(runtime, partial(render, d, it.anomaly_map, calibration, options))
            for (d, _), it in zip(decoded, items, strict=True)
        )
    )
    model.admission.record_overhead(own_s + loop.time() - render_started)
    for item in items:
        verdict = judge(calibration, item.score, threshold)
        runtime.metrics.observe_prediction(
            model.name, verdict.normalized_score, verdict.is_anomalous
        )
    scored = iter(
        Prediction(d, it, r, decode_s, encode_s)
        for (d, decode_s), it, (r, encode_s) in zip(decoded, items, rendered, strict=True)
    )
    return in_request_order(uploads, outcomes, scored)


def in_request_order(
    uploads: Sequence[Upload | ServiceError],
    outcomes: Sequence[object],
    scored: Iterator[Prediction],
) -> list[Prediction | ServiceError]:
    """One entry per upload, in request order: the upload's own error (refused before decoding), its
    decode outcome's error, or the next scored prediction (``scored`` follows the valid uploads)."""
    by_valid = iter(outcomes)
    results: list[Prediction | ServiceError] = []
    for upload in uploads:
        if not isinstance(upload, Upload):
            results.append(upload)
            continue
        outcome = next(by_valid)
        if isinstance(outcome, ServiceError):
            results.append(outcome)
        elif isinstance(outcome, BaseException):
            results.append(BadImageError(f"{upload.filename}: {outcome}"))
        else:
            results.append(next(scored))
    return results


def to_result(
    model: ServedModel, upload: Upload, prediction: Prediction, threshold: float | None = None
) -> PredictionResult:
    """The JSON view of one prediction; ``threshold`` (normalised) overrides the calibrated one."""
    meta = model.engine.metadata
    calibration = meta.calibration
    assert calibration is not None
    score = prediction.item.score
    verdict = judge(calibration, score, threshold)
    rendered = prediction.rendered
    regions = None
    if rendered.regions is not None:
        regions = [Region(**vars(r)) for r in rendered.regions]
    return PredictionResult(
        score=score,
        normalized_score=verdict.normalized_score,
        is_anomalous=verdict.is_anomalous,
        threshold=verdict.threshold,
        normalized_threshold=verdict.normalized_threshold,
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
