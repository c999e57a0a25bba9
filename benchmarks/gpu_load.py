"""Load a local ``rdad serve`` from several client processes (one event loop cannot send more than
a few thousand requests/s itself), for ``benchmarks/gpu_check.sh``.

Each process runs ``concurrency / processes`` async httpx clients in a closed loop for a fixed
number of seconds; latencies are merged. ``--files-per-request`` sends several images in one
multipart request (the service's ``files`` field); several URLs (servers sharing one GPU) are
shared out among the processes. Loopback only.

    python benchmarks/gpu_load.py --url http://127.0.0.1:8000 --images jpg256/ \\
        --concurrency 64 --seconds 10 --json out.json
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing as mp
import time
from pathlib import Path
from urllib.parse import urlparse

import numpy as np

LOOPBACK = {"127.0.0.1", "::1", "localhost"}


def _client(
    url: str, images: list[tuple[str, bytes]], concurrency: int, seconds: float, files: int,
    query: str, seed: int, out: mp.Queue,
) -> None:  # fmt: skip
    import httpx

    try:
        import uvloop

        uvloop.install()
    except ImportError:
        pass

    async def run() -> tuple[list[float], int, dict[int, int]]:
        latencies: list[float] = []
        errors: dict[int, int] = {}
        sent = 0
        stop = time.perf_counter() + seconds
        limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
        async with httpx.AsyncClient(base_url=url, limits=limits, timeout=60.0) as client:

            async def worker(k: int) -> None:
                nonlocal sent
                i = seed * 7919 + k * 31
                while time.perf_counter() < stop:
                    picked = [images[(i + j) % len(images)] for j in range(files)]
                    i += files
                    if files == 1:
                        name, data = picked[0]
                        payload = {"file": (name, data, _media(name))}
                        body = list(payload.items())
                    else:
                        body = [("files", (n, d, _media(n))) for n, d in picked]
                    t0 = time.perf_counter()
                    try:
                        response = await client.post(f"/predict{query}", files=body)
                        code = response.status_code
                    except httpx.HTTPError:
                        code = -1
                    if code == 200:
                        latencies.append(time.perf_counter() - t0)
                        sent += files
                    else:
                        errors[code] = errors.get(code, 0) + 1

            await asyncio.gather(*(worker(k) for k in range(concurrency)))
        return latencies, sent, errors

    out.put(asyncio.run(run()))


def _media(name: str) -> str:
    return "image/jpeg" if name.endswith((".jpg", ".jpeg")) else "image/png"


def load(
    urls: list[str], images: list[tuple[str, bytes]], *, concurrency: int, seconds: float,
    processes: int, files: int = 1, query: str = "",
) -> dict:  # fmt: skip
    for url in urls:
        if urlparse(url).hostname not in LOOPBACK:
            raise SystemExit(f"loopback URLs only, got {url}")
    processes = max(1, min(processes, concurrency))
    ctx = mp.get_context("spawn")
    queue: mp.Queue = ctx.Queue()
    shares = [concurrency // processes + (k < concurrency % processes) for k in range(processes)]
    procs = [
        ctx.Process(
            target=_client,
            args=(urls[k % len(urls)], images, c, seconds, files, query, k, queue),
        )
        for k, c in enumerate(shares)
    ]
    t0 = time.perf_counter()
    for p in procs:
        p.start()
    results = [queue.get(timeout=seconds + 120) for _ in procs]
    for p in procs:
        p.join()
    elapsed = time.perf_counter() - t0
    latencies = [x for r in results for x in r[0]]
    images_done = sum(r[1] for r in results)
    errors: dict[str, int] = {}
    for r in results:
        for code, n in r[2].items():
            errors[str(code)] = errors.get(str(code), 0) + n
    ms = np.array(latencies) * 1000 if latencies else np.array([np.nan])
    # Throughput over the fixed window (process start-up excluded: it is before the first send).
    return {
        "servers": len(urls),
        "concurrency": concurrency,
        "files_per_request": files,
        "img_s": images_done / seconds,
        "req_s": len(latencies) / seconds,
        "p50_ms": float(np.percentile(ms, 50)),
        "p99_ms": float(np.percentile(ms, 99)),
        "errors": errors,
        "wall_s": elapsed,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--url", required=True, help="comma-separated: processes alternate")
    parser.add_argument("--images", type=Path, required=True)
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--processes", type=int, default=4)
    parser.add_argument("--files-per-request", type=int, default=1)
    parser.add_argument("--query", default="")
    parser.add_argument("--workers", type=int, default=1, help="as started (rdad serve --workers)")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    paths = sorted(p for p in args.images.iterdir() if p.suffix in {".png", ".jpg", ".jpeg"})
    images = [(p.name, p.read_bytes()) for p in paths]
    result = load(
        args.url.split(","), images, concurrency=args.concurrency, seconds=args.seconds,
        processes=args.processes, files=args.files_per_request, query=args.query,
    )  # fmt: skip
    result["workers"] = args.workers  # recorded for the report; the server was started with it
    print(json.dumps(result))
    if args.json:
        args.json.write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
