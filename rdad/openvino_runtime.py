"""OpenVINO CPU compilation shared by the service engine, ``rdad eval`` and ``rdad bench`` (so
that what is benchmarked and evaluated is compiled exactly like what is served).

* inference precision pinned to f32: on CPUs with AVX-512 BF16 / AMX the plugin would otherwise
  silently run fp32 layers in bfloat16, and the anomaly-map tail must stay fp32;
* one stream, latency hint: callers feed one batch at a time from one thread;
* ``threads`` = 0 leaves the plugin's default (one per physical core).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any


def compile_config(threads: int = 0) -> dict[str, Any]:
    config: dict[str, Any] = {
        "PERFORMANCE_HINT": "LATENCY",
        "NUM_STREAMS": "1",
        "INFERENCE_PRECISION_HINT": "f32",
    }
    if threads:
        config["INFERENCE_NUM_THREADS"] = str(threads)
    return config


def compile_cpu(path: Path | str, threads: int = 0) -> Any:
    """The compiled model (``openvino.CompiledModel``) of an ONNX file for the CPU plugin."""
    import openvino as ov

    return ov.Core().compile_model(str(path), "CPU", compile_config(threads))
