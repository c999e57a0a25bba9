"""The trainer. Reads top to bottom: data → model → optimiser → epochs → calibration → checkpoint.

All hyper-parameters live in :class:`rdad.model.checkpoint.TrainConfig`, which is saved in every
checkpoint; ``resume=True`` continues from ``OUT/last.pt`` with the same config, weights, optimiser
and RNG state, so a resumed run ends where an uninterrupted one would.

Under ``torchrun`` every process runs this same function on its shard of each epoch
(:mod:`model.distributed`); rank 0 alone logs, writes checkpoints and calibrates, and the files are
the same as a single process writes.
"""

from __future__ import annotations

import hashlib
import logging
import time
from pathlib import Path
from typing import Any

import torch
from tqdm import tqdm

from . import distributed
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
from .network import ReverseDistillation
from .plots import write_training_plots
from .pseudo_anomaly import PseudoAnomalies
from .rdpp_loss import RDPPLoss
from .rng import rng_state, seed_everything, set_rng_state
from .tiles import load_training_images, stitch_for_calibration

__all__ = ["TrainConfig", "train"]

log = logging.getLogger(__name__)


def describe_teacher_weights(source: str) -> str:
    """A stable, human-readable record of where the teacher came from (goes into metadata)."""
    if source in (IMAGENET, RANDOM):
        return source
    digest = hashlib.sha256(Path(source).read_bytes()).hexdigest()[:16]
    return f"file:{Path(source).name}:sha256={digest}"


def parameter_groups(
    model: ReverseDistillation, cfg: TrainConfig
) -> list[torch.nn.Parameter] | list[dict[str, Any]]:
    """What Adam trains: RD's parameter list, or for RD++ two groups — OCBE and student at
    ``lr``, the projection layers at ``rdpp_projection_lr`` (the reference code's two Adams with
    the same betas, as one optimiser)."""
    if model.projection is None:
        return model.trainable_parameters()
    distill = [*model.bottleneck.parameters(), *model.student.parameters()]
    groups: list[dict[str, Any]] = [
        {"params": distill},
        {"params": [*model.projection.parameters()], "lr": cfg.rdpp_projection_lr},
    ]
    return groups


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
    with distributed.setup(cfg.device) as proc:
        return _train(cfg, proc, resume=resume, epochs_override=epochs_override, progress=progress)


def _train(
    cfg: TrainConfig,
    proc: distributed.Process,
    *,
    resume: bool,
    epochs_override: int | None,
    progress: bool,
) -> Path:
    def say(message: str) -> None:
        if proc.is_main:
            print(message, flush=True)

    out = Path(cfg.out)
    last_path, final_path = out / "last.pt", out / "checkpoint.pt"
    resumed: dict[str, Any] | None = None
    if resume:
        if not last_path.is_file():
            raise FileNotFoundError(f"--resume: no {last_path} to continue from")
        resumed = read_checkpoint(last_path)
        cfg = TrainConfig.from_dict(resumed["config"])
        if epochs_override is not None:
            cfg.epochs = epochs_override
        say(f"resuming {last_path} at epoch {resumed['epoch']} of {cfg.epochs}")
    seed_everything(cfg.seed)
    device = proc.device
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
    say(
        f"data: {len(train_set.paths)} train + {len(holdout_set.paths)} held out for calibration"
        + (f", {len(skipped)} unreadable skipped" if skipped else "")
    )
    images = torch.from_numpy(train_set.images)

    # --- model and optimiser -------------------------------------------------------------------
    model = build_model(cfg, load_teacher=resumed is None).to(device)
    optimizer = torch.optim.Adam(parameter_groups(model, cfg), lr=cfg.lr, betas=cfg.betas)
    # RD++ (--method rd++): the projection losses and the pseudo-anomalies they need.
    rdpp_loss = RDPPLoss(cfg) if cfg.method == "rd++" else None
    pseudo = (
        PseudoAnomalies(image_size=cfg.image_size, seed=cfg.seed, strength=cfg.rdpp_noise_strength)
        if rdpp_loss is not None
        else None
    )
    scaler = torch.amp.GradScaler("cuda", enabled=use_amp)
    start_epoch, history = 0, []
    teacher_source = describe_teacher_weights(cfg.teacher_weights)
    if resumed is not None:
        model.load_state_dict(resumed["model"])
        optimizer.load_state_dict(resumed["optimizer"])
        scaler.load_state_dict(resumed["scaler"])
        set_rng_state(resumed["rng"])
        start_epoch, history = resumed["epoch"], resumed["history"]
        teacher_source = resumed["teacher_source"]
    net = distributed.wrap(model, proc)  # forward/backward through DDP; state from `model`

    # Each process takes --batch-size images per step from its shard of the epoch.
    n, bs = len(images), cfg.batch_size
    shard = distributed.sampler(n, proc, seed=cfg.seed)
    say(
        f"effective batch size {bs * proc.world_size} ({bs} per process × {proc.world_size} "
        f"process{'es' if proc.distributed else ''} on {device.type})"
    )

    def final_state(epoch: int) -> dict[str, Any]:
        """What export and eval need."""
        return {
            "config": cfg,
            "model": model.state_dict(),
            "epoch": epoch,
            "history": history,
            "teacher_source": teacher_source,
        }

    def resume_state(epoch: int) -> dict[str, Any]:
        return {
            **final_state(epoch),
            "optimizer": optimizer.state_dict(),
            "scaler": scaler.state_dict(),
            "rng": rng_state(),
        }

    # --- epochs ----------------------------------------------------------------------------------
    for epoch in range(start_epoch, cfg.epochs):
        net.train()
        shard.set_epoch(epoch)
        order = torch.tensor(list(shard), dtype=torch.long)
        batches = list(order.split(bs))
        # A batch of one image cannot train BatchNorm: drop it (same length on every process).
        if len(batches) > 1 and len(batches[-1]) == 1:
            batches = batches[:-1]
        t0, seen, loss_sum = time.perf_counter(), 0, 0.0
        bar = tqdm(
            batches,
            desc=f"epoch {epoch + 1}/{cfg.epochs}",
            disable=not (progress and proc.is_main),
            leave=False,
        )
        for idx in bar:
            batch = images[idx].to(device, non_blocking=True)
            with torch.autocast(device.type, dtype=torch.float16, enabled=use_amp):
                if rdpp_loss is None or pseudo is None:
                    teacher, student = net(batch)
                    loss = distillation_loss(teacher, student)
                else:
                    noisy = pseudo(images[idx], idx, epoch).to(device, non_blocking=True)
                    loss = rdpp_loss(*net(batch, noisy)).total
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
        loss_sum, seen_all = distributed.sum_over_processes(loss_sum, seen, proc=proc)
        epoch_loss = loss_sum / max(seen_all, 1)
        history.append({"epoch": epoch + 1, "loss": epoch_loss})
        say(
            f"epoch {epoch + 1}/{cfg.epochs} loss {epoch_loss:.4f} "
            f"{seen_all / (time.perf_counter() - t0):.1f} img/s"
        )
        if proc.is_main and ((epoch + 1) % cfg.checkpoint_every == 0 or epoch + 1 == cfg.epochs):
            save_checkpoint(last_path, **resume_state(epoch + 1))
    distributed.barrier(proc)  # last.pt is complete before any process moves on
    if not proc.is_main:
        return final_path

    # --- calibration on held-out good images (rank 0) --------------------------------------------
    maps, scores = predict(model, holdout_set.images, batch_size=bs, device=str(device))
    maps, scores = stitch_for_calibration(maps, scores, holdout_set, cfg)
    calibration = calibrate(
        scores,
        maps,
        threshold_percentile=cfg.threshold_percentile,
        pixel_threshold_percentile=cfg.pixel_threshold_percentile,
    )
    say(
        f"calibrated on {calibration.num_images} good images: image threshold "
        f"{calibration.image_threshold:.4f}, pixel threshold {calibration.pixel_threshold:.4f}"
    )
    model.cpu()
    save_checkpoint(
        final_path,
        **final_state(cfg.epochs),
        calibration=calibration,
        data_summary={
            "data": str(cfg.data),
            "num_train": len(train_set.paths),
            "num_holdout": len(holdout_set.paths),
            "num_skipped": len(skipped),
            "holdout": [str(p) for p in holdout_set.paths],
        },
    )
    resume_note = f"; resume state in {last_path.name}" if last_path.is_file() else ""
    say(f"wrote {final_path} ({_mib(final_path)}{resume_note})")
    for figure in write_training_plots(final_path.parent, history, scores, calibration):
        say(f"wrote {figure}")
    return final_path


def _mib(path: Path) -> str:
    return f"{path.stat().st_size / 2**20:.1f} MiB"
