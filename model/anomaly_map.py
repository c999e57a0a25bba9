"""Anomaly map from teacher/student features (the paper's Eq. 1), smoothed inside the graph.

Per scale: ``1 − cos`` along channels → bilinear upsample to the input size → sum (or product) over
scales → Gaussian blur with σ=4 (the official code applies scipy's ``gaussian_filter``; here it is
part of the graph so the exported ONNX model returns the final map). Image score = max of the map.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

MODES = ("sum", "product")


def gaussian_kernel_1d(sigma: float, truncate: float = 4.0) -> torch.Tensor:
    """Normalised 1-D kernel of radius ``round(truncate·σ)``, as scipy's ``gaussian_filter``."""
    radius = int(truncate * sigma + 0.5)
    x = torch.arange(-radius, radius + 1, dtype=torch.float64)
    kernel = torch.exp(-0.5 * (x / sigma) ** 2)
    return (kernel / kernel.sum()).float()


class GaussianBlur(nn.Module):
    """Separable Gaussian blur of ``(B, 1, H, W)`` with symmetric padding (scipy's default mode,
    which the official code uses).

    The kernel is built once and registered as a buffer, so it moves with ``.to()`` and is exported
    as a constant rather than rebuilt on every forward.
    """

    kernel_h: torch.Tensor
    kernel_v: torch.Tensor

    def __init__(self, sigma: float) -> None:
        super().__init__()
        if not (sigma > 0 and math.isfinite(sigma)):
            raise ValueError(f"sigma must be a positive number, got {sigma}")
        kernel = gaussian_kernel_1d(sigma)
        self.radius = (kernel.numel() - 1) // 2
        self.register_buffer("kernel_h", kernel.view(1, 1, 1, -1), persistent=False)
        self.register_buffer("kernel_v", kernel.view(1, 1, -1, 1), persistent=False)

    @staticmethod
    def _pad_symmetric(x: torch.Tensor, r: int, dim: int) -> torch.Tensor:
        # scipy's "reflect" mode repeats the edge sample (d c b a | a b c d | d c b a); torch's
        # "reflect" does not, so build the symmetric padding from flipped slices.
        head = x.narrow(dim, 0, r).flip(dim)
        tail = x.narrow(dim, x.shape[dim] - r, r).flip(dim)
        return torch.cat([head, x, tail], dim=dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, 1, H, W)`` → same shape; needs ``H, W ≥ radius`` (16 for σ=4)."""
        r = self.radius
        x = F.conv2d(self._pad_symmetric(x, r, 3), self.kernel_h.to(x.dtype))
        return F.conv2d(self._pad_symmetric(x, r, 2), self.kernel_v.to(x.dtype))


class AnomalyMap(nn.Module):
    """Teacher/student feature lists → smoothed map ``(B, H, W)`` and score ``(B,)``."""

    def __init__(self, *, image_size: int, mode: str = "sum", sigma: float = 4.0) -> None:
        super().__init__()
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
        self.image_size = image_size
        self.mode = mode
        self.blur = GaussianBlur(sigma)
        if image_size <= self.blur.radius:
            raise ValueError(f"image_size {image_size} too small for a σ={sigma} blur")

    def raw_map(self, teacher: list[torch.Tensor], student: list[torch.Tensor]) -> torch.Tensor:
        """Unsmoothed map ``(B, 1, H, W)``."""
        size = (self.image_size, self.image_size)
        total: torch.Tensor | None = None
        for t, s in zip(teacher, student, strict=True):
            distance = 1.0 - F.cosine_similarity(t.float(), s.float(), dim=1).unsqueeze(1)
            distance = F.interpolate(distance, size=size, mode="bilinear", align_corners=True)
            if total is None:
                total = distance
            else:
                total = total + distance if self.mode == "sum" else total * distance
        assert total is not None
        return total

    def forward(
        self, teacher: list[torch.Tensor], student: list[torch.Tensor]
    ) -> tuple[torch.Tensor, torch.Tensor]:
        smoothed = self.blur(self.raw_map(teacher, student)).squeeze(1)
        return smoothed, smoothed.flatten(1).amax(dim=1)
