"""The training configuration, torch-free: the CLI reads its defaults (and the backbone names) to
build ``rdad train --help`` and to reject bad arguments before torch is imported."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

BACKBONE_NAMES = ("resnet18", "resnet34", "resnet50", "wide_resnet50_2", "wide_resnet101_2")
"""The keys of :data:`model.backbones.BACKBONES` (a test keeps the two equal)."""
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

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> TrainConfig:
        known = {k: v for k, v in raw.items() if k in cls.__dataclass_fields__}
        if "betas" in known:
            known["betas"] = tuple(known["betas"])
        return cls(**known)
