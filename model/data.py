"""Datasets on disk: the MVTec AD layout and plain folders of good images.

Images are decoded once, up front, through :mod:`rdad.imaging` — the same code the service uses —
and kept in memory as uint8 ``(N, S, S, 3)``: a few hundred 256×256 images are tens of MB, and
decoding a 900×900 PNG costs more than a training step on it, so decoding every epoch would waste
most of the run. Unreadable files are reported by name and skipped; they never crash a run.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from rdad.imaging import ImageDecodeError, load_image, resize_rgb

from .synthetic import good_part

log = logging.getLogger(__name__)

IMAGE_EXTENSIONS = frozenset({".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp"})
GOOD = "good"


class DatasetError(ValueError):
    """The folder does not hold a usable dataset; the message says what is missing."""


@dataclass(frozen=True)
class Sample:
    path: Path
    defect: str
    """``"good"`` or the defect type (the folder name under ``test/``)."""
    mask_path: Path | None = None

    @property
    def label(self) -> int:
        return int(self.defect != GOOD)


@dataclass
class LoadedImages:
    images: np.ndarray
    """uint8 ``(N, S, S, 3)`` RGB."""
    paths: list[Path]
    skipped: list[tuple[Path, str]] = field(default_factory=list)


def _image_files(folder: Path) -> list[Path]:
    return sorted(
        p for p in folder.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS
    )


def is_mvtec_layout(root: Path) -> bool:
    return (root / "train" / GOOD).is_dir()


def good_training_images(root: Path) -> list[Path]:
    """``root/train/good`` for the MVTec layout, else every image below ``root`` (recursively)."""
    root = Path(root)
    if not root.is_dir():
        raise DatasetError(f"data folder not found: {root}")
    files = _image_files(root / "train" / GOOD) if is_mvtec_layout(root) else _image_files(root)
    if not files:
        raise DatasetError(f"no images ({', '.join(sorted(IMAGE_EXTENSIONS))}) found under {root}")
    return files


def list_test_samples(root: Path) -> list[Sample]:
    """All test images of an MVTec-layout folder with their defect type and mask path."""
    test_root = Path(root) / "test"
    if not test_root.is_dir():
        raise DatasetError(f"{root} has no test/ folder (MVTec layout: test/<defect>/*.png)")
    samples: list[Sample] = []
    for defect_dir in sorted(p for p in test_root.iterdir() if p.is_dir()):
        for path in _image_files(defect_dir):
            mask: Path | None = None
            if defect_dir.name != GOOD:
                candidate = Path(root) / "ground_truth" / defect_dir.name / f"{path.stem}_mask.png"
                mask = candidate if candidate.is_file() else None
            samples.append(Sample(path, defect_dir.name, mask))
    if not samples:
        raise DatasetError(f"no test images under {test_root}")
    return samples


def load_images(paths: Sequence[Path], image_size: int, *, workers: int = 4) -> LoadedImages:
    """Decode and resize ``paths`` to ``(N, S, S, 3)``; broken files are skipped and reported."""

    def load(path: Path) -> np.ndarray | str:
        try:
            return resize_rgb(load_image(path, min_side=image_size), image_size)
        except ImageDecodeError as exc:
            return str(exc)

    # cv2 releases the GIL while decoding, so threads give real parallelism here.
    with ThreadPoolExecutor(max_workers=workers) as pool:
        results = list(pool.map(load, paths))
    kept, arrays, skipped = [], [], []
    for path, result in zip(paths, results, strict=True):
        if isinstance(result, str):
            skipped.append((Path(path), result))
            log.warning("skipping unreadable image %s: %s", path, result)
        else:
            kept.append(Path(path))
            arrays.append(result)
    if skipped:
        log.warning("skipped %d of %d images (unreadable)", len(skipped), len(paths))
    empty = np.zeros((0, image_size, image_size, 3), np.uint8)
    return LoadedImages(np.stack(arrays) if arrays else empty, kept, skipped)


def load_mask(path: Path | None, image_size: int) -> np.ndarray:
    """Ground-truth mask as bool ``(S, S)``; all-False when there is no mask file (good image).

    Resized exactly as the official RD4AD evaluation does (torchvision ``Resize`` on the PIL image,
    ``ToTensor``, ``> 0.5``): Pillow's bilinear filter widens with the scale factor, so a downscale
    averages over the area each output pixel covers instead of sampling a few input pixels. A
    defect then counts where it covers more than half an output pixel, wherever it falls on the
    grid; point sampling (``cv2.INTER_LINEAR``) made a thin scratch appear or vanish, or break into
    dashes, depending on its sub-pixel position.
    """
    if path is None:
        return np.zeros((image_size, image_size), dtype=bool)
    try:
        with Image.open(path) as img:
            gray = img.convert("L")
    except (OSError, ValueError) as exc:
        raise DatasetError(f"cannot read mask {path}: {exc}") from exc
    resized = np.asarray(gray.resize((image_size, image_size), Image.Resampling.BILINEAR))
    return resized > 127  # ToTensor's v / 255 > 0.5


def split_holdout(
    paths: Sequence[Path], *, fraction: float, minimum: int, seed: int
) -> tuple[list[Path], list[Path]]:
    """Seeded split of good images into ``(train, holdout)``; the holdout calibrates thresholds."""
    if not 0.0 <= fraction < 1.0:
        raise ValueError(f"holdout fraction must be in [0, 1), got {fraction}")
    n = len(paths)
    n_holdout = max(minimum, round(n * fraction))
    if n - n_holdout < 2:
        raise DatasetError(
            f"only {n} good images: need at least {n_holdout + 2} "
            f"({n_holdout} held out for calibration + 2 to train)"
        )
    order = np.random.default_rng(seed).permutation(n)
    holdout = sorted(paths[i] for i in order[:n_holdout])
    train = sorted(paths[i] for i in order[n_holdout:])
    return train, holdout


def parity_images(ckpt: Mapping[str, Any], image_size: int, count: int = 4) -> np.ndarray:
    """uint8 ``(count, S, S, 3)``: the run's held-out training images if still readable (the
    export's and the int8 check's parity images), else synthetic good parts."""
    held = [Path(p) for p in ckpt.get("data_summary", {}).get("holdout", [])][:count]
    loaded = load_images(held, image_size).images if held else np.zeros((0,))
    if len(loaded) >= 2:
        return loaded
    rng = np.random.default_rng(0)
    return np.stack([good_part(rng, image_size) for _ in range(count)])
