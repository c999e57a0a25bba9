"""OpenVINO CPU compilation shared by the service engine, ``rdad eval`` and ``rdad bench`` (so
that what is benchmarked and evaluated is compiled exactly like what is served), and the CPU
precision it runs at.

* inference precision pinned to f32 unless bf16 is asked for: on CPUs with AVX-512 BF16 / AMX the
  plugin would otherwise *silently* run fp32 layers in bfloat16. bf16 is an explicit choice
  (``RDAD_CPU_PRECISION``, ``rdad eval --cpu-precision``): :func:`compile_at` checks the CPU,
  compiles both precisions and compares them (:mod:`rdad.parity`) before a bf16 path is used;
* one stream, latency hint: callers feed one batch at a time from one thread;
* ``threads`` = 0 leaves the plugin's default (one per physical core).

bf16 applies to every layer the graph does not already run in int8: the whole fp32 graph, or the
non-quantised rest of an int8 graph (input normalisation, the anomaly-map tail) — including the
tail, which is why the parity check judges the maps, not only the scores.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from rdad.metadata import INPUT_NAME, OUTPUT_NAMES
from rdad.parity import BF16_BOUNDS, Parity, compare, reference_images

FP32, BF16, AUTO = "fp32", "bf16", "auto"
CPU_PRECISIONS = (FP32, BF16, AUTO)
_HINT = {FP32: "f32", BF16: "bf16"}

# oneDNN ISA caps (ONEDNN_MAX_CPU_ISA) under which it has bf16 kernels. OpenVINO's
# OPTIMIZATION_CAPABILITIES ignores the cap (it still lists BF16 under ONEDNN_MAX_CPU_ISA=AVX2)
# while its kernels honour it (compiling bf16 then fails on the ConvTranspose layers), so the
# cap is read here too.
_BF16_ISA_CAPS = ("AVX2_VNNI_2", "AVX512_CORE_BF16", "AVX512_CORE_FP16", "AVX512_CORE_AMX",
                  "AVX512_CORE_AMX_FP16", "AVX10_1_512", "AVX10_1_512_AMX", "AVX10_1_512_AMX_FP16",
                  "AVX10_2_512", "AVX10_2_512_AMX_2", "ALL", "DEFAULT", "")  # fmt: skip


class CpuPrecisionError(ValueError):
    """A precision that cannot be honoured here (no BF16 on this CPU, parity failed)."""


def compile_config(threads: int = 0, precision: str = FP32) -> dict[str, Any]:
    config: dict[str, Any] = {
        "PERFORMANCE_HINT": "LATENCY",
        "NUM_STREAMS": "1",
        "INFERENCE_PRECISION_HINT": _HINT[precision],
    }
    if threads:
        config["INFERENCE_NUM_THREADS"] = str(threads)
    return config


def compile_cpu(path: Path | str, threads: int = 0, precision: str = FP32) -> Any:
    """The compiled model (``openvino.CompiledModel``) of an ONNX file for the CPU plugin, its
    non-int8 layers at ``precision`` (fp32 or bf16, no checks: see :func:`compile_at`)."""
    import openvino as ov

    return ov.Core().compile_model(str(path), "CPU", compile_config(threads, precision))


def cpu_capabilities() -> list[str]:
    """OpenVINO's CPU ``OPTIMIZATION_CAPABILITIES`` (``BF16`` where the CPU has bf16 units)."""
    import openvino as ov

    return list(ov.Core().get_property("CPU", "OPTIMIZATION_CAPABILITIES"))


def bf16_problem() -> str | None:
    """Why this CPU cannot run bf16 (``None`` if it can), in one sentence."""
    from rdad import sysinfo

    try:
        capabilities = cpu_capabilities()
    except ImportError:
        return "OpenVINO, which runs bf16, is not installed: pip install 'rdad[openvino]'"
    if "BF16" not in capabilities:
        return f"this CPU ({sysinfo.cpu_model()}) has no BF16 support (AVX512-BF16 or AMX-BF16)"
    cap = os.environ.get("ONEDNN_MAX_CPU_ISA", "").strip().upper()
    if cap not in _BF16_ISA_CAPS:
        return f"ONEDNN_MAX_CPU_ISA={cap} caps oneDNN below its bf16 kernels"
    return None


def effective_precision(graph_precision: str, cpu_precision: str) -> str:
    """What runs: ``fp32``, ``bf16``, ``int8`` (rest fp32) or ``int8+bf16`` (rest bf16)."""
    if cpu_precision == FP32:
        return graph_precision
    return "int8+bf16" if graph_precision == "int8" else BF16


@dataclass(frozen=True)
class CompiledAt:
    compiled: Any
    """``openvino.CompiledModel``."""
    precision: str
    """What runs (:func:`effective_precision`)."""
    reason: str
    """Why, in words: shown in ``/models``, the start-up log and ``rdad eval``'s description."""
    parity: Parity | None = None
    """bf16 against fp32 on :func:`rdad.parity.reference_images` (``None``: not compared)."""


def _predict(compiled: Any, images: np.ndarray, batch: int = 8) -> tuple[np.ndarray, np.ndarray]:
    """Maps ``(N, S, S)`` and scores ``(N,)`` of uint8 ``images`` ``(N, S, S, 3)``."""
    request = compiled.create_infer_request()
    map_out, score_out = (compiled.output(name) for name in OUTPUT_NAMES)
    maps, scores = [], []
    for i in range(0, len(images), batch):
        result = request.infer({INPUT_NAME: images[i : i + batch]})
        maps.append(np.array(result[map_out]))
        scores.append(np.array(result[score_out]))
    return np.concatenate(maps), np.concatenate(scores)


def compile_at(
    path: Path | str, requested: str, graph_precision: str, image_size: int, threads: int = 0
) -> CompiledAt:
    """Compile ``path`` at the ``requested`` CPU precision (fp32 | bf16 | auto).

    bf16 is used only where the CPU has it and the bf16 graph agrees with the fp32 one on
    :func:`rdad.parity.reference_images` within :data:`rdad.parity.BF16_BOUNDS`; otherwise a bf16
    request raises :class:`CpuPrecisionError` and ``auto`` compiles fp32, saying why.
    """
    if requested not in CPU_PRECISIONS:
        raise CpuPrecisionError(f"CPU precision must be one of {', '.join(CPU_PRECISIONS)}")
    if requested == FP32:
        why = "fp32 (bf16 only on request)"
        return CompiledAt(compile_cpu(path, threads), graph_precision, why)
    if graph_precision == "fp16":
        why = "an fp16 graph is for GPUs: export fp32 or int8 for bf16 on a CPU"
        if requested == BF16:
            raise CpuPrecisionError(f"bf16 refused: {why}")
        return CompiledAt(compile_cpu(path, threads), graph_precision, f"auto: fp32, {why}")
    if problem := bf16_problem():
        if requested == BF16:
            raise CpuPrecisionError(f"bf16 refused: {problem}")
        return CompiledAt(compile_cpu(path, threads), graph_precision, f"auto: fp32, {problem}")
    fp32 = compile_cpu(path, threads)
    try:
        bf16 = compile_cpu(path, threads, BF16)
    except RuntimeError as exc:  # a kernel missing at the ISA this process may use
        first = str(exc).strip().splitlines()[-1] if str(exc).strip() else type(exc).__name__
        if requested == BF16:
            raise CpuPrecisionError(f"bf16 refused: OpenVINO cannot compile it: {first}") from exc
        return CompiledAt(fp32, graph_precision, f"auto: fp32, bf16 does not compile: {first}")
    images = reference_images(image_size)
    parity = compare(_predict(fp32, images), _predict(bf16, images), BF16_BOUNDS)
    used = effective_precision(graph_precision, BF16)
    if parity.ok:
        why = "requested" if requested == BF16 else "auto: the CPU has BF16 and parity passed"
        return CompiledAt(bf16, used, f"{used} {why} (parity vs fp32: {parity.describe()})", parity)
    if requested == BF16:
        raise CpuPrecisionError(f"bf16 refused: parity vs fp32 failed: {parity.describe()}")
    return CompiledAt(
        fp32, graph_precision, f"auto: fp32, bf16 parity failed: {parity.describe()}", parity
    )
