"""Thresholds and score normalisation from good images only.

No anomalous validation images are needed (anomalib's F1-adaptive threshold cannot work without
them): the image threshold is a high percentile of held-out good image scores, the pixel threshold
a high percentile of their pooled pixel values, and the normalisation is a logistic curve centred
on the image threshold and scaled by the spread of good scores
(see :class:`rdad.metadata.Calibration`).
"""

from __future__ import annotations

import numpy as np

from rdad.metadata import Calibration

PERCENTILES = (0, 1, 5, 25, 50, 75, 95, 99, 100)


def calibrate(
    scores: np.ndarray,
    maps: np.ndarray,
    *,
    threshold_percentile: float = 99.0,
    pixel_threshold_percentile: float = 99.9,
) -> Calibration:
    """``scores``: ``(N,)`` image scores of good held-out images; ``maps``: ``(N, H, W)``."""
    scores = np.asarray(scores, dtype=np.float64)
    if scores.ndim != 1 or scores.size < 2:
        raise ValueError("calibration needs at least 2 good image scores")
    if not np.all(np.isfinite(scores)):
        raise ValueError("calibration scores contain NaN or inf")
    for p in (threshold_percentile, pixel_threshold_percentile):
        if not 50.0 <= p <= 100.0:
            raise ValueError(f"threshold percentiles must be in [50, 100], got {p}")
    threshold = float(np.percentile(scores, threshold_percentile))
    # Robust spread: the std of a handful of scores can be ~0 if they are nearly identical.
    spread = float(np.std(scores))
    scale = max(spread, 1e-3 * max(abs(threshold), 1e-6), 1e-9)
    pixel_threshold = float(np.percentile(np.asarray(maps, np.float32), pixel_threshold_percentile))
    return Calibration(
        image_threshold=threshold,
        pixel_threshold=pixel_threshold,
        score_scale=scale,
        threshold_percentile=float(threshold_percentile),
        pixel_threshold_percentile=float(pixel_threshold_percentile),
        score_percentiles={f"p{p}": float(np.percentile(scores, p)) for p in PERCENTILES},
        num_images=int(scores.size),
    )
