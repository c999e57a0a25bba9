"""Scoring a list of image files with a loaded model, whole-image or tiled, for ``rdad eval``.

Through the service's own scoring flow (:class:`rdad.service.scoring.Scorer`, no web framework
and no torch in it): the same decoding, tiling, stitching and scores as ``POST /predict``, with
batches run in this thread by ``predict`` (an ONNX Runtime or OpenVINO session, or a checkpoint
through torch). A file the service would refuse (unreadable, over the pixel limit) is skipped and
reported.

Pixel metrics need one grid for every image: maps are brought to ``grid`` × ``grid`` (area
interpolation when shrinking, bilinear when enlarging) — the same grid the ground-truth masks are
resized to. Image scores are taken before that resize, on the model's own map.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np

from rdad.metadata import Calibration
from rdad.service.errors import ServiceError
from rdad.service.local import DirectInference, InlineWorkers, score_now
from rdad.service.plan import Layout
from rdad.service.render import OutputOptions
from rdad.service.resources import DEFAULT_MAX_PIXELS
from rdad.service.scoring import Scorer
from rdad.service.scoring_types import ScoringModel
from rdad.tiling import Tiling

log = logging.getLogger(__name__)

Predict = Callable[[np.ndarray], tuple[np.ndarray, np.ndarray]]
FILES_PER_CALL = 32
"""Files handed to the flow at once: their model inputs (or tiles) are held together."""
NO_PICTURES = OutputOptions(heatmap=False)


@dataclass
class ScoredImages:
    paths: list[Path]
    maps: np.ndarray
    """float32 ``(N, grid, grid)``."""
    scores: np.ndarray
    """float32 ``(N,)``."""
    seconds: float
    """Time spent in inference."""
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
    calibration: Calibration | None = None,
    batch_size: int = 16,
    max_pixels: int = DEFAULT_MAX_PIXELS,
) -> ScoredImages:
    """Score every readable file of ``paths``; unreadable ones are reported and skipped."""
    inference = DirectInference(predict, batch_size)
    model = ScoringModel("eval", "", Layout(image_size, tiling), calibration, max_pixels)
    scorer = Scorer(model, inference, InlineWorkers())
    kept: list[Path] = []
    maps: list[np.ndarray] = []
    scores: list[float] = []
    skipped: list[tuple[Path, str]] = []
    for start in range(0, len(paths), FILES_PER_CALL):
        files: list[tuple[Path, bytes]] = []
        for path in map(Path, paths[start : start + FILES_PER_CALL]):
            try:
                files.append((path, path.read_bytes()))
            except OSError as exc:
                skipped.append((path, f"cannot read file: {exc.strerror or exc}"))
        named = [(str(path), data) for path, data in files]
        for (path, _), result in zip(
            files, score_now(scorer, named, NO_PICTURES, keep_maps=True), strict=True
        ):
            if isinstance(result, ServiceError):
                skipped.append((path, result.detail))
                log.warning("skipping unreadable image %s: %s", path, result.detail)
                continue
            assert result.anomaly_map is not None  # asked for with keep_maps
            kept.append(path)
            maps.append(to_grid(result.anomaly_map, grid))
            scores.append(result.score)
    stacked = np.stack(maps) if maps else np.zeros((0, grid, grid), np.float32)
    return ScoredImages(kept, stacked, np.asarray(scores, np.float32), inference.busy_s, skipped)
