"""The table of ``benchmarks/gpu_check.sh``: reads the step JSON files from the results folder and
writes ``gpu_check.md`` and ``gpu_check.json`` there (and prints the table)."""

from __future__ import annotations

import argparse
import contextlib
import json
import platform
import subprocess
from pathlib import Path
from typing import Any


def _load(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def _machine(mode: str) -> str:
    cpu = "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    gpu = "no GPU"
    if mode == "gpu":
        with contextlib.suppress(OSError):
            gpu = subprocess.run(
                ["nvidia-smi", "--query-gpu=name,driver_version", "--format=csv,noheader"],
                capture_output=True, text=True, timeout=20, check=False,
            ).stdout.strip()  # fmt: skip
    import os

    return f"{gpu}; {cpu} ({os.cpu_count()} logical CPUs); Python {platform.python_version()}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--results", type=Path, required=True)
    parser.add_argument("--mode", choices=["gpu", "cpu"], required=True)
    parser.add_argument("--backbone", required=True)
    parser.add_argument("--image-size", type=int, required=True)
    args = parser.parse_args()
    res = args.results
    bench = _load(res / "bench.json") or {"rows": [], "gflop_per_image": float("nan")}
    gflop = bench["gflop_per_image"]
    peak = bench.get("peak_tflops", 989.0)
    gpu = args.mode == "gpu"
    lines = [
        f"## gpu_check — {'GPU' if gpu else 'CPU SMALL MODE (no GPU: not GPU figures)'}",
        "",
        f"Machine: {_machine(args.mode)}",
        f"Model: {args.backbone} at {args.image_size} px, random teacher; "
        f"{gflop:.2f} GFLOP per image (torch FLOP counter).",
        "",
        "### Model only (no HTTP, no decode)",
        "",
        "| engine | variant | batch | img/s | p50 ms | arithmetic |",
        "|---|---|---:|---:|---:|---|",
    ]

    def arithmetic(img_s: float) -> str:
        tflops = gflop * img_s / 1000
        text = f"{gflop:.1f} GFLOP × {img_s:,.0f}/s = {tflops:.1f} TFLOP/s"
        return text + (f" = {100 * tflops / peak:.1f}% of {peak:g}" if gpu else "")

    for row in bench["rows"]:
        if "skipped" in row:
            lines.append(f"| {row['engine']} | skipped: {row['skipped']} | | | | |")
        elif "error" in row:
            lines.append(f"| {row['engine']} | {row.get('variant')} | {row.get('batch', '')} | "
                         f"error: {row['error'][:80]} | | |")  # fmt: skip
        else:
            p50 = row.get("p50_ms")
            lines.append(
                f"| {row['engine']} | {row['variant']} | {row['batch']} | {row['img_s']:,.1f} | "
                f"{'' if p50 is None else f'{p50:.2f}'} | {arithmetic(row['img_s'])} |"
            )
    best: dict[str, dict] = {}
    for row in bench["rows"]:
        if "img_s" in row and row["img_s"] > best.get(row["engine"], {}).get("img_s", 0):
            best[row["engine"]] = row
    for engine, row in best.items():
        lines.append(
            f"\nBest {engine}: {row['img_s']:,.0f} img/s ({row['variant']}, batch {row['batch']})."
        )
    decode = _load(res / "decode.json")
    if decode:
        lines += ["", "### Decode (the service's decoder, model input 256 px)", "",
                  "| images | how | img/s |", "|---|---|---:|"]  # fmt: skip
        for row in decode["rows"]:
            value = f"{row['img_s']:,.0f}" if "img_s" in row else row.get("skipped", "")
            how = row["how"]
            if "max_abs_diff_vs_cpu" in row:
                how += f" (max |GPU − CPU| pixel {row['max_abs_diff_vs_cpu']})"
            lines.append(f"| {row['set']} | {how} | {value} |")
    loads = sorted(res.glob("load-*.json"))
    if loads:
        info = _load(res / "service-info.json") or {}
        model = info.get("models", {})
        lines += [
            "",
            f"### Service (rdad serve, fp16 graph, provider {model.get('provider', '?')}, "
            f"node placement {model.get('node_placement', '?')})",
            "",
            "| load | servers | concurrency | files/request | img/s | req/s | p50 ms | p99 ms | "
            "errors | arithmetic |",
            "|---|---:|---:|---:|---:|---:|---:|---:|---|---|",
        ]
        for path in loads:
            r = _load(path)
            if not r:
                continue
            servers = str(r.get("servers", 1))
            if r.get("workers", 1) > 1:
                servers += f" × {r['workers']} workers"
            lines.append(
                f"| {path.stem[5:]} | {servers} | {r['concurrency']} | "
                f"{r['files_per_request']} | {r['img_s']:,.0f} | {r['req_s']:,.0f} | "
                f"{r['p50_ms']:.1f} | {r['p99_ms']:.1f} | {r['errors'] or '-'} | "
                f"{arithmetic(r['img_s'])} |"
            )
        batches = (
            (res / "batch-sizes.txt").read_text() if (res / "batch-sizes.txt").exists() else ""
        )
        values: dict[str, float] = {}
        for line in batches.splitlines():
            if line.strip():
                key = line.split("{")[0].split()[0]
                values[key] = values.get(key, 0.0) + float(line.split()[-1])
        workers_memory = res / "workers-gpu-memory.csv"
        if workers_memory.exists():
            apps = "; ".join(line.strip() for line in workers_memory.read_text().splitlines())
            lines.append(f"\nGPU memory by process with two workers up (pid, used): {apps}.")
        if values.get("rdad_batch_size_count"):
            mean = float(values["rdad_batch_size_sum"]) / float(values["rdad_batch_size_count"])
            lines.append(
                f"\nMean batch formed by the service over the single-server runs: {mean:.1f}."
            )
    skipped = (res / "skipped.txt").read_text().strip() if (res / "skipped.txt").exists() else ""
    lines += ["", "### Skipped", "", *(f"- {s}" for s in skipped.splitlines())] if skipped else []
    table = "\n".join(lines) + "\n"
    (res / "gpu_check.md").write_text(table)
    merged = {
        "mode": args.mode,
        "machine": _machine(args.mode),
        "bench": bench,
        "decode": decode,
        "service_info": _load(res / "service-info.json"),
        "loads": {p.stem[5:]: _load(p) for p in loads},
        "skipped": skipped.splitlines(),
    }
    (res / "gpu_check.json").write_text(json.dumps(merged, indent=1))
    print(table)


if __name__ == "__main__":
    main()
