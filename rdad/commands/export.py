"""``rdad export``: checkpoint → one ONNX file with its metadata, after a parity check; and, with
``--triton DIR``, a Triton model repository entry for that very file (or for one already
exported: ``--from-onnx``)."""

from __future__ import annotations

import argparse
import functools
from pathlib import Path
from typing import TYPE_CHECKING, Any

from rdad.commands._common import add_command, expected_errors, setup_logging
from rdad.commands.argtypes import int_at_least

if TYPE_CHECKING:
    from rdad.model.triton_config import TritonOptions

EXAMPLES = """\
  rdad export runs/bottle/checkpoint.pt --out models/bottle.onnx
  rdad export runs/bottle/checkpoint.pt --out models/bottle_fp16.onnx --precision fp16
      half-precision graph (float32/uint8 I/O) for GPUs
  rdad export runs/bottle/checkpoint.pt --out models/bottle_int8.onnx --precision int8 \\
      --calibration-data datasets/mvtec/bottle
      int8 convolutions (static QDQ) for CPUs, calibrated on good images; map tail stays fp32
  rdad export runs/bottle/checkpoint.pt --out models/bottle.onnx --triton triton-models
      also writes triton-models/bottle/1/model.onnx (the same file) and its config.pbtxt
  rdad export --from-onnx models/bottle.onnx --triton triton-models --triton-version 2 \\
      --triton-tensorrt-fp16
      a Triton entry for an already-exported file: version 2, TensorRT fp16 kernels
"""

TRITON_FLAGS = {
    "name": "--triton-name",
    "version": "--triton-version",
    "max_batch_size": "--triton-max-batch-size",
    "preferred_batch_sizes": "--triton-preferred-batch-sizes",
    "queue_delay_us": "--triton-queue-delay-us",
    "instance_kind": "--triton-instance-kind",
    "instance_count": "--triton-instances",
    "tensorrt_fp16": "--triton-tensorrt-fp16",
    "replace": "--triton-replace",
}
"""TritonOptions field → the option that sets it (argument errors name the option)."""


def register(subparsers: argparse._SubParsersAction, name: str, help_text: str) -> None:
    p = add_command(
        subparsers,
        name,
        help_text,
        description="Export a calibrated checkpoint to ONNX: uint8 (B,H,W,3) RGB in, anomaly_map "
        "(B,H,W) and score (B) out, metadata (calibration, backbone, teacher, data) inside. "
        "The file is written only if torch and ONNX Runtime agree (parity check). With --triton, "
        "the same file also goes into a Triton model repository (DIR/NAME/VERSION/model.onnx and "
        "DIR/NAME/config.pbtxt, see docs/triton.md).",
        examples=EXAMPLES,
    )
    p.add_argument("checkpoint", type=Path, nargs="?", help="OUT/checkpoint.pt from rdad train")
    p.add_argument(
        "--out", type=Path, metavar="FILE", help="ONNX file to write (required with a checkpoint)"
    )
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
        type=int_at_least(1),
        default=32,
        help="int8 only: how many calibration images (default 32, spread over the folder)",
    )
    add_triton_arguments(p)
    p.set_defaults(func=functools.partial(run, p))


def add_triton_arguments(p: argparse.ArgumentParser) -> None:
    """The ``--triton*`` options; each ``--triton-X`` sets :class:`TritonOptions` field
    ``dest[len("triton_"):]`` and is ``None`` (or off) unless given."""
    from rdad.model.triton_config import DEFAULT_MAX_BATCH_SIZE, DEFAULT_QUEUE_DELAY_US

    g = p.add_argument_group("Triton model repository (see docs/triton.md)")
    g.add_argument(
        "--triton",
        type=Path,
        metavar="DIR",
        help="also write DIR/NAME/VERSION/model.onnx (byte-identical) and DIR/NAME/config.pbtxt",
    )
    g.add_argument(
        "--from-onnx",
        type=Path,
        metavar="FILE",
        help="with --triton: take this already-exported ONNX file instead of a checkpoint",
    )
    g.add_argument(
        "--triton-name",
        metavar="NAME",
        help="Triton model name (default: the ONNX file's name without .onnx)",
    )
    g.add_argument(
        "--triton-version",
        type=int,
        metavar="N",
        help="version folder to write, the one version the config serves; an existing folder "
        "holding a different model is refused unless --triton-replace (default 1)",
    )
    g.add_argument(
        "--triton-replace",
        action="store_true",
        help="overwrite the model in an existing --triton-version folder",
    )
    g.add_argument(
        "--triton-max-batch-size",
        type=int,
        metavar="N",
        help=f"largest batch Triton forms (default {DEFAULT_MAX_BATCH_SIZE}, as rdad serve)",
    )
    g.add_argument(
        "--triton-preferred-batch-sizes",
        type=int,
        nargs="+",
        metavar="N",
        help="batch sizes the dynamic batcher aims for (default: 4, 8, 16 … up to the max)",
    )
    g.add_argument(
        "--triton-queue-delay-us",
        type=int,
        metavar="US",
        help="how long a request may wait for others to batch with, in microseconds "
        f"(default {DEFAULT_QUEUE_DELAY_US}, as rdad serve's 5 ms)",
    )
    g.add_argument(
        "--triton-instance-kind",
        choices=("gpu", "cpu"),
        help="where the model instances run (default gpu)",
    )
    g.add_argument(
        "--triton-instances",
        dest="triton_instance_count",
        type=int,
        metavar="N",
        help="model instances, per GPU for gpu (default 1)",
    )
    g.add_argument(
        "--triton-tensorrt-fp16",
        action="store_true",
        help="run through ONNX Runtime's TensorRT provider with fp16 kernels (GPU only)",
    )


def triton_options(
    parser: argparse.ArgumentParser, args: argparse.Namespace, source: Path
) -> TritonOptions:
    """The options of the command line; a mistake exits 2 naming its option."""
    from rdad.model.triton_config import TritonOptionError, TritonOptions

    chosen = given_triton_options(args)
    chosen.setdefault("name", source.name.removesuffix(".onnx"))
    try:
        return TritonOptions(**chosen)
    except TritonOptionError as exc:
        hint = " (set --triton-name)" if exc.field == "name" and not args.triton_name else ""
        parser.error(f"{TRITON_FLAGS[exc.field]}: {exc}{hint}")


def given_triton_options(args: argparse.Namespace) -> dict[str, Any]:
    """``{TritonOptions field: value}`` of the ``--triton-*`` options given."""
    values = {field: getattr(args, f"triton_{field}") for field in TRITON_FLAGS}
    return {
        field: tuple(value) if isinstance(value, list) else value
        for field, value in values.items()
        if value is not None and value is not False
    }


def check_arguments(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """Combinations argparse cannot check; a mistake exits 2 naming the option."""
    if args.from_onnx is not None:
        if args.triton is None:
            parser.error("--from-onnx needs --triton DIR (it only writes a Triton repository)")
        if args.checkpoint is not None or args.out is not None:
            parser.error(
                "--from-onnx takes no checkpoint and no --out (its FILE is already exported)"
            )
        if args.calibration_data is not None:
            parser.error("--calibration-data has no use with --from-onnx (nothing is exported)")
    elif args.checkpoint is None:
        parser.error("give a checkpoint to export (or --from-onnx FILE with --triton DIR)")
    elif args.out is None:
        parser.error("--out FILE is required with a checkpoint")
    if args.triton is None and (used := given_triton_options(args)):
        parser.error(f"{TRITON_FLAGS[next(iter(used))]} needs --triton DIR")


def run(parser: argparse.ArgumentParser, args: argparse.Namespace) -> int:
    from rdad.metadata import MetadataError
    from rdad.model.triton import check_version_folder, write_triton_repository
    from rdad.model.triton_config import TritonError

    check_arguments(parser, args)
    source: Path = args.from_onnx if args.from_onnx is not None else args.out
    options = triton_options(parser, args, source) if args.triton is not None else None
    setup_logging()
    if args.from_onnx is None:
        if options is not None:
            with expected_errors(TritonError):
                # Refused before the (slow) export: a fresh export (it records its own time) is
                # never the file already in a version folder.
                check_version_folder(args.triton, options)
        export(args)
    if options is not None:
        with expected_errors(TritonError, MetadataError, FileNotFoundError):
            written = write_triton_repository(source, args.triton, options)
        print(f"wrote {written.config} and {written.model} (sha256 {written.sha256})")
    return 0


def export(args: argparse.Namespace) -> None:
    from rdad.model.export import ExportError, export_onnx
    from rdad.model.quantize import QuantizationError

    with expected_errors(ExportError, QuantizationError, FileNotFoundError, ValueError):
        export_onnx(
            args.checkpoint,
            args.out,
            args.precision,
            calibration_data=args.calibration_data,
            calibration_count=args.calibration_count,
        )
