"""What runs a model's batches: the engine interface, and which runtime a model file gets.

Two engines implement :class:`InferenceEngine`: ONNX Runtime (:mod:`service.engine_onnxruntime`)
and OpenVINO's CPU plugin (:mod:`service.engine_openvino`). :func:`load_engine` reads the model
file **once** and builds everything from those bytes — metadata, thresholds, every session — so a
file replaced while it loads can never pair one file's metadata with another file's graph; the
bytes' SHA-256 is shown in ``/models``.

Which runtime (``RDAD_RUNTIME``), per model, by a rule (the same file always gets the same runtime
on the same host and settings, after every restart):

* ``onnxruntime`` or ``openvino``: that runtime (OpenVINO missing → load error);
* ``openvino`` in ``RDAD_PROVIDERS``: OpenVINO, unless a GPU provider listed before it can start;
* ``auto`` (default): ONNX Runtime when a GPU provider can start; on a CPU host, OpenVINO when
  ``RDAD_CPU_PRECISION`` is ``bf16``, or ``auto`` on a CPU with BF16 (only OpenVINO runs bf16),
  else OpenVINO for int8
  graphs (its int8 kernels beat ONNX Runtime's QDQ path at the batch sizes the service runs:
  docs/performance.md, *CPU fast path*) and ONNX Runtime for fp32 and fp16 (within a few
  percent of OpenVINO there, and the default everywhere else). OpenVINO not installed → ONNX
  Runtime.

The choice and its reason are logged and shown in ``/models`` (``runtime_reason``).
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import NamedTuple, Protocol

import numpy as np

from rdad.metadata import ModelMetadata

from .errors import ModelLoadError
from .settings import Settings

log = logging.getLogger("rdad.service.engine")

ONNXRUNTIME = "onnxruntime"
OPENVINO = "openvino"
AUTO = "auto"
ORT_NO_BF16 = (
    "its CPU provider has no bf16 kernels on x86 (its one bf16 switch, "
    "mlas.enable_gemm_fastmath_arm64_bfloat16, is ARM64 MatMul only)"
)


class BatchOutput(NamedTuple):
    anomaly_map: np.ndarray
    """float32 ``(B, H, W)``: the smoothed anomaly map at the model's resolution."""
    score: np.ndarray
    """float32 ``(B,)``: raw image scores (max of the map)."""


class InferenceEngine(Protocol):
    name: str
    metadata: ModelMetadata
    provider: str
    inflight: int
    """Batches the batcher may have in flight at once on this engine."""
    placement: dict[str, int]
    """Graph nodes per execution provider / device (shown in ``GET /models``)."""
    identity: ModelIdentity
    """The hash of the bytes it was built from, and why this runtime runs it."""
    compute_precision: str
    """What actually runs: fp32, fp16, bf16, int8 or int8+bf16 (``RDAD_CPU_PRECISION``)."""
    precision_reason: str
    """Why (requested, refused, ``auto``'s choice with the parity figures)."""

    @property
    def image_size(self) -> int: ...

    def run(self, images: np.ndarray) -> BatchOutput: ...

    def warmup_batch_sizes(self, settings: Settings) -> list[int]: ...


@dataclass(frozen=True)
class ModelIdentity:
    """What a loaded model keeps of its file: not the bytes (the runtime holds its own copy of
    the graph), only their hash — and why the runtime that runs it was chosen."""

    sha256: str
    runtime_reason: str = ""


@dataclass(frozen=True)
class ModelSource:
    """A model file as it was read — once, whole — while it loads: the runtimes build every
    session from ``path``, a private in-memory copy of those bytes (a ``memfd`` on Linux, a
    temporary file elsewhere) that nobody can replace, and it is gone once the model is loaded.
    (Handing the bytes to ONNX Runtime directly would keep a second copy of the whole graph in
    the process for as long as the model serves.)"""

    path: str
    sha256: str
    runtime_reason: str = ""

    @property
    def identity(self) -> ModelIdentity:
        return ModelIdentity(self.sha256, self.runtime_reason)

    @classmethod
    @contextlib.contextmanager
    def read(cls, path: Path) -> Iterator[ModelSource]:
        try:
            data = path.read_bytes()
        except OSError as exc:
            raise ModelLoadError(f"cannot read the model file: {exc.strerror or exc}") from None
        digest = hashlib.sha256(data).hexdigest()
        if hasattr(os, "memfd_create"):
            fd = os.memfd_create("rdad-model", os.MFD_CLOEXEC)
            with open(fd, "wb") as copy:  # closes the descriptor when the model has loaded
                copy.write(data)
                copy.flush()
                del data
                yield cls(f"/proc/self/fd/{fd}", digest)
            return
        with tempfile.TemporaryDirectory(prefix="rdad-model-") as folder:
            private = Path(folder) / "model.onnx"
            private.write_bytes(data)
            del data
            yield cls(str(private), digest)


def check_loaded_graph(
    name: str,
    meta: ModelMetadata,
    *,
    input_is_uint8: bool,
    input_dims: list[object] | tuple[object, ...],
    outputs: list[str],
) -> None:
    """What every runtime checks once a model is loaded (its own API reads the graph): the uint8
    ``(B, H, W, 3)`` input at the metadata's image size, the named outputs, a calibration."""
    if meta.calibration is None:
        raise ModelLoadError(
            f"model '{name}' has no calibration (thresholds); export it from a trained, "
            "calibrated checkpoint"
        )
    if not input_is_uint8 or len(input_dims) != 4:
        raise ModelLoadError(f"graph input '{meta.input_name}' must be uint8 (B, H, W, 3)")
    if tuple(input_dims[1:]) != (meta.image_size, meta.image_size, 3):
        raise ModelLoadError(
            f"graph input shape {list(input_dims)} does not match image_size {meta.image_size}"
        )
    missing = set(meta.output_names) - set(outputs)
    if missing:
        raise ModelLoadError(f"graph lacks outputs {sorted(missing)}")


def warmup_batch(batch_size: int, image_size: int) -> np.ndarray:
    """A deterministic mid-grey noisy batch ``(B, H, W, 3)`` uint8 (content does not matter)."""
    rng = np.random.default_rng(0)
    return rng.integers(96, 160, (batch_size, image_size, image_size, 3), dtype=np.uint8)


def _ort_settings(settings: Settings) -> Settings:
    """``settings`` without ``openvino`` in the provider list (ONNX Runtime does not know it)."""
    providers = [p for p in settings.providers if p.lower() != OPENVINO]
    return settings.model_copy(update={"providers": providers})


def _gpu_can_start(settings: Settings) -> bool:
    """Whether ONNX Runtime would get a GPU provider from ``settings`` (the device policy)."""
    from .device import gpu_problem

    return gpu_problem(_ort_settings(settings)) is None


def _bf16_usable() -> bool:
    """Whether this CPU can run bf16 (RDAD_CPU_PRECISION=auto moves a model to OpenVINO only then:
    on CPUs without BF16 the runtime stays what it was)."""
    from rdad.openvino_runtime import bf16_problem

    return bf16_problem() is None


def choose_runtime(settings: Settings, precision: str) -> tuple[str, str]:
    """``(onnxruntime | openvino, why)`` for a graph of ``precision`` on this host."""
    from .engine_openvino import openvino_problem

    if settings.runtime != AUTO:
        return settings.runtime, f"RDAD_RUNTIME={settings.runtime}"
    names = [p.lower() for p in settings.providers]
    if OPENVINO in names:
        ahead = settings.model_copy(update={"providers": names[: names.index(OPENVINO)]})
        if _gpu_can_start(ahead):
            return ONNXRUNTIME, "a GPU provider listed before openvino in RDAD_PROVIDERS starts"
        return OPENVINO, "openvino in RDAD_PROVIDERS"
    if _gpu_can_start(settings):
        return ONNXRUNTIME, "auto: a GPU provider can start"
    if problem := openvino_problem():
        return ONNXRUNTIME, f"auto: CPU host, OpenVINO not usable ({problem})"
    if settings.cpu_precision == "bf16" or (settings.cpu_precision == AUTO and _bf16_usable()):
        return OPENVINO, (
            f"auto: CPU host, RDAD_CPU_PRECISION={settings.cpu_precision} (bf16 runs on OpenVINO)"
        )
    if precision == "int8":
        return OPENVINO, "auto: CPU host, int8 graph (OpenVINO's int8 kernels)"
    return ONNXRUNTIME, f"auto: CPU host, {precision} graph"


def load_engine(name: str, path: Path, settings: Settings) -> InferenceEngine:
    """Read ``path`` once and load it with the runtime :func:`choose_runtime` picks."""
    with ModelSource.read(path) as source:
        try:
            return _load(name, source, settings)
        except ModelLoadError as exc:
            # Errors name the model file, not the private copy the runtimes read.
            raise type(exc)(exc.detail.replace(source.path, str(path))) from exc


def _load(name: str, source: ModelSource, settings: Settings) -> InferenceEngine:
    from rdad.metadata import MetadataError, read_onnx_metadata

    from .engine_onnxruntime import OnnxRuntimeEngine
    from .engine_openvino import OpenVinoEngine

    try:
        meta = read_onnx_metadata(source.path)
    except MetadataError as exc:
        raise ModelLoadError(f"model '{name}' cannot be loaded: {exc}") from exc
    runtime, why = choose_runtime(settings, meta.precision)
    source = replace(source, runtime_reason=why)
    log.info("model %s (%s, sha256 %s…): %s — %s", name, meta.precision, source.sha256[:12],
             runtime, why)  # fmt: skip
    if runtime == OPENVINO:
        return OpenVinoEngine.load(name, source, meta, settings)
    if settings.cpu_precision == "bf16" and not _gpu_can_start(settings):
        raise ModelLoadError(
            f"model '{name}': RDAD_CPU_PRECISION=bf16 refused on ONNX Runtime: {ORT_NO_BF16}; "
            "use RDAD_RUNTIME=openvino or auto"
        )
    return OnnxRuntimeEngine.load(name, source, meta, _ort_settings(settings))
