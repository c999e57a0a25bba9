"""``rdad export``: checkpoint → one ONNX file with its metadata, after a parity check."""

from __future__ import annotations

import argparse
from pathlib import Path

from rdad.commands._common import add_command, expected_errors, setup_logging

EXAMPLES = """\
  rdad export runs/bottle/checkpoint.pt --out models/bottle.onnx
  rdad export runs/bottle/checkpoint.pt --out models/bottle_fp16.onnx --precision fp16
      half-precision graph (float32/uint8 I/O) for GPUs
  rdad export runs/bottle/checkpoint.pt --out models/bottle_int8.onnx --precision int8 \
      --calibration-data datasets/mvtec/bottle
      int8 convolutions (static QDQ) for CPUs, calibrated on good images; map tail stays fp32
"""


def register(subparsers: argparse._SubParsersAction, name: str, help_text: str) -> None:
    p = add_command(
        subparsers,
        name,
        help_text,
        description="Export a calibrated checkpoint to ONNX: uint8 (B,H,W,3) RGB in, anomaly_map "
        "(B,H,W) and score (B) out, metadata (calibration, backbone, teacher, data) inside. "
        "The file is written only if torch and ONNX Runtime agree (parity check).",
        examples=EXAMPLES,
    )
    p.add_argument("checkpoint", type=Path, help="OUT/checkpoint.pt from rdad train")
    p.add_argument("--out", type=Path, required=True, metavar="FILE", help="ONNX file to write")
    p.add_argument(
        "--precision",
        choices=("fp32", "fp16", "int8"),
        default="fp32",
        help="graph precision (fp16: half-precision weights for GPUs; int8: quantised for CPUs)",
    )
    p.add_argument(
        "--calibration-data",
        type=Path,
        help="int8 only: folder of good images (MVTec layout: its train/good) to calibrate on",
    )
    p.add_argument(
        "--calibration-count",
        type=int,
        default=32,
        help="int8 only: how many calibration images (default 32, spread over the folder)",
    )
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from rdad.model.export import ExportError, export_onnx
    from rdad.model.quantize import QuantizationError

    setup_logging()
    with expected_errors(ExportError, QuantizationError, FileNotFoundError, ValueError):
        export_onnx(
            args.checkpoint,
            args.out,
            args.precision,
            calibration_data=args.calibration_data,
            calibration_count=args.calibration_count,
        )
    return 0
