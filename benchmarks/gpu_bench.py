"""Model-only throughput for ``benchmarks/gpu_check.sh``: torch and ONNX Runtime, side by side.

torch (on CUDA): fp32, fp16 and bf16 with channels_last, and fp16 replayed as a CUDA graph. ONNX
Runtime: the exported fp32 and fp16 graphs with the service's own provider options, through plain
``session.run`` and through the service's IO binding (:class:`rdad.service.iobinding.BoundBuffers`),
plus two threads with one binding each (the service's two batches in flight), and fp16 with the
batch dimension fixed per session (on CUDA also replayed as a CUDA graph). Every row states its
arithmetic: GFLOP per image (counted by torch's FLOP counter) × images/s against a peak.

    python benchmarks/gpu_bench.py --device cuda --fp32 m32.onnx --fp16 m16.onnx --json out.json
"""

from __future__ import annotations

import argparse
import json
import statistics
import threading
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

PEAK_FP16_TFLOPS = 989.0  # H200 SXM dense fp16/bf16 (datasheet); CPU rows give no percentage


def timed(step: Callable[[], Any], sync: Callable[[], None], batch: int, seconds: float) -> dict:
    """Throughput over back-to-back steps (one sync at the end) and per-step latency p50."""
    first = time.perf_counter()
    step()
    sync()
    first_s = time.perf_counter() - first
    step()
    sync()
    latencies = []
    for _ in range(5):
        t0 = time.perf_counter()
        step()
        sync()
        latencies.append(time.perf_counter() - t0)
    est = statistics.median(latencies)
    iters = max(3, int(seconds / max(est, 1e-4)))
    t0 = time.perf_counter()
    for _ in range(iters):
        step()
    sync()
    elapsed = time.perf_counter() - t0
    return {
        "img_s": batch * iters / elapsed,
        "p50_ms": 1000 * est,
        "first_run_s": first_s,
        "iters": iters,
    }


def gflop_per_image(backbone: str, image_size: int) -> float:
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    from rdad.model.network import ReverseDistillation

    net = ReverseDistillation(backbone=backbone, image_size=image_size, teacher_weights="random")
    x = torch.zeros((1, image_size, image_size, 3), dtype=torch.uint8)
    with FlopCounterMode(display=False) as counter, torch.inference_mode():
        net.eval()(x)
    return counter.get_total_flops() / 1e9


def torch_rows(args: argparse.Namespace, gflop: float) -> list[dict]:
    import torch

    from rdad.model.network import ReverseDistillation

    device = torch.device(args.device)
    cuda = device.type == "cuda"
    if not cuda:
        torch.set_num_threads(args.cpu_threads)
    torch.backends.cudnn.benchmark = True
    sync = torch.cuda.synchronize if cuda else (lambda: None)
    variants = ["fp32", "fp16-cl", "bf16-cl", "fp16-cl-graph"] if cuda else ["fp32"]
    rows = []
    for variant in variants:
        net = ReverseDistillation(
            backbone=args.backbone, image_size=args.image_size, teacher_weights="random"
        ).eval()
        dtype = {"fp16": torch.float16, "bf16": torch.bfloat16}.get(variant[:4])
        if dtype is not None:  # the fp32 map tail stays fp32, as the export does
            for part in (net.preprocess, net.teacher, net.bottleneck, net.student):
                part.to(dtype)
        net = net.to(device)
        if variant.endswith("cl") or "-cl-" in variant:
            net = net.to(memory_format=torch.channels_last)
        for batch in args.batch_sizes:
            gen = torch.Generator().manual_seed(batch)
            host = torch.randint(
                0, 256, (batch, args.image_size, args.image_size, 3), generator=gen
            )
            x = host.to(torch.uint8).to(device)
            try:
                with torch.inference_mode():
                    if variant.endswith("graph"):
                        stream = torch.cuda.Stream()
                        stream.wait_stream(torch.cuda.current_stream())
                        with torch.cuda.stream(stream):
                            for _ in range(3):
                                net(x)
                        torch.cuda.current_stream().wait_stream(stream)
                        graph = torch.cuda.CUDAGraph()
                        with torch.cuda.graph(graph):
                            net(x)
                        step: Callable[[], Any] = graph.replay
                    else:

                        def step(net: Any = net, x: Any = x) -> Any:
                            return net(x)

                    r = timed(step, sync, batch, args.seconds)
            except Exception as exc:  # e.g. out of memory at the largest batch
                r = {"error": f"{type(exc).__name__}: {str(exc)[:120]}"}
            rows.append({"engine": "torch", "variant": variant, "batch": batch, **r})
            print(_line(rows[-1], gflop, cuda), flush=True)
        del net
        if cuda:
            torch.cuda.empty_cache()
    return rows


def ort_rows(args: argparse.Namespace, gflop: float) -> list[dict]:
    import onnxruntime as ort

    from rdad.cuda_libraries import preload_for_onnxruntime
    from rdad.metadata import read_onnx_metadata
    from rdad.service.device import CPU, CUDA
    from rdad.service.iobinding import BoundBuffers
    from rdad.service.provider_options import provider_options
    from rdad.service.settings import Settings

    cuda = args.device == "cuda"
    provider = CUDA if cuda else CPU
    if cuda:
        preload_for_onnxruntime()  # as the service does
    if provider not in ort.get_available_providers():
        print(f"onnxruntime {ort.__version__} has no {provider}: ONNX Runtime rows skipped")
        return [{"engine": "onnxruntime", "skipped": f"no {provider} in this build"}]
    rows = []
    for label, path in (("fp32", args.fp32), ("fp16", args.fp16)):
        if path is None:
            continue
        meta = read_onnx_metadata(path)
        settings = Settings(model_dir=path.parent)
        opts = ort.SessionOptions()
        opts.log_severity_level = 3
        if not cuda:  # small mode on a shared CPU: no spinning thread pool fighting the others
            opts.intra_op_num_threads = args.cpu_threads
            opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
        session = ort.InferenceSession(
            str(path),
            opts,
            providers=[provider],
            provider_options=[provider_options(provider, settings, meta)],
        )
        if session.get_providers()[0] != provider:
            rows.append({"engine": "onnxruntime", "variant": label, "error": "provider fell back"})
            continue
        device = "cuda" if cuda else "cpu"
        for batch in args.batch_sizes:
            rng = np.random.default_rng(batch)
            x = rng.integers(0, 256, (batch, meta.image_size, meta.image_size, 3), dtype=np.uint8)
            bound = BoundBuffers(session, meta.input_name, list(meta.output_names), device=device)
            steps: dict[str, Callable[[], Any]] = {
                "run": lambda x=x, s=session, name=meta.input_name: s.run(None, {name: x}),
                "bind": lambda x=x, bound=bound: bound.run(x),
            }
            for variant, step in steps.items():
                try:
                    r = timed(step, lambda: None, batch, args.seconds)
                except Exception as exc:
                    r = {"error": f"{type(exc).__name__}: {str(exc)[:120]}"}
                rows.append(
                    {"engine": "onnxruntime", "variant": f"{label}-{variant}", "batch": batch, **r}
                )
                print(_line(rows[-1], gflop, cuda), flush=True)
            if batch == max(args.batch_sizes) or batch == 64:
                r = two_lanes(session, meta, x, device, args.seconds)
                rows.append(
                    {
                        "engine": "onnxruntime",
                        "variant": f"{label}-bind-2lanes",
                        "batch": batch,
                        **r,
                    }
                )
                print(_line(rows[-1], gflop, cuda), flush=True)
        if label == "fp16":
            # One fixed batch: the service's largest bucket on the GPU (64), else the largest here.
            batch = 64 if 64 in args.batch_sizes else max(args.batch_sizes)
            dim = session.get_inputs()[0].shape[0]
            for row in static_rows(args, path, meta, settings, dim, batch):
                rows.append(row)
                print(_line(row, gflop, cuda), flush=True)
    return rows


def static_rows(
    args: argparse.Namespace, path: Path, meta: Any, settings: Any, dim: Any, batch: int
) -> list[dict]:
    """A session whose batch dimension is fixed (``add_free_dimension_override_by_name``), as
    each of the service's one-session-per-bucket sessions could be: ONNX Runtime then folds the
    int64 shape arithmetic of the map tail (on CUDA those nodes otherwise run on the CPU, a
    device round trip inside every run), and on CUDA the fixed shapes and the IO binding's fixed
    addresses allow capturing the run once and replaying it as a CUDA graph."""
    import onnxruntime as ort

    from rdad.service.device import CPU, CUDA
    from rdad.service.iobinding import BoundBuffers
    from rdad.service.provider_options import provider_options

    cuda = args.device == "cuda"
    provider = CUDA if cuda else CPU
    variants: dict[str, dict[str, str]] = {"fp16-static-bind": {}}
    if cuda:
        variants["fp16-static-cudagraph"] = {"enable_cuda_graph": "1"}
    if not isinstance(dim, str):
        return [{"engine": "onnxruntime", "variant": "fp16-static", "error": "batch is not free"}]
    rng = np.random.default_rng(batch)
    x = rng.integers(0, 256, (batch, meta.image_size, meta.image_size, 3), dtype=np.uint8)
    rows = []
    for variant, extra in variants.items():
        opts = ort.SessionOptions()
        opts.log_severity_level = 3
        opts.add_free_dimension_override_by_name(dim, batch)
        if not cuda:
            opts.intra_op_num_threads = args.cpu_threads
            opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
        try:
            session = ort.InferenceSession(
                str(path),
                opts,
                providers=[provider],
                provider_options=[{**provider_options(provider, settings, meta), **extra}],
            )
            bound = BoundBuffers(
                session,
                meta.input_name,
                list(meta.output_names),
                device="cuda" if cuda else "cpu",
            )
            r = timed(lambda bound=bound: bound.run(x), lambda: None, batch, args.seconds)
        except Exception as exc:
            r = {"error": f"{type(exc).__name__}: {str(exc)[:120]}"}
        rows.append({"engine": "onnxruntime", "variant": variant, "batch": batch, **r})
    return rows


def two_lanes(session: Any, meta: Any, x: np.ndarray, device: str, seconds: float) -> dict:
    """Two threads, one :class:`BoundBuffers` each, as the service's two batches in flight."""
    from rdad.service.iobinding import BoundBuffers

    lanes = [
        BoundBuffers(session, meta.input_name, list(meta.output_names), device=device)
        for _ in range(2)
    ]
    for lane in lanes:
        lane.run(x)
    counts = [0, 0]
    stop = time.perf_counter() + seconds

    def work(k: int) -> None:
        while time.perf_counter() < stop:
            lanes[k].run(x)
            counts[k] += 1

    t0 = time.perf_counter()
    threads = [threading.Thread(target=work, args=(k,)) for k in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    elapsed = time.perf_counter() - t0
    return {"img_s": len(x) * sum(counts) / elapsed, "iters": sum(counts)}


def _line(row: dict, gflop: float, cuda: bool) -> str:
    head = f"{row['engine']:>11} {row.get('variant', ''):>18} {row.get('batch', ''):>5}"
    if "error" in row:
        return f"{head}  ERROR {row['error']}"
    tflops = gflop * row["img_s"] / 1000
    row["tflops"] = tflops
    share = f" = {100 * tflops / PEAK_FP16_TFLOPS:5.1f}% of {PEAK_FP16_TFLOPS:g}" if cuda else ""
    return (
        f"{head} {row['img_s']:>9.1f} img/s  p50 {row.get('p50_ms', float('nan')):>8.2f} ms  "
        f"{gflop:.1f} GFLOP × {row['img_s']:.0f}/s = {tflops:.1f} TFLOP/s{share}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", choices=["cuda", "cpu"], default="cuda")
    parser.add_argument("--backbone", default="wide_resnet50_2")
    parser.add_argument("--image-size", type=int, default=256)
    parser.add_argument("--batch-sizes", default="1,8,32,64,128")
    parser.add_argument("--seconds", type=float, default=1.0)
    parser.add_argument("--fp32", type=Path)
    parser.add_argument("--fp16", type=Path)
    parser.add_argument("--skip-torch", action="store_true")
    parser.add_argument("--cpu-threads", type=int, default=1, help="CPU mode only")
    parser.add_argument("--json", type=Path, required=True)
    args = parser.parse_args()
    args.batch_sizes = [int(b) for b in args.batch_sizes.split(",")]
    warnings.simplefilter("ignore", UserWarning)  # the deliberate random-teacher warning
    gflop = gflop_per_image(args.backbone, args.image_size)
    print(f"{args.backbone} {args.image_size}px: {gflop:.2f} GFLOP per image (torch FLOP counter)")
    rows = [] if args.skip_torch else torch_rows(args, gflop)
    rows += ort_rows(args, gflop)
    args.json.write_text(
        json.dumps(
            {"gflop_per_image": gflop, "peak_tflops": PEAK_FP16_TFLOPS, "rows": rows}, indent=1
        )
    )


if __name__ == "__main__":
    main()
