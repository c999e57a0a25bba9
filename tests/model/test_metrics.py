"""Tests for model.metrics against independent brute-force references and known properties."""

from __future__ import annotations

import itertools
import math
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
from scipy import ndimage

from rdad.model.metrics import (
    aupro,
    f1_max,
    image_auroc,
    per_defect_auroc,
    pixel_auroc,
    pro_curve,
    threshold_metrics,
)

# ----------------------------------------------------------------------------- references


def mann_whitney_auc(labels: np.ndarray, scores: np.ndarray) -> float:
    """AUROC as P(score_pos > score_neg) + 0.5 P(tie), by counting every pair."""
    pos = scores[labels.astype(bool)]
    neg = scores[~labels.astype(bool)]
    wins = (pos[:, None] > neg[None, :]).sum() + 0.5 * (pos[:, None] == neg[None, :]).sum()
    return float(wins / (pos.size * neg.size))


def brute_pro_points(masks: np.ndarray, maps: np.ndarray, thresholds) -> list[tuple[float, float]]:
    """(FPR, PRO) at each threshold (prediction ``map > t``), recomputing everything per t."""
    structure = np.ones((3, 3), dtype=int)
    labelled = [ndimage.label(m, structure=structure) for m in masks]
    background = ~masks
    points = []
    for t in thresholds:
        pred = maps > t
        overlaps = []
        for (lab, k), p in zip(labelled, pred, strict=True):
            for c in range(1, k + 1):
                comp = lab == c
                overlaps.append(p[comp].sum() / comp.sum())
        fpr = (pred & background).sum() / background.sum()
        points.append((float(fpr), float(np.mean(overlaps))))
    return points


def brute_area(points: list[tuple[float, float]], limit: float) -> float:
    """Piecewise-linear area from x=0 to ``limit``, one segment at a time."""
    area = 0.0
    for (x0, y0), (x1, y1) in itertools.pairwise(points):
        assert x1 >= x0
        if x0 >= limit:
            break
        xe = min(x1, limit)
        ye = y1 if x1 == x0 else y0 + (y1 - y0) * (xe - x0) / (x1 - x0)
        area += 0.5 * (y0 + ye) * (xe - x0)
    return area


def brute_aupro(masks, maps, limit, thresholds=None) -> float:
    if thresholds is None:  # every distinct score, plus one below all -> ends at (1, 1)
        thresholds = np.concatenate((np.unique(maps)[::-1], [-np.inf]))
    else:
        thresholds = np.concatenate((np.sort(thresholds)[::-1], [-np.inf]))
    points = [(0.0, 0.0), *brute_pro_points(masks, maps, thresholds)]
    return brute_area(points, limit) / limit


def random_case(seed: int, n=5, size=16, levels: int | None = None):
    """Random blob masks (several components, some images empty) and noisy correlated maps."""
    rng = np.random.default_rng(seed)
    masks = ndimage.binary_opening(rng.random((n, size, size)) < 0.35, np.ones((1, 2, 2)))
    masks[0] = False  # a defect-free image contributes background only
    masks[1, 2:5, 2:5] = True
    masks[1, 5, 5] = True  # diagonal neighbour: joins the block only under 8-connectivity
    maps = masks * 0.5 + rng.random(masks.shape)
    if levels is not None:  # coarse quantisation -> many ties, also across fg/bg
        maps = np.round(maps * levels) / levels
    return masks, maps


# ----------------------------------------------------------------------------- image AUROC


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_image_auroc_matches_pairwise_count(seed):
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 2, 60)
    scores = np.round(rng.normal(labels, 1.0), 1)  # rounding creates ties
    assert image_auroc(labels, scores) == pytest.approx(mann_whitney_auc(labels, scores))


def test_image_auroc_single_class_is_nan():
    assert math.isnan(image_auroc([0, 0, 0], [0.1, 0.2, 0.3]))
    assert math.isnan(image_auroc([True, True], [0.1, 0.2]))


def test_image_auroc_length_mismatch():
    with pytest.raises(ValueError):
        image_auroc([0, 1], [0.1, 0.2, 0.3])


# ----------------------------------------------------------------------------- pixel AUROC


def test_pixel_auroc_matches_pairwise_count():
    masks, maps = random_case(3, levels=6)
    expected = mann_whitney_auc(masks.ravel(), maps.ravel())
    assert pixel_auroc(masks, maps) == pytest.approx(expected)
    # 0/255 uint8 masks and float32 maps are accepted as-is.
    assert pixel_auroc(masks.astype(np.uint8) * 255, maps.astype(np.float32)) == pytest.approx(
        mann_whitney_auc(masks.ravel(), maps.astype(np.float32).ravel())
    )


def test_pixel_auroc_degenerate_and_bad_shapes():
    maps = np.random.default_rng(0).random((2, 4, 4))
    assert math.isnan(pixel_auroc(np.zeros((2, 4, 4), bool), maps))
    with pytest.raises(ValueError):
        pixel_auroc(np.zeros((2, 4, 4), bool), maps[:, :3])
    with pytest.raises(ValueError):
        pixel_auroc(np.zeros((4, 4), bool), maps[0])


# ----------------------------------------------------------------------------- AUPRO


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("levels", [None, 5])
@pytest.mark.parametrize("limit", [0.3, 0.05, 1.0])
def test_aupro_matches_brute_force(seed, levels, limit):
    masks, maps = random_case(seed, levels=levels)
    expected = brute_aupro(masks, maps, limit)
    assert aupro(masks, maps, fpr_limit=limit) == pytest.approx(expected, abs=1e-6)


@pytest.mark.parametrize("seed", range(3))
def test_aupro_grid_matches_brute_force_on_same_grid(seed):
    masks, maps = random_case(seed)
    grid = np.linspace(maps.min(), maps.max(), 7)
    expected = brute_aupro(masks, maps, 0.3, thresholds=grid)
    assert aupro(masks, maps, num_thresholds=7) == pytest.approx(expected, abs=1e-6)
    # A fine grid converges to the exact value.
    fine = aupro(masks, maps, num_thresholds=20000)
    assert fine == pytest.approx(aupro(masks, maps), abs=2e-3)


def test_pro_curve_is_monotone_and_spans_unit_square():
    masks, maps = random_case(7, levels=4)
    fprs, pros = pro_curve(masks, maps)
    assert (fprs[0], pros[0]) == (0.0, 0.0)
    assert fprs[-1] == pytest.approx(1.0) and pros[-1] == pytest.approx(1.0)
    assert np.all(np.diff(fprs) >= 0) and np.all(np.diff(pros) >= -1e-12)
    # One point per distinct score (plus the origin).
    assert fprs.size == np.unique(maps).size + 1


def test_pro_uses_8_connectivity():
    # (0,0),(0,1) and the diagonal (1,2): one component of 3 under 8-connectivity,
    # components of 2 and 1 under 4-connectivity. Detect only (1,2).
    masks = np.zeros((1, 5, 5), bool)
    masks[0, 0, 0] = masks[0, 0, 1] = masks[0, 1, 2] = True
    maps = np.zeros((1, 5, 5))
    maps[0, 1, 2] = 1.0
    fprs, pros = pro_curve(masks, maps)
    assert fprs[1] == 0.0
    assert pros[1] == pytest.approx(1 / 3)  # would be 1/2 with 4-connectivity


def test_pro_averages_regions_not_pixels():
    # A big fully detected region and a tiny missed one weigh the same: PRO = 0.5.
    masks = np.zeros((2, 8, 8), bool)
    masks[0, :6, :6] = True
    masks[1, 7, 7] = True
    maps = masks.astype(float)
    maps[1, 7, 7] = -1.0  # below every background score
    fprs, pros = pro_curve(masks, maps)
    assert (fprs[1], pros[1]) == (0.0, pytest.approx(0.5))
    # Flat at 0.5 until all background is positive (FPR 1), then a vertical jump to 1.
    assert aupro(masks, maps, fpr_limit=0.3) == pytest.approx(0.5)
    # Tied with the background instead, the missed pixel joins at the same threshold: the curve
    # is the straight line (0, 0.5) -> (1, 1), i.e. 0.65 at FPR 0.3 -> mean height 0.575.
    maps[1, 7, 7] = 0.0
    assert aupro(masks, maps, fpr_limit=0.3) == pytest.approx((0.5 + 0.65) / 2)


def test_aupro_perfect_and_inverse_maps():
    masks, _ = random_case(11)
    assert aupro(masks, masks.astype(float)) == pytest.approx(1.0)
    assert aupro(masks, 1.0 - masks) == pytest.approx(0.0, abs=1e-12)
    # Monotone transforms of the map do not change the (rank-based) metric.
    _, maps = random_case(11)
    assert aupro(masks, maps) == pytest.approx(aupro(masks, np.exp(3 * maps)), abs=1e-12)


def test_aupro_random_map_is_half_the_limit():
    # With scores independent of the mask, E[PRO] = FPR along the curve -> area ~ limit / 2.
    rng = np.random.default_rng(5)
    masks = np.zeros((20, 64, 64), bool)
    for m in masks:
        for _ in range(3):
            r, c = rng.integers(0, 56, 2)
            m[r : r + 8, c : c + 8] = True
    maps = rng.random(masks.shape)
    for limit in (0.3, 1.0):
        assert aupro(masks, maps, fpr_limit=limit) == pytest.approx(limit / 2, abs=0.02)


def test_aupro_limit_on_a_vertex_and_invalid_limits():
    # Two background pixels per image at distinct scores -> FPR vertices at multiples of 1/4.
    masks = np.zeros((2, 1, 4), bool)
    masks[:, 0, :2] = True
    maps = np.array([[[0.9, 0.3, 0.8, 0.1]], [[0.7, 0.6, 0.4, 0.2]]])
    for limit in (0.25, 0.5, 0.3, 1.0):
        assert aupro(masks, maps, fpr_limit=limit) == pytest.approx(
            brute_aupro(masks, maps, limit), abs=1e-12
        )
    for bad in (0.0, -0.1, 1.5):
        with pytest.raises(ValueError):
            aupro(masks, maps, fpr_limit=bad)
    with pytest.raises(ValueError):
        aupro(masks, maps * np.nan)


def test_aupro_undefined_cases_are_nan():
    maps = np.random.default_rng(0).random((2, 4, 4))
    assert math.isnan(aupro(np.zeros((2, 4, 4), bool), maps))
    assert math.isnan(aupro(np.ones((2, 4, 4), bool), maps))


def test_aupro_full_size_test_set():
    # A bottle-sized test set (83 maps of 256x256): the vectorised path handles it and the value
    # matches the construction (defects score higher than almost all background). Speed is a
    # benchmark concern, not asserted here: CI machines are shared and noisy.
    rng = np.random.default_rng(0)
    masks = np.zeros((83, 256, 256), bool)
    masks[:60, 100:140, 50:90] = True
    maps = (masks + rng.random(masks.shape)).astype(np.float32)
    value = aupro(masks, maps)
    assert 0.9 < value <= 1.0
    inverted = aupro(masks, -maps)
    assert inverted < 0.1


def test_module_does_not_import_torch():
    code = "import sys, rdad.model.metrics; assert 'torch' not in sys.modules, 'torch imported'"
    subprocess.run([sys.executable, "-c", code], check=True, cwd=Path(__file__).parents[2])


# ----------------------------------------------------------------------------- thresholds


def brute_f1_max(labels: np.ndarray, scores: np.ndarray) -> float:
    best = 0.0
    for t in np.unique(scores):
        pred = scores >= t
        tp = np.sum(pred & labels)
        fp = np.sum(pred & ~labels)
        fn = np.sum(~pred & labels)
        if tp:
            best = max(best, 2 * tp / (2 * tp + fp + fn))
    return best


@pytest.mark.parametrize("seed", range(5))
def test_f1_max_matches_brute_force_and_threshold_reproduces_it(seed):
    rng = np.random.default_rng(seed)
    labels = rng.random(40) < 0.4
    scores = np.round(rng.normal(labels * 1.0, 1.0), 1)
    f1, thr = f1_max(labels, scores)
    assert f1 == pytest.approx(brute_f1_max(labels, scores))
    assert threshold_metrics(labels, scores, thr)["f1"] == pytest.approx(f1)


def test_f1_max_edge_cases():
    # Best F1 predicts everything positive: threshold must fall below the minimum score.
    f1, thr = f1_max([1, 1, 1], [0.2, 0.5, 0.9])
    assert f1 == pytest.approx(1.0) and thr < 0.2
    f1, thr = f1_max([0, 1], [0.1, 0.4])
    assert f1 == pytest.approx(1.0) and 0.1 < thr < 0.4
    assert all(math.isnan(v) for v in f1_max([0, 0], [0.1, 0.4]))


def test_threshold_metrics_counts_by_hand():
    labels = [0, 0, 0, 1, 1, 1, 1]
    scores = [0.1, 0.5, 0.7, 0.5, 0.6, 0.9, 0.2]
    # score > 0.5: predicted positive = {0.7(neg), 0.6(pos), 0.9(pos)}; 0.5 itself is negative.
    m = threshold_metrics(labels, scores, 0.5)
    assert (m["tp"], m["fp"], m["tn"], m["fn"]) == (2, 1, 2, 2)
    assert m["accuracy"] == pytest.approx(4 / 7)
    assert m["precision"] == pytest.approx(2 / 3)
    assert m["recall"] == pytest.approx(1 / 2)
    assert m["f1"] == pytest.approx(2 * (2 / 3) * (1 / 2) / (2 / 3 + 1 / 2))
    assert m["false_positive_rate"] == pytest.approx(1 / 3)


def test_threshold_metrics_zero_division_is_zero_without_warnings():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        m = threshold_metrics([0, 1, 0], [0.1, 0.2, 0.3], 1.0)  # nothing predicted positive
        assert m["precision"] == 0.0 and m["f1"] == 0.0 and m["recall"] == 0.0
        m = threshold_metrics([1, 1], [0.1, 0.2], 0.0)  # no negatives at all
        assert m["false_positive_rate"] == 0.0 and m["precision"] == 1.0
        m = threshold_metrics([], [], 0.5)
        assert m["accuracy"] == 0.0 and m["tp"] == 0


# ----------------------------------------------------------------------------- per defect


def test_per_defect_auroc():
    types = ["good", "good", "good", "crack", "crack", "scratch", "scratch", "hole"]
    labels = [0, 0, 0, 1, 1, 1, 1, 1]
    scores = [0.3, 0.4, 0.5, 0.9, 0.8, 0.1, 0.2, 0.45]
    result = per_defect_auroc(types, labels, scores)
    assert list(result) == ["crack", "hole", "scratch"]
    assert result["crack"] == pytest.approx(1.0)  # above every good score
    assert result["scratch"] == pytest.approx(0.0)  # below every good score
    assert result["hole"] == pytest.approx(
        mann_whitney_auc(np.array([0, 0, 0, 1]), np.array([0.3, 0.4, 0.5, 0.45]))
    )


def test_per_defect_auroc_misaligned_labels_and_no_good():
    with pytest.raises(ValueError):
        per_defect_auroc(["good", "crack"], [1, 1], [0.1, 0.2])
    with pytest.raises(ValueError):
        per_defect_auroc(["good", "crack"], [0, 1, 1], [0.1, 0.2, 0.3])
    result = per_defect_auroc(["ok", "crack"], [0, 1], [0.1, 0.2], good_name="ok")
    assert result == {"crack": pytest.approx(1.0)}
    assert math.isnan(per_defect_auroc(["crack", "hole"], [1, 1], [0.1, 0.2])["crack"])
