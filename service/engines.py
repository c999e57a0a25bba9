"""Which runtime runs a model: ONNX Runtime (:class:`Engine`) or OpenVINO (:class:`OpenVinoEngine`).

Both implement :class:`InferenceEngine`, the small interface the batcher, warm-up, metrics and
routes use. The choice, per model:

* ``RDAD_RUNTIME=onnxruntime`` or ``openvino``: that runtime (OpenVINO missing → load error).
* ``RDAD_PROVIDERS`` naming ``openvino``: OpenVINO, unless a GPU provider listed before it can
  start (then ONNX Runtime on that GPU).
* ``RDAD_RUNTIME=auto`` (default): ONNX Runtime when a GPU provider can start. On a CPU host with
  OpenVINO installed, both runtimes load the model and run it at batch 1 (two warm-up runs, then
  :data:`TIMED_RUNS` interleaved timed runs each); the one with the lower median is kept and the
  other released. Measuring beats a fixed rule because the winner depends on the CPU and the
  precision: OpenVINO's int8 kernels are far ahead where ONNX Runtime's QDQ int8 path is weak
  (small models, CPUs without VNNI), while fp32 is close. Costs ~7 batch-1 runs per runtime.
"""

from __future__ import annotations

import logging
import statistics
import time
from pathlib import Path
from typing import Protocol

import numpy as np

from rdad.metadata import ModelMetadata

from .device import gpu_problem
from .engine import Engine, InferenceOutput, warmup_batch
from .openvino_engine import OpenVinoEngine, openvino_problem
from .settings import Settings

log = logging.getLogger("rdad.service.engines")

ONNXRUNTIME = "onnxruntime"
OPENVINO = "openvino"
AUTO = "auto"
TIMED_RUNS = 5


class InferenceEngine(Protocol):
    name: str
    metadata: ModelMetadata
    provider: str
    inflight: int
    """Batches the batcher may have in flight at once on this engine."""
    placement: dict[str, int]
    """Graph nodes per execution provider / device (shown in ``GET /models``)."""

    @property
    def image_size(self) -> int: ...

    def run(self, images: np.ndarray) -> InferenceOutput: ...

    def warmup_batch_sizes(self, settings: Settings) -> list[int]: ...


def _ort_settings(settings: Settings) -> Settings:
    """``settings`` without ``openvino`` in the provider list (ONNX Runtime does not know it)."""
    providers = [p for p in settings.providers if p.lower() != OPENVINO]
    return settings.model_copy(update={"providers": providers})


def _gpu_can_start(settings: Settings) -> bool:
    """Whether ONNX Runtime would get a GPU provider from ``settings`` (the device policy)."""
    return gpu_problem(_ort_settings(settings)) is None


def choose_runtime(settings: Settings) -> str:
    """``onnxruntime``, ``openvino`` or ``auto`` (= measure both) for this host and settings."""
    if settings.runtime != AUTO:
        return settings.runtime
    names = [p.lower() for p in settings.providers]
    if OPENVINO in names:
        ahead = settings.model_copy(update={"providers": names[: names.index(OPENVINO)]})
        return ONNXRUNTIME if _gpu_can_start(ahead) else OPENVINO
    if _gpu_can_start(settings):
        return ONNXRUNTIME
    if problem := openvino_problem():
        log.info("runtime auto: ONNX Runtime (OpenVINO not usable: %s)", problem)
        return ONNXRUNTIME
    return AUTO


def _median_batch1(engines: list[InferenceEngine]) -> list[float]:
    batch = warmup_batch(1, engines[0].image_size)
    for engine in engines:
        for _ in range(2):
            engine.run(batch)
    times: list[list[float]] = [[] for _ in engines]
    for _ in range(TIMED_RUNS):  # interleaved: machine noise hits both alike
        for engine, samples in zip(engines, times, strict=True):
            start = time.perf_counter()
            engine.run(batch)
            samples.append(time.perf_counter() - start)
    return [statistics.median(t) for t in times]


def load_engine(name: str, path: Path, settings: Settings) -> InferenceEngine:
    """Load ``path`` with the runtime :func:`choose_runtime` picks (measuring when ``auto``)."""
    runtime = choose_runtime(settings)
    if runtime == OPENVINO:
        return OpenVinoEngine.load(name, path, settings)
    ort_engine = Engine.load(name, path, _ort_settings(settings))
    if runtime == ONNXRUNTIME:
        return ort_engine
    ov_engine = OpenVinoEngine.load(name, path, settings)
    ort_s, ov_s = _median_batch1([ort_engine, ov_engine])
    winner: InferenceEngine = ov_engine if ov_s < ort_s else ort_engine
    log.info(
        "model %s (%s): runtime auto chose %s — batch-1 median ONNX Runtime %.1f ms, "
        "OpenVINO %.1f ms",
        name,
        ort_engine.metadata.precision,
        winner.provider,
        1000 * ort_s,
        1000 * ov_s,
    )
    return winner
