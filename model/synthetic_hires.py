"""A synthetic high-resolution inspection set: finely machined parts with *small* defects.

Where :mod:`model.synthetic` draws defects that cover a good part of a small image, these parts
are large (1024×1024 by default, a "5 MP camera" in miniature) and their defects are a few pixels
wide, the situation tiling (:mod:`rdad.tiling`) exists for:

* the part is a metal disc with fine turning grooves (period ~4 px) under smooth, varying light,
  with sensor noise;
* ``scratch``: a 2-px-wide line, 20–40 px long, slightly brighter than the surface;
* ``pit``: a dark dot of radius 3–5 px;
* ``scuff``: a 16–28 px patch where the grooves are polished away — the patch keeps the surface's
  local mean brightness, so it vanishes when the image is shrunk (area averaging erases the
  grooves everywhere) but is plain at native resolution.

Masks are exact. Deterministic for a given seed.
"""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

from .synthetic import save_png

HIRES_DEFECTS = ("scratch", "pit", "scuff")


def _surface(rng: np.random.Generator, size: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(grooved, smooth, on_part)``: float32 grey images in [0, 1] and the part's mask."""
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    cx, cy = size / 2 + rng.normal(0, size * 0.005, 2)
    r = np.hypot(xx - cx, yy - cy)
    radius = size * (0.45 + rng.normal(0, 0.003))
    period = 4.0 + rng.normal(0, 0.03)
    light = 0.55 + 0.12 * np.cos((xx - yy) / size * 2.0 + rng.uniform(0, 6.28))
    light *= rng.uniform(0.92, 1.05)
    grooves = 0.16 * np.cos(2 * np.pi * r / period + rng.uniform(0, 6.28))
    on_part = r < radius
    smooth = np.where(on_part, light, 0.06).astype(np.float32)
    grooved = np.where(on_part, light + grooves, 0.06).astype(np.float32)
    return grooved, smooth, on_part


def hires_part(
    rng: np.random.Generator, size: int = 1024, defect: str | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """One part: RGB uint8 ``(size, size, 3)`` and its uint8 defect mask (255 = defect)."""
    grooved, smooth, on_part = _surface(rng, size)
    mask = np.zeros((size, size), np.uint8)
    image = grooved
    if defect is not None:
        # Somewhere on the part, away from its rim.
        angle, dist = rng.uniform(0, 2 * np.pi), rng.uniform(0, size * 0.35)
        c = (int(size / 2 + dist * np.cos(angle)), int(size / 2 + dist * np.sin(angle)))
        if defect == "scratch":
            length, direction = rng.uniform(20, 40), rng.uniform(0, np.pi)
            end = (int(c[0] + length * np.cos(direction)), int(c[1] + length * np.sin(direction)))
            cv2.line(mask, c, end, 255, 2)
            image = np.where(mask > 0, grooved + 0.12, grooved)
        elif defect == "pit":
            cv2.circle(mask, c, int(rng.integers(3, 6)), 255, -1)
            image = np.where(mask > 0, grooved * 0.55, grooved)
        elif defect == "scuff":
            axes = (int(rng.integers(8, 15)), int(rng.integers(8, 15)))
            cv2.ellipse(mask, c, axes, float(rng.uniform(0, 180)), 0, 360, 255, -1)
            image = np.where(mask > 0, smooth, grooved)
        else:
            raise ValueError(f"unknown defect {defect!r}; choose from {HIRES_DEFECTS}")
        mask &= np.where(on_part, 255, 0).astype(np.uint8)
    noise = rng.normal(0, 0.012, (size, size)).astype(np.float32)
    grey = np.clip(image + noise, 0, 1)
    tint = np.array([0.92, 0.96, 1.0], np.float32)  # slightly blue steel
    rgb = np.clip(grey[..., None] * tint * 255.0, 0, 255).astype(np.uint8)
    return rgb, mask


def write_hires_dataset(
    root: Path, *, size: int = 1024, num_train: int = 16, num_test: int = 12, seed: int = 0
) -> Path:
    """MVTec layout under ``root``: ``num_train`` good parts to train on, ``num_test`` good test
    parts and ``num_test`` defective ones (spread over :data:`HIRES_DEFECTS`) with masks."""
    rng = np.random.default_rng(seed)
    root = Path(root)

    for i in range(num_train):
        save_png(root / "train" / "good" / f"{i:03d}.png", hires_part(rng, size)[0])
    for i in range(num_test):
        save_png(root / "test" / "good" / f"{i:03d}.png", hires_part(rng, size)[0])
    for i in range(num_test):
        kind = HIRES_DEFECTS[i % len(HIRES_DEFECTS)]
        image, mask = hires_part(rng, size, kind)
        save_png(root / "test" / kind / f"{i:03d}.png", image)
        save_png(root / "ground_truth" / kind / f"{i:03d}_mask.png", mask)
    return root
