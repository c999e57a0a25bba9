"""RD++'s multi-scale projection layers (Tien et al., CVPR 2023), between teacher and OCBE.

One small convolution stack per teacher stage maps the teacher's features to a space where
normal features are compact (the optimal-transport term) and pseudo-anomalous ones land on
their normal counterparts (the reconstruction term): see :mod:`model.rdpp_loss`. The OCBE and
the student then see projected features; the anomaly map still compares the *teacher's*
features with the student's, as in the reference code (``tientrandinh/Revisiting-Reverse-
Distillation``, ``evaluation_multi_proj``).

Per stage of C channels: four 3×3 convolutions C → C/2 → C/4 → C/2 → C, each followed by
InstanceNorm (no affine parameters, as ``nn.InstanceNorm2d``'s default) and LeakyReLU; PyTorch's
default initialisation, as the reference code (which has no init loop for these layers).
"""

from __future__ import annotations

import itertools

import torch
from torch import nn

from .backbones import BackboneSpec


def _stage(channels: int) -> nn.Sequential:
    """``(B, C, H, W)`` → ``(B, C, H, W)``."""
    widths = (channels, channels // 2, channels // 4, channels // 2, channels)
    layers: list[nn.Module] = []
    for cin, cout in itertools.pairwise(widths):
        layers += [
            nn.Conv2d(cin, cout, kernel_size=3, padding=1),
            nn.InstanceNorm2d(cout),
            nn.LeakyReLU(),
        ]
    return nn.Sequential(*layers)


class Projection(nn.Module):
    """``[(B, C1, H/4), (B, C2, H/8), (B, C3, H/16)]`` → the same shapes, projected."""

    def __init__(self, spec: BackboneSpec) -> None:
        super().__init__()
        self.stages = nn.ModuleList(_stage(c) for c in spec.channels)

    def forward(self, features: list[torch.Tensor]) -> list[torch.Tensor]:
        return [stage(f) for stage, f in zip(self.stages, features, strict=True)]
