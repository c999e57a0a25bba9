"""Distillation loss of the official Reverse Distillation code.

Per scale, the teacher and student maps of each sample are flattened to one vector and compared
with cosine similarity; the loss is ``mean_b(1 − cos)`` summed over the three scales.

This differs from the paper's Eq. 2, which averages a per-pixel (channel-wise) cosine distance over
positions. The official code — whose published numbers we reproduce — uses the flattened form; it
weights large-magnitude positions more and trains more stably. The per-pixel form is still what
:mod:`rdad.model.anomaly_map` uses at inference time, as in both paper and code.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def distillation_loss(teacher: list[torch.Tensor], student: list[torch.Tensor]) -> torch.Tensor:
    """``teacher``/``student``: lists of ``(B, C_k, H_k, W_k)`` → scalar loss."""
    if len(teacher) != len(student):
        raise ValueError("teacher and student must have the same number of scales")
    total = teacher[0].new_zeros(())
    for t, s in zip(teacher, student, strict=True):
        cos = F.cosine_similarity(t.flatten(1).float(), s.flatten(1).float(), dim=1)
        total = total + (1.0 - cos).mean()
    return total
