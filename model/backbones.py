"""Teacher backbones: a frozen torchvision ResNet returning layer1, layer2 and layer3 features.

Weights come from one of three explicit sources, never a silent fallback:

* ``"imagenet"`` (default): torchvision's ImageNet weights, from the local torch hub cache first,
  then downloaded. Failure stops with an error that says how to fix it.
* a path to a local state-dict file (torchvision key names; a missing ``fc.*`` head is fine).
* ``"random"``: seeded random initialisation, with a loud warning. For shape/speed tests only.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn
from torchvision import models
from torchvision.models import resnet

from rdad.torch_files import torch_file_problem


@dataclass(frozen=True)
class BackboneSpec:
    """How to build one teacher and the student/OCBE that mirror it."""

    builder: Callable[..., resnet.ResNet]
    weights: models.WeightsEnum
    block: type[resnet.BasicBlock] | type[resnet.Bottleneck]
    decoder_layers: tuple[int, int, int]
    """Blocks per decoder stage (→layer3, →layer2, →layer1 shapes), as in the official code."""
    bottleneck_blocks: int
    width_per_group: int = 64

    @property
    def channels(self) -> tuple[int, int, int]:
        e = self.block.expansion
        return (64 * e, 128 * e, 256 * e)


# A plain dict registry; names are torchvision's.
BACKBONES: dict[str, BackboneSpec] = {
    "resnet18": BackboneSpec(
        models.resnet18, models.ResNet18_Weights.IMAGENET1K_V1, resnet.BasicBlock, (2, 2, 2), 2
    ),
    "resnet34": BackboneSpec(
        models.resnet34, models.ResNet34_Weights.IMAGENET1K_V1, resnet.BasicBlock, (3, 4, 6), 3
    ),
    "resnet50": BackboneSpec(
        models.resnet50, models.ResNet50_Weights.IMAGENET1K_V1, resnet.Bottleneck, (3, 4, 6), 3
    ),
    "wide_resnet50_2": BackboneSpec(
        models.wide_resnet50_2,
        models.Wide_ResNet50_2_Weights.IMAGENET1K_V1,
        resnet.Bottleneck,
        (3, 4, 6),
        3,
        width_per_group=128,
    ),
    "wide_resnet101_2": BackboneSpec(
        models.wide_resnet101_2,
        models.Wide_ResNet101_2_Weights.IMAGENET1K_V1,
        resnet.Bottleneck,
        (3, 4, 23),
        3,
        width_per_group=128,
    ),
}

IMAGENET = "imagenet"
RANDOM = "random"


class TeacherWeightsError(RuntimeError):
    """Teacher weights could not be loaded; the message says how to fix it."""


def get_spec(name: str) -> BackboneSpec:
    try:
        return BACKBONES[name]
    except KeyError:
        raise ValueError(f"unknown backbone {name!r}; choose one of {sorted(BACKBONES)}") from None


def _imagenet_state_dict(spec: BackboneSpec, name: str) -> dict[str, torch.Tensor]:
    # get_state_dict goes through torch.hub.load_state_dict_from_url: cache first, then download.
    try:
        return spec.weights.get_state_dict(progress=True, check_hash=True)
    except Exception as exc:
        raise TeacherWeightsError(
            f"could not load ImageNet weights for {name} ({type(exc).__name__}: {exc}). "
            f"Offline? Put {spec.weights.url.rsplit('/', 1)[-1]} "
            f"in {torch.hub.get_dir()}/checkpoints, "
            "or pass --teacher-weights PATH to a local torchvision state-dict file "
            "(--teacher-weights random exists for smoke tests only)."
        ) from exc


def load_file_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """Load a torchvision-format state dict from a file (also accepts ``{"state_dict": ...}``)."""
    if not path.is_file():
        raise TeacherWeightsError(f"teacher weights file not found: {path}")
    if problem := torch_file_problem(path):
        raise TeacherWeightsError(f"teacher weights {path}: not a state-dict file: {problem}")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise TeacherWeightsError(
            f"cannot read teacher weights {path}: {type(exc).__name__}: {exc}"
        ) from exc
    if isinstance(obj, dict) and "state_dict" in obj and isinstance(obj["state_dict"], dict):
        obj = obj["state_dict"]
    if not isinstance(obj, dict):
        raise TeacherWeightsError(f"{path} does not hold a state dict")
    return {k.removeprefix("module."): v for k, v in obj.items()}


class Teacher(nn.Module):
    """Frozen ResNet trunk: ``(B, 3, H, W)`` → ``[(B, C1, H/4, W/4), (B, C2, H/8, W/8),
    (B, C3, H/16, W/16)]``.

    It stays in eval mode whatever ``.train()`` is called with, so BatchNorm statistics never drift.
    """

    def __init__(self, *, backbone: str, weights: str | None, seed: int = 0) -> None:
        """``weights``: ``"imagenet"``, ``"random"``, a file path, or ``None`` for "the caller will
        load a full state dict next" (used when rebuilding from a checkpoint)."""
        super().__init__()
        spec = get_spec(backbone)
        if weights == RANDOM:
            # One warning, no log line beside it: the commands print warnings as log lines.
            warnings.warn(
                f"teacher {backbone} uses RANDOM weights (seed {seed}): anomaly detection quality "
                "will be poor; use this for shape/speed tests only",
                stacklevel=2,
            )
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            net = spec.builder(weights=None)
        if weights == IMAGENET:
            net.load_state_dict(_imagenet_state_dict(spec, backbone))
        elif weights not in (None, RANDOM):
            state = load_file_state_dict(Path(weights))
            try:
                missing, unexpected = net.load_state_dict(state, strict=False)
            except RuntimeError as exc:  # shape mismatches raise even with strict=False
                raise TeacherWeightsError(
                    f"{weights} does not match torchvision {backbone}: wrong tensor shapes"
                ) from exc
            bad_missing = [k for k in missing if not k.startswith("fc.")]
            if bad_missing or unexpected:
                raise TeacherWeightsError(
                    f"{weights} does not match torchvision {backbone}: "
                    f"missing {bad_missing[:5]}, unexpected {list(unexpected)[:5]}"
                )
        self.stem = nn.Sequential(net.conv1, net.bn1, net.relu, net.maxpool)
        self.layer1, self.layer2, self.layer3 = net.layer1, net.layer2, net.layer3
        self.requires_grad_(False)
        super().train(False)

    def train(self, mode: bool = True) -> Teacher:
        # Frozen teacher: ignore mode so BatchNorm running stats never update during training.
        return super().train(False)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        f1 = self.layer1(self.stem(x))
        f2 = self.layer2(f1)
        f3 = self.layer3(f2)
        return [f1, f2, f3]
