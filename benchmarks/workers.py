"""``rdad serve --workers N`` side by side in one run: requests/s on a workload where the event
loop, not the model, is the limit — a 64-px model, one small JPEG per request, heatmap off — for
each worker count (default 1 and 2), with every worker's resident memory once its model is loaded.

Each configuration starts its own server on the same model and settings (only RDAD_WORKERS
differs), warms it up, then sends a fixed number of pre-built requests over keep-alive
connections from one client loop (it only moves bytes: the client shares the cores with the
server). Which worker answered each request comes from the ``x-rdad-worker`` header.

On a CPU host the model itself runs on the same cores as the event loops (a 64-px resnet18 takes
several times the loop's CPU per image), so ``--stand-in`` adds rows for a stand-in graph: the
model's own metadata (size, calibration) around a graph that only averages the pixels — inference
close to free, as on a GPU, which leaves the loop as the limit. Its figures are about the server,
never about a model.

    python benchmarks/make_models.py --out bench-models-64 --backbones resnet18 --image-size 64
    mkdir -p m64 && cp bench-models-64/resnet18/model.onnx m64/
    python benchmarks/workers.py --model-dir m64 --requests 4000 --stand-in
"""

from __future__ import annotations

import argparse
import asyncio
import json
import re
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).parent))
from event_loop import process_cpu_s, small_jpegs
from reliability import Server, raw_request
from reliability_server import proc_kb, run_client

from rdad import sysinfo


def stand_in(model: Path, out: Path) -> Path:
    """``model``'s metadata around a near-free graph with its input and outputs: the anomaly map is
    the pixels' channel mean, the score its maximum."""
    import onnx
    from onnx import TensorProto, helper

    from rdad.metadata import INPUT_NAME, OUTPUT_NAMES, read_onnx_metadata

    size = read_onnx_metadata(model).image_size
    source = onnx.load(str(model), load_external_data=False)
    nodes = [
        helper.make_node("Cast", [INPUT_NAME], ["pixels"], to=TensorProto.FLOAT),
        helper.make_node("ReduceMean", ["pixels", "channel"], [OUTPUT_NAMES[0]], keepdims=0),
        helper.make_node("ReduceMax", [OUTPUT_NAMES[0], "plane"], [OUTPUT_NAMES[1]], keepdims=0),
    ]
    graph = helper.make_graph(
        nodes,
        "stand-in",
        [helper.make_tensor_value_info(INPUT_NAME, TensorProto.UINT8, ["B", size, size, 3])],
        [
            helper.make_tensor_value_info(OUTPUT_NAMES[0], TensorProto.FLOAT, ["B", size, size]),
            helper.make_tensor_value_info(OUTPUT_NAMES[1], TensorProto.FLOAT, ["B"]),
        ],
        [helper.make_tensor("channel", TensorProto.INT64, [1], [3]),
         helper.make_tensor("plane", TensorProto.INT64, [2], [1, 2])],
    )  # fmt: skip
    built = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    built.ir_version = source.ir_version
    built.metadata_props.extend(source.metadata_props)
    out.mkdir(parents=True, exist_ok=True)
    onnx.save(built, str(out / "stand-in.onnx"))
    return out


STARTED = re.compile(r"worker (\d+) started \(pid (\d+)\)")


async def _read(reader: asyncio.StreamReader) -> tuple[int, str]:
    """Status and ``x-rdad-worker`` of one response (body read and dropped)."""
    status = int((await reader.readline()).split()[1])
    length, worker = 0, "-"
    while (line := await reader.readline()) not in (b"\r\n", b""):
        key, _, value = line.partition(b":")
        key = key.strip().lower()
        if key == b"content-length":
            length = int(value)
        elif key == b"x-rdad-worker":
            worker = value.strip().decode()
    await reader.readexactly(length)
    return status, worker


async def drive(port: int, requests: list[bytes], concurrency: int) -> list[tuple[int, str]]:
    """Send ``requests`` over ``concurrency`` keep-alive connections: (status, worker) each."""
    answers: list[tuple[int, str]] = [(0, "-")] * len(requests)
    counter = iter(range(len(requests)))

    async def client() -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        try:
            for k in counter:
                writer.write(requests[k])
                await writer.drain()
                answers[k] = await _read(reader)
        finally:
            writer.close()

    await asyncio.gather(*(client() for _ in range(concurrency)))
    return answers


def worker_pids(server: Server) -> dict[int, int]:
    text = Path(server.log.name).read_text(errors="replace")
    return {int(i): int(pid) for i, pid in STARTED.findall(text)}


def measure(
    model_dir: Path,
    workers: int,
    count: int,
    args: argparse.Namespace,
    images: list[tuple[str, bytes]],
) -> dict[str, Any]:
    env = {"RDAD_WORKERS": str(workers), "RDAD_MAX_QUEUE": "1024", "RDAD_RUNTIME": "onnxruntime"}
    log = args.out / f"serve-{model_dir.name}-workers-{workers}.log"
    server = Server(model_dir, env, log)
    try:
        requests = [
            raw_request(server.port, [images[k % len(images)]], "?heatmap=false")
            for k in range(count)
        ]
        run_client(drive(server.port, requests[: max(64, count // 10)], args.concurrency))
        pids = worker_pids(server) or {0: server.proc.pid}
        cpu0 = sum(process_cpu_s(pid) for pid in pids.values())
        client0, t0 = time.process_time(), time.monotonic()
        answers = run_client(drive(server.port, requests, args.concurrency))
        wall = time.monotonic() - t0
        client_s = time.process_time() - client0
        server_s = sum(process_cpu_s(pid) for pid in pids.values()) - cpu0
        rss = {i: round(proc_kb(pid, "VmRSS") / 1024) for i, pid in sorted(pids.items())}
        supervisor = round(server.rss_mb()) if workers > 1 else None
    finally:
        server.stop()
    split = Counter(worker for _, worker in answers)
    return {
        "graph": "stand-in" if model_dir.name == "stand-in" else "model",
        "workers": workers,
        "requests": len(answers),
        "ok": sum(1 for status, _ in answers if status == 200),
        "wall_s": round(wall, 2),
        "requests_per_s": round(len(answers) / wall, 1),
        "requests_by_worker": dict(sorted(split.items())),
        "server_cpu_ms_per_request": round(1000 * server_s / len(answers), 3),
        "client_cpu_ms_per_request": round(1000 * client_s / len(answers), 3),
        "worker_rss_mib": rss,
        "supervisor_rss_mib": supervisor,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model-dir", type=Path, required=True, help="folder with one model")
    parser.add_argument("--workers", default="1,2", help="worker counts to compare")
    parser.add_argument("--requests", type=int, default=3000, help="per configuration")
    parser.add_argument("--concurrency", type=int, default=32, help="keep-alive connections")
    parser.add_argument("--side", type=int, default=64, help="JPEG side in pixels")
    parser.add_argument("--stand-in", action="store_true", help="also a near-free graph")
    parser.add_argument(
        "--stand-in-requests", type=int, default=20000, help="per configuration (it is fast)"
    )
    parser.add_argument("--out", type=Path, default=Path("bench-results"))
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    images = small_jpegs(32, args.side)
    folders = [(args.model_dir, args.requests)]
    if args.stand_in:
        (model,) = sorted(args.model_dir.glob("*.onnx")) or sorted(args.model_dir.glob("*/*.onnx"))
        folders.append((stand_in(model, args.out / "stand-in"), args.stand_in_requests))
    rows = []
    for folder, count in folders:
        for workers in (int(w) for w in args.workers.split(",")):
            rows.append(measure(folder, workers, count, args, images))
            print(json.dumps(rows[-1]), file=sys.stderr, flush=True)
    report = {
        "system": sysinfo.describe(),
        "date": time.strftime("%Y-%m-%d"),
        "jpeg_side": args.side,
        "concurrency": args.concurrency,
        "rows": rows,
    }
    (args.out / "workers.json").write_text(json.dumps(report, indent=2))
    print(f"{sysinfo.headline()}; {args.side}×{args.side} JPEGs, 1 per request, heatmap off, "
          f"{args.concurrency} keep-alive connections, {time.strftime('%Y-%m-%d')}")  # fmt: skip
    print("| graph | workers | requests/s | vs 1 worker | 200s | answered by worker | server "
          "CPU ms/req | client CPU ms/req | RSS per worker MiB | supervisor MiB |")  # fmt: skip
    print("|---|---:|---:|---:|---:|---|---:|---:|---|---:|")
    for r in rows:
        base = next(b for b in rows if b["graph"] == r["graph"])["requests_per_s"]
        split = " / ".join(str(n) for n in r["requests_by_worker"].values())
        rss = " / ".join(str(v) for v in r["worker_rss_mib"].values())
        print(
            f"| {r['graph']} | {r['workers']} | {r['requests_per_s']:,.1f} | "
            f"{r['requests_per_s'] / base:.2f}× | "
            f"{r['ok']} | {split} | {r['server_cpu_ms_per_request']:.2f} | "
            f"{r['client_cpu_ms_per_request']:.2f} | {rss} | {r['supervisor_rss_mib'] or '-'} |"
        )


if __name__ == "__main__":
    main()
