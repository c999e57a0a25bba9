"""Scoring a list of image files with a loaded model, whole-image or tiled, for ``rdad eval``.

Whole-image models see each image resized to their input (``rdad.imaging.resize_rgb``, as the
service does). Tiled models see each image decoded at full resolution, cut, run and stitched by
:mod:`rdad.tiling` (as the service does); the image score is the max of the stitched map.

Pixel metrics need one grid for every image: maps are brought to ``grid`` × ``grid`` (area
interpolation when shrinking, bilinear when enlarging) — the same grid the ground-truth masks are
resized to. Image scores are taken before that resize, on the model's own map.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np

from rdad.imaging import ImageDecodeError, load_image
from rdad.tiling import Tiling, run_tiled

from .data import load_images

log = logging.getLogger(__name__)

Predict = Callable[[np.ndarray], tuple[np.ndarray, np.ndarray]]


@dataclass
class ScoredImages:
    paths: list[Path]
    maps: np.ndarray
    """float32 ``(N, grid, grid)``."""
    scores: np.ndarray
    """float32 ``(N,)``."""
    seconds: float
    """Time spent in inference (and, for tiled models, tiling and stitching)."""
    skipped: list[tuple[Path, str]] = field(default_factory=list)


def to_grid(anomaly_map: np.ndarray, grid: int) -> np.ndarray:
    """``(H, W)`` map → float32 ``(grid, grid)``."""
    if anomaly_map.shape == (grid, grid):
        return anomaly_map.astype(np.float32, copy=False)
    shrink = anomaly_map.size > grid * grid
    interpolation = cv2.INTER_AREA if shrink else cv2.INTER_LINEAR
    return cv2.resize(anomaly_map.astype(np.float32), (grid, grid), interpolation=interpolation)


def score_images(
    predict: Predict,
    paths: Sequence[Path],
    *,
    image_size: int,
    tiling: Tiling | None,
    grid: int,
) -> ScoredImages:
    """Score every readable file of ``paths``; unreadable ones are reported and skipped."""
    if tiling is None:
        loaded = load_images(paths, image_size)
        t0 = time.perf_counter()
        maps, scores = predict(loaded.images)
        seconds = time.perf_counter() - t0
        if grid != image_size:
            maps = np.stack([to_grid(m, grid) for m in maps]) if len(maps) else maps
        return ScoredImages(loaded.paths, maps, scores, seconds, loaded.skipped)

    kept: list[Path] = []
    grids, scores_list, skipped = [], [], []
    seconds = 0.0
    for path in paths:
        try:
            image = load_image(path)  # full resolution: tiles are cut at native scale
        except ImageDecodeError as exc:
            skipped.append((Path(path), str(exc)))
            log.warning("skipping unreadable image %s: %s", path, exc)
            continue
        t0 = time.perf_counter()
        stitched, score = run_tiled(image, tiling, predict)
        seconds += time.perf_counter() - t0
        kept.append(Path(path))
        grids.append(to_grid(stitched, grid))
        scores_list.append(score)
    maps = np.stack(grids) if grids else np.zeros((0, grid, grid), np.float32)
    return ScoredImages(kept, maps, np.asarray(scores_list, np.float32), seconds, skipped)
