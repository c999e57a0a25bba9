"""What machine a figure was measured on: CPU model, cores and the vector extensions that decide
fp32/int8 speed. Every benchmark prints this next to its numbers (machines differ between runs)."""

from __future__ import annotations

import os
import platform
from pathlib import Path

# The extensions that change which kernels runtimes pick, in the order people read them.
VECTOR_FLAGS = (
    "sse4_2",
    "avx",
    "avx2",
    "fma",
    "avx_vnni",
    "avx512f",
    "avx512bw",
    "avx512_vnni",
    "avx512_bf16",
    "avx512_fp16",
    "amx_tile",
    "amx_int8",
    "amx_bf16",
    "neon",
    "asimd",
    "sve",
)


def _cpuinfo() -> dict[str, str]:
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return {}
    info: dict[str, str] = {}
    for line in text.splitlines():
        key, sep, value = line.partition(":")
        if sep and key.strip() not in info:
            info[key.strip()] = value.strip()
    return info


def cpu_model() -> str:
    info = _cpuinfo()
    return info.get("model name") or info.get("Model") or platform.processor() or "unknown CPU"


def vector_extensions() -> list[str]:
    info = _cpuinfo()
    flags = set((info.get("flags") or info.get("Features") or "").split())
    return [f for f in VECTOR_FLAGS if f in flags]


# The units behind the bf16 and int8 paths (``rdad bench``'s header): the name people know, the
# /proc/cpuinfo flag.
FAST_PATH_FLAGS = (
    ("AMX-BF16", "amx_bf16"),
    ("AMX-INT8", "amx_int8"),
    ("AVX512-BF16", "avx512_bf16"),
    ("AVX512-VNNI", "avx512_vnni"),
    ("AVX-VNNI", "avx_vnni"),
)


def fast_paths() -> dict[str, bool]:
    """Whether this CPU has each of :data:`FAST_PATH_FLAGS` (bf16 and int8 matrix units)."""
    present = set(vector_extensions())
    return {name: flag in present for name, flag in FAST_PATH_FLAGS}


def cpu_count() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def describe() -> dict[str, object]:
    return {
        "cpu": cpu_model(),
        "cores": cpu_count(),
        "vector_extensions": vector_extensions(),
        "machine": platform.machine(),
        "fast_paths": fast_paths(),
    }


def headline() -> str:
    d = describe()
    ext = " ".join(d["vector_extensions"]) or "none detected"  # type: ignore[arg-type]
    return f"CPU: {d['cpu']} ({d['cores']} cores usable, {d['machine']}); vector extensions: {ext}"


def fast_path_line() -> str:
    """One line: which bf16 / int8 units this CPU has (``AMX-BF16 no, …, AVX512-VNNI yes``)."""
    return "bf16/int8 units: " + ", ".join(
        f"{name} {'yes' if has else 'no'}" for name, has in fast_paths().items()
    )
