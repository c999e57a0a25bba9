"""RD++'s training loss: RD's distillation loss plus the projection layers' three terms.

As in the reference code (``tientrandinh/Revisiting-Reverse-Distillation``, ``Revisit_RDLoss``),
per teacher scale k, with ``P`` the projection, ``T`` the frozen teacher, ``x`` a batch of
normal images and ``x̃`` the same images with simplex-noise patches (:mod:`model.pseudo_anomaly`):

* **SSOT** (self-supervised optimal transport): the debiased Sinkhorn divergence
  (``geomloss.SamplesLoss("sinkhorn", p=2, blur=0.05, scaling=0.95)``) between the batch of
  softmax-normalised, flattened ``P(T(x))_k`` — one point per image — and the same batch in a
  shuffled order;
* **reconstruction**: ``mean(1 − cos)`` over positions (cosine over channels) between
  ``P(T(x̃))_k`` and ``P(T(x))_k``: a noisy image must project onto its clean features;
* **contrast**: ``CosineEmbeddingLoss(margin=-0.5)`` between the flattened ``T(x̃)_k`` and
  ``P(T(x))_k`` with target +1, i.e. ``mean_b(1 − cos)`` (the margin acts on target −1 only).

``L_proj = (w_ssot·SSOT + w_rec·REC + w_con·CON) / (w_ssot + w_rec + w_con)`` with the reference
weights 1, 0.01, 0.1, and the total ``L = L_distill + w_proj·L_proj`` with ``w_proj = 0.2``. Every
weight is in :class:`model.config.TrainConfig`.

Note on SSOT: the two point clouds are the same batch in two orders, so the debiased divergence of
a measure with itself is zero up to rounding (about 1e-14 with gradients about 1e-15, measured):
in the reference formulation this term does not train the projection. It is kept, as the paper
and code define it, and costs one Sinkhorn solve per scale and step.
"""

from __future__ import annotations

from typing import NamedTuple

import geomloss
import torch
import torch.nn.functional as F

from .config import TrainConfig
from .loss import distillation_loss


class RDPPTerms(NamedTuple):
    """Scalars: the total and its parts (for logs and tests)."""

    total: torch.Tensor
    distill: torch.Tensor
    ssot: torch.Tensor
    reconstruct: torch.Tensor
    contrast: torch.Tensor


class RDPPLoss:
    """Callable: features of one step → :class:`RDPPTerms`. Feature lists are
    ``[(B, C1, H/4), (B, C2, H/8), (B, C3, H/16)]``."""

    def __init__(self, cfg: TrainConfig) -> None:
        self.cfg = cfg
        # Tensorized backend: B points per cloud (a batch), so the B×B cost matrix is small and
        # no KeOps compilation is needed; the other settings are the reference code's.
        self.sinkhorn = geomloss.SamplesLoss(
            loss="sinkhorn",
            p=2,
            blur=cfg.rdpp_sinkhorn_blur,
            diameter=1e7,
            scaling=0.95,
            truncate=10,
            debias=True,
            backend="tensorized",
        )

    def __call__(
        self,
        teacher: list[torch.Tensor],
        student: list[torch.Tensor],
        projected: list[torch.Tensor],
        teacher_noisy: list[torch.Tensor],
        projected_noisy: list[torch.Tensor],
    ) -> RDPPTerms:
        # In float32 even under --amp: the Sinkhorn solve's large-diameter start overflows fp16.
        with torch.autocast(projected[0].device.type, enabled=False):
            return self._terms(
                teacher,
                student,
                [p.float() for p in projected],
                [t.float() for t in teacher_noisy],
                [p.float() for p in projected_noisy],
            )

    def _terms(
        self,
        teacher: list[torch.Tensor],
        student: list[torch.Tensor],
        projected: list[torch.Tensor],
        teacher_noisy: list[torch.Tensor],
        projected_noisy: list[torch.Tensor],
    ) -> RDPPTerms:
        cfg = self.cfg
        distill = distillation_loss(teacher, student)
        zero = distill.new_zeros(())
        ssot, reconstruct, contrast = zero, zero, zero
        batch = projected[0].shape[0]
        order = torch.randperm(batch, device=projected[0].device)
        for t_noisy, p, p_noisy in zip(teacher_noisy, projected, projected_noisy, strict=True):
            flat = torch.softmax(p.flatten(1), dim=-1)
            ssot = ssot + self.sinkhorn(flat, flat[order])
            reconstruct = reconstruct + (1.0 - F.cosine_similarity(p_noisy, p, dim=1)).mean()
            cos = F.cosine_similarity(t_noisy.flatten(1), p.flatten(1), dim=1)
            contrast = contrast + (1.0 - cos).mean()
        weights = (cfg.rdpp_ssot_weight, cfg.rdpp_reconstruct_weight, cfg.rdpp_contrast_weight)
        proj = (weights[0] * ssot + weights[1] * reconstruct + weights[2] * contrast) / sum(weights)
        total = distill + cfg.rdpp_projection_weight * proj
        return RDPPTerms(total, distill, ssot, reconstruct, contrast)
