"""Prediction with a tiled model (metadata ``tiling`` set): decode → tiles → batcher → stitch.

Each upload is decoded at full resolution (never DCT-reduced: tiles are cut at native scale) and
cut into tiles by :mod:`rdad.tiling`, exactly as ``rdad eval`` does. All tiles of all uploads of
a request go to the batcher in one :meth:`~service.batcher.Batcher.infer` call, as that request's
images: they share batches with other requests and are answered together. The tile maps of each
upload are then stitched (the model's rule for overlaps) into one map on the prepared image's
grid; the score is the max of that map, and heatmaps, masks and regions are rendered from it in
original-image coordinates by the same code as whole-image models.

Admission: the route admits one image per file before reading the body; once the tile count is
known (from the header), the request's other tiles are admitted too (503 when the model cannot
take them in time) and released when it ends. A file needing more tiles than the queue can ever
hold is that file's 413. The decode holds the pixel budget for its full-size peak.
"""

from __future__ import annotations

import asyncio
import time
from functools import partial

import numpy as np

from rdad.imaging import ImageDecodeError, decode_image
from rdad.tiling import TileGrid, Tiling, image_score, prepared_size, stitch, tile_grid, tile_image

from . import imaging
from .batcher import ItemResult
from .errors import BadImageError, ImageTooLargeError, RequestTimeoutError, ServiceError
from .pipeline import (
    Prediction,
    Upload,
    _in_pool,
    decode_uploads,
    in_request_order,
    read_header,
)
from .runtime import ServedModel, ServiceRuntime

_DECODE_BYTES_PER_PIXEL = 8
"""Full-size decode peak (~5 B/px, see service.imaging) plus the tiles cut from it (~3 B/px)."""

Decoded = tuple[imaging.DecodedImage, TileGrid]


def _decode(upload: Upload, tiling: Tiling, deadline: float) -> Decoded:
    if time.monotonic() > deadline:  # the pool was busy: a late request is not decoded at all
        raise RequestTimeoutError("the request timed out before its images were decoded")
    try:
        full = decode_image(upload.data)  # full resolution: tiles are cut at native scale
    except (ImageDecodeError, BadImageError) as exc:
        raise BadImageError(f"{upload.filename}: {exc}") from None
    tiles, grid = tile_image(full, tiling)
    # EXIF orientation is applied by the decoder: the decoded shape is the oriented size.
    # ``model_input`` holds the tiles (N, T, T, 3); ``view`` the decoded image (overlays).
    return imaging.DecodedImage(tiles, full, full.shape[1], full.shape[0]), grid


async def _decode_within_budget(
    runtime: ServiceRuntime, model: ServedModel, upload: Upload, deadline: float
) -> tuple[Decoded, float]:
    tiling = model.engine.metadata.tiling
    assert tiling is not None
    header = read_header(
        upload, model_size=tiling.tile_size, max_pixels=runtime.settings.max_pixels
    )
    # EXIF may swap the sides; the tile count is the same either way round only for square
    # grids, so the larger of the two counts is checked.
    counts = [
        len(tile_grid(*prepared_size(h, w, tiling), tiling))
        for h, w in ((header.height, header.width), (header.width, header.height))
    ]
    if max(counts) > model.batcher.max_queue:
        raise ImageTooLargeError(
            f"{upload.filename}: {header.width}x{header.height} needs {max(counts)} tiles of "
            f"{tiling.tile_size} px, more than the queue holds ({model.batcher.max_queue}); "
            "send a smaller image or raise RDAD_MAX_QUEUE"
        )
    nbytes = _DECODE_BYTES_PER_PIXEL * header.width * header.height
    work = partial(_in_pool, runtime, partial(_decode, upload, tiling, deadline))
    return await runtime.pixel_budget.run(nbytes, work, deadline=deadline)


async def predict(
    runtime: ServiceRuntime,
    model: ServedModel,
    uploads: list[Upload | ServiceError],
    options: imaging.OutputOptions,
    *,
    deadline: float,
) -> list[Prediction | ServiceError]:
    """Score ``uploads`` with the tiled ``model``; results (or per-file errors) in upload order."""
    tiling = model.engine.metadata.tiling
    assert tiling is not None
    calibration = model.engine.metadata.calibration
    assert calibration is not None  # Engine.load refuses uncalibrated models
    loop = asyncio.get_running_loop()
    started = loop.time()
    valid = [u for u in uploads if isinstance(u, Upload)]
    outcomes, decoded = await decode_uploads(
        model, valid, lambda u: _decode_within_budget(runtime, model, u, deadline)
    )
    grids = [grid for (_, grid), _ in decoded]
    counts = [len(grid) for grid in grids]
    own_s = loop.time() - started
    # One image per file was admitted by the route; the other tiles are admitted now. A request
    # alone on the model always gets to try (as in admission): its batches correct the estimate.
    extra = max(0, sum(counts) - len(decoded))
    admission = model.admission
    if admission.admitted <= len(uploads):
        admission.admitted += extra
    else:
        admission.admit(extra, now=loop.time(), deadline=deadline)
    try:
        tiles = [tile for (d, _), _ in decoded for tile in d.model_input]
        items = await model.batcher.infer(tiles, deadline=deadline) if tiles else []
    finally:
        admission.release(extra)
    bounds = np.cumsum([0, *counts])

    def stitched_item(index: int) -> ItemResult:
        own = items[bounds[index] : bounds[index + 1]]
        maps = np.stack([it.anomaly_map for it in own])
        stitched = stitch(maps, grids[index], tiling.stitch)
        return ItemResult(
            stitched,
            image_score(stitched),
            queue_s=max(it.queue_s for it in own),
            inference_s=max(it.inference_s for it in own),
            batch_size=max(it.batch_size for it in own),
        )

    render_started = loop.time()
    stitched = await asyncio.gather(
        *(_in_pool(runtime, partial(stitched_item, i)) for i in range(len(decoded)))
    )
    render = imaging.render_outputs
    rendered = await asyncio.gather(
        *(
            _in_pool(runtime, partial(render, d, it.anomaly_map, calibration, options))
            for ((d, _), _), (it, _) in zip(decoded, stitched, strict=True)
        )
    )
    model.admission.record_overhead(own_s + loop.time() - render_started)
    for item, _ in stitched:
        runtime.metrics.observe_prediction(
            model.name, calibration.normalize(item.score), calibration.is_anomalous(item.score)
        )
    scored = iter(
        Prediction(d, it, r, decode_s, encode_s + stitch_s)
        for ((d, _), decode_s), (it, stitch_s), (r, encode_s) in zip(
            decoded, stitched, rendered, strict=True
        )
    )
    return in_request_order(uploads, outcomes, scored)
