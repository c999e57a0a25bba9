"""Load generator for a running ``rdad serve`` on loopback, next to raw ONNX Runtime throughput.

For each concurrency level (default 1, 4, 16, 64) it sends a fixed number of requests with async
httpx, cycling through real images, and reports images/s and p50/p95/p99 latency. In the same run
it measures a bare ONNX Runtime session on the same model file (no HTTP, no decode) at the batch
size the service's batcher actually formed at concurrency 16 (read from ``/metrics``), and breaks
the batch-1 latency down into decode / queue / inference / encode from the responses' timings_ms.

    rdad serve --model-dir models/ &
    python benchmarks/load.py --url http://127.0.0.1:8000 --model-file models/bottle.onnx \\
        --images ../shared/datasets/mvtec_bottle/test --json bench.json

Loopback only (the URL host must be 127.0.0.1, ::1 or localhost): this is a local benchmark, not
a tool to load someone else's server. Every loop is bounded by a request count.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import httpx
import numpy as np

LOOPBACK = {"127.0.0.1", "::1", "localhost"}


def percentile(values: list[float], q: float) -> float:
    return float(np.percentile(values, q)) if values else float("nan")


def load_images(folder: Path, limit: int) -> list[tuple[str, bytes]]:
    paths = sorted(p for p in folder.rglob("*") if p.suffix.lower() in {".png", ".jpg", ".jpeg"})
    paths = [p for p in paths if "ground_truth" not in p.parts][:limit]
    if not paths:
        raise SystemExit(f"no images under {folder}")
    return [(p.name, p.read_bytes()) for p in paths]


def media_type(name: str) -> str:
    return "image/jpeg" if name.lower().endswith((".jpg", ".jpeg")) else "image/png"


def batch_stats(metrics_text: str) -> tuple[float, float]:
    """(sum, count) of ``rdad_batch_size`` over all models from Prometheus text."""
    from prometheus_client.parser import text_string_to_metric_families

    total = count = 0.0
    for family in text_string_to_metric_families(metrics_text):
        for sample in family.samples:
            if sample.name == "rdad_batch_size_sum":
                total += sample.value
            elif sample.name == "rdad_batch_size_count":
                count += sample.value
    return total, count


async def run_level(
    client: httpx.AsyncClient,
    path: str,
    images: list[tuple[str, bytes]],
    concurrency: int,
    requests: int,
    params: dict[str, str],
) -> dict[str, Any]:
    """``requests`` POSTs by ``concurrency`` workers; latencies in ms."""
    latencies: list[float] = []
    timings: list[dict[str, float]] = []
    errors: dict[int, int] = {}
    next_index = 0

    async def worker() -> None:
        nonlocal next_index
        while next_index < requests:  # bounded: shared counter of requests left
            index = next_index
            next_index += 1
            name, data = images[index % len(images)]
            start = time.perf_counter()
            response = await client.post(
                path, params=params, files={"file": (name, data, media_type(name))}
            )
            elapsed = (time.perf_counter() - start) * 1000
            if response.status_code == 200:
                latencies.append(elapsed)
                timings.append(response.json()["timings_ms"])
            else:
                errors[response.status_code] = errors.get(response.status_code, 0) + 1

    start = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    wall = time.perf_counter() - start
    return {
        "concurrency": concurrency,
        "requests": requests,
        "ok": len(latencies),
        "errors": errors,
        "img_per_s": len(latencies) / wall,
        "p50_ms": percentile(latencies, 50),
        "p95_ms": percentile(latencies, 95),
        "p99_ms": percentile(latencies, 99),
        "timings_ms": {
            key: statistics.median(t[key] for t in timings) if timings else float("nan")
            for key in ("decode", "queue", "inference", "encode")
        },
    }


def raw_ort(model_file: Path, images: list[tuple[str, bytes]], batch: int, runs: int) -> dict:
    """Bare session, same model file, real (decoded and resized) pixels: img/s at ``batch`` and
    batch-1 median latency."""
    import onnxruntime as ort

    from rdad.imaging import decode_image, resize_rgb
    from rdad.metadata import ModelMetadata
    from rdad.service.device import resolve_providers
    from rdad.service.settings import Settings

    providers = resolve_providers(Settings(model_dir=model_file.parent))
    session = ort.InferenceSession(str(model_file), providers=providers)
    meta = ModelMetadata.from_props(dict(session.get_modelmeta().custom_metadata_map))
    size = meta.image_size
    pixels = [resize_rgb(decode_image(d, min_side=size), size) for _, d in images[: max(batch, 1)]]
    stack = np.stack([pixels[i % len(pixels)] for i in range(batch)])
    single = stack[:1]
    for _ in range(3):  # warm both shapes (cuDNN picks kernels per shape)
        session.run(None, {meta.input_name: stack})
        session.run(None, {meta.input_name: single})
    start = time.perf_counter()
    for _ in range(runs):
        session.run(None, {meta.input_name: stack})
    batch_rate = runs * batch / (time.perf_counter() - start)
    singles = []
    for _ in range(runs):
        t = time.perf_counter()
        session.run(None, {meta.input_name: single})
        singles.append((time.perf_counter() - t) * 1000)
    return {
        "provider": session.get_providers()[0],
        "batch": batch,
        "img_per_s": batch_rate,
        "batch1_ms": statistics.median(singles),
    }


def report(levels: list[dict], raw: dict, formed_batch: float) -> str:
    lines = [
        f"raw ONNX Runtime ({raw['provider']}): {raw['img_per_s']:.1f} img/s at batch "
        f"{raw['batch']} (the batch the service formed: mean {formed_batch:.1f}); "
        f"batch-1 latency {raw['batch1_ms']:.1f} ms",
        "",
        "| concurrency | img/s | % of raw | p50 ms | p95 ms | p99 ms | errors |",
        "|---:|---:|---:|---:|---:|---:|---|",
    ]
    for lv in levels:
        share = 100 * lv["img_per_s"] / raw["img_per_s"]
        lines.append(
            f"| {lv['concurrency']} | {lv['img_per_s']:.1f} | {share:.0f}% | {lv['p50_ms']:.1f} | "
            f"{lv['p95_ms']:.1f} | {lv['p99_ms']:.1f} | {lv['errors'] or '-'} |"
        )
    one = next((lv for lv in levels if lv["concurrency"] == 1), None)
    if one:
        t = one["timings_ms"]
        work = t["decode"] + t["inference"] + t["encode"]
        lines += [
            "",
            f"batch-1 breakdown (medians, ms): decode {t['decode']:.1f}, queue {t['queue']:.1f}, "
            f"inference {t['inference']:.1f}, encode {t['encode']:.1f}; client p50 "
            f"{one['p50_ms']:.1f}; service overhead beyond decode+inference+encode: "
            f"{one['p50_ms'] - work:.1f} (raw batch-1 inference {raw['batch1_ms']:.1f})",
        ]
    return "\n".join(lines)


async def main_async(args: argparse.Namespace) -> dict[str, Any]:
    images = load_images(args.images, args.max_images)
    path = f"/models/{args.model}/predict" if args.model else "/predict"
    params = dict(p.split("=", 1) for p in args.params.split("&") if p)
    levels = []
    formed = (0.0, 0.0)
    limits = httpx.Limits(max_connections=max(args.concurrency) + 8)
    async with httpx.AsyncClient(base_url=args.url, timeout=120, limits=limits) as client:
        if (await client.get("/readyz")).status_code != 200:
            raise SystemExit(f"{args.url} is not ready")
        await run_level(client, path, images, 4, 16, params)  # warm the HTTP path
        for concurrency in args.concurrency:
            before = batch_stats((await client.get("/metrics")).text)
            requests = max(args.requests, 4 * concurrency)
            level = await run_level(client, path, images, concurrency, requests, params)
            after = batch_stats((await client.get("/metrics")).text)
            level["mean_batch"] = (after[0] - before[0]) / max(after[1] - before[1], 1)
            if concurrency == 16 or formed == (0.0, 0.0):
                formed = (level["mean_batch"], concurrency)
            levels.append(level)
            print(f"concurrency {concurrency}: {level['img_per_s']:.1f} img/s", file=sys.stderr)
    batch = max(1, round(formed[0]))
    raw = raw_ort(args.model_file, images, batch, args.raw_runs)
    print(report(levels, raw, formed[0]))
    return {"levels": levels, "raw": raw, "formed_batch": formed[0], "params": params}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--url", default="http://127.0.0.1:8000")
    parser.add_argument("--model-file", type=Path, required=True, help="the served ONNX file")
    parser.add_argument("--model", help="model name (default: the service's default)")
    parser.add_argument("--images", type=Path, required=True, help="folder of test images")
    parser.add_argument("--max-images", type=int, default=64)
    parser.add_argument("--concurrency", default="1,4,16,64")
    parser.add_argument("--requests", type=int, default=128, help="per level (at least 4x conc.)")
    parser.add_argument("--raw-runs", type=int, default=20)
    parser.add_argument("--params", default="", help="query flags, e.g. 'overlay=true&mask=true'")
    parser.add_argument("--json", type=Path, help="also write the numbers here")
    args = parser.parse_args()
    if urlparse(args.url).hostname not in LOOPBACK:
        parser.error("--url must point at this machine (127.0.0.1, ::1 or localhost)")
    args.concurrency = [int(c) for c in args.concurrency.split(",")]
    result = asyncio.run(main_async(args))
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
