"""Calibration from good images only: thresholds and the 0.5-at-threshold normalisation."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from rdad.model.calibrate import calibrate


def fitted(seed: int = 0, n: int = 20):  # type: ignore[no-untyped-def]
    rng = np.random.default_rng(seed)
    scores = rng.normal(1.0, 0.05, n)
    maps = rng.random((n, 16, 16)).astype(np.float32)
    return (
        scores,
        maps,
        calibrate(scores, maps, threshold_percentile=95, pixel_threshold_percentile=99),
    )


def test_normalisation_puts_threshold_at_one_half_and_is_monotone() -> None:
    scores, _, cal = fitted()
    assert cal.normalize(cal.image_threshold) == pytest.approx(0.5, abs=1e-12)
    grid = np.linspace(scores.min() - 1, scores.max() + 1, 200)
    values = [cal.normalize(s) for s in grid]
    assert all(0.0 <= v <= 1.0 for v in values)
    assert all(b >= a for a, b in itertools.pairwise(values))
    assert cal.normalize(float(np.median(scores))) < 0.5 < cal.normalize(scores.max() + 0.2)
    assert cal.normalize(1e300) == pytest.approx(1.0) and cal.normalize(-1e300) < 1e-20


def test_thresholds_are_the_requested_percentiles_of_good_data() -> None:
    scores, maps, cal = fitted(1)
    assert cal.image_threshold == pytest.approx(np.percentile(scores, 95))
    assert cal.pixel_threshold == pytest.approx(np.percentile(maps, 99), rel=1e-6)
    assert cal.num_images == 20
    assert cal.score_percentiles["p100"] == pytest.approx(scores.max())
    flagged = sum(cal.is_anomalous(s) for s in scores)
    assert flagged == 1  # 5% of 20 good images lie above the 95th percentile


def test_degenerate_inputs_are_refused_or_handled() -> None:
    with pytest.raises(ValueError, match="at least 2"):
        calibrate(np.array([1.0]), np.zeros((1, 4, 4)))
    with pytest.raises(ValueError, match="NaN"):
        calibrate(np.array([1.0, np.nan]), np.zeros((2, 4, 4)))
    with pytest.raises(ValueError, match="percentiles"):
        calibrate(np.array([1.0, 2.0]), np.zeros((2, 4, 4)), threshold_percentile=10)
    same = calibrate(np.array([2.0, 2.0, 2.0]), np.zeros((3, 4, 4)))
    assert same.score_scale > 0 and same.normalize(2.0) == pytest.approx(0.5)
