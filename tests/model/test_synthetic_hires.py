"""The high-resolution synthetic set behind the tiling demonstration."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest

from rdad.model.synthetic_hires import HIRES_DEFECTS, hires_part, write_hires_dataset


@pytest.mark.parametrize("kind", HIRES_DEFECTS)
def test_defects_are_small_and_masked_exactly(kind: str) -> None:
    rng_a, rng_b = np.random.default_rng(7), np.random.default_rng(7)
    good, empty = hires_part(rng_a, 512)
    bad, mask = hires_part(rng_b, 512, kind)
    assert not empty.any()
    assert 0 < (mask > 0).sum() < 0.005 * mask.size  # a few hundred pixels of 262,144
    # Same seed: only the defect pixels (and the noise drawn after them) differ.
    diff = np.abs(bad.astype(int) - good.astype(int)).max(axis=2)
    assert diff[mask > 0].mean() > 3 * diff[mask == 0].mean()


def test_a_scuff_vanishes_when_the_image_is_shrunk() -> None:
    """The premise of the demonstration: polished-away grooves keep the mean brightness."""
    rng_a, rng_b = np.random.default_rng(3), np.random.default_rng(3)
    good, _ = hires_part(rng_a, 512)
    bad, mask = hires_part(rng_b, 512, "scuff")
    native = np.abs(bad.astype(float) - good).mean(axis=2)[mask > 0].mean()

    def small(x: np.ndarray) -> np.ndarray:
        return cv2.resize(x, (128, 128), interpolation=cv2.INTER_AREA).astype(float)

    shrunk_mask = cv2.resize(mask, (128, 128), interpolation=cv2.INTER_AREA) > 200
    shrunk = np.abs(small(bad) - small(good)).mean(axis=2)[shrunk_mask].mean()
    assert shrunk < native / 3


def test_dataset_layout(tmp_path: Path) -> None:
    root = write_hires_dataset(tmp_path, size=256, num_train=2, num_test=3)
    assert len(list((root / "train" / "good").glob("*.png"))) == 2
    for kind in HIRES_DEFECTS:
        (image,) = (root / "test" / kind).glob("*.png")
        assert (root / "ground_truth" / kind / f"{image.stem}_mask.png").is_file()
