"""RD++'s pseudo-anomalies: a patch of fractal simplex noise added to a normal training image.

As in the reference code's training dataset: per image, a patch of random height and width in
``[10, S/8)`` pixels (S the image size) at a random position gets ``strength`` × 6-octave 3-D
simplex noise (persistence 0.6, first frequency 1/32 per pixel, halved per octave; one noise
plane per colour channel) added, on the 0–1 intensity scale. The reference seeds its noise once
per dataset and samples it from the origin, so every patch is the top-left corner of one fixed
noise field; this module computes that field once (``opensimplex``'s vectorised functions) and
crops it — same noise, no per-image cost. Here images are uint8, so the noisy image is rounded
and clipped to 0–255 (the reference leaves it unclipped in float).

Randomness is a pure function of ``(seed, epoch, image index)``: the same image gets the same
patch on every process and after ``--resume``, whatever the batch order or number of processes.
"""

from __future__ import annotations

import numpy as np
import opensimplex
import torch

OCTAVES = 6
PERSISTENCE = 0.6
FREQUENCY = 32.0
MIN_PATCH = 10


def patch_limits(image_size: int) -> tuple[int, int]:
    """``[low, high)`` of a patch side: the reference's ``[10, S/8)``, kept non-empty and inside
    the image for small test sizes."""
    high = max(image_size // 8, MIN_PATCH + 1)
    high = min(high, image_size - 1)
    return min(MIN_PATCH, high - 1), high


def noise_field(seed: int, size: int) -> np.ndarray:
    """``(3, size, size)`` float64 fractal simplex noise of ``seed`` (values about ±1.5)."""
    gen = opensimplex.OpenSimplex(seed)
    field = np.zeros((3, size, size))
    axis, channels = np.arange(size, dtype=np.float64), np.arange(3, dtype=np.float64)
    frequency, amplitude = FREQUENCY, 1.0
    for _ in range(OCTAVES):
        # noise3array(x, y, z) → (z, y, x): one plane per channel.
        field += amplitude * gen.noise3array(
            axis / frequency, axis / frequency, channels / frequency
        )
        frequency /= 2
        amplitude *= PERSISTENCE
    return field


class PseudoAnomalies:
    """uint8 ``(B, S, S, 3)`` normal images → the same images with one noise patch each."""

    def __init__(self, *, image_size: int, seed: int, strength: float) -> None:
        self.image_size = image_size
        self.seed = seed
        self.low, self.high = patch_limits(image_size)
        # Scaled to uint8 units once: strength is on the 0–1 scale, as in the reference.
        self.field = (noise_field(seed, self.high) * strength * 255.0).transpose(1, 2, 0)

    def __call__(self, images: torch.Tensor, indices: torch.Tensor, epoch: int) -> torch.Tensor:
        """``indices``: ``(B,)`` the images' positions in the training set (for the RNG)."""
        noisy = images.numpy().copy()
        size = self.image_size
        for row, index in enumerate(indices.tolist()):
            rng = np.random.default_rng((self.seed, epoch, index))
            h, w = rng.integers(self.low, self.high, size=2)
            top, left = rng.integers(1, size - h), rng.integers(1, size - w)
            patch = noisy[row, top : top + h, left : left + w]
            patch[...] = np.clip(np.rint(patch + self.field[:h, :w]), 0, 255)
        return torch.from_numpy(noisy)
