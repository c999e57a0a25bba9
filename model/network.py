"""The Reverse Distillation network: teacher → OCBE → student, plus in-graph pre/post-processing.

Input is what a camera gives and what the service sends: uint8 RGB ``(B, H, W, 3)``. Casting,
ImageNet normalisation and the NHWC→NCHW change happen inside, so the exported ONNX graph and the
trainer see exactly the same computation.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import nn

from .anomaly_map import AnomalyMap
from .backbones import Teacher, get_spec
from .bottleneck import OCBE
from .config import METHODS
from .decoder import StudentDecoder
from .projection import Projection

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class Features(NamedTuple):
    """Training output: teacher and student features, each ``[(B, C1, H/4), (B, C2, H/8),
    (B, C3, H/16)]``."""

    teacher: list[torch.Tensor]
    student: list[torch.Tensor]


class RDPPFeatures(NamedTuple):
    """RD++ training output: :class:`Features` plus what the projection losses need, each a
    list of the same three shapes (:mod:`model.rdpp_loss`)."""

    teacher: list[torch.Tensor]
    student: list[torch.Tensor]
    projected: list[torch.Tensor]
    """Projection of ``teacher`` (the OCBE's input)."""
    teacher_noisy: list[torch.Tensor]
    """Teacher features of the pseudo-anomalous images."""
    projected_noisy: list[torch.Tensor]


class InferenceOutput(NamedTuple):
    anomaly_map: torch.Tensor
    """``(B, H, W)`` float32, Gaussian-smoothed."""
    score: torch.Tensor
    """``(B,)`` float32, max of the smoothed map."""


class Preprocess(nn.Module):
    """uint8 ``(B, H, W, 3)`` RGB → normalised float ``(B, 3, H, W)``."""

    mean: torch.Tensor
    inv_std: torch.Tensor

    def __init__(self) -> None:
        super().__init__()
        mean = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1) * 255.0
        std = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1) * 255.0
        self.register_buffer("mean", mean, persistent=False)
        self.register_buffer("inv_std", 1.0 / std, persistent=False)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        x = images.permute(0, 3, 1, 2).to(self.mean.dtype)
        return (x - self.mean) * self.inv_std


class ReverseDistillation(nn.Module):
    """Features in training mode, :class:`InferenceOutput` in eval mode.

    Only the OCBE and the student decoder are trainable (and, with ``method="rd++"``, the
    projection layers between teacher and OCBE); the teacher is frozen and stays in eval mode
    (see :class:`rdad.model.backbones.Teacher`). The anomaly map compares teacher and student
    features with either method.
    """

    def __init__(
        self,
        *,
        backbone: str = "wide_resnet50_2",
        image_size: int = 256,
        teacher_weights: str | None = "imagenet",
        seed: int = 0,
        anomaly_map_mode: str = "sum",
        sigma: float = 4.0,
        method: str = "rd",
    ) -> None:
        super().__init__()
        if image_size < 32 or image_size % 32:
            raise ValueError(f"image_size must be a multiple of 32 and ≥ 32, got {image_size}")
        spec = get_spec(backbone)
        self.image_size = image_size
        self.preprocess = Preprocess()
        self.teacher = Teacher(backbone=backbone, weights=teacher_weights, seed=seed)
        self.bottleneck = OCBE(spec)
        self.student = StudentDecoder(spec)
        if method not in METHODS:
            raise ValueError(f"method must be one of {METHODS}, got {method!r}")
        # Built after the student so that a seed gives RD++ the same OCBE/student start as RD.
        self.projection = Projection(spec) if method == "rd++" else None
        self.anomaly_map = AnomalyMap(image_size=image_size, mode=anomaly_map_mode, sigma=sigma)

    def trainable_parameters(self) -> list[nn.Parameter]:
        """OCBE and student (and projection, RD++) parameters, in that order."""
        projection = [] if self.projection is None else [*self.projection.parameters()]
        return [*self.bottleneck.parameters(), *self.student.parameters(), *projection]

    def _teacher(self, images: torch.Tensor) -> list[torch.Tensor]:
        with torch.no_grad():
            return self.teacher(self.preprocess(images))

    def features(self, images: torch.Tensor) -> Features:
        teacher = self._teacher(images)
        code = teacher if self.projection is None else self.projection(teacher)
        student = self.student(self.bottleneck(code))
        return Features(teacher, student)

    def forward(
        self, images: torch.Tensor, noisy: torch.Tensor | None = None
    ) -> Features | RDPPFeatures | InferenceOutput:
        """``images``: uint8 ``(B, H, W, 3)`` RGB at ``image_size``; ``noisy`` (RD++ training
        only): the same images with pseudo-anomalies, same shape."""
        if self.training and self.projection is not None:
            if noisy is None:
                raise ValueError("RD++ training needs the pseudo-anomalous images (noisy=...)")
            teacher = self._teacher(images)
            projected = self.projection(teacher)
            student = self.student(self.bottleneck(projected))
            teacher_noisy = self._teacher(noisy)
            projected_noisy = self.projection(teacher_noisy)
            return RDPPFeatures(teacher, student, projected, teacher_noisy, projected_noisy)
        teacher, student = self.features(images)
        if self.training:
            return Features(teacher, student)
        anomaly_map, score = self.anomaly_map(teacher, student)
        return InferenceOutput(anomaly_map, score)
