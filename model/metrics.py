"""Evaluation metrics for anomaly detection: image/pixel AUROC, AUPRO, F1-max, threshold stats.

Pure numpy / scipy / scikit-learn on purpose: no torch import, so evaluation, the CLI and the
service can compute metrics on exported score arrays without loading a model.

Conventions: ``labels`` / ``masks`` are 1 (or True) for anomalous; higher scores mean more
anomalous; a prediction at a given threshold is ``score > threshold`` (the service's rule).
"""

from __future__ import annotations

import math

import numpy as np
from numpy.typing import ArrayLike, NDArray
from scipy import ndimage
from sklearn.metrics import precision_recall_curve, roc_auc_score

__all__ = [
    "aupro",
    "f1_max",
    "image_auroc",
    "per_defect_auroc",
    "pixel_auroc",
    "pro_curve",
    "threshold_metrics",
]

# 8-connectivity, as scipy.ndimage.label is called in the official MVTec AD evaluation code.
_STRUCTURE = np.ones((3, 3), dtype=bool)


def _as_1d(labels: ArrayLike, scores: ArrayLike) -> tuple[NDArray[np.bool_], NDArray[np.float64]]:
    y = np.asarray(labels).astype(bool).ravel()
    s = np.asarray(scores, dtype=np.float64).ravel()
    if y.shape != s.shape:
        raise ValueError(f"labels and scores differ in length: {y.shape} vs {s.shape}")
    return y, s


def _as_maps(masks: ArrayLike, maps: ArrayLike) -> tuple[NDArray[np.bool_], NDArray[np.floating]]:
    m = np.asarray(masks).astype(bool)  # 0/1 or 0/255 masks both work
    a = np.asarray(maps)
    if a.dtype.kind != "f":
        a = a.astype(np.float64)
    if m.ndim != 3 or m.shape != a.shape:
        raise ValueError(f"masks and maps must both be (N, H, W); got {m.shape} and {a.shape}")
    # NaN would silently sort to one end and distort every curve.
    if not np.isfinite(a).all():
        raise ValueError("maps contain non-finite values")
    return m, a


def image_auroc(labels: ArrayLike, scores: ArrayLike) -> float:
    """Image-level ROC AUC. ``labels`` (N,) int/bool, ``scores`` (N,) float.

    Returns NaN instead of raising when only one class is present (e.g. a category whose test
    split has no anomalies), so one degenerate category does not abort a whole benchmark.
    """
    y, s = _as_1d(labels, scores)
    if y.all() or not y.any():
        return math.nan
    return float(roc_auc_score(y, s))


def pixel_auroc(masks: ArrayLike, maps: ArrayLike) -> float:
    """Pixel-level ROC AUC pooled over the whole set. ``masks`` (N,H,W) bool, ``maps`` (N,H,W).

    All pixels are flattened into one sklearn call. sklearn sorts and keeps a few float64 copies
    of the N*H*W scores: for MVTec's largest test split (~83 images at 256x256, 5.4M pixels)
    that is a few hundred MB at most. Pass float32 maps to keep the input itself small; for much
    larger sets, downsample the maps or use a binned approximation instead.
    NaN when the masks are all-background or all-foreground.
    """
    m, a = _as_maps(masks, maps)
    y = m.ravel()
    if y.all() or not y.any():
        return math.nan
    return float(roc_auc_score(y, a.ravel()))


def pro_curve(
    masks: ArrayLike, maps: ArrayLike, *, num_thresholds: int | None = None
) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
    """Per-region-overlap curve (Bergmann et al., IJCV 2021). Returns ``(fprs, pros)``, 1-D.

    ``masks`` (N,H,W) bool, ``maps`` (N,H,W) float. At threshold t a pixel is positive iff
    ``map > t``. PRO(t) is the mean, over every 8-connected ground-truth component of every image
    (pooled over the set), of the fraction of the component that is positive; FPR(t) is the
    positive fraction of all background pixels of the set. With ``num_thresholds=None`` every
    distinct score is a threshold (exact curve); otherwise ``num_thresholds`` evenly spaced
    thresholds between the min and max score are used. The curve starts at (0, 0) and ends at
    (1, 1) with FPR non-decreasing. Empty arrays when there is no component or no background.
    """
    m, a = _as_maps(masks, maps)
    # Each component pixel carries weight 1/|component|, so the weight sum over positive pixels
    # is the sum of per-component overlaps; one global sort then gives every threshold at once.
    region_w = np.zeros(m.shape, dtype=np.float64)
    n_regions = 0
    for i in range(m.shape[0]):
        lab, k = ndimage.label(m[i], structure=_STRUCTURE)
        if k:
            w = 1.0 / np.maximum(np.bincount(lab.ravel()), 1)
            w[0] = 0.0  # label 0 is background
            region_w[i] = w[lab]
        n_regions += k
    background = ~m
    n_background = int(background.sum())
    if n_regions == 0 or n_background == 0:
        empty = np.empty(0, dtype=np.float64)
        return empty, empty

    order = np.argsort(a, axis=None)[::-1]  # descending scores
    scores = a.ravel()[order]
    fp = np.cumsum(background.ravel()[order], dtype=np.int64)
    overlap = np.cumsum(region_w.ravel()[order])
    del order, region_w
    # Tied scores cross any threshold together: keep only the last index of each tie group.
    ends = np.append(np.flatnonzero(scores[1:] != scores[:-1]), scores.size - 1)
    fprs = np.concatenate(([0.0], fp[ends] / n_background))
    # Cumulative float error could push the last point a hair above 1.
    pros = np.concatenate(([0.0], np.minimum(overlap[ends] / n_regions, 1.0)))
    if num_thresholds is None:
        return fprs, pros

    if num_thresholds < 2:
        raise ValueError("num_thresholds must be >= 2")
    distinct_asc = scores[ends][::-1]
    grid = np.linspace(distinct_asc[0], distinct_asc[-1], num_thresholds)[::-1]
    # Point index j in (fprs, pros) = number of distinct scores strictly above the threshold.
    idx = distinct_asc.size - np.searchsorted(distinct_asc, grid, side="right")
    fprs = np.concatenate(([0.0], fprs[idx], [1.0]))
    pros = np.concatenate(([0.0], pros[idx], [1.0]))
    return fprs, pros


def _area_to_limit(x: NDArray[np.float64], y: NDArray[np.float64], limit: float) -> float:
    """Trapezoid area under (x, y) from x[0] to ``limit``; x sorted, x[0] <= limit <= x[-1]."""
    j = int(np.searchsorted(x, limit, side="right"))  # first index with x > limit
    area = float(np.sum(0.5 * (y[1:j] + y[: j - 1]) * np.diff(x[:j])))
    if j < x.size and x[j - 1] < limit:
        # The limit falls inside segment j-1 -> j: interpolate y there linearly and add the
        # partial trapezoid, as the official generic_util.trapezoid does.
        y_lim = y[j - 1] + (y[j] - y[j - 1]) * (limit - x[j - 1]) / (x[j] - x[j - 1])
        area += 0.5 * (y[j - 1] + y_lim) * (limit - x[j - 1])
    return area


def aupro(
    masks: ArrayLike,
    maps: ArrayLike,
    *,
    fpr_limit: float = 0.3,
    num_thresholds: int | None = None,
) -> float:
    """Normalised area under the PRO curve up to ``fpr_limit``, in [0, 1].

    ``masks`` (N,H,W) bool, ``maps`` (N,H,W) float. See :func:`pro_curve` for the curve; it is
    integrated over FPR in [0, fpr_limit] with the trapezoid rule (interpolated at exactly
    ``fpr_limit``) and divided by ``fpr_limit``. Exact by default (all scores sorted once:
    ~1-2 s for 83 images at 256x256). NaN when there is no anomalous or no normal pixel.
    """
    if not 0.0 < fpr_limit <= 1.0:
        raise ValueError(f"fpr_limit must be in (0, 1], got {fpr_limit}")
    fprs, pros = pro_curve(masks, maps, num_thresholds=num_thresholds)
    if fprs.size == 0:
        return math.nan
    return _area_to_limit(fprs, pros, fpr_limit) / fpr_limit


def threshold_metrics(labels: ArrayLike, scores: ArrayLike, threshold: float) -> dict[str, float]:
    """Confusion counts and rates for ``score > threshold``. ``labels``, ``scores``: (N,).

    Keys: tp, fp, tn, fn (ints), accuracy, precision, recall, f1, false_positive_rate. Any
    ratio with a zero denominator is 0.0 (no warnings), so empty classes never crash a report.
    """
    y, s = _as_1d(labels, scores)
    pred = s > threshold
    tp = int(np.sum(pred & y))
    fp = int(np.sum(pred & ~y))
    tn = int(np.sum(~pred & ~y))
    fn = int(np.sum(~pred & y))

    def ratio(num: float, den: float) -> float:
        return num / den if den else 0.0

    precision = ratio(tp, tp + fp)
    recall = ratio(tp, tp + fn)
    return {
        "tp": tp,
        "fp": fp,
        "tn": tn,
        "fn": fn,
        "accuracy": ratio(tp + tn, y.size),
        "precision": precision,
        "recall": recall,
        "f1": ratio(2 * precision * recall, precision + recall),
        "false_positive_rate": ratio(fp, fp + tn),
    }


def f1_max(labels: ArrayLike, scores: ArrayLike) -> tuple[float, float]:
    """Best F1 over all thresholds and a threshold reaching it. ``labels``, ``scores``: (N,).

    sklearn's thresholds mean ``score >= t``; the returned threshold is instead the midpoint
    between that score and the next lower distinct score (or just below the minimum), so that
    ``score > threshold`` (as in :func:`threshold_metrics` and the service) gives the same F1
    with a margin on both sides. ``(nan, nan)`` when there are no positive labels.
    """
    y, s = _as_1d(labels, scores)
    if not y.any():
        return math.nan, math.nan
    precision, recall, thresholds = precision_recall_curve(y, s)
    # The last PR point (recall 0) has no threshold; drop it before the argmax.
    p, r = precision[:-1], recall[:-1]
    den = p + r
    f1 = np.divide(2 * p * r, den, out=np.zeros_like(den), where=den > 0)
    best = int(np.argmax(f1))
    hi = float(thresholds[best])
    below = s[s < hi]
    if below.size == 0:
        return float(f1[best]), float(np.nextafter(hi, -np.inf))
    lo = float(below.max())
    mid = lo + (hi - lo) / 2
    # Adjacent floats can round the midpoint up to hi, which would exclude hi itself.
    return float(f1[best]), mid if mid < hi else lo


def per_defect_auroc(
    defect_types: list[str], labels: ArrayLike, scores: ArrayLike, good_name: str = "good"
) -> dict[str, float]:
    """Image AUROC of each defect type's images against all good images.

    ``defect_types`` (N,) names, ``labels`` (N,), ``scores`` (N,). Returns ``{defect: auroc}``
    sorted by name, without ``good_name``; NaN for every type when there are no good images.
    Raises ValueError when labels disagree with the types (good must be 0, others 1), which
    usually means the three arrays are misaligned.
    """
    y, s = _as_1d(labels, scores)
    types = np.asarray(defect_types, dtype=object)
    if types.shape != y.shape:
        raise ValueError(f"defect_types and labels differ in length: {types.shape} vs {y.shape}")
    good = types == good_name
    if np.any(y == good):
        raise ValueError(f"labels disagree with defect_types ('{good_name}' must be label 0)")
    return {
        str(d): image_auroc(y[good | (types == d)], s[good | (types == d)])
        for d in sorted(set(types[~good].tolist()))
    }
