"""Reliability benchmarks of a real ``rdad serve`` on loopback (issue 9): figures, not asserts.

    python benchmarks/reliability.py SCENARIO --model-dir DIR [--images DIR] [--json OUT]

Scenarios (each starts its own server with the settings it names, then stops it):

* ``stall``   — 300 connections send headers and half a body, then stop; one honest client
  sends a normal request every second for 45 s: its statuses over time, /readyz, peak RSS.
* ``uploads`` — 256 concurrent clients each uploading a ~50 MB image: peak RSS, outcomes.
* ``renders`` — 16 concurrent flat 6000×6600 PNGs with original-size heatmap and mask, overlay
  and regions: peak RSS, outcomes.

* ``memory``  — 6 concurrent requests × 16 flat 6000×6500 PNGs, default settings: peak RSS
  (the kernel's high-water mark, VmHWM) and the outcomes.
* ``burst``   — 300 concurrent small single-image requests (bottle PNGs resized to
  ``--burst-side``, 256 px by default; 0 sends the 900×900 originals) with
  RDAD_REQUEST_TIMEOUT_S=10: outcomes, latency per status, goodput of the 200s against raw ONNX
  Runtime measured in the same run (before and after the burst, mean); ``--repeat N`` runs N
  bursts and pools them (raw speed alone drifts by several percent between minutes on a VM).
* ``steady``  — 2,000 requests at concurrency 32: every status that is not 200 or 503 is an error.
* ``soak``    — N (default 5,000) requests, mixed image sizes, 1–4 files each, overlay on some:
  RSS after warm-up vs at the end.
* ``sigterm`` — 48 requests in flight, then SIGTERM: every request sent before it gets 200.
* ``hangup``  — clients that hang up mid-upload and while queued: no work left behind (queue
  depth, pixel budget in use, admitted images back to 0; fewer images inferred than sent).

Loopback only, every loop bounded by a request count and a timeout.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import io
import json
import os
import signal
import statistics
import time
from collections import Counter
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any

import httpx
import numpy as np
from PIL import Image
from reliability_server import (
    REFUSALS,
    Server,
    bottle_images,
    bucket,
    flat_png,
    metric,
    post,
    raw_post,
    raw_request,
    raw_throughput,
    read_response,
    run_client,
    steal_seconds,
    summarize,
)

from rdad import sysinfo

# --- scenarios -------------------------------------------------------------------------------


def peak_memory_run(
    args: argparse.Namespace,
    name: str,
    load: Callable[[Server], Coroutine[Any, Any, list[tuple[int, float]]]],
) -> dict[str, Any]:
    """Start a server with default settings, run ``load`` against it on the load client's loop,
    stop it: idle RSS, peak RSS (the kernel's high-water mark), wall time and outcomes."""
    server = Server(args.model_dir, {}, args.out / f"serve-{name}.log")
    idle = server.rss_mb()
    start = time.monotonic()
    results = run_client(load(server))
    wall = time.monotonic() - start
    peak = server.peak_mb()
    server.stop()
    return {
        "rss_idle_mb": round(idle, 1),
        "peak_rss_mb": round(peak, 1),
        "wall_s": round(wall, 2),
        "outcomes": summarize(results),
    }


def memory(args: argparse.Namespace) -> dict[str, Any]:
    """6 concurrent requests × 16 flat 6000×6500 PNGs."""
    image = flat_png(6000, 6500)

    async def load(server: Server) -> list[tuple[int, float]]:
        files = [(f"flat{i}.png", image) for i in range(16)]
        async with httpx.AsyncClient(base_url=server.url, timeout=900) as client:
            return await asyncio.gather(*(post(client, files) for _ in range(6)))

    return {"png_bytes": len(image), **peak_memory_run(args, "memory", load)}


def burst(args: argparse.Namespace) -> dict[str, Any]:
    """One burst, or ``--repeat N`` bursts (a fresh server and raw windows each) and their pooled
    figures: on a virtual machine raw speed alone drifts by several percent between minutes,
    so one run's ratio is noisy and the pooled one is what to compare with a target."""
    images = bottle_images(args.images, 40, args.burst_side)
    model_file = next(args.model_dir.glob("*.onnx"))
    if args.repeat <= 1:
        return one_burst(args, images, model_file)
    runs = []
    for k in range(args.repeat):
        runs.append(one_burst(args, images, model_file))
        print(f"burst {k + 1}/{args.repeat}: goodput/raw {runs[-1]['goodput_vs_raw']}", flush=True)
    ratios = sorted(r["goodput_vs_raw"] for r in runs)
    raws = [x for r in runs for x in r["raw_before_after_img_s"]]
    ok = sum(r["outcomes"].get("200", {}).get("count", 0) for r in runs)
    span = sum(r["ok_span_s"] for r in runs)
    sent = sum(sum(o["count"] for o in r["outcomes"].values()) for r in runs)
    timeouts = sum(r["outcomes"].get("504", {}).get("count", 0) for r in runs)
    return {
        "repeat": args.repeat,
        "pooled": {
            "ok": ok,
            "ok_span_s": round(span, 2),
            "goodput_img_s": round(ok / span, 2),
            "raw_mean_img_s": round(sum(raws) / len(raws), 2),
            "goodput_vs_raw": round(ok / span / (sum(raws) / len(raws)), 3),
            "goodput_vs_raw_runs": ratios,
            "goodput_vs_raw_median": round(statistics.median(ratios), 4),
            "share_504": round(timeouts / sent, 4),
            "server_side_503s": sum(r["server_side_503s"] for r in runs),
            "server_side_503s_within_100ms": sum(r["server_side_503s_within_100ms"] for r in runs),
        },
        "runs": runs,
    }


def one_burst(args: argparse.Namespace, images: list[tuple[str, bytes]], model_file: Path) -> dict:
    env = {"RDAD_REQUEST_TIMEOUT_S": "10"}
    raw = raw_throughput(model_file, 16)
    server = Server(args.model_dir, env, args.out / "serve-burst.log")

    requests = [raw_request(server.port, [images[k % len(images)]]) for k in range(300)]

    async def run() -> tuple[list[tuple[int, float]], float, float]:
        start = time.monotonic()
        sent_at: list[float] = []
        done_at: list[float] = []

        async def one(k: int) -> tuple[int, float]:
            result = await asyncio.wait_for(raw_post(server.port, requests[k]), 60)
            now = time.monotonic()
            sent_at.append(now - result[1])  # the latency counts from the request's send
            if result[0] == 200:
                done_at.append(now)
            return result

        results = await asyncio.gather(*(one(k) for k in range(300)))
        if not done_at:
            return results, float("nan"), float("nan")
        # The span runs from the first request handed to the kernel to the last 200 received;
        # the client's own connection setup before that is reported apart (client_setup_s).
        return results, max(done_at) - min(sent_at), min(sent_at) - start

    cpu_before, steal_before = time.process_time(), steal_seconds()
    results, span, client_setup = run_client(run())
    client_cpu = time.process_time() - cpu_before
    steal = steal_seconds() - steal_before
    metrics = server.metrics()
    server.stop()
    # Raw speed drifts by a few percent between minutes on a shared host: measure it again after
    # the burst and compare against the mean of the two.
    raw_after = raw_throughput(model_file, 16)
    raw_before, raw = raw, (raw + raw_after) / 2
    ok = sum(1 for s, _ in results if s == 200)
    shed = metric(metrics, "rdad_shed_latency_seconds_count")
    shed_fast = bucket(metrics, "rdad_shed_latency_seconds_bucket", "0.1")
    goodput = ok / span if span == span and span > 0 else 0.0
    return {
        "raw_ort_batch16_img_s": round(raw, 2),
        "raw_before_after_img_s": [round(raw_before, 2), round(raw_after, 2)],
        "image_side_px": args.burst_side or "original",
        "outcomes": summarize(results),
        "ok_span_s": round(span, 2),
        "client_setup_s": round(client_setup, 3),
        "goodput_img_s": round(goodput, 2),
        "goodput_vs_raw": round(goodput / raw, 3) if raw else None,
        "server_side_503s": shed,
        "server_side_503s_within_100ms": shed_fast,
        "share_504": round(sum(1 for s, _ in results if s == 504) / len(results), 4),
        # Where the rest of raw throughput went: the model busy for less of the span (idle), or
        # busy but slower per image than alone (cores shared with decoding, HTTP and the client).
        "inference_busy_s": round(metric(metrics, "rdad_inference_duration_seconds_sum"), 2),
        "client_cpu_s": round(client_cpu, 2),
        "cpu_steal_s": round(steal, 2),
        "mean_batch": round(
            metric(metrics, "rdad_batch_size_sum")
            / max(1, metric(metrics, "rdad_batch_size_count")),
            2,
        ),
    }


def steady(args: argparse.Namespace, count: int = 2000, concurrency: int = 32) -> dict[str, Any]:
    images = bottle_images(args.images, 40)
    server = Server(args.model_dir, {}, args.out / "serve-steady.log")

    async def run() -> list[tuple[int, float]]:
        queue = list(range(count))
        results: list[tuple[int, float]] = []
        async with httpx.AsyncClient(base_url=server.url, timeout=120) as client:

            async def worker() -> None:
                while queue:
                    k = queue.pop()
                    results.append(await post(client, [images[k % len(images)]]))

            await asyncio.gather(*(worker() for _ in range(concurrency)))
        return results

    start = time.monotonic()
    results = asyncio.run(run())
    wall = time.monotonic() - start
    server.stop()
    errors = sum(1 for s, _ in results if s not in (200, 503))
    return {
        "requests": count,
        "concurrency": concurrency,
        "wall_s": round(wall, 1),
        "outcomes": summarize(results),
        "errors_besides_503": errors,
    }


def soak(args: argparse.Namespace) -> dict[str, Any]:
    bottles = bottle_images(args.images, 20)
    rng = np.random.default_rng(0)
    small = [(f"s{k}.png", _png(rng, 96 + 16 * k, 80 + 8 * k)) for k in range(6)]
    large = [(f"l{k}.jpg", _jpeg(rng, 2000 + 100 * k, 1500)) for k in range(3)]
    pool = bottles + small + large
    server = Server(args.model_dir, {}, args.out / "serve-soak.log")
    warmup = min(500, args.soak // 10)
    rss: dict[str, float] = {}

    async def run() -> list[tuple[int, float]]:
        results: list[tuple[int, float]] = []
        counter = iter(range(args.soak))
        async with httpx.AsyncClient(base_url=server.url, timeout=120) as client:

            async def worker() -> None:
                for k in counter:
                    n = 1 + k % 4
                    files = [pool[(k * 7 + j) % len(pool)] for j in range(n)]
                    params = {"overlay": "true"} if k % 5 == 0 else None
                    results.append(await post(client, files, params))
                    if len(results) == warmup:
                        rss["after_warmup_mb"] = server.rss_mb()

            await asyncio.gather(*(worker() for _ in range(8)))
        return results

    start = time.monotonic()
    results = asyncio.run(run())
    wall = time.monotonic() - start
    rss["end_mb"] = server.rss_mb()
    rss["peak_mb"] = server.peak_mb()
    server.stop()
    growth = rss["end_mb"] / rss["after_warmup_mb"] - 1 if rss.get("after_warmup_mb") else None
    return {
        "requests": args.soak,
        "warmup_requests": warmup,
        "wall_s": round(wall, 1),
        "outcomes": summarize(results),
        "rss_mb": {k: round(v, 1) for k, v in rss.items()},
        "rss_growth": round(growth, 4) if growth is not None else None,
    }


def _png(rng: np.random.Generator, width: int, height: int) -> bytes:
    buf = io.BytesIO()
    pixels = rng.integers(0, 255, (height, width, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(buf, "PNG")
    return buf.getvalue()


def _jpeg(rng: np.random.Generator, width: int, height: int) -> bytes:
    buf = io.BytesIO()
    yy, xx = np.mgrid[0:height, 0:width]
    pixels = np.stack([(xx + yy) % 256, (xx * 2) % 256, (yy * 3) % 256], -1).astype(np.uint8)
    Image.fromarray(pixels).save(buf, "JPEG", quality=90)
    return buf.getvalue()


def sigterm(args: argparse.Namespace, count: int = 48) -> dict[str, Any]:
    images = bottle_images(args.images, 16)
    env = {"RDAD_DRAIN_DELAY_S": "1", "RDAD_GRACE_PERIOD_S": "60"}
    server = Server(args.model_dir, env, args.out / "serve-sigterm.log")

    async def run() -> list[tuple[int, float]]:
        limits = httpx.Limits(max_connections=count + 4)
        async with httpx.AsyncClient(base_url=server.url, timeout=120, limits=limits) as client:
            tasks = [asyncio.create_task(post(client, [images[k % 16]])) for k in range(count)]
            await asyncio.sleep(0.5)  # all connections open and bodies sent
            server.proc.send_signal(signal.SIGTERM)
            return await asyncio.gather(*tasks)

    results = asyncio.run(run())
    code = server.proc.wait(timeout=90)
    server.stop()
    return {"in_flight": count, "outcomes": summarize(results), "exit_code": code}


def hangup(args: argparse.Namespace, count: int = 40) -> dict[str, Any]:
    images = bottle_images(args.images, 16)
    server = Server(args.model_dir, {}, args.out / "serve-hangup.log")
    before = server.metrics()

    async def mid_upload(k: int) -> None:
        # Headers and the start of a large body, then the socket closes.
        _, writer = await asyncio.open_connection("127.0.0.1", server.port)
        head = (
            "POST /predict HTTP/1.1\r\nHost: x\r\nContent-Length: 5000000\r\n"
            "Content-Type: multipart/form-data; boundary=b\r\n\r\n"
            '--b\r\nContent-Disposition: form-data; name="file"; filename="a.png"\r\n\r\n'
        )
        writer.write(head.encode() + images[k % 16][1][:20000])
        await writer.drain()
        await asyncio.sleep(0.2)
        writer.close()

    async def while_queued(client: httpx.AsyncClient, k: int) -> None:
        with contextlib.suppress(TimeoutError, httpx.HTTPError):
            await asyncio.wait_for(client.post("/predict", files={"file": images[k % 16]}), 0.15)

    async def run() -> None:
        await asyncio.gather(*(mid_upload(k) for k in range(count)))
        async with httpx.AsyncClient(base_url=server.url, timeout=30) as client:
            await asyncio.gather(*(while_queued(client, k) for k in range(count)))
        await asyncio.sleep(3)  # let in-flight work finish or be dropped

    asyncio.run(run())
    after = server.metrics()
    good = httpx.post(f"{server.url}/predict", files={"file": images[0]}, timeout=60).status_code
    server.stop()
    inferred = metric(after, "rdad_batch_size_sum") - metric(before, "rdad_batch_size_sum")
    return {
        "hung_up_mid_upload": count,
        "hung_up_while_queued": count,
        "images_inferred": inferred,
        "queue_depth_after": metric(after, "rdad_queue_depth"),
        "memory_budget_bytes_in_use_after": metric(after, "rdad_memory_budget_bytes_in_use"),
        "next_request_status": good,
    }


# --- slow clients and every byte in the memory bound (issue 16) -------------------------------


def stall(args: argparse.Namespace, attackers: int = 300, seconds: float = 45.0) -> dict[str, Any]:
    """``attackers`` connections send their headers and half a body, then stop (with
    ``--reconnect``, each opens a new one as soon as the server closes the old); one honest
    client sends one normal request every second and /readyz is polled every second."""
    name, image = bottle_images(args.images, 1, args.burst_side or 256)[0]
    server = Server(args.model_dir, {}, args.out / "serve-stall.log")
    request = raw_request(server.port, [(name, image)])
    half = request[: len(request) - len(image) // 2]
    cut: list[float] = []

    async def attacker(stop: asyncio.Event) -> None:
        while not stop.is_set():
            try:
                reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
                writer.write(half)
                await writer.drain()
                with contextlib.suppress(asyncio.TimeoutError):
                    await asyncio.wait_for(reader.read(), timeout=seconds + 30)
                cut.append(time.monotonic())
                writer.close()
            except OSError:
                await asyncio.sleep(0.1)
            if not args.reconnect:
                return

    async def honest(start: float) -> list[dict[str, Any]]:
        tries: list[dict[str, Any]] = []
        async with httpx.AsyncClient(base_url=server.url, timeout=30) as client:
            for k in range(int(seconds)):
                await asyncio.sleep(max(0.0, start + k - time.monotonic()))
                at = round(time.monotonic() - start, 2)
                status, took = await post(client, [(name, image)])
                try:
                    ready = (await client.get("/readyz")).status_code
                except httpx.HTTPError:
                    ready = -1
                tries.append({"t": at, "status": status, "s": round(took, 3), "readyz": ready})
        return tries

    async def run() -> list[dict[str, Any]]:
        stop = asyncio.Event()
        crowd = [asyncio.create_task(attacker(stop)) for _ in range(attackers)]
        await asyncio.sleep(1.0)  # every attacker connected and stalled
        start = time.monotonic()
        tries = await honest(start)
        stop.set()
        for task in crowd:
            task.cancel()
        await asyncio.gather(*crowd, return_exceptions=True)
        return tries

    began = time.monotonic()
    tries = run_client(run())
    peak = server.peak_mb()
    server.stop()
    late = [t for t in tries if t["t"] >= 35.0]
    first_ok = next((t["t"] for t in tries if t["status"] == 200), None)
    return {
        "attackers": attackers,
        "reconnect": args.reconnect,
        "image_bytes": len(image),
        "honest_tries": len(tries),
        "honest_statuses": summarize([(t["status"], t["s"]) for t in tries]),
        "first_200_at_s": first_ok,
        "share_200_from_35s": round(sum(t["status"] == 200 for t in late) / len(late), 3),
        "readyz_not_200": sum(t["readyz"] != 200 for t in tries),
        # When the server closed the attackers' connections (from their start): 408 at the read
        # deadline, or a 503 answer (queue full) closed by the keep-alive timeout.
        "attack_connections_closed": len(cut),
        "attack_closed_after_s": {
            "min": round(min(cut) - began, 1),
            "p50": round(float(np.median(cut)) - began, 1),
            "max": round(max(cut) - began, 1),
        }
        if cut
        else None,
        "peak_rss_mb": round(peak, 1),
        "timeline": [(t["t"], t["status"]) for t in tries],
    }


def noise_png(target_bytes: int) -> bytes:
    """A random-noise PNG just under ``target_bytes`` (noise does not compress)."""
    side = int((target_bytes / 3) ** 0.5) - 8
    pixels = np.random.default_rng(0).integers(0, 255, (side, side, 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, "PNG", compress_level=1)
    return buf.getvalue()


async def chunked_post(port: int, request: bytes, timeout_s: float) -> tuple[int, float]:
    """Send one large pre-built request in 1 MiB pieces (so the client never buffers a whole
    copy per connection) and read the status."""
    start = time.monotonic()
    writer = None
    view = memoryview(request)
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        start = time.monotonic()

        async def send() -> None:
            for i in range(0, len(view), 1 << 20):
                writer.write(view[i : i + (1 << 20)])
                await writer.drain()

        sending = asyncio.ensure_future(send())
        status, body = await asyncio.wait_for(read_response(reader), timeout_s)
        sending.cancel()
        if status == 503:
            REFUSALS[json.loads(body).get("error", "?")] += 1
    except (OSError, asyncio.IncompleteReadError, IndexError, ValueError, TimeoutError) as exc:
        status = -1
        CLIENT_ERRORS[type(exc).__name__] += 1
    finally:
        if writer is not None:
            writer.close()
    return status, time.monotonic() - start


CLIENT_ERRORS: Counter[str] = Counter()


def uploads(args: argparse.Namespace, clients: int = 256) -> dict[str, Any]:
    """``clients`` concurrent clients each uploading one ~50 MB image."""
    image = noise_png(49 * 1024 * 1024)
    size: list[int] = []

    async def load(server: Server) -> list[tuple[int, float]]:
        request = raw_request(server.port, [("noise.png", image)])
        size.append(len(request))
        return await asyncio.gather(
            *(chunked_post(server.port, request, 600) for _ in range(clients))
        )

    figures = peak_memory_run(args, "uploads", load)
    return {
        "clients": clients,
        "upload_bytes": size[0],
        **figures,
        "client_errors": dict(CLIENT_ERRORS),
    }


def renders(args: argparse.Namespace, count: int = 16) -> dict[str, Any]:
    """``count`` concurrent requests of a flat 6000×6600 PNG with an original-size heatmap and
    mask, an overlay and regions."""
    image = flat_png(6000, 6600)
    params = {
        "heatmap": "true", "mask": "true", "overlay": "true", "regions": "true",
        "heatmap_size": "original",
    }  # fmt: skip

    async def load(server: Server) -> list[tuple[int, float]]:
        limits = httpx.Limits(max_connections=count + 2)
        async with httpx.AsyncClient(base_url=server.url, timeout=300, limits=limits) as client:
            return await asyncio.gather(
                *(post(client, [("flat.png", image)], params) for _ in range(count))
            )

    return {"requests": count, "png_bytes": len(image), **peak_memory_run(args, "renders", load)}


SCENARIOS = {
    "stall": stall,
    "uploads": uploads,
    "renders": renders,
    "memory": memory,
    "burst": burst,
    "steady": steady,
    "soak": soak,
    "sigterm": sigterm,
    "hangup": hangup,
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("scenario", choices=[*SCENARIOS, "all"])
    parser.add_argument("--model-dir", type=Path, required=True, help="folder with one model")
    parser.add_argument("--images", type=Path, default=Path("../shared/datasets/mvtec_bottle/test"))
    parser.add_argument("--out", type=Path, default=Path("bench-results"))
    parser.add_argument("--soak", type=int, default=5000, help="soak request count")
    parser.add_argument("--repeat", type=int, default=1, help="burst: runs to pool")
    parser.add_argument(
        "--reconnect", action="store_true", help="stall: attackers reconnect when cut off"
    )
    parser.add_argument(
        "--burst-side",
        type=int,
        default=256,
        help="burst images: bottle PNGs resized to this side (small requests); 0 = 900×900",
    )
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    names = list(SCENARIOS) if args.scenario == "all" else [args.scenario]
    for name in names:
        start = time.monotonic()
        result = {
            "scenario": name,
            "system": sysinfo.describe(),
            "load_avg_at_start": os.getloadavg(),
            **SCENARIOS[name](args),
        }
        result["refusals_503_by_error"] = dict(REFUSALS)
        REFUSALS.clear()
        result["scenario_wall_s"] = round(time.monotonic() - start, 1)
        text = json.dumps(result, indent=2)
        print(text, flush=True)
        (args.out / f"reliability-{name}.json").write_text(text)


if __name__ == "__main__":
    main()
