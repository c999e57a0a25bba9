"""The verdict for one image score: the calibrated threshold, or a per-request override given in
normalised units (``threshold=`` on ``/predict``).

Normalised scores are a logistic curve of the raw score centred on the calibrated image threshold
(see :class:`rdad.metadata.Calibration`), so a normalised threshold ``t`` is the raw threshold
``image_threshold + score_scale · logit(t)``; ``t = 0.5`` is the calibrated one. Clients can
re-judge a result locally with ``normalized_score > t`` and get the verdict the service would give.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from rdad.metadata import Calibration

CALIBRATED = 0.5
"""The normalised threshold that equals the calibrated raw image threshold."""


@dataclass(frozen=True)
class Verdict:
    normalized_score: float
    is_anomalous: bool
    threshold: float
    """Raw image-score threshold the verdict used."""
    normalized_threshold: float


def raw_threshold(calibration: Calibration, normalized_threshold: float) -> float:
    """The raw score at which ``calibration.normalize`` equals ``normalized_threshold`` (0, 1)."""
    if not 0.0 < normalized_threshold < 1.0:
        raise ValueError(f"a normalised threshold is in (0, 1), got {normalized_threshold}")
    if normalized_threshold == CALIBRATED:
        return calibration.image_threshold
    logit = math.log(normalized_threshold / (1.0 - normalized_threshold))
    return calibration.image_threshold + calibration.score_scale * logit


def judge(calibration: Calibration, score: float, normalized_threshold: float | None) -> Verdict:
    """Judge ``score`` against the override (normalised units) or the calibrated threshold."""
    t = CALIBRATED if normalized_threshold is None else normalized_threshold
    threshold = raw_threshold(calibration, t)
    return Verdict(
        normalized_score=calibration.normalize(score),
        is_anomalous=float(score) > threshold,
        threshold=threshold,
        normalized_threshold=t,
    )
