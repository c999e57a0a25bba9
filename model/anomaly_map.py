"""Anomaly map from teacher/student features (the paper's Eq. 1), smoothed inside the graph.

Per scale: ``1 − cos`` along channels → bilinear upsample to the input size → sum (or product) over
scales → Gaussian blur with σ=4 (the official code applies scipy's ``gaussian_filter``; here it is
part of the graph so the exported ONNX model returns the final map). Image score = max of the map.

Upsampling and blur are both linear along each image axis, so each is a matrix: ``A`` (bilinear,
``align_corners=True``) and ``G`` (the Gaussian with scipy's symmetric edges). A map ``d`` of one
scale becomes ``A d Aᵀ`` and is blurred as ``G x Gᵀ``; in ``sum`` mode the blur distributes over
the sum, so each scale costs two small matrix products with ``G A`` folded once:
``Σᵢ (G Aᵢ) dᵢ (G Aᵢ)ᵀ``. This is the same arithmetic as resize-then-convolve (to float rounding,
checked against torch's ``interpolate`` and scipy in the tests), but runs as GEMMs: runtimes have
fast matrix kernels in every precision, while a one-channel 33-tap convolution and a one-channel
resize were the slowest part of the int8 graph on CPU (docs/performance.md, "bf16 and AMX").
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


def interpolation_matrix(n: int, size: int) -> torch.Tensor:
    """``(size, n)`` float64 ``A`` with ``A @ x`` = bilinear upsampling of ``x`` ``(n, …)`` along
    its first axis with ``align_corners=True`` (what ``F.interpolate`` does per axis)."""
    if n < 1 or size < 1:
        raise ValueError(f"sizes must be positive, got n={n}, size={size}")
    matrix = torch.zeros(size, n, dtype=torch.float64)
    if n == 1:
        return matrix.fill_(1.0)
    rows = torch.arange(size)
    position = rows.to(torch.float64) * (n - 1) / max(size - 1, 1)
    left = position.floor().long().clamp(max=n - 2)
    weight = position - left
    matrix.index_put_((rows, left), 1.0 - weight, accumulate=True)
    matrix.index_put_((rows, left + 1), weight, accumulate=True)
    return matrix


def blur_matrix(size: int, sigma: float) -> torch.Tensor:
    """``(size, size)`` float64 ``G`` with ``G @ x`` = scipy's ``gaussian_filter1d(x, sigma,
    axis=0, mode="reflect")``: its edges repeat the edge sample (d c b a | a b c d | d c b a)."""
    kernel = gaussian_kernel_1d(sigma).double()
    radius = (kernel.numel() - 1) // 2
    if size <= radius:
        raise ValueError(f"size {size} too small for a σ={sigma} blur (radius {radius})")
    rows = torch.arange(size)
    matrix = torch.zeros(size, size, dtype=torch.float64)
    for offset in range(-radius, radius + 1):
        source = rows + offset
        source = torch.where(source < 0, -source - 1, source)
        source = torch.where(source >= size, 2 * size - source - 1, source)
        matrix.index_put_((rows, source), kernel[offset + radius].expand(size), accumulate=True)
    return matrix


class AnomalyMap(nn.Module):
    """Teacher/student feature lists → smoothed map ``(B, H, W)`` and score ``(B,)``.

    Feature maps of any size work (each ``(B, C, h, w)``); their matrices are built on first use
    and kept (float32, not in the state dict: they follow from ``image_size`` and ``sigma``).
    """

    def __init__(self, *, image_size: int, mode: str = "sum", sigma: float = 4.0) -> None:
        super().__init__()
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
        if not (sigma > 0 and math.isfinite(sigma)):
            raise ValueError(f"sigma must be a positive number, got {sigma}")
        self.image_size = image_size
        self.mode = mode
        self.sigma = sigma
        self._blur = blur_matrix(image_size, sigma)  # raises when image_size is too small
        self._matrices: dict[tuple[int | None, torch.device], torch.Tensor] = {}

    def _matrix(self, n: int | None, device: torch.device) -> torch.Tensor:
        """float32 on ``device``, built once per (size, device): ``(image_size, n)`` ``G A`` in
        sum mode (upsample, then blur), ``A`` in product mode; ``n=None``: the blur ``G``."""
        key = (n, device)
        if key not in self._matrices:
            # Plain tensors even when first needed under inference_mode (evaluation before an
            # export that traces with autograd on).
            with torch.inference_mode(False):
                if n is None:
                    matrix = self._blur
                else:
                    matrix = interpolation_matrix(n, self.image_size)
                    if self.mode == "sum":
                        matrix = self._blur @ matrix
                self._matrices[key] = matrix.float().to(device)
        return self._matrices[key]

    @staticmethod
    def _both_axes(matrix_h: torch.Tensor, x: torch.Tensor, matrix_w: torch.Tensor) -> torch.Tensor:
        """``(B, 1, h, w)`` → ``(B, 1, H, W)``: ``M_h x M_wᵀ`` per image."""
        return torch.matmul(torch.matmul(matrix_h, x), matrix_w.transpose(0, 1))

    def forward(
        self, teacher: list[torch.Tensor], student: list[torch.Tensor]
    ) -> tuple[torch.Tensor, torch.Tensor]:
        total: torch.Tensor | None = None
        for t, s in zip(teacher, student, strict=True):
            distance = 1.0 - F.cosine_similarity(t.float(), s.float(), dim=1).unsqueeze(1)
            # Python ints: while exporting, shapes are traced tensors, and these sizes are fixed
            # by image_size anyway (the matrices become constants of the graph).
            h, w = (int(size) for size in distance.shape[-2:])
            scaled = self._both_axes(
                self._matrix(h, distance.device), distance, self._matrix(w, distance.device)
            )
            if total is None:
                total = scaled
            else:
                total = total + scaled if self.mode == "sum" else total * scaled
        assert total is not None
        if self.mode == "product":  # the product is not linear: blur after it
            blur = self._matrix(None, total.device)
            total = self._both_axes(blur, total, blur)
        smoothed = total.squeeze(1)
        return smoothed, smoothed.flatten(1).amax(dim=1)
