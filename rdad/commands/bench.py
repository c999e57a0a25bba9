"""``rdad bench MODEL…``: every runtime available here, side by side, on the same inputs.

Checkpoints (``.pt``) run in torch eager; ``.onnx`` files (fp32, fp16 or int8, read from their
metadata) run in every ONNX runtime this machine has, on CPUs at every ``--cpu-precisions`` entry
(fp32, bf16): rows fp32 / bf16 / int8 / int8+bf16 per runtime, a precision a runtime or CPU cannot
run listed with the reason. The header names the CPU and its bf16/int8 units (AMX, AVX512-BF16,
VNNI). See :mod:`rdad.benchmark` for the method.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from rdad.commands._common import add_command, expected_errors
from rdad.commands.argtypes import int_at_least, int_list

EXAMPLES = """\
  rdad bench models/bottle.onnx models/bottle_int8.onnx runs/bottle/checkpoint.pt
      torch eager vs ONNX Runtime vs OpenVINO, fp32 and int8, batch 1/8/32
  rdad bench models/bottle.onnx --batch-sizes 1,4 --repeats 5 --json bench.json
  rdad bench models/bottle.onnx --runtimes onnxruntime-cpu,openvino-cpu --threads 2
  rdad bench models/bottle.onnx models/bottle_int8.onnx --batch-sizes 8 --cpu-precisions fp32,bf16
      fp32 / bf16 / int8 / int8+bf16 on ONNX Runtime and OpenVINO, side by side
"""


def register(subparsers: argparse._SubParsersAction, name: str, help_text: str) -> None:
    p = add_command(
        subparsers,
        name,
        help_text,
        description="Benchmark models in every runtime available on this machine (torch eager "
        "for checkpoints; ONNX Runtime CPU/CUDA/TensorRT and OpenVINO for .onnx files): img/s "
        "per batch size, batch-1 p50/p99, peak memory, GFLOP per image, achieved GFLOP/s and "
        "its fraction of a dense fp32 matmul measured in the same run. Prints the CPU first.",
        examples=EXAMPLES,
    )
    p.add_argument("models", type=Path, nargs="+", help=".onnx files and/or checkpoint .pt files")
    p.add_argument(
        "--batch-sizes",
        type=int_list(1),
        default="1,8,32",
        metavar="N,N,...",
        help="comma-separated; 1 is always added (batch-1 latency)",
    )
    p.add_argument(
        "--repeats", type=int_at_least(1), default=3, help="interleaved repetitions (median)"
    )
    p.add_argument(
        "--latency-runs", type=int_at_least(1), default=20, help="batch-1 runs for p50/p99"
    )
    p.add_argument(
        "--threads", type=int_at_least(0), default=0, help="runtime threads (0 = its default)"
    )
    p.add_argument("--runtimes", help="comma-separated subset of the runtimes (default: all)")
    p.add_argument(
        "--cpu-precisions",
        default="fp32,bf16",
        metavar="P,P",
        help="CPU runtimes: precisions of the layers not in int8, fp32 and/or bf16 (OpenVINO on "
        "CPUs with AVX512-BF16/AMX; speed only, no parity check here)",
    )
    p.add_argument("--no-memory", action="store_true", help="skip the peak-memory subprocesses")
    p.add_argument("--json", type=Path, help="also write the figures as JSON")
    p.set_defaults(func=run)


def _cpu_precision_problem(runtime: str, cpu_precision: str, graph_precision: str) -> str | None:
    """Why ``runtime`` cannot run ``cpu_precision`` here (``None``: it can)."""
    from rdad.benchmark import OPENVINO, ORT_CPU

    if cpu_precision == "fp32":
        return None
    if runtime == ORT_CPU:
        from rdad.service.engine import ORT_NO_BF16

        return f"bf16: ONNX Runtime: {ORT_NO_BF16}"
    if graph_precision == "fp16":
        return "bf16: an fp16 graph is for GPUs"
    from rdad.openvino_runtime import bf16_problem

    return f"bf16: {problem}" if runtime == OPENVINO and (problem := bf16_problem()) else None


def _subjects(args: argparse.Namespace) -> tuple[list[Any], list[dict[str, str]]]:
    from rdad.benchmark import CPU_RUNTIMES, ONNX_RUNTIMES, TORCH, Subject, unavailable_reason
    from rdad.metadata import read_onnx_metadata
    from rdad.openvino_runtime import effective_precision
    from rdad.torch_files import torch_file_problem

    wanted = set(args.runtimes.split(",")) if args.runtimes else None
    cpu_precisions = args.cpu_precisions.split(",")
    if bad := sorted(set(cpu_precisions) - {"fp32", "bf16"}):
        raise ValueError(f"--cpu-precisions: {', '.join(bad)} is not fp32 or bf16")
    subjects, unavailable = [], []
    for path in args.models:
        if not path.is_file():
            raise FileNotFoundError(f"model not found: {path}")
        if path.suffix != ".onnx" and (problem := torch_file_problem(path)):
            raise ValueError(f"{path} is neither an .onnx file nor a checkpoint: {problem}")
        if path.suffix == ".onnx":
            meta = read_onnx_metadata(path)
            candidates = [(r, meta.precision, meta.image_size) for r in ONNX_RUNTIMES]
        else:
            candidates = [(TORCH, "fp32", 0)]
        for runtime, precision, size in candidates:
            if wanted is not None and runtime not in wanted:
                continue
            reason = unavailable_reason(runtime)
            if reason:
                unavailable.append({"model": str(path), "runtime": runtime, "reason": reason})
                continue
            for cpu in cpu_precisions if runtime in CPU_RUNTIMES else ["fp32"]:
                if problem := _cpu_precision_problem(runtime, cpu, precision):
                    entry = {"model": str(path), "runtime": runtime, "reason": problem}
                    unavailable.append(entry)
                    continue
                runs = effective_precision(precision, cpu)
                subjects.append(Subject(path, runtime, runs, size, cpu))
    return subjects, unavailable


def _prepare(subject: Any, threads: int) -> None:
    from rdad.benchmark import TORCH, load_run, torch_gflop

    if subject.runtime == TORCH:
        from rdad.model.checkpoint import TrainConfig, read_checkpoint

        subject.image_size = TrainConfig.from_dict(
            read_checkpoint(subject.model)["config"]
        ).image_size
        subject.gflop = torch_gflop(subject.model, subject.image_size)
    else:
        try:
            from rdad.flops import graph_gflop

            subject.gflop = graph_gflop(subject.model)
        except ImportError:  # the serving image has no onnx package
            subject.gflop = None
    subject.run = load_run(subject, threads)


def _fmt(value: Any, digits: int = 1) -> str:
    return "–" if value is None else f"{value:.{digits}f}"


def table(subjects: list[Any], batch_sizes: list[int], matmul: float) -> str:
    head = ["runtime", "precision", "model"] + [f"img/s b{b}" for b in batch_sizes]
    head += ["p50 ms b1", "p99 ms b1", "peak MiB", "GFLOP/img", "GFLOP/s", "of matmul"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for s in subjects:
        r = s.results
        frac = r.get("fraction_of_matmul")
        cells = [s.runtime, s.precision, s.model.name]
        cells += [_fmt(r["img_per_s"][str(b)], 2) for b in batch_sizes]
        cells += [_fmt(r["p50_ms"]), _fmt(r["p99_ms"]), _fmt(r.get("peak_mib"), 0)]
        cells += [_fmt(r["gflop_per_image"], 2), _fmt(r["gflops"]), _fmt(frac and 100 * frac, 0)]
        if frac is not None:
            cells[-1] += " %"
        lines.append("| " + " | ".join(cells) + " |")
    lines.append(f"\ndense fp32 matmul (numpy BLAS, 1024², same run): {matmul:.1f} GFLOP/s")
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    from rdad import sysinfo
    from rdad.benchmark import measure, peak_memory_mib
    from rdad.errors import CommandError
    from rdad.metadata import MetadataError

    sizes = sorted({1, *args.batch_sizes})  # 1: the batch-1 latency columns need it
    with expected_errors(MetadataError, FileNotFoundError, ValueError):
        subjects, unavailable = _subjects(args)
    print(sysinfo.headline())
    print(sysinfo.fast_path_line())
    for u in unavailable:
        print(f"unavailable: {u['runtime']} for {Path(u['model']).name}: {u['reason']}")
    if not subjects:
        raise CommandError("no runtime can run these models here")
    for s in subjects:
        _prepare(s, args.threads)
    figures = measure(subjects, sizes, repeats=args.repeats, latency_runs=args.latency_runs)
    for s in subjects:
        s.results["peak_mib"] = (
            None if args.no_memory else peak_memory_mib(s, max(sizes), args.threads)
        )
    print(table(subjects, sizes, figures["matmul_gflops"]))
    if args.json:
        report = {
            "system": sysinfo.describe(),
            "batch_sizes": sizes,
            "repeats": args.repeats,
            "latency_runs": args.latency_runs,
            **figures,
            "results": [
                {
                    "model": str(s.model),
                    "runtime": s.runtime,
                    "precision": s.precision,
                    "cpu_precision": s.cpu_precision,
                    **s.results,
                }
                for s in subjects
            ],
            "unavailable": unavailable,
        }
        args.json.write_text(json.dumps(report, indent=2) + "\n")
    return 0
