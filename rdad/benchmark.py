"""``rdad bench`` measurements: every runtime on the same inputs, interleaved, medians.

One *subject* is one model file run by one runtime at one precision: a checkpoint by torch eager
(the official code's way), an ``.onnx`` file by ONNX Runtime CPU, OpenVINO CPU (fp32 and, where
the CPU has BF16, bf16 for the layers not in int8), and ONNX Runtime CUDA / TensorRT when a GPU
can start. Runtimes and precisions that cannot run here are listed with the reason. Speed only:
the bf16 parity check runs where bf16 is used (``rdad serve``, ``rdad eval``), not here.

Method, chosen because the machines are shared and noisy:

* all subjects are loaded first and warmed up at every batch size;
* repetitions are interleaved — each repetition runs every subject once at every batch size — and
  the median over repetitions is reported, so a burst of foreign load hits all subjects alike;
* a dense fp32 matmul (numpy's BLAS) is measured inside the same loop: the machine's practical
  fp32 ceiling, against which each subject's achieved GFLOP/s is put;
* batch-1 latency: ``latency_runs`` runs per subject, round-robin; p50 and p99;
* peak memory: each subject in a fresh process (spawned), loaded and run once at the largest
  batch; reported as the peak RSS growth over the process's RSS before loading the model.
"""

from __future__ import annotations

import multiprocessing
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

Run = Callable[[np.ndarray], Any]

ORT_CPU, OPENVINO, ORT_CUDA, ORT_TRT, TORCH = (
    "onnxruntime-cpu",
    "openvino-cpu",
    "onnxruntime-cuda",
    "onnxruntime-tensorrt",
    "torch-eager",
)
ONNX_RUNTIMES = (ORT_CPU, OPENVINO, ORT_CUDA, ORT_TRT)
CPU_RUNTIMES = (ORT_CPU, OPENVINO)
"""Runtimes a CPU precision (``--cpu-precisions``) applies to."""


@dataclass
class Subject:
    model: Path
    runtime: str
    precision: str
    """What runs (fp32, fp16, int8, bf16, int8+bf16): the graph's precision at ``cpu_precision``."""
    image_size: int
    cpu_precision: str = "fp32"
    """OpenVINO's inference precision for the layers not in int8 (fp32 or bf16)."""
    run: Run | None = None
    gflop: float | None = None
    results: dict[str, Any] = field(default_factory=dict)

    @property
    def label(self) -> str:
        return f"{self.runtime} {self.precision} ({self.model.name})"


def unavailable_reason(runtime: str) -> str | None:
    """Why ``runtime`` cannot run on this machine, or ``None``."""
    if runtime == TORCH:
        try:
            import torch  # noqa: F401
        except ImportError:
            return "torch is not installed"
        return None
    if runtime == OPENVINO:
        try:
            import openvino  # noqa: F401
        except ImportError:
            return "openvino is not installed (pip install 'rdad[openvino]')"
        return None
    import onnxruntime as ort

    wanted = {
        ORT_CPU: "CPUExecutionProvider",
        ORT_CUDA: "CUDAExecutionProvider",
        ORT_TRT: "TensorrtExecutionProvider",
    }[runtime]
    if wanted not in ort.get_available_providers():
        return f"{wanted} is not in this onnxruntime build"
    if runtime != ORT_CPU:
        from rdad.service.device import cuda_problem

        return cuda_problem(0)
    return None


def load_run(subject: Subject, threads: int) -> Run:
    """A callable uint8 ``(B, S, S, 3)`` → outputs for ``subject`` (the model loaded once)."""
    path = str(subject.model)
    if subject.runtime == TORCH:
        import torch

        from rdad.model.checkpoint import load_model

        if threads:
            torch.set_num_threads(threads)
        net, _ = load_model(subject.model)

        def run_torch(images: np.ndarray) -> Any:
            with torch.inference_mode():
                return net(torch.from_numpy(images))

        return run_torch
    if subject.runtime == OPENVINO:
        from rdad.openvino_runtime import compile_cpu

        request = compile_cpu(path, threads, subject.cpu_precision).create_infer_request()
        return lambda images: request.infer({0: images})
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.log_severity_level = 3
    provider = {
        ORT_CPU: ["CPUExecutionProvider"],
        ORT_CUDA: ["CUDAExecutionProvider"],
        ORT_TRT: ["TensorrtExecutionProvider", "CUDAExecutionProvider"],
    }[subject.runtime]
    session = ort.InferenceSession(path, options, providers=provider)
    name = session.get_inputs()[0].name
    return lambda images: session.run(None, {name: images})


def torch_gflop(checkpoint: Path, image_size: int) -> float:
    """GFLOP per image of the eager model, counted by torch's FlopCounterMode on one image."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    from rdad.model.checkpoint import load_model

    net, _ = load_model(checkpoint)
    images = torch.zeros((1, image_size, image_size, 3), dtype=torch.uint8)
    with torch.inference_mode(), FlopCounterMode(display=False) as counter:
        net(images)
    return counter.get_total_flops() / 1e9


def matmul_gflops(n: int = 1024, runs: int = 3) -> float:
    """fp32 GFLOP/s of an ``n×n`` matmul with numpy's BLAS (best of ``runs``)."""
    rng = np.random.default_rng(0)
    a = rng.standard_normal((n, n), dtype=np.float32)
    b = rng.standard_normal((n, n), dtype=np.float32)
    a @ b  # warm-up: BLAS thread start
    best = float("inf")
    for _ in range(runs):
        start = time.perf_counter()
        a @ b
        best = min(best, time.perf_counter() - start)
    return 2 * n**3 / best / 1e9


def images_for(size: int, batch: int) -> np.ndarray:
    """The same deterministic inputs for every subject."""
    rng = np.random.default_rng(0)
    return rng.integers(0, 256, (batch, size, size, 3), dtype=np.uint8)


def measure(
    subjects: list[Subject],
    batch_sizes: list[int],
    *,
    repeats: int,
    latency_runs: int,
) -> dict[str, Any]:
    """Interleaved throughput and latency of loaded ``subjects`` (fills ``subject.results``)."""
    inputs = {(s.image_size, b): images_for(s.image_size, b) for s in subjects for b in batch_sizes}
    for s in subjects:
        assert s.run is not None
        for b in batch_sizes:
            s.run(inputs[s.image_size, b])  # warm-up: allocation, kernel choice per shape
    times: dict[tuple[int, int], list[float]] = {}
    matmul: list[float] = []
    for _ in range(repeats):
        matmul.append(matmul_gflops())
        for b in batch_sizes:
            for i, s in enumerate(subjects):
                assert s.run is not None
                start = time.perf_counter()
                s.run(inputs[s.image_size, b])
                times.setdefault((i, b), []).append(time.perf_counter() - start)
    latencies: list[list[float]] = [[] for _ in subjects]
    for _ in range(latency_runs):
        for i, s in enumerate(subjects):
            assert s.run is not None
            start = time.perf_counter()
            s.run(inputs[s.image_size, 1])
            latencies[i].append(1000 * (time.perf_counter() - start))
    matmul_median = statistics.median(matmul)
    largest = max(batch_sizes)
    for i, s in enumerate(subjects):
        rate = {b: b / statistics.median(times[i, b]) for b in batch_sizes}
        s.results.update(
            img_per_s={str(b): r for b, r in rate.items()},
            p50_ms=float(np.percentile(latencies[i], 50)) if latencies[i] else None,
            p99_ms=float(np.percentile(latencies[i], 99)) if latencies[i] else None,
            gflop_per_image=s.gflop,
        )
        achieved = s.gflop * rate[largest] if s.gflop is not None else None
        s.results["gflops"] = achieved
        s.results["fraction_of_matmul"] = achieved / matmul_median if achieved else None
    return {"matmul_gflops": matmul_median, "matmul_runs": matmul}


def _status_mib(field_name: str) -> float:
    """A ``/proc/self/status`` memory field in MiB (VmRSS, VmHWM)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field_name + ":"):
            return int(line.split()[1]) / 1024
    raise KeyError(field_name)


def _peak_child(
    model: str,
    runtime: str,
    precision: str,
    size: int,
    cpu_precision: str,
    batch: int,
    threads: int,
) -> float:
    # VmHWM, not getrusage's ru_maxrss: Linux carries ru_maxrss over exec, so a spawned child
    # would report the parent's peak; VmHWM belongs to this process image only.
    before = _status_mib("VmRSS")
    run = load_run(Subject(Path(model), runtime, precision, size, cpu_precision), threads)
    run(images_for(size, batch))
    return _status_mib("VmHWM") - before


def peak_memory_mib(subject: Subject, batch: int, threads: int) -> float | None:
    """Peak RSS growth (MiB) of loading ``subject`` and running one batch, in a fresh process;
    ``None`` where ``/proc`` is missing (not Linux)."""
    if not Path("/proc/self/status").exists():
        return None
    ctx = multiprocessing.get_context("spawn")
    args = (
        str(subject.model),
        subject.runtime,
        subject.precision,
        subject.image_size,
        subject.cpu_precision,
        batch,
        threads,
    )
    with ctx.Pool(1) as pool:
        return float(pool.apply(_peak_child, args))
