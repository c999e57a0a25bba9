"""Device policy (``RDAD_DEVICE=auto|cuda|cpu``): which providers to ask for, and proof of where the
graph actually runs.

There are four ways to end up on the CPU while believing in a GPU: a CPU-only onnxruntime build,
no NVIDIA driver, the CUDA provider failing to start (cuDNN or cuBLAS missing: ONNX Runtime then
silently drops it), and single nodes placed on the CPU provider. ``cuda`` turns each into a
:class:`DevicePolicyError` naming the reason; ``auto`` logs one plain warning line and serves on
the CPU (a host without a driver is an expected setup, not an error); ``cpu`` never loads CUDA.
"""

from __future__ import annotations

import ctypes
import functools
import json
import logging
import os
import tempfile
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import onnxruntime as ort

from rdad.cuda_libraries import preload_for_onnxruntime

from .errors import ModelLoadError
from .settings import Settings

log = logging.getLogger("rdad.service.device")

TENSORRT = "TensorrtExecutionProvider"
CUDA = "CUDAExecutionProvider"
CPU = "CPUExecutionProvider"
GPU_PROVIDERS = frozenset({TENSORRT, CUDA})
SHORT_NAMES = {"tensorrt": TENSORRT, "trt": TENSORRT, "cuda": CUDA, "cpu": CPU}

# CUDA keeps shape arithmetic (Shape → Gather → Add on a few int64s) on the CPU on purpose; a CPU
# node that outputs floats is a real fallback (a tensor round trip through host memory).
_SHAPE_DTYPES = frozenset({"int64", "int32", "bool"})


class DevicePolicyError(ModelLoadError):
    """``RDAD_DEVICE=cuda`` cannot be honoured; the message names the reason."""

    code = "device_unavailable"


@functools.cache
def cuda_problem(device_id: int) -> str | None:
    """Why CUDA cannot start here (``None`` if it can): probes the driver through ``libcuda``."""
    try:
        lib = ctypes.CDLL("libcuda.so.1")
    except OSError:
        return "no NVIDIA driver found (libcuda.so.1 cannot be loaded)"
    status = lib.cuInit(0)
    if status != 0:
        return f"the NVIDIA driver failed to initialise (cuInit error {status})"
    count = ctypes.c_int(0)
    if lib.cuDeviceGetCount(ctypes.byref(count)) != 0 or count.value <= device_id:
        return f"CUDA device {device_id} does not exist ({count.value} device(s) visible)"
    return None


@functools.cache
def _warn_once(message: str) -> None:
    log.warning(message)


def gpu_problem(settings: Settings) -> str | None:
    """Why no GPU provider can be used under ``settings`` (``None``: one can be tried)."""
    if settings.device == "cpu":
        return "RDAD_DEVICE=cpu"
    available = set(ort.get_available_providers())
    wanted = [SHORT_NAMES.get(p.lower(), p) for p in settings.providers]
    gpu_wanted = [p for p in wanted if p in GPU_PROVIDERS and (p != TENSORRT or settings.tensorrt)]
    if not gpu_wanted:
        return f"no GPU provider in RDAD_PROVIDERS={','.join(settings.providers)}"
    if not available & set(gpu_wanted):
        return (
            f"this onnxruntime build ({ort.__version__}, providers {sorted(available)}) has no "
            "CUDA provider: install onnxruntime-gpu"
        )
    return cuda_problem(settings.device_id)


def preflight(settings: Settings) -> None:
    """Raise :class:`DevicePolicyError` at start when ``device=cuda`` is impossible on this host."""
    if settings.device == "cuda" and (problem := gpu_problem(settings)):
        raise DevicePolicyError(f"RDAD_DEVICE=cuda but no GPU can be used: {problem}")


def resolve_providers(settings: Settings) -> list[str]:
    """The providers to ask ONNX Runtime for, in order (CPU last unless ``device=cuda``)."""
    problem = gpu_problem(settings)
    if problem is not None:
        if settings.device == "cuda":
            raise DevicePolicyError(f"RDAD_DEVICE=cuda but no GPU can be used: {problem}")
        if settings.device == "auto":
            _warn_once(f"no GPU used ({problem}); running on the CPU")
        return [CPU]
    preload_for_onnxruntime()
    available = ort.get_available_providers()
    chosen: list[str] = []
    for raw in settings.providers:
        name = SHORT_NAMES.get(raw.lower(), raw)
        if name == TENSORRT and not settings.tensorrt:
            continue  # TensorRT only when enabled: first-start engine builds take minutes.
        if name in available and name not in chosen:
            chosen.append(name)
    if settings.device == "cuda":
        return [p for p in chosen if p in GPU_PROVIDERS] or [CUDA]
    if CPU not in chosen:
        chosen.append(CPU)
    return chosen


def node_placement(
    session: ort.InferenceSession, run_once: Callable[[], Any]
) -> tuple[Counter[str], set[str]]:
    """``{provider: node count}`` executed by ``session`` in one run, and the op types of nodes
    that ran on the CPU provider with tensor (non-integer) outputs.

    Read from ONNX Runtime's own profile of ``run_once`` (each node event names its provider and
    output types); the session must have been created with profiling on, which this turns off.
    """
    try:
        run_once()
    except BaseException:
        discard_profile(session)
        raise
    path = Path(session.end_profiling())
    try:
        events = json.loads(path.read_text())
    finally:
        path.unlink(missing_ok=True)
    placement: Counter[str] = Counter()
    cpu_tensor_ops: set[str] = set()
    for event in events:
        args = event.get("args") or {}
        name = str(event.get("name", ""))
        is_node_run = event.get("cat") == "Node" and name.endswith("_kernel_time")
        if not is_node_run or "provider" not in args:
            continue
        placement[args["provider"]] += 1
        if args["provider"] == CPU:
            dtypes = {dtype for out in args.get("output_type_shape", []) for dtype in out}
            if not dtypes <= _SHAPE_DTYPES:
                cpu_tensor_ops.add(str(args.get("op_name", "?")))
    return placement, cpu_tensor_ops


def discard_profile(session: ort.InferenceSession) -> None:
    """End a profiled session's profile and remove its file (a session given up before its
    placement was read would otherwise leave the file in the temp folder)."""
    Path(session.end_profiling()).unlink(missing_ok=True)


def profiling_options(options: ort.SessionOptions) -> None:
    """Turn profiling on for the placement check, writing into the temp folder."""
    options.enable_profiling = True
    options.profile_file_prefix = str(Path(tempfile.gettempdir()) / f"rdad-placement-{os.getpid()}")


def placement_problem(placement: Counter[str], cpu_tensor_ops: set[str]) -> str | None:
    """Why this placement is not "on the GPU" (``None`` when it is)."""
    if not any(p in GPU_PROVIDERS for p in placement):
        return f"no node ran on a GPU provider (placement {dict(placement)})"
    if cpu_tensor_ops:
        return (
            f"tensor nodes ran on the CPU provider ({', '.join(sorted(cpu_tensor_ops))}; "
            f"placement {dict(placement)})"
        )
    return None
