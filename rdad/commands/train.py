"""``rdad train``: images of good parts → a calibrated checkpoint.

Argument errors (a missing data folder or teacher file, a bad number) are reported before torch is
imported: the parser is built from the torch-free :mod:`model.config`.
"""

from __future__ import annotations

import argparse
import functools
import sys
from pathlib import Path

from rdad.commands._common import add_command, expected_errors, setup_logging
from rdad.commands.argtypes import int_at_least, multiple_of, number_in
from rdad.errors import CommandError
from rdad.model.config import RUN_FILES
from rdad.torch_files import torch_file_problem

EXAMPLES = """\
  rdad train --data datasets/mvtec/bottle --out runs/bottle
      official defaults: wide_resnet50_2, ImageNet teacher, 256 px, 200 epochs, batch 16,
      Adam lr 0.005, float32; 10% of the good images (at least 4) are held out of training
      to calibrate the thresholds (--holdout-fraction)
  rdad train --data photos/good --out runs/line3 --backbone resnet18 --epochs 50
  rdad train --data bottle --out runs/b --backbone resnet18 --teacher-weights teacher.pth
      offline: a local torchvision state-dict file as teacher
  rdad train --data photos/5mp --out runs/hires --backbone resnet18 --tile-size 256 \\
      --tile-overlap 32
      tiled mode: trains on 256-px tiles cut at native resolution; eval/serve tile and stitch
  rdad train --out runs/bottle --resume
      continue an interrupted run from runs/bottle/last.pt
  rdad train --data bottle --out runs/bottle --overwrite
      train again into a folder that holds a run: its files are replaced, none is left over
"""


RDPP_OPTIONS = (
    ("--rdpp-projection-lr", "rdpp_projection_lr", "Adam learning rate of the projection layers"),
    ("--rdpp-projection-weight", "rdpp_projection_weight", "weight of the projection loss"),
    ("--rdpp-ssot-weight", "rdpp_ssot_weight", "optimal-transport term, within it"),
    ("--rdpp-reconstruct-weight", "rdpp_reconstruct_weight", "reconstruction term"),
    ("--rdpp-contrast-weight", "rdpp_contrast_weight", "contrast term"),
    ("--rdpp-noise-strength", "rdpp_noise_strength", "pseudo-anomaly noise, 0–1 intensity scale"),
)
"""``rdad train`` options for :class:`rdad.model.config.TrainConfig`'s ``rdpp_`` fields."""


def register(subparsers: argparse._SubParsersAction, name: str, help_text: str) -> None:
    from rdad.model.config import BACKBONE_NAMES, METHODS, TrainConfig

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
        "--data",
        type=Path,
        metavar="DIR",
        help="MVTec-layout folder (train/good) or folder of good images (required unless --resume)",
    )
    p.add_argument("--out", type=Path, required=True, metavar="DIR", help="output folder")
    p.add_argument("--backbone", choices=BACKBONE_NAMES, default=d.backbone, help="teacher network")
    p.add_argument(
        "--method",
        choices=METHODS,
        default=d.method,
        help="rd: Reverse Distillation (default); rd++: RD++ (Tien et al., CVPR 2023), "
        "EXPERIMENTAL: projection layers between teacher and OCBE trained with pseudo-anomalies; "
        "exported and served like rd (see docs/training.md for its measured quality)",
    )
    p.add_argument(
        "--image-size",
        type=multiple_of(32),
        metavar="PX",
        help=f"square input size in pixels, a multiple of 32 (default: {d.image_size}, or the "
        "tile size in tiled mode)",
    )
    tiles = p.add_argument_group("tiled mode (high-resolution images, see rdad.tiling)")
    tiles.add_argument(
        "--tile-size",
        type=multiple_of(32, zero=True),
        default=d.tile_size,
        metavar="PX",
        help="train and infer on PX×PX tiles cut from each image instead of resizing the whole "
        "image (PX is the model input; 0 = off)",
    )
    tiles.add_argument(
        "--tile-overlap",
        type=int_at_least(0),
        default=d.tile_overlap,
        metavar="PX",
        help="minimum overlap",
    )
    tiles.add_argument(
        "--tile-scale",
        type=number_in(0.0, 4.0),
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
    rdpp = p.add_argument_group("RD++ (--method rd++; defaults are the reference code's)")
    for flag, field, text in RDPP_OPTIONS:
        rdpp.add_argument(
            flag, type=number_in(0.0), default=getattr(d, field), metavar="F", help=text
        )
    p.add_argument(
        "--epochs",
        type=int_at_least(0),
        metavar="N",
        help=f"training epochs (default: {d.epochs}; with --resume: extend the run to N)",
    )
    p.add_argument(
        "--batch-size",
        type=int_at_least(1),
        default=d.batch_size,
        metavar="N",
        help="images per step",
    )
    p.add_argument("--lr", type=number_in(0.0), default=d.lr, help="Adam learning rate")
    p.add_argument(
        "--teacher-weights",
        default=d.teacher_weights,
        metavar="imagenet|random|PATH",
        help="teacher source: torchvision ImageNet weights (cache, then download), a local "
        "state-dict file, or seeded random (tests only; prints a warning)",
    )
    p.add_argument(
        "--seed", type=int_at_least(0), default=d.seed, help="seed for data split, init, order"
    )
    p.add_argument(
        "--holdout-fraction",
        type=number_in(0.0, 1.0, high_open=True),
        default=d.holdout_fraction,
        metavar="F",
        help="fraction of good images kept out of training to calibrate the thresholds "
        f"(default {d.holdout_fraction:g}, at least {d.min_holdout} images; the official code "
        "trains on all of them and has no calibration)",
    )
    p.add_argument(
        "--threshold-percentile",
        type=number_in(0.0, 100.0),
        default=d.threshold_percentile,
        metavar="P",
        help="image threshold = this percentile of held-out good scores",
    )
    p.add_argument(
        "--pixel-threshold-percentile",
        type=number_in(0.0, 100.0),
        default=d.pixel_threshold_percentile,
        metavar="P",
        help="pixel threshold (masks, regions) = this percentile of held-out good map values",
    )
    p.add_argument(
        "--anomaly-map-mode",
        choices=("sum", "product"),
        default=d.anomaly_map_mode,
        help="how the three scales' distance maps combine",
    )
    p.add_argument("--device", default=d.device, help="auto, cpu, cuda, cuda:1, ...")
    p.add_argument(
        "--amp",
        action="store_true",
        help="float16 mixed precision on CUDA (faster; the official code trains in float32)",
    )
    p.add_argument(
        "--checkpoint-every",
        type=int_at_least(1),
        default=d.checkpoint_every,
        metavar="EPOCHS",
        help="write OUT/last.pt (for --resume) every this many epochs",
    )
    again = p.add_mutually_exclusive_group()
    again.add_argument(
        "--resume", action="store_true", help="continue from OUT/last.pt (its config wins)"
    )
    again.add_argument(
        "--overwrite",
        action="store_true",
        help="OUT holds a run already: replace it (its files are deleted first; without this, "
        "such a folder is refused so that two runs never mix)",
    )
    p.add_argument(
        "--no-progress",
        action="store_true",
        help="no progress bar (there is none anyway when stderr is not a terminal)",
    )
    p.set_defaults(func=functools.partial(run, p))


def check_arguments(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """The mistakes that need no torch (and no data) to see, reported at once. Values out of
    range were refused by the parser already (:mod:`rdad.commands.argtypes`)."""
    if args.resume:
        if not (args.out / "last.pt").is_file():
            raise CommandError(f"--resume: no {args.out / 'last.pt'} to continue from")
        return
    if args.data is None:
        parser.error("--data is required (unless --resume)")
    if not args.data.is_dir():
        raise CommandError(f"--data {args.data}: no such folder")
    weights = args.teacher_weights
    if weights not in ("imagenet", "random"):
        if not Path(weights).is_file():
            raise CommandError(
                f"--teacher-weights {weights}: no such file (use imagenet, random or a file path)"
            )
        # Read its first bytes now: a wrong file must not cost the seconds of loading the data.
        if problem := torch_file_problem(Path(weights)):
            raise CommandError(f"--teacher-weights {weights}: not a state-dict file: {problem}")
    previous = existing_run_files(args.out)
    if previous and not args.overwrite:
        raise CommandError(
            f"--out {args.out} already holds a run ({', '.join(previous)}): choose a new folder, "
            "--resume to continue it, or --overwrite to replace it"
        )


def existing_run_files(out: Path) -> list[str]:
    """The files of an earlier ``rdad train`` in ``out``, by name."""
    return [name for name in RUN_FILES if (out / name).exists()]


def run(parser: argparse.ArgumentParser, args: argparse.Namespace) -> int:
    check_arguments(parser, args)  # before torch: a typo costs no import time
    if args.overwrite:
        # Deleted, not left to be overwritten: a shorter run writes no last.pt and an
        # --epochs 0 run no loss.png, and the old ones would pass for the new run's. (Under
        # torchrun every process gets here: one may have deleted a file already.)
        for name in existing_run_files(args.out):
            (args.out / name).unlink(missing_ok=True)

    from rdad.model.backbones import TeacherWeightsError
    from rdad.model.config import TrainConfig
    from rdad.model.data import DatasetError
    from rdad.model.train import train

    setup_logging()
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
        method=args.method,
        **{field: getattr(args, field) for _, field, _ in RDPP_OPTIONS},
    )
    with expected_errors(DatasetError, TeacherWeightsError, FileNotFoundError, ValueError):
        train(
            cfg,
            resume=args.resume,
            epochs_override=args.epochs if args.resume else None,
            progress=not args.no_progress and sys.stderr.isatty(),
        )
    return 0
