"""Self-describing checkpoints: the config, weights and calibration in one file.

Two kinds, one format: ``OUT/checkpoint.pt`` (final) holds what export and eval need — config,
weights (teacher included), calibration, data summary, history; ``OUT/last.pt`` (for
``--resume``) adds the optimiser, the AMP scaler and the RNG state. Both are read with
``torch.load(weights_only=True)``: they hold only tensors and plain Python types, and a file with
pickled objects (which could run code when loaded) is refused.

A checkpoint rebuilds its model without the original command line: the config says how to build
the network and the state dict (teacher included) fills it, so no weights are fetched again.
"""

from __future__ import annotations

import os
import re
from dataclasses import asdict
from pathlib import Path
from pickle import UnpicklingError  # nosec B403 - only the error type torch raises
from typing import Any

import numpy as np
import torch

from rdad import __version__
from rdad.metadata import Calibration
from rdad.torch_files import torch_file_problem

from .config import TrainConfig
from .network import ReverseDistillation

CHECKPOINT_FORMAT = 2
"""2: plain types only (weights_only loading), optimiser and RNG in ``last.pt`` only."""
RESUME_ONLY_KEYS = ("optimizer", "scaler", "rng")


def build_model(cfg: TrainConfig, *, load_teacher: bool = True) -> ReverseDistillation:
    """Build the network of ``cfg``; ``load_teacher=False`` skips the teacher weight source
    (used when a state dict with the teacher follows)."""
    return ReverseDistillation(
        backbone=cfg.backbone,
        image_size=cfg.image_size,
        teacher_weights=cfg.teacher_weights if load_teacher else None,
        seed=cfg.seed,
        anomaly_map_mode=cfg.anomaly_map_mode,
        sigma=cfg.sigma,
        method=cfg.method,
    )


def save_checkpoint(path: Path, **payload: Any) -> None:
    """Atomic write: a crash mid-save never leaves a truncated checkpoint behind."""
    payload.setdefault("format", CHECKPOINT_FORMAT)
    payload.setdefault("rdad_version", __version__)
    if isinstance(payload.get("config"), TrainConfig):
        payload["config"] = asdict(payload["config"])
    if isinstance(payload.get("calibration"), Calibration):
        payload["calibration"] = asdict(payload["calibration"])
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    torch.save(payload, tmp)
    os.replace(tmp, path)


class CheckpointError(ValueError):
    """The file is not a checkpoint rdad can load safely; the message says why."""


def read_checkpoint(path: Path) -> dict[str, Any]:
    """Load a checkpoint with ``weights_only=True``: tensors and plain types only."""
    if not Path(path).is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    if problem := torch_file_problem(Path(path)):
        raise CheckpointError(
            f"{path} is not an rdad checkpoint (rdad train's OUT/checkpoint.pt): {problem}"
        )
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except UnpicklingError as exc:
        # torch's weights-only unpickler names the first thing it refused: a global (a class or
        # function the file wants to import and call) is the dangerous kind.
        refused = re.search(r"Unsupported global: GLOBAL (\S+)", str(exc))
        if refused is None:
            raise CheckpointError(f"cannot read checkpoint {path}: not a torch file") from None
        raise CheckpointError(
            f"refusing to load {path}: it holds a pickled Python object ({refused.group(1)}) "
            "that could run code when loaded; rdad checkpoints hold only tensors and plain "
            f"types (re-create it with rdad {__version__})"
        ) from None
    except (RuntimeError, EOFError, OSError) as exc:
        raise CheckpointError(f"cannot read checkpoint {path}: {exc}") from exc
    except Exception as exc:  # a damaged pickle trips the unpickler anywhere (KeyError, ...)
        raise CheckpointError(
            f"cannot read checkpoint {path}: damaged ({type(exc).__name__}: {exc})"
        ) from exc
    if isinstance(ckpt, dict) and "format" not in ckpt:
        raise CheckpointError(
            f"{path} is not an rdad checkpoint: a torch file without rdad's entries (a "
            "state dict, such as teacher weights? rdad train writes OUT/checkpoint.pt)"
        )
    if not isinstance(ckpt, dict) or ckpt.get("format") != CHECKPOINT_FORMAT:
        found = ckpt.get("format") if isinstance(ckpt, dict) else type(ckpt).__name__
        raise CheckpointError(
            f"{path} is not an rdad checkpoint of format {CHECKPOINT_FORMAT} (found {found!r})"
        )
    return ckpt


def load_model(path: Path) -> tuple[ReverseDistillation, dict[str, Any]]:
    """Rebuild the eval-mode model of a checkpoint; returns ``(model, checkpoint_dict)``."""
    ckpt = read_checkpoint(path)
    model = build_model(TrainConfig.from_dict(ckpt["config"]), load_teacher=False)
    model.load_state_dict(ckpt["model"])
    return model.eval(), ckpt


def checkpoint_calibration(ckpt: dict[str, Any]) -> Calibration | None:
    raw = ckpt.get("calibration")
    return Calibration(**raw) if raw else None


@torch.inference_mode()
def predict(
    model: ReverseDistillation, images: np.ndarray, *, batch_size: int = 16, device: str = "cpu"
) -> tuple[np.ndarray, np.ndarray]:
    """uint8 ``(N, S, S, 3)`` → maps ``(N, S, S)`` float32 and scores ``(N,)`` float32."""
    model.eval().to(device)
    maps, scores = [], []
    for start in range(0, len(images), batch_size):
        batch = torch.from_numpy(np.ascontiguousarray(images[start : start + batch_size]))
        out = model(batch.to(device))
        maps.append(out.anomaly_map.float().cpu().numpy())
        scores.append(out.score.float().cpu().numpy())
    if not maps:
        size = model.image_size
        return np.zeros((0, size, size), np.float32), np.zeros((0,), np.float32)
    return np.concatenate(maps), np.concatenate(scores)
