"""Tiled mode in training: tiles of the good images to train on, stitched maps to calibrate on.

The geometry (grid, stitching, scoring) is :mod:`rdad.tiling`, shared with ``rdad eval`` and the
service; this module only applies it to a :class:`~model.checkpoint.TrainConfig`'s data.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from rdad.imaging import ImageDecodeError, load_image
from rdad.tiling import TileGrid, Tiling, image_score, split_by_grids, stitch, tile_image

from .checkpoint import TrainConfig
from .data import LoadedImages, load_images

log = logging.getLogger(__name__)


def config_tiling(cfg: TrainConfig) -> Tiling | None:
    """The tiling of a config (``None`` for whole-image models); checks it matches the model."""
    if not cfg.tile_size:
        return None
    if cfg.tile_size != cfg.image_size:
        raise ValueError(
            f"tiled mode: the tile size ({cfg.tile_size}) is the model input, so image_size "
            f"must equal it (got {cfg.image_size})"
        )
    return Tiling(cfg.tile_size, cfg.tile_overlap, cfg.tile_scale, cfg.tile_stitch)


@dataclass
class LoadedTiles(LoadedImages):
    """``images`` holds the tiles of every readable image, image after image, grid order."""

    grids: list[TileGrid] = field(default_factory=list)


def load_tiles(paths: Sequence[Path], tiling: Tiling) -> LoadedTiles:
    """Decode each image at full resolution (no DCT reduction) and cut it into tiles."""
    tiles, kept, grids, skipped = [], [], [], []
    for path in paths:
        try:
            image = load_image(path)
        except ImageDecodeError as exc:
            skipped.append((Path(path), str(exc)))
            log.warning("skipping unreadable image %s: %s", path, exc)
            continue
        cut, grid = tile_image(image, tiling)
        tiles.append(cut)
        grids.append(grid)
        kept.append(Path(path))
    t = tiling.tile_size
    stacked = np.concatenate(tiles) if tiles else np.zeros((0, t, t, 3), np.uint8)
    return LoadedTiles(stacked, kept, skipped, grids)


def load_training_images(paths: Sequence[Path], cfg: TrainConfig) -> LoadedImages:
    """Whole images resized to ``image_size``, or (tiled mode) the tiles of every image."""
    tiling = config_tiling(cfg)
    if tiling is None:
        return load_images(paths, cfg.image_size)
    loaded = load_tiles(paths, tiling)
    print(f"tiled mode: {len(loaded.paths)} images → {len(loaded.images)} tiles of {tiling}")
    return loaded


def stitch_for_calibration(
    maps: np.ndarray, scores: np.ndarray, loaded: LoadedImages, cfg: TrainConfig
) -> tuple[np.ndarray, np.ndarray]:
    """Per-input maps/scores → what calibration sees: unchanged for whole images; for tiles,
    every image's stitched map (flattened, pooled) and its score (max of the stitched map)."""
    tiling = config_tiling(cfg)
    if tiling is None or not isinstance(loaded, LoadedTiles):
        return maps, scores
    per_image = split_by_grids(maps, loaded.grids)
    stitched = [stitch(m, g, tiling.stitch) for m, g in zip(per_image, loaded.grids, strict=True)]
    image_scores = np.array([image_score(s) for s in stitched], np.float32)
    return np.concatenate([s.ravel() for s in stitched]), image_scores
