"""rdad serve (fp32 and int8, runtime ``auto``) against the plain FastAPI wrapper, side by side.

Per backbone, three servers run at once on loopback (idle ones cost nothing): the plain wrapper
(``benchmarks/plain_wrapper.py``: one ONNX Runtime call per request, no batching) over the fp32
graph, ``rdad serve`` over the fp32 graph and ``rdad serve`` over the int8 graph. Then, for each
round, for each concurrency level, each server gets the same bounded number of requests with the
same real images, in turn — interleaved so that foreign load on a shared machine hits all three
alike. Medians over rounds; ratios against the plain wrapper.

    python benchmarks/make_models.py --out bench-models --int8
    python benchmarks/cpu_compare.py --models bench-models \
        --images ../shared/datasets/mvtec_bottle/test
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

sys.path.insert(0, str(Path(__file__).parent))
from load import load_images, run_level

from rdad import sysinfo


def start(cmd: list[str], port: int, log: Path) -> subprocess.Popen[bytes]:
    env = {**os.environ, "RDAD_PORT": str(port), "RDAD_HOST": "127.0.0.1"}
    proc = subprocess.Popen(cmd, stdout=log.open("wb"), stderr=subprocess.STDOUT, env=env)
    for _ in range(1200):
        try:
            if httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=2).status_code == 200:
                return proc
        except httpx.HTTPError:
            pass
        if proc.poll() is not None:
            raise SystemExit(f"{cmd} exited; see {log}")
        time.sleep(0.5)
    raise SystemExit(f"{cmd} never became ready; see {log}")


async def measure(
    servers: dict[str, int], images: list[tuple[str, bytes]], levels: dict[int, int], rounds: int
) -> dict[str, dict[int, list[float]]]:
    rates: dict[str, dict[int, list[float]]] = {s: {c: [] for c in levels} for s in servers}
    clients = {
        name: httpx.AsyncClient(
            base_url=f"http://127.0.0.1:{port}",
            timeout=300,
            limits=httpx.Limits(max_connections=64),
        )
        for name, port in servers.items()
    }
    for client in clients.values():  # warm the HTTP path
        await run_level(client, "/predict", images, 2, 4, {})
    for _ in range(rounds):
        for conc, requests in levels.items():
            for name, client in clients.items():
                level = await run_level(client, "/predict", images, conc, requests, {})
                rates[name][conc].append(level["img_per_s"])
                print(f"{name} c={conc}: {level['img_per_s']:.2f} img/s", file=sys.stderr)
    for client in clients.values():
        await client.aclose()
    return rates


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", type=Path, required=True, help="make_models.py --int8 output")
    parser.add_argument("--backbones", default="resnet18,wide_resnet50_2")
    parser.add_argument("--images", type=Path, required=True)
    parser.add_argument("--requests", default="1:8,16:32", help="concurrency:requests pairs")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    levels = dict(tuple(int(x) for x in pair.split(":")) for pair in args.requests.split(","))
    images = load_images(args.images, 32)
    print(sysinfo.headline())
    report: dict[str, Any] = {"system": sysinfo.describe(), "levels": levels, "results": {}}
    for backbone in args.backbones.split(","):
        work = Path(tempfile.mkdtemp())
        procs = []
        try:
            for precision, name in (("fp32", "model.onnx"), ("int8", "model_int8.onnx")):
                (work / precision).mkdir()
                shutil.copy(args.models / backbone / name, work / precision / f"{backbone}.onnx")
            plain = [sys.executable, str(Path(__file__).parent / "plain_wrapper.py")]
            serve = [sys.executable, "-m", "rdad", "serve", "--no-access-log", "--model-dir"]
            commands = {
                "plain wrapper fp32": ([*plain, "--model", str(work / "fp32" / f"{backbone}.onnx"),
                                        "--port", "8771"], 8771),
                "rdad serve fp32": ([*serve, str(work / "fp32")], 8772),
                "rdad serve int8": ([*serve, str(work / "int8")], 8773),
            }  # fmt: skip
            for cmd, port in commands.values():
                procs.append(start(cmd, port, work / f"{port}.log"))
            providers = {}
            for name, (_, port) in commands.items():
                if name.startswith("rdad"):
                    info = httpx.get(f"http://127.0.0.1:{port}/models").json()["models"][0]
                    providers[name] = info["provider"]
            servers = {name: port for name, (_, port) in commands.items()}
            rates = asyncio.run(measure(servers, images, levels, args.rounds))
        finally:
            for proc in procs:
                proc.terminate()
                proc.wait(timeout=60)
        medians = {s: {c: statistics.median(v) for c, v in r.items()} for s, r in rates.items()}
        report["results"][backbone] = {"img_per_s": medians, "runtime_chosen": providers}
        print(f"\n{backbone} (runtime auto chose: {providers})")
        print("| server | " + " | ".join(f"img/s c={c}" for c in levels) + " | × plain |")
        print("|---|" + "---|" * (len(levels) + 1))
        base = medians["plain wrapper fp32"]
        for name, row in medians.items():
            ratio = " / ".join(f"{row[c] / base[c]:.2f}" for c in levels)
            print(f"| {name} | " + " | ".join(f"{row[c]:.2f}" for c in levels) + f" | {ratio} |")
    if args.json:
        args.json.write_text(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
