"""The trainer. Reads top to bottom: data → model → optimiser → epochs → calibration → checkpoint.

All hyper-parameters live in :class:`rdad.model.checkpoint.TrainConfig`, which is saved in every
checkpoint; ``resume=True`` continues from ``OUT/last.pt`` with the same config, weights, optimiser
and RNG state, so a resumed run ends where an uninterrupted one would.
"""

from __future__ import annotations

import hashlib
import logging
import random
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from .backbones import IMAGENET, RANDOM
from .calibrate import calibrate
from .checkpoint import (
    TrainConfig,
    build_model,
    predict,
    read_checkpoint,
    save_checkpoint,
)
from .data import DatasetError, good_training_images, split_holdout
from .loss import distillation_loss
from .tiles import load_training_images, stitch_for_calibration

__all__ = ["TrainConfig", "train"]

log = logging.getLogger(__name__)


def _resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def describe_teacher_weights(source: str) -> str:
    """A stable, human-readable record of where the teacher came from (goes into metadata)."""
    if source in (IMAGENET, RANDOM):
        return source
    digest = hashlib.sha256(Path(source).read_bytes()).hexdigest()[:16]
    return f"file:{Path(source).name}:sha256={digest}"


def _rng_state() -> dict[str, Any]:
    return {
        "torch": torch.get_rng_state(),
        "numpy": np.random.get_state(),
        "python": random.getstate(),
    }


def _set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    np.random.set_state(state["numpy"])
    random.setstate(state["python"])


def train(
    cfg: TrainConfig,
    *,
    resume: bool = False,
    epochs_override: int | None = None,
    progress: bool = True,
) -> Path:
    """Train, calibrate and write ``cfg.out/checkpoint.pt``; returns its path.

    With ``resume``, everything comes from ``cfg.out/last.pt`` (config, weights, optimiser, RNG)
    except the total number of epochs, which ``epochs_override`` may raise to extend a run.
    """
    out = Path(cfg.out)
    last_path = out / "last.pt"
    resumed: dict[str, Any] | None = None
    if resume:
        if not last_path.is_file():
            raise FileNotFoundError(f"--resume: no {last_path} to continue from")
        resumed = read_checkpoint(last_path)
        cfg = TrainConfig.from_dict(resumed["config"])
        if epochs_override is not None:
            cfg.epochs = epochs_override
        print(f"resuming {last_path} at epoch {resumed['epoch']} of {cfg.epochs}")
    torch.manual_seed(cfg.seed)
    np.random.seed(cfg.seed)
    random.seed(cfg.seed)
    device = _resolve_device(cfg.device)
    use_amp = cfg.amp and device.type == "cuda"

    # --- data: decode once, hold out good images for calibration -------------------------------
    all_good = good_training_images(Path(cfg.data))
    train_paths, holdout_paths = split_holdout(
        all_good, fraction=cfg.holdout_fraction, minimum=cfg.min_holdout, seed=cfg.seed
    )
    train_set = load_training_images(train_paths, cfg)  # whole images, or tiles (tiled mode)
    holdout_set = load_training_images(holdout_paths, cfg)
    skipped = train_set.skipped + holdout_set.skipped
    if len(train_set.paths) < 2 or len(holdout_set.paths) < 2:
        raise DatasetError(f"too few readable images in {cfg.data} ({len(skipped)} unreadable)")
    print(
        f"data: {len(train_set.paths)} train + {len(holdout_set.paths)} held out for calibration"
        + (f", {len(skipped)} unreadable skipped" if skipped else "")
    )
    images = torch.from_numpy(train_set.images)

    # --- model and optimiser -------------------------------------------------------------------
    model = build_model(cfg, load_teacher=resumed is None).to(device)
    optimizer = torch.optim.Adam(model.trainable_parameters(), lr=cfg.lr, betas=cfg.betas)
    scaler = torch.amp.GradScaler("cuda", enabled=use_amp)
    start_epoch, history = 0, []
    teacher_source = describe_teacher_weights(cfg.teacher_weights)
    if resumed is not None:
        model.load_state_dict(resumed["model"])
        optimizer.load_state_dict(resumed["optimizer"])
        scaler.load_state_dict(resumed["scaler"])
        _set_rng_state(resumed["rng"])
        start_epoch, history = resumed["epoch"], resumed["history"]
        teacher_source = resumed["teacher_source"]

    # The last batch is dropped only if it would hold one image: BatchNorm cannot train on it.
    n, bs = len(images), cfg.batch_size
    drop_last = n > bs and n % bs == 1

    def state(epoch: int) -> dict[str, Any]:
        return {
            "config": cfg,
            "model": model.state_dict(),
            "optimizer": optimizer.state_dict(),
            "scaler": scaler.state_dict(),
            "rng": _rng_state(),
            "epoch": epoch,
            "history": history,
            "teacher_source": teacher_source,
        }

    # --- epochs ----------------------------------------------------------------------------------
    for epoch in range(start_epoch, cfg.epochs):
        model.train()
        order = torch.randperm(n)
        batches = [order[i : i + bs] for i in range(0, n, bs)]
        if drop_last:
            batches = batches[:-1]
        t0, seen, loss_sum = time.perf_counter(), 0, 0.0
        bar = tqdm(
            batches, desc=f"epoch {epoch + 1}/{cfg.epochs}", disable=not progress, leave=False
        )
        for idx in bar:
            batch = images[idx].to(device, non_blocking=True)
            with torch.autocast(device.type, dtype=torch.float16, enabled=use_amp):
                teacher, student = model(batch)
                loss = distillation_loss(teacher, student)
            optimizer.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()
            seen += len(idx)
            loss_value = loss.item()
            loss_sum += loss_value * len(idx)
            bar.set_postfix(
                loss=f"{loss_value:.4f}", img_s=f"{seen / (time.perf_counter() - t0):.1f}"
            )
        epoch_loss = loss_sum / max(seen, 1)
        history.append({"epoch": epoch + 1, "loss": epoch_loss})
        print(
            f"epoch {epoch + 1}/{cfg.epochs} loss {epoch_loss:.4f} "
            f"{seen / (time.perf_counter() - t0):.1f} img/s",
            flush=True,
        )
        if (epoch + 1) % cfg.checkpoint_every == 0 or epoch + 1 == cfg.epochs:
            save_checkpoint(last_path, **state(epoch + 1))

    # --- calibration on held-out good images ---------------------------------------------------
    maps, scores = predict(model, holdout_set.images, batch_size=bs, device=str(device))
    maps, scores = stitch_for_calibration(maps, scores, holdout_set, cfg)
    calibration = calibrate(
        scores,
        maps,
        threshold_percentile=cfg.threshold_percentile,
        pixel_threshold_percentile=cfg.pixel_threshold_percentile,
    )
    print(
        f"calibrated on {calibration.num_images} good images: image threshold "
        f"{calibration.image_threshold:.4f}, pixel threshold {calibration.pixel_threshold:.4f}"
    )
    final = out / "checkpoint.pt"
    model.cpu()
    save_checkpoint(
        final,
        **state(cfg.epochs),
        calibration=calibration,
        data_summary={
            "data": str(cfg.data),
            "num_train": len(train_set.paths),
            "num_holdout": len(holdout_set.paths),
            "num_skipped": len(skipped),
            "holdout": [str(p) for p in holdout_set.paths],
        },
    )
    print(f"wrote {final}")
    return final
