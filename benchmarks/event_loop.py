"""Where one event loop stops scaling: CPU time the service's event loop spends per request.

At GPU rates the model is fast and the one asyncio loop of a uvicorn process — HTTP parsing,
multipart, admission, batching, JSON — can become the limit before the GPU or the decode pool
does. This measures that cost directly, on any machine: the loop runs in the server process's
main thread, so its CPU time (``/proc/PID/task/PID/stat``, user + system) divided by the
requests served is the loop's cost per request, and 1 / cost is the most requests per second
one loop can take, whatever the accelerator. Decoding and PNG encoding run in the pool threads
and inference in the runtime's threads, so neither is counted.

Small JPEGs (the GPU-rate case), keep-alive connections, pre-built requests (the client only
moves bytes), single-file and multi-file requests, heatmap on and off:

    python benchmarks/make_models.py --out bench-models-64 --backbones resnet18 --image-size 64
    mkdir -p m64 && cp bench-models-64/resnet18/model.onnx m64/
    python benchmarks/event_loop.py --model-dir m64 --requests 600
"""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).parent))
from reliability import Server, raw_request, read_response

from rdad import sysinfo

TICK = os.sysconf("SC_CLK_TCK")


def thread_cpu_s(pid: int, tid: int) -> float:
    """User + system CPU seconds of one thread."""
    fields = Path(f"/proc/{pid}/task/{tid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICK  # utime, stime (fields 14, 15)


def process_cpu_s(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICK


def small_jpegs(count: int, side: int) -> list[tuple[str, bytes]]:
    rng = np.random.default_rng(0)
    out = []
    for k in range(count):
        base = rng.integers(60, 200, (side // 8, side // 8, 3), dtype=np.uint8)
        image = Image.fromarray(base).resize((side, side), Image.Resampling.BILINEAR)
        buf = io.BytesIO()
        image.save(buf, "JPEG", quality=90)
        out.append((f"part{k}.jpg", buf.getvalue()))
    return out


async def drive(port: int, requests: list[bytes], concurrency: int) -> list[int]:
    """Send ``requests`` over ``concurrency`` keep-alive connections; statuses in order."""
    statuses = [0] * len(requests)
    counter = iter(range(len(requests)))

    async def worker() -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        try:
            for k in counter:
                writer.write(requests[k])
                await writer.drain()
                statuses[k], _ = await read_response(reader)
        finally:
            writer.close()

    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return statuses


def measure(
    server: Server,
    images: list[tuple[str, bytes]],
    files: int,
    query: str,
    args: argparse.Namespace,
) -> dict[str, Any]:
    count = max(1, args.requests // files)
    requests = [
        raw_request(
            server.port, [images[(k * files + j) % len(images)] for j in range(files)], query
        )
        for k in range(count)
    ]
    asyncio.run(drive(server.port, requests[: max(8, count // 10)], args.concurrency))  # warm
    pid = server.proc.pid
    loop0, proc0, t0 = thread_cpu_s(pid, pid), process_cpu_s(pid), time.monotonic()
    statuses = asyncio.run(drive(server.port, requests, args.concurrency))
    wall = time.monotonic() - t0
    loop_s, proc_s = thread_cpu_s(pid, pid) - loop0, process_cpu_s(pid) - proc0
    ok = sum(1 for s in statuses if s == 200)
    per_request = loop_s / count
    return {
        "files_per_request": files,
        "query": query or "(defaults: heatmap on)",
        "requests": count,
        "ok": ok,
        "wall_s": round(wall, 2),
        "requests_per_s_here": round(count / wall, 1),
        "images_per_s_here": round(count * files / wall, 1),
        "loop_cpu_ms_per_request": round(1000 * per_request, 3),
        "loop_cpu_ms_per_image": round(1000 * per_request / files, 3),
        "loop_busy_share": round(loop_s / wall, 3),
        "one_loop_ceiling_requests_per_s": round(1 / per_request) if per_request else None,
        "one_loop_ceiling_images_per_s": round(files / per_request) if per_request else None,
        "server_cpu_ms_per_image": round(1000 * proc_s / (count * files), 3),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model-dir", type=Path, required=True, help="folder with one model")
    parser.add_argument("--requests", type=int, default=600, help="images per configuration")
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--side", type=int, default=256, help="JPEG side in pixels")
    parser.add_argument("--files", default="1,4,16", help="files per request to compare")
    parser.add_argument("--out", type=Path, default=Path("bench-results"))
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    images = small_jpegs(32, args.side)
    server = Server(args.model_dir, {"RDAD_MAX_QUEUE": "1024"}, args.out / "serve-loop.log")
    rows = []
    try:
        for files in (int(f) for f in args.files.split(",")):
            for query in ("", "?heatmap=false"):
                rows.append(measure(server, images, files, query, args))
                print(json.dumps(rows[-1]), file=sys.stderr, flush=True)
    finally:
        server.stop()
    report = {"system": sysinfo.describe(), "jpeg_side": args.side, "rows": rows}
    (args.out / "event-loop.json").write_text(json.dumps(report, indent=2))
    print(f"{sysinfo.headline()}; {args.side}×{args.side} JPEGs")
    print("| files/request | heatmap | loop CPU ms/request | ms/image | one loop: requests/s "
          "| images/s | server CPU ms/image | measured here img/s |")  # fmt: skip
    print("|---:|---|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        heat = "off" if "heatmap=false" in r["query"] else "on"
        print(
            f"| {r['files_per_request']} | {heat} | {r['loop_cpu_ms_per_request']:.2f} | "
            f"{r['loop_cpu_ms_per_image']:.2f} | {r['one_loop_ceiling_requests_per_s']} | "
            f"{r['one_loop_ceiling_images_per_s']} | {r['server_cpu_ms_per_image']:.2f} | "
            f"{r['images_per_s_here']} |"
        )


if __name__ == "__main__":
    main()
