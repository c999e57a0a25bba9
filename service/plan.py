"""How one upload goes through the model: the whole image, or the tiles of a tiled model.

A :class:`FilePlan` is made from the header alone, before any pixel is decoded: how many images
the file sends to the batcher, and the memory each step will hold — the numbers admission and the
memory budget decide on. :func:`decode_file` makes the model inputs (in a worker) and
:func:`merge` turns the batcher's per-input results back into one map and one score per file
(stitching a tiled model's tile maps exactly as ``rdad eval`` does). Every bytes-per-pixel figure
of the scoring flow is here or in :mod:`service.render`.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from rdad.imaging import Buffer, reduction_factor
from rdad.tiling import Tiling, image_score, prepared_size, stitch, tile_grid

from .decode import DecodedImage, Header, decode_tiles, decode_whole, overlay_size
from .gpu_decode import JpegDecoder
from .render import OutputOptions, render_bytes
from .resources import DECODE_BYTES_PER_PIXEL

RGB = 3
FLOAT = 4
STITCH_BYTES_PER_PIXEL = 2 * FLOAT
"""Stitching tile maps: the float32 sum (divided in place into the result) and cover count."""


@dataclass(frozen=True)
class Layout:
    """What a model takes: its input size and, for a tiled model, how images are cut."""

    image_size: int
    tiling: Tiling | None = None


@dataclass(frozen=True)
class FilePlan:
    """One upload's way through the model, decided from its header."""

    header: Header
    inputs: int
    """Images this file sends to the batcher (1, or its tile count)."""
    decode_bytes: int
    """Peak memory while it is decoded."""
    keep_bytes: int
    """Memory from the end of its decode to its rendered answer (inputs, maps, renders)."""

    @property
    def need_bytes(self) -> int:
        return max(self.decode_bytes, self.keep_bytes)


def plan_file(header: Header, layout: Layout, options: OutputOptions) -> FilePlan:
    """The plan of one file with ``header`` for a model with ``layout``."""
    width, height = header.width, header.height
    overlay = overlay_size(width, height, options.overlay_max_side) if options.overlay else None
    view = 0 if overlay is None else RGB * overlay[0] * overlay[1]
    size = layout.image_size
    if layout.tiling is None:
        decoded = width * height
        if header.jpeg:  # the codec decodes at a DCT-reduced size (and finer for an overlay)
            factor = reduction_factor(width, height, size)
            decoded = (width // factor + 1) * (height // factor + 1)
            if overlay is not None:
                finer = reduction_factor(width, height, min(overlay))
                decoded += (width // finer + 1) * (height // finer + 1)
        inputs = 1
        map_shape = (size, size)
        kept = RGB * size * size + view
        decode = DECODE_BYTES_PER_PIXEL * decoded + kept
        stitching = 0
    else:
        # EXIF may swap the sides; the larger tile count of the two orientations is planned.
        grids = [
            tile_grid(*prepared_size(h, w, layout.tiling), layout.tiling)
            for h, w in ((height, width), (width, height))
        ]
        grid = max(grids, key=len)
        inputs = len(grid)
        map_shape = (grid.height, grid.width)
        tiles = RGB * inputs * size * size
        prepared = RGB * grid.height * grid.width
        kept = tiles + view
        decode = DECODE_BYTES_PER_PIXEL * width * height + prepared + kept
        stitching = STITCH_BYTES_PER_PIXEL * grid.height * grid.width
    maps = FLOAT * inputs * size * size
    keep = kept + maps + stitching + render_bytes(map_shape, width, height, options)
    return FilePlan(header, inputs, decode, keep)


def decode_file(
    data: Buffer,
    plan: FilePlan,
    layout: Layout,
    options: OutputOptions,
    deadline: float,
    jpeg_decoder: JpegDecoder | None = None,
) -> DecodedImage:
    """The model inputs of one file (top-level, so a process pool can run it pickled)."""
    overlay = options.overlay_max_side if options.overlay else None
    if layout.tiling is None:
        return decode_whole(
            data,
            plan.header,
            model_size=layout.image_size,
            overlay_max_side=overlay,
            deadline=deadline,
            jpeg_decoder=jpeg_decoder,
        )
    return decode_tiles(
        data, plan.header, tiling=layout.tiling, overlay_max_side=overlay, deadline=deadline
    )


def merge(
    decoded: DecodedImage, layout: Layout, maps: np.ndarray, scores: np.ndarray
) -> tuple[np.ndarray, float]:
    """One file's anomaly map and score from its inputs' ``maps`` ``(N, S, S)`` and ``scores``
    ``(N,)``: the model's own output for a whole image; for tiles, the map stitched by the
    model's rule on the prepared image's grid and its max."""
    if layout.tiling is None or decoded.grid is None:
        return maps[0], float(scores[0])
    stitched = stitch(maps, decoded.grid, layout.tiling.stitch)
    return stitched, image_score(stitched)
