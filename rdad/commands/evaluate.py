"""``rdad eval``: AUROC / AUPRO / F1 of an ONNX model or checkpoint on an MVTec-layout folder."""

from __future__ import annotations

import argparse
from pathlib import Path

from rdad.commands._common import add_command, expected_errors, setup_logging
from rdad.commands.argtypes import int_at_least
from rdad.errors import CommandError

EXAMPLES = """\
  rdad eval --model models/bottle.onnx --data datasets/mvtec/bottle --json reports/bottle.json
      scores the exported graph through ONNX Runtime (what is served is what is scored);
      also writes reports/bottle.md
  rdad eval --model models/bottle.onnx --data datasets/mvtec/bottle --report reports/bottle
      also writes reports/bottle/index.html with figures (open it in a browser)
  rdad eval --model runs/bottle/checkpoint.pt --data datasets/mvtec/bottle
      scores a checkpoint through torch
  rdad eval --model models/bottle_int8.onnx --data datasets/mvtec/bottle --runtime openvino
      scores the int8 graph through OpenVINO (what `rdad serve --runtime openvino` runs)
  rdad eval --model models/bottle.onnx --data datasets/mvtec/bottle --runtime openvino \\
      --cpu-precision bf16
      scores the fp32 graph run in bf16 (what RDAD_CPU_PRECISION=bf16 serves)
"""


def register(subparsers: argparse._SubParsersAction, name: str, help_text: str) -> None:
    p = add_command(
        subparsers,
        name,
        help_text,
        description="Evaluate on the test split of an MVTec-layout folder: image AUROC, pixel "
        "AUROC, AUPRO (FPR ≤ 0.3, normalised), image F1-max, per-defect image AUROC and "
        "accuracy/precision/recall at the calibrated threshold.",
        examples=EXAMPLES,
    )
    p.add_argument(
        "--model", type=Path, required=True, metavar="FILE", help="FILE.onnx or checkpoint.pt"
    )
    p.add_argument(
        "--data", type=Path, required=True, metavar="DIR", help="MVTec-layout folder with test/"
    )
    p.add_argument(
        "--json",
        type=Path,
        metavar="FILE",
        help="write the report as JSON (and markdown beside it)",
    )
    p.add_argument(
        "--batch-size",
        type=int_at_least(1),
        default=16,
        metavar="N",
        help="images per inference batch",
    )
    p.add_argument("--device", default="cpu", help="cpu or cuda")
    p.add_argument(
        "--pixel-size",
        type=int_at_least(1),
        metavar="PX",
        help="grid for pixel AUROC / AUPRO: maps and masks resized to PX×PX; give the same PX to "
        "compare a tiled and a whole-image model (default: the model input size)",
    )
    p.add_argument(
        "--runtime",
        choices=("onnxruntime", "openvino"),
        default="onnxruntime",
        help=".onnx files: the runtime to score with (fp32 or int8), as the service runs it",
    )
    p.add_argument(
        "--cpu-precision",
        choices=("fp32", "bf16", "auto"),
        default="fp32",
        help="--runtime openvino: the precision of the layers not in int8, as RDAD_CPU_PRECISION "
        "for rdad serve (bf16: CPUs with AVX512-BF16/AMX, checked against fp32 first; auto: bf16 "
        "where it passes, else fp32); the one used is in the report's model line",
    )
    p.add_argument(
        "--report",
        type=Path,
        metavar="DIR",
        help="write an HTML report with figures to DIR/index.html (ROC, PRO, histograms, "
        "per-defect AUROC, confusion matrix, best/worst examples)",
    )
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    if not args.model.is_file():
        raise CommandError(f"--model {args.model}: no such file")
    if not args.data.is_dir():
        raise CommandError(f"--data {args.data}: no such folder")
    from rdad.metadata import MetadataError
    from rdad.model.data import DatasetError
    from rdad.model.evaluate import evaluate, markdown_report, write_reports
    from rdad.model.report import EvalArrays

    collected: list[EvalArrays] = []

    setup_logging()
    with expected_errors(DatasetError, MetadataError, FileNotFoundError, ValueError):
        report = evaluate(
            args.model,
            args.data,
            batch_size=args.batch_size,
            device=args.device,
            pixel_size=args.pixel_size,
            runtime=args.runtime,
            cpu_precision=args.cpu_precision,
            collect=collected.append if args.report else None,
        )
    print(markdown_report(report))
    write_reports(report, args.json)
    if args.report:
        from rdad.model.report import write_html_report

        page = write_html_report(report, collected[0], args.report)
        print(f"report: {page}")
    return 0
