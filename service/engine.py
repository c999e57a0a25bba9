"""One ONNX Runtime session per model: provider choice, IO binding on GPUs, warm-up.

Provider policy: the configured order (default TensorRT → CUDA → CPU, TensorRT only when enabled)
filtered to what this onnxruntime build lists *and* what can start here. ``onnxruntime-gpu`` lists
CUDA even on a machine without a GPU; asking for it there makes ORT print a long error for every
session, so a cheap driver probe runs first and a missing GPU is logged once, loudly, before falling
back. Whatever ORT finally picks is logged per model and exported as ``rdad_model_info``.
"""

from __future__ import annotations

import ctypes
import functools
import logging
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import onnxruntime as ort

from rdad.metadata import MetadataError, ModelMetadata

from .errors import ModelLoadError
from .settings import Settings

log = logging.getLogger("rdad.service.engine")

TENSORRT = "TensorrtExecutionProvider"
CUDA = "CUDAExecutionProvider"
CPU = "CPUExecutionProvider"
GPU_PROVIDERS = frozenset({TENSORRT, CUDA})
_SHORT_NAMES = {"tensorrt": TENSORRT, "trt": TENSORRT, "cuda": CUDA, "cpu": CPU}


class InferenceOutput(NamedTuple):
    anomaly_map: np.ndarray
    """float32 ``(B, H, W)``: the smoothed anomaly map at the model's resolution."""
    score: np.ndarray
    """float32 ``(B,)``: raw image scores (max of the map)."""


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


def resolve_providers(settings: Settings) -> list[str]:
    """The providers to ask ONNX Runtime for, in order; CPU is always last as a fallback."""
    available = ort.get_available_providers()
    chosen: list[str] = []
    for raw in settings.providers:
        name = _SHORT_NAMES.get(raw.lower(), raw)
        if name == TENSORRT and not settings.tensorrt:
            continue  # TensorRT only when enabled: first-start engine builds take minutes.
        if name not in available:
            log.warning("execution provider %s is not in this onnxruntime build; skipped", name)
            continue
        if name in GPU_PROVIDERS and (problem := cuda_problem(settings.device_id)):
            log.error(
                "!!! %s is available in onnxruntime but cannot start: %s. "
                "Falling back to the next provider: inference will be much slower. !!!",
                name,
                problem,
            )
            continue
        if name not in chosen:
            chosen.append(name)
    if CPU not in chosen:
        chosen.append(CPU)
    return chosen


def _provider_options(name: str, settings: Settings, meta: ModelMetadata) -> dict[str, Any]:
    dev = str(settings.device_id)
    size = meta.image_size
    if name == CUDA:
        # Exhaustive cuDNN search picks the fastest kernel per input shape on its first run:
        # slow once, which is why warm-up runs every batch size the batcher can form.
        return {
            "device_id": dev,
            "cudnn_conv_algo_search": "EXHAUSTIVE",
            "cudnn_conv_use_max_workspace": "1",
            "do_copy_in_default_stream": "1",
        }
    if name == TENSORRT:
        cache = settings.trt_cache_dir or settings.model_dir / ".trt-cache"
        cache.mkdir(parents=True, exist_ok=True)
        shape = f"{size}x{size}x3"
        return {
            "device_id": dev,
            "trt_fp16_enable": "True" if meta.precision == "fp16" else "False",
            "trt_engine_cache_enable": "True",
            "trt_engine_cache_path": str(cache),
            "trt_timing_cache_enable": "True",
            "trt_profile_min_shapes": f"{meta.input_name}:1x{shape}",
            "trt_profile_opt_shapes": f"{meta.input_name}:{settings.max_batch_size}x{shape}",
            "trt_profile_max_shapes": f"{meta.input_name}:{settings.max_batch_size}x{shape}",
        }
    return {}


def _check_graph(session: ort.InferenceSession, meta: ModelMetadata) -> None:
    inputs = {i.name: i for i in session.get_inputs()}
    spec = inputs.get(meta.input_name)
    if spec is None or spec.type != "tensor(uint8)" or len(spec.shape) != 4:
        raise ModelLoadError(f"graph input '{meta.input_name}' must be uint8 (B, H, W, 3)")
    _, height, width, channels = spec.shape
    if (height, width, channels) != (meta.image_size, meta.image_size, 3):
        raise ModelLoadError(
            f"graph input shape {spec.shape} does not match image_size {meta.image_size}"
        )
    missing = set(meta.output_names) - {o.name for o in session.get_outputs()}
    if missing:
        raise ModelLoadError(f"graph lacks outputs {sorted(missing)}")


class Engine:
    """A loaded model. :meth:`run` is called from one inference thread only."""

    def __init__(
        self, name: str, session: ort.InferenceSession, metadata: ModelMetadata, device_id: int
    ) -> None:
        self.name = name
        self.metadata = metadata
        self._session = session
        self._device_id = device_id
        self.provider = session.get_providers()[0]
        self.io_binding_device: str | None = "cuda" if self.provider in GPU_PROVIDERS else None
        """IO binding on GPU providers: the uint8 batch goes to the device in one explicit copy
        (4x smaller than float32) and ORT writes the outputs straight into host memory."""
        self._outputs = list(metadata.output_names)

    @property
    def image_size(self) -> int:
        return self.metadata.image_size

    @classmethod
    def load(cls, name: str, path: Path, settings: Settings) -> Engine:
        opts = ort.SessionOptions()
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        opts.inter_op_num_threads = 1
        if settings.intra_op_threads:
            opts.intra_op_num_threads = settings.intra_op_threads
        opts.log_severity_level = 3  # ORT's per-node placement warnings are noise here
        try:
            # Metadata first, from a cheap unoptimised CPU session, so that provider options
            # (TensorRT profile shapes, fp16) can depend on it.
            probe_opts = ort.SessionOptions()
            probe_opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
            probe = ort.InferenceSession(str(path), probe_opts, providers=[CPU])
            meta = ModelMetadata.from_props(dict(probe.get_modelmeta().custom_metadata_map))
            del probe
            providers = resolve_providers(settings)
            session = ort.InferenceSession(
                str(path),
                opts,
                providers=providers,
                provider_options=[_provider_options(p, settings, meta) for p in providers],
            )
        except MetadataError as exc:
            raise ModelLoadError(f"model '{name}': {exc}") from exc
        except Exception as exc:  # ORT raises its own Fail/InvalidGraph types
            raise ModelLoadError(f"model '{name}' cannot be loaded: {exc}") from exc
        if meta.calibration is None:
            raise ModelLoadError(
                f"model '{name}' has no calibration (thresholds); export it from a trained, "
                "calibrated checkpoint"
            )
        _check_graph(session, meta)
        got = session.get_providers()
        wanted_gpu = [p for p in providers if p in GPU_PROVIDERS]
        if wanted_gpu and got[0] not in GPU_PROVIDERS:
            log.error(
                "!!! model %s: %s failed to start; running on %s !!!", name, wanted_gpu, got[0]
            )
        log.info("model %s: %s, %dpx, provider %s", name, meta.backbone, meta.image_size, got[0])
        return cls(name, session, meta, settings.device_id)

    def run(self, images: np.ndarray) -> InferenceOutput:
        """Score uint8 RGB ``images`` ``(B, H, W, 3)`` → maps ``(B, H, W)`` and scores ``(B,)``."""
        name = self.metadata.input_name
        if self.io_binding_device is not None:
            binding = self._session.io_binding()
            device_input = ort.OrtValue.ortvalue_from_numpy(
                images, self.io_binding_device, self._device_id
            )
            binding.bind_ortvalue_input(name, device_input)
            for output in self._outputs:
                binding.bind_output(output, "cpu")
            self._session.run_with_iobinding(binding)
            anomaly_map, score = binding.copy_outputs_to_cpu()
        else:
            anomaly_map, score = self._session.run(self._outputs, {name: images})
        return InferenceOutput(np.asarray(anomaly_map), np.asarray(score))

    def warmup_batch_sizes(self, settings: Settings) -> list[int]:
        """GPU providers choose kernels per input shape, so every batch size the batcher can form
        is run once; on CPU the first run (arena growth) is the only one-off cost."""
        if settings.warmup_batch_sizes is not None:
            sizes = settings.warmup_batch_sizes
        elif self.provider in GPU_PROVIDERS:
            sizes = list(range(1, settings.max_batch_size + 1))
        else:
            sizes = [1, settings.max_batch_size]
        return sorted({s for s in sizes if 1 <= s <= settings.max_batch_size})


def warmup_batch(batch_size: int, image_size: int) -> np.ndarray:
    """A deterministic mid-grey noisy batch ``(B, H, W, 3)`` uint8 (content does not matter)."""
    rng = np.random.default_rng(0)
    return rng.integers(96, 160, (batch_size, image_size, image_size, 3), dtype=np.uint8)
