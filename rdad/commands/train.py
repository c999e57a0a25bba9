"""``rdad train``: images of good parts → a calibrated checkpoint."""

from __future__ import annotations

import argparse
from pathlib import Path

from rdad.commands._common import add_command, expected_errors, setup_logging

EXAMPLES = """\
  rdad train --data datasets/mvtec/bottle --out runs/bottle
      official defaults: wide_resnet50_2, ImageNet teacher, 256 px, 200 epochs, batch 16,
      Adam lr 0.005, float32; 10% of the good images (at least 4) are held out of training
      to calibrate the thresholds (--holdout-fraction)
  rdad train --data photos/good --out runs/line3 --backbone resnet18 --epochs 50
  rdad train --data bottle --out runs/b --backbone resnet18 --teacher-weights teacher.pth
      offline: a local torchvision state-dict file as teacher
  rdad train --data photos/5mp --out runs/hires --backbone resnet18 --tile-size 256 \
      --tile-overlap 32
      tiled mode: trains on 256-px tiles cut at native resolution; eval/serve tile and stitch
  rdad train --out runs/bottle --resume
      continue an interrupted run from runs/bottle/last.pt
"""


def register(subparsers: argparse._SubParsersAction, name: str, help_text: str) -> None:
    from rdad.model.backbones import BACKBONES
    from rdad.model.checkpoint import TrainConfig

    d = TrainConfig()
    p = add_command(
        subparsers,
        name,
        help_text,
        description="Train a Reverse Distillation model on good images (MVTec layout or a plain "
        "folder), calibrate thresholds on held-out good images, write OUT/checkpoint.pt "
        "(and OUT/last.pt every --checkpoint-every epochs).",
        examples=EXAMPLES,
    )
    p.add_argument(
        "--data", type=Path, help="MVTec-layout folder (train/good) or folder of good images"
    )
    p.add_argument("--out", type=Path, required=True, help="output folder")
    p.add_argument("--backbone", choices=sorted(BACKBONES), default=d.backbone)
    p.add_argument(
        "--image-size",
        type=int,
        help=f"square input size (multiple of 32; default {d.image_size}, or the tile size)",
    )
    tiles = p.add_argument_group("tiled mode (high-resolution images, see rdad.tiling)")
    tiles.add_argument(
        "--tile-size",
        type=int,
        default=d.tile_size,
        metavar="PX",
        help="train and infer on PX×PX tiles cut from each image instead of resizing the whole "
        "image (PX is the model input; 0 = off)",
    )
    tiles.add_argument(
        "--tile-overlap", type=int, default=d.tile_overlap, metavar="PX", help="minimum overlap"
    )
    tiles.add_argument(
        "--tile-scale",
        type=float,
        default=d.tile_scale,
        metavar="F",
        help="resize images by F before tiling (1 = native resolution, 0.5 = half)",
    )
    tiles.add_argument(
        "--tile-stitch",
        choices=("mean", "max"),
        default=d.tile_stitch,
        help="value where tiles overlap: mean (default) or max of the tiles' maps",
    )
    p.add_argument(
        "--epochs", type=int, help=f"default {d.epochs}; with --resume: extend the run to N"
    )
    p.add_argument("--batch-size", type=int, default=d.batch_size)
    p.add_argument("--lr", type=float, default=d.lr, help="Adam learning rate")
    p.add_argument(
        "--teacher-weights",
        default=d.teacher_weights,
        metavar="imagenet|random|PATH",
        help="teacher source: torchvision ImageNet weights (cache, then download), a local "
        "state-dict file, or seeded random (tests only; prints a warning)",
    )
    p.add_argument("--seed", type=int, default=d.seed)
    p.add_argument(
        "--holdout-fraction",
        type=float,
        default=d.holdout_fraction,
        help="fraction of good images kept out of training to calibrate the thresholds "
        f"(default {d.holdout_fraction:g}, at least {d.min_holdout} images; the official code "
        "trains on all of them and has no calibration)",
    )
    p.add_argument(
        "--threshold-percentile",
        type=float,
        default=d.threshold_percentile,
        help="image threshold = this percentile of held-out good scores",
    )
    p.add_argument("--pixel-threshold-percentile", type=float, default=d.pixel_threshold_percentile)
    p.add_argument("--anomaly-map-mode", choices=("sum", "product"), default=d.anomaly_map_mode)
    p.add_argument("--device", default=d.device, help="auto, cpu, cuda, cuda:1, ...")
    p.add_argument(
        "--amp",
        action="store_true",
        help="float16 mixed precision on CUDA (faster; off by default: the official code trains "
        "in float32)",
    )
    p.add_argument("--checkpoint-every", type=int, default=d.checkpoint_every, metavar="EPOCHS")
    p.add_argument(
        "--resume", action="store_true", help="continue from OUT/last.pt (its config wins)"
    )
    p.add_argument("--no-progress", action="store_true", help="no progress bar (log lines only)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from rdad.cli import CommandError
    from rdad.model.backbones import TeacherWeightsError
    from rdad.model.checkpoint import TrainConfig
    from rdad.model.data import DatasetError
    from rdad.model.train import train

    setup_logging()
    if not args.resume and args.data is None:
        raise CommandError("--data is required (unless --resume)")
    d = TrainConfig()
    cfg = TrainConfig(
        data=str(args.data or ""),
        out=str(args.out),
        backbone=args.backbone,
        image_size=args.image_size or args.tile_size or d.image_size,
        epochs=d.epochs if args.epochs is None else args.epochs,
        batch_size=args.batch_size,
        lr=args.lr,
        teacher_weights=args.teacher_weights,
        seed=args.seed,
        holdout_fraction=args.holdout_fraction,
        threshold_percentile=args.threshold_percentile,
        pixel_threshold_percentile=args.pixel_threshold_percentile,
        anomaly_map_mode=args.anomaly_map_mode,
        device=args.device,
        amp=args.amp,
        checkpoint_every=args.checkpoint_every,
        tile_size=args.tile_size,
        tile_overlap=args.tile_overlap,
        tile_scale=args.tile_scale,
        tile_stitch=args.tile_stitch,
    )
    if cfg.epochs < 0 or cfg.batch_size < 1 or cfg.checkpoint_every < 1:
        raise CommandError("--epochs must be ≥ 0, --batch-size and --checkpoint-every ≥ 1")
    with expected_errors(DatasetError, TeacherWeightsError, FileNotFoundError, ValueError):
        train(
            cfg,
            resume=args.resume,
            epochs_override=args.epochs if args.resume else None,
            progress=not args.no_progress,
        )
    return 0
