"""``rdad bench``: raw ONNX Runtime throughput and latency of a model (no HTTP, no decoding).

This is the ceiling the service is measured against: ``benchmarks/load.py`` reports end-to-end
figures next to it.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path
from typing import Any

import numpy as np

from rdad.commands._common import add_command, expected_errors

EXAMPLES = """\
  rdad bench models/bottle.onnx
  rdad bench models/bottle.onnx --batch-sizes 1,8,16 --seconds 10 --provider cuda
  rdad bench models/bottle.onnx --json bench.json
"""

PROVIDERS = {"cpu": "CPUExecutionProvider", "cuda": "CUDAExecutionProvider"}


def register(subparsers: argparse._SubParsersAction, name: str, help_text: str) -> None:
    p = add_command(
        subparsers,
        name,
        help_text,
        description="Run an exported model on random uint8 images at several batch sizes and "
        "print images/s and per-batch latency percentiles.",
        examples=EXAMPLES,
    )
    p.add_argument("model", type=Path, help="an .onnx file exported by rdad export")
    p.add_argument("--batch-sizes", default="1,8,16", help="comma-separated (default 1,8,16)")
    p.add_argument("--seconds", type=float, default=5.0, help="time budget per batch size")
    p.add_argument("--provider", choices=sorted(PROVIDERS), default="cpu")
    p.add_argument("--threads", type=int, default=0, help="CPU intra-op threads (0 = ORT default)")
    p.add_argument("--json", type=Path, help="also write the figures as JSON")
    p.set_defaults(func=run)


def measure(
    session: Any, image_size: int, batch_size: int, seconds: float, *, min_runs: int = 3
) -> dict[str, float]:
    """Time ``session`` on ``(batch_size, S, S, 3)`` uint8 input after one warm-up run."""
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (batch_size, image_size, image_size, 3), dtype=np.uint8)
    session.run(None, {"images": images})  # warm-up: first run allocates and picks kernels
    latencies: list[float] = []
    start = time.perf_counter()
    while len(latencies) < min_runs or time.perf_counter() - start < seconds:
        t0 = time.perf_counter()
        session.run(None, {"images": images})
        latencies.append(time.perf_counter() - t0)
    total = sum(latencies)
    return {
        "batch_size": batch_size,
        "runs": len(latencies),
        "images_per_second": batch_size * len(latencies) / total,
        "latency_p50_ms": 1000 * statistics.median(latencies),
        "latency_p95_ms": 1000 * float(np.percentile(latencies, 95)),
    }


def run(args: argparse.Namespace) -> int:
    import onnxruntime as ort

    from rdad.errors import CommandError
    from rdad.metadata import MetadataError, read_onnx_metadata

    with expected_errors(MetadataError, FileNotFoundError, ValueError):
        if not args.model.is_file():
            raise FileNotFoundError(f"model not found: {args.model}")
        meta = read_onnx_metadata(args.model)
        sizes = [int(s) for s in args.batch_sizes.split(",") if s.strip()]
    provider = PROVIDERS[args.provider]
    if provider not in ort.get_available_providers():
        raise CommandError(f"{provider} is not available in this onnxruntime build")
    options = ort.SessionOptions()
    options.intra_op_num_threads = args.threads
    session = ort.InferenceSession(str(args.model), options, providers=[provider])
    print(f"{args.model.name}: {meta.backbone} {meta.image_size}px {meta.precision} on {provider}")
    print(f"{'batch':>5} {'img/s':>9} {'p50 ms':>9} {'p95 ms':>9} {'runs':>5}")
    results = []
    for size in sizes:
        r = measure(session, meta.image_size, size, args.seconds)
        results.append(r)
        print(
            f"{size:>5} {r['images_per_second']:>9.2f} {r['latency_p50_ms']:>9.1f} "
            f"{r['latency_p95_ms']:>9.1f} {r['runs']:>5}"
        )
    if args.json:
        args.json.write_text(json.dumps({"model": str(args.model), "results": results}, indent=2))
    return 0
