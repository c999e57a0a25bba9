"""The training configuration, torch-free: the CLI reads its defaults (and the backbone names) to
build ``rdad train --help`` and to reject bad arguments before torch is imported."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

BACKBONE_NAMES = ("resnet18", "resnet34", "resnet50", "wide_resnet50_2", "wide_resnet101_2")
"""The keys of :data:`model.backbones.BACKBONES` (a test keeps the two equal)."""
METHODS = ("rd", "rd++")
"""``rd``: Reverse Distillation (the default); ``rd++``: RD++ (:mod:`model.projection`)."""
RUN_FILES = ("checkpoint.pt", "last.pt", "loss.png", "calibration.png")
"""Every file ``rdad train`` writes into its output folder (a test keeps this list complete):
what marks a folder as holding a run, and what ``--overwrite`` deletes."""


@dataclass
class TrainConfig:
    """Every hyper-parameter of a run. Defaults are the paper's / official code's."""

    data: str = ""
    out: str = "runs/rdad"
    backbone: str = "wide_resnet50_2"
    image_size: int = 256
    epochs: int = 200
    batch_size: int = 16
    lr: float = 0.005
    betas: tuple[float, float] = (0.5, 0.999)
    teacher_weights: str = "imagenet"
    seed: int = 0
    holdout_fraction: float = 0.1
    min_holdout: int = 4
    threshold_percentile: float = 99.0
    pixel_threshold_percentile: float = 99.9
    anomaly_map_mode: str = "sum"
    sigma: float = 4.0
    device: str = "auto"
    amp: bool = False
    """Mixed precision (float16 autocast + grad scaling), opt-in, CUDA only; the official code
    trains in float32."""
    checkpoint_every: int = 10
    tile_size: int = 0
    """0: whole images resized to ``image_size``. >0: tiled mode (:mod:`rdad.tiling`), tiles of
    this many pixels (equal to ``image_size``) cut from images scaled by ``tile_scale``."""
    tile_overlap: int = 0
    tile_scale: float = 1.0
    tile_stitch: str = "mean"
    method: str = "rd"
    """One of :data:`METHODS`; checkpoints written before RD++ existed have no ``method``: RD."""
    rdpp_projection_lr: float = 0.001
    """RD++ only, like every ``rdpp_`` field; defaults are the reference code's. Adam learning
    rate of the projection layers (OCBE and student keep ``lr``)."""
    rdpp_projection_weight: float = 0.2
    """``L = L_distill + rdpp_projection_weight · L_proj``."""
    rdpp_ssot_weight: float = 1.0
    rdpp_reconstruct_weight: float = 0.01
    rdpp_contrast_weight: float = 0.1
    """``L_proj`` = the three terms weighted by these, divided by their sum."""
    rdpp_sinkhorn_blur: float = 0.05
    rdpp_noise_strength: float = 0.2
    """Amplitude of the pseudo-anomaly simplex noise on the 0–1 intensity scale."""

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> TrainConfig:
        known = {k: v for k, v in raw.items() if k in cls.__dataclass_fields__}
        if "betas" in known:
            known["betas"] = tuple(known["betas"])
        return cls(**known)
