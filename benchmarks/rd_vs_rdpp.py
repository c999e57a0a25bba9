"""RD vs RD++ on real data: the same teacher, data, epochs and seeds, last epoch, ``rdad eval``.

Phase ``runs`` trains, exports and evaluates each (method, seed) with the ``rdad`` commands
exactly as a user would — ``rdad train`` → ``rdad export`` → ``rdad eval`` on the ONNX graph —
and skips a run whose ``eval.json`` exists, so it can be stopped and started again. Phase
``report`` reads every run back and prints image AUROC, pixel AUROC and AUPRO as mean and range
per method, the training seconds per epoch (from ``rdad train``'s epoch lines), GFLOP per image
(:mod:`rdad.flops`) and img/s of both graphs through ONNX Runtime, timed interleaved in one
process so that foreign load on a shared machine hits both alike. Prints the CPU first.

    python benchmarks/rd_vs_rdpp.py runs --out rdpp-bench --methods rd,rd++ --seeds 0,1,2 \
        --data ../shared/datasets/mvtec_bottle \
        --teacher-weights ../shared/teachers/resnet18_cifar10.pth
    python benchmarks/rd_vs_rdpp.py report --out rdpp-bench --json rdpp-bench/summary.json
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
import subprocess
import time
from pathlib import Path
from typing import Any

from rdad import sysinfo

METRICS = ("image_auroc", "pixel_auroc", "aupro")
EPOCH_LINE = re.compile(r"^epoch (\d+)/\d+ loss \S+ ([\d.]+) img/s", re.M)
DATA_LINE = re.compile(r"^data: (\d+) train", re.M)


def run_dir(out: Path, method: str, seed: int) -> Path:
    return out / f"{method.replace('+', 'p')}_seed{seed}"


def one_run(args: argparse.Namespace, method: str, seed: int) -> None:
    folder = run_dir(args.out, method, seed)
    if (folder / "eval.json").is_file():
        print(f"{folder.name}: done already", flush=True)
        return
    train = [
        *("rdad", "train", "--data", str(args.data), "--out", str(folder / "train")),
        *("--backbone", "resnet18", "--epochs", str(args.epochs), "--batch-size", "16"),
        *("--image-size", "256", "--teacher-weights", args.teacher_weights),
        *("--seed", str(seed), "--overwrite"),
    ]
    if method != "rd":  # RD runs are the documented command, unchanged
        train += ["--method", method]
    onnx = folder / "model.onnx"
    steps = [
        ("train", train),
        ("export", ["rdad", "export", str(folder / "train" / "checkpoint.pt"), "--out", str(onnx)]),
        ("eval", ["rdad", "eval", "--model", str(onnx), "--data", str(args.data)]),
    ]
    folder.mkdir(parents=True, exist_ok=True)
    for name, cmd in steps:
        if name == "eval":
            cmd += ["--json", str(folder / "eval.json")]
        t0 = time.perf_counter()
        done = subprocess.run(cmd, capture_output=True, text=True)
        (folder / f"{name}.log").write_text(done.stdout + done.stderr)
        if done.returncode:
            raise SystemExit(f"{folder.name}: {name} failed, see {folder / f'{name}.log'}")
        print(f"{folder.name}: {name} {time.perf_counter() - t0:.0f} s", flush=True)


def seconds_per_epoch(train_log: str) -> float:
    """Mean epoch time: training images / the img/s ``rdad train`` prints per epoch."""
    found = DATA_LINE.search(train_log)
    if found is None:
        raise ValueError("no 'data:' line in the training log")
    n = int(found.group(1))
    return statistics.mean(n / float(rate) for _, rate in EPOCH_LINE.findall(train_log))


def throughput(graphs: dict[str, Path], batch: int, rounds: int) -> dict[str, float]:
    """img/s of each graph at ``batch``, rounds interleaved; the median of the rounds."""
    import numpy as np
    import onnxruntime as ort

    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (batch, 256, 256, 3), dtype=np.uint8)
    sessions = {
        m: ort.InferenceSession(str(p), providers=["CPUExecutionProvider"])
        for m, p in graphs.items()
    }
    rates: dict[str, list[float]] = {m: [] for m in graphs}
    for s in sessions.values():  # warm-up
        s.run(None, {s.get_inputs()[0].name: images})
    for _ in range(rounds):
        for m, s in sessions.items():
            t0 = time.perf_counter()
            s.run(None, {s.get_inputs()[0].name: images})
            rates[m].append(batch / (time.perf_counter() - t0))
    return {m: statistics.median(r) for m, r in rates.items()}


def train_step_seconds(teacher_weights: str, rounds: int) -> dict[str, float]:
    """Seconds per training step (batch 16, 256 px, resnet18; forward, loss, backward, Adam) of
    both methods, rounds interleaved in this process; the median of the rounds."""
    import torch

    from rdad.model.checkpoint import build_model
    from rdad.model.config import TrainConfig
    from rdad.model.loss import distillation_loss
    from rdad.model.pseudo_anomaly import PseudoAnomalies
    from rdad.model.rdpp_loss import RDPPLoss
    from rdad.model.train import parameter_groups

    images = torch.randint(0, 256, (16, 256, 256, 3), dtype=torch.uint8)
    index = torch.arange(16)
    parts: dict[str, tuple[Any, Any, Any, Any]] = {}
    for method in ("rd", "rd++"):
        cfg = TrainConfig(
            backbone="resnet18", image_size=256, teacher_weights=teacher_weights, method=method
        )
        model = build_model(cfg).train()
        opt = torch.optim.Adam(parameter_groups(model, cfg), lr=cfg.lr, betas=cfg.betas)
        loss = RDPPLoss(cfg)
        noise = PseudoAnomalies(image_size=256, seed=0, strength=cfg.rdpp_noise_strength)

        parts[method] = (model, opt, loss, noise)

    def step(method: str) -> None:
        model, opt, loss, noise = parts[method]
        if method == "rd":
            value = distillation_loss(*model(images))
        else:
            value = loss(*model(images, noise(images, index, 0))).total
        opt.zero_grad()
        value.backward()
        opt.step()

    times: dict[str, list[float]] = {m: [] for m in parts}
    for i in range(rounds + 1):
        for method in parts:
            t0 = time.perf_counter()
            step(method)
            if i:  # the first round warms up
                times[method].append(time.perf_counter() - t0)
    return {m: statistics.median(t) for m, t in times.items()}


def report(args: argparse.Namespace) -> dict[str, Any]:
    from rdad.flops import graph_gflop

    summary: dict[str, Any] = {"cpu": sysinfo.headline(), "methods": {}}
    graphs: dict[str, Path] = {}
    for folder in sorted(args.out.glob("*_seed*")):
        if not (folder / "eval.json").is_file():
            continue
        method = folder.name.split("_seed")[0].replace("p", "+")
        ev = json.loads((folder / "eval.json").read_text())
        row = {k: ev[k] for k in METRICS}
        row["seed"] = int(folder.name.split("_seed")[1])
        row["s_per_epoch"] = seconds_per_epoch((folder / "train.log").read_text())
        summary["methods"].setdefault(method, {"runs": []})["runs"].append(row)
        graphs.setdefault(method, folder / "model.onnx")
    for method, entry in summary["methods"].items():
        runs = entry["runs"]
        for key in (*METRICS, "s_per_epoch"):
            values = [r[key] for r in runs]
            entry[key] = {"mean": statistics.mean(values), "min": min(values), "max": max(values)}
        entry["gflop_per_img"] = graph_gflop(graphs[method])
    rates = throughput(graphs, batch=args.batch, rounds=args.rounds)
    for method, rate in rates.items():
        summary["methods"][method]["img_s"] = rate
    step = train_step_seconds(args.teacher_weights, rounds=args.step_rounds)
    for method, seconds in step.items():
        summary["methods"].setdefault(method, {})["train_step_s"] = seconds
    return summary


def print_summary(summary: dict[str, Any]) -> None:
    print(f"CPU: {summary['cpu']}")
    print(
        "| method | seeds | image AUROC | pixel AUROC | AUPRO | s/epoch | s/step side by side "
        "| GFLOP/img | img/s |"
    )
    print("|---|---|---|---|---|---|---|---|---|")

    def cell(e: dict[str, Any], key: str) -> str:
        v = e[key]
        return f"{v['mean']:.4f} ({v['min']:.4f}–{v['max']:.4f})"

    for method, e in summary["methods"].items():
        seeds = ",".join(str(r["seed"]) for r in e["runs"])
        print(
            f"| {method} | {seeds} | {cell(e, 'image_auroc')} | {cell(e, 'pixel_auroc')} | "
            f"{cell(e, 'aupro')} | {e['s_per_epoch']['mean']:.1f} | {e['train_step_s']:.2f} | "
            f"{e['gflop_per_img']:.2f} | {e['img_s']:.1f} |"
        )
    for method, e in summary["methods"].items():
        for r in e["runs"]:
            print(
                f"  {method} seed {r['seed']}: "
                + " ".join(f"{k} {r[k]:.4f}" for k in METRICS)
                + f" s/epoch {r['s_per_epoch']:.1f}"
            )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("phase", choices=("runs", "report"))
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--methods", default="rd,rd++")
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--epochs", type=int, default=10)
    ap.add_argument("--data", type=Path, default=Path("../shared/datasets/mvtec_bottle"))
    ap.add_argument("--teacher-weights", default="../shared/teachers/resnet18_cifar10.pth")
    ap.add_argument("--batch", type=int, default=8, help="report: img/s batch size")
    ap.add_argument("--rounds", type=int, default=10, help="report: img/s rounds")
    ap.add_argument("--step-rounds", type=int, default=3, help="report: training-step rounds")
    ap.add_argument("--json", type=Path, help="report: write the summary here too")
    args = ap.parse_args()
    if args.phase == "runs":
        # Seed-major order: the two methods' runs alternate, so load changes hit both.
        for seed in (int(s) for s in args.seeds.split(",")):
            for method in args.methods.split(","):
                one_run(args, method, seed)
        return
    summary = report(args)
    print_summary(summary)
    if args.json:
        args.json.write_text(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
