"""Parity of a faster path against the fp32 graph it came from: int8 at export
(:mod:`rdad.model.quantize`) and bf16 at load (:mod:`rdad.openvino_runtime`), judged the same way.

Two figures over a set of images, both about what a user sees rather than bit equality:

* Spearman rank correlation of the image scores: the order of parts, which is all AUROC and a
  threshold depend on;
* mean |map − map_fp32| / mean |map_fp32|: the heatmap is the same picture within that fraction of
  its typical level.

Each path has its own bounds (:class:`Bounds`): int8 keeps ~2 significant digits, bf16 ~3.

Torch-free and scipy-free (the service runs it at load, and the serving install has neither):
the rank correlation is Pearson's on average ranks, which is what ``scipy.stats.spearmanr``
computes, ties included.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Bounds:
    min_score_rank_corr: float
    max_map_error: float


INT8_BOUNDS = Bounds(min_score_rank_corr=0.90, max_map_error=0.10)
# bf16 measured on 2026-12-03 (AMD EPYC, AVX512-BF16, OpenVINO 2026.4) on trained models: rank
# correlation 0.98–1.00 and map error 0.15–0.4 % on reference_images, 1.05 % on bottle's real
# test images (more defect area); the error bound leaves about 2× room over the latter.
BF16_BOUNDS = Bounds(min_score_rank_corr=0.95, max_map_error=0.02)


@dataclass(frozen=True)
class Parity:
    images: int
    score_rank_corr: float
    map_error: float
    """mean |Δmap| / mean |fp32 map| over all pixels of all parity images."""
    max_score_diff: float
    bounds: Bounds = INT8_BOUNDS

    @property
    def ok(self) -> bool:
        # `not (x < bound)` style comparisons would let NaN through; these refuse it.
        return (
            self.score_rank_corr >= self.bounds.min_score_rank_corr
            and self.map_error <= self.bounds.max_map_error
        )

    def describe(self) -> str:
        return (
            f"score rank correlation {self.score_rank_corr:.4f} "
            f"(≥ {self.bounds.min_score_rank_corr}), relative map error {self.map_error:.4f} "
            f"(≤ {self.bounds.max_map_error}), max |Δscore| {self.max_score_diff:.3e}, "
            f"{self.images} images"
        )


def _average_ranks(values: np.ndarray) -> np.ndarray:
    """1-based ranks ``(N,)``, tied values sharing their average rank."""
    _, inverse, counts = np.unique(values, return_inverse=True, return_counts=True)
    ends = np.cumsum(counts)
    return (ends - (counts - 1) / 2.0)[inverse]


def spearman(a: np.ndarray, b: np.ndarray) -> float:
    """Spearman rank correlation of two ``(N,)`` arrays (NaN when either is constant)."""
    ra, rb = _average_ranks(np.asarray(a)), _average_ranks(np.asarray(b))
    if len(ra) < 2 or ra.std() == 0 or rb.std() == 0:
        return float("nan")
    return float(np.corrcoef(ra, rb)[0, 1])


def compare(
    ref: tuple[np.ndarray, np.ndarray],
    got: tuple[np.ndarray, np.ndarray],
    bounds: Bounds = INT8_BOUNDS,
) -> Parity:
    """Parity figures of ``got`` (maps ``(N, H, W)``, scores ``(N,)``) against the fp32 ``ref``."""
    ref_maps, ref_scores = ref
    maps, scores = got
    scale = float(np.abs(ref_maps).mean())
    error = float(np.abs(maps - ref_maps).mean()) / scale if scale > 0 else float("inf")
    return Parity(
        images=len(scores),
        score_rank_corr=spearman(ref_scores, scores),
        map_error=error,
        max_score_diff=float(np.abs(scores - ref_scores).max()),
        bounds=bounds,
    )


def reference_images(image_size: int, count: int = 16, seed: int = 0) -> np.ndarray:
    """Deterministic uint8 ``(count, S, S, 3)`` images whose scores spread: a smooth random colour
    field each, with a noise patch whose side grows from image to image, so that the score order is
    decided by the content, not by the last digits (a set of near-identical good parts would leave
    the rank correlation to rounding). Used where no real images travel with the model: the
    service checks a bf16 path at load from the graph file alone."""
    import cv2

    rng = np.random.default_rng(seed)
    images = []
    for i in range(count):
        low = rng.uniform(40, 215, (4, 4, 3)).astype(np.float32)
        image = np.asarray(
            cv2.resize(low, (image_size, image_size), interpolation=cv2.INTER_CUBIC), np.float32
        )
        side = max(2, int(image_size * 0.8 * (i + 1) / (count + 1)))
        y, x = rng.integers(0, image_size - side + 1, 2)
        image[y : y + side, x : x + side] += rng.normal(0, 60, (side, side, 3))
        images.append(np.clip(image, 0, 255).astype(np.uint8))
    return np.stack(images)
