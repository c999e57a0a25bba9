"""Built-in synthetic data: a small MVTec-layout set of "parts" made from code, no download.

Good images are a textured disc (a bottle seen from above) on a dark background with small random
shifts, lighting changes and sensor noise; defects are scratches, dark spots and missing chunks,
with exact ground-truth masks. The default demo model and the fast tests train on it.
"""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

DEFECTS = ("scratch", "spot", "chunk")


def good_part(rng: np.random.Generator, size: int) -> np.ndarray:
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    cx, cy = size / 2 + rng.normal(0, size * 0.01, 2)
    radius = size * (0.36 + rng.normal(0, 0.005))
    r = np.hypot(xx - cx, yy - cy)
    brightness = rng.uniform(0.85, 1.05)
    # Concentric rings give the part a regular texture the model can learn.
    rings = 0.5 + 0.25 * np.cos(r / size * 40.0) + 0.1 * np.cos(r / size * 9.0)
    part = np.clip(rings * brightness, 0, 1)
    base = np.where(r < radius, part, 0.08)[..., None] * np.array([0.55, 0.75, 0.35], np.float32)
    noise = rng.normal(0, 0.015, (size, size, 3)).astype(np.float32)
    return np.clip((base + noise) * 255.0, 0, 255).astype(np.uint8)


def add_defect(
    rng: np.random.Generator, image: np.ndarray, kind: str
) -> tuple[np.ndarray, np.ndarray]:
    size = image.shape[0]
    mask = np.zeros((size, size), np.uint8)
    c = rng.uniform(size * 0.3, size * 0.7, 2).astype(int)
    if kind == "scratch":
        end = c + rng.integers(-size // 4, size // 4, 2)
        cv2.line(
            mask, tuple(int(v) for v in c), tuple(int(v) for v in end), 255, max(1, size // 40)
        )
        colour = (235, 235, 235)
    elif kind == "spot":
        cv2.circle(mask, tuple(int(v) for v in c), max(2, size // 14), 255, -1)
        colour = (20, 15, 10)
    else:
        axes = (max(3, size // 9), max(2, size // 16))
        cv2.ellipse(
            mask, tuple(int(v) for v in c), axes, float(rng.uniform(0, 180)), 0, 360, 255, -1
        )
        colour = (120, 40, 160)
    out = image.copy()
    out[mask > 0] = colour
    return out, mask


def defective_part(rng: np.random.Generator, size: int, kind: str) -> tuple[np.ndarray, np.ndarray]:
    """A good part with one defect of ``kind`` (one of :data:`DEFECTS`): image and 0/255 mask."""
    if kind not in DEFECTS:
        raise ValueError(f"unknown defect {kind!r}; choose one of {DEFECTS}")
    return add_defect(rng, good_part(rng, size), kind)


def save_png(path: Path, array: np.ndarray) -> None:
    """Write an RGB ``[H, W, 3]`` or grey ``[H, W]`` uint8 array as PNG, creating its folder."""
    path.parent.mkdir(parents=True, exist_ok=True)
    bgr = cv2.cvtColor(array, cv2.COLOR_RGB2BGR) if array.ndim == 3 else array
    if not cv2.imwrite(str(path), bgr):
        raise OSError(f"cannot write {path}")


def write_synthetic_dataset(
    root: Path, *, image_size: int = 64, num_train: int = 24, num_test: int = 8, seed: int = 0
) -> Path:
    """Write ``root/{train/good, test/good, test/<defect>, ground_truth/<defect>}`` PNGs.

    ``num_test`` good test images plus ``num_test`` defective ones spread over :data:`DEFECTS`.
    Returns ``root``. Deterministic for a given seed.
    """
    rng = np.random.default_rng(seed)
    root = Path(root)

    for i in range(num_train):
        save_png(root / "train" / "good" / f"{i:03d}.png", good_part(rng, image_size))
    for i in range(num_test):
        save_png(root / "test" / "good" / f"{i:03d}.png", good_part(rng, image_size))
    for i in range(num_test):
        kind = DEFECTS[i % len(DEFECTS)]
        image, mask = add_defect(rng, good_part(rng, image_size), kind)
        save_png(root / "test" / kind / f"{i:03d}.png", image)
        save_png(root / "ground_truth" / kind / f"{i:03d}_mask.png", mask)
    return root
