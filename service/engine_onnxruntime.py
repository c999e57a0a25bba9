"""ONNX Runtime as a model's engine: device policy, provider options, IO binding, warm-up.

Which providers are asked for, and the proof of where the graph really runs, live in
:mod:`service.device`; their options (buckets, TensorRT profiles) in
:mod:`service.provider_options`; this module builds the session with them and runs batches. What
ORT finally uses is logged per model and shown in ``/models``, ``/readyz`` and ``rdad_model_info``.

Running a batch on GPU providers: padded up to a batch-size bucket, on that bucket's own session
(a session never changes input shape: measured on an H200, a change costs ~0.6 s), with up to
``inflight`` batches at once, each on its own lane; optionally through
:class:`service.iobinding.BoundBuffers` (device buffers allocated once per batch size).
"""

from __future__ import annotations

import functools
import logging
import queue
from collections import Counter
from dataclasses import dataclass, field

import numpy as np
import onnxruntime as ort

from rdad.metadata import ModelMetadata

from .device import (
    GPU_PROVIDERS,
    DevicePolicyError,
    discard_profile,
    node_placement,
    placement_problem,
    profiling_options,
    resolve_providers,
)
from .engine import ORT_NO_BF16, BatchOutput, ModelSource, check_loaded_graph, warmup_batch
from .errors import ModelLoadError
from .iobinding import BoundBuffers
from .provider_options import batch_buckets, provider_options
from .settings import Settings

log = logging.getLogger("rdad.service.engine")


def _check_graph(name: str, session: ort.InferenceSession, meta: ModelMetadata) -> None:
    spec = {i.name: i for i in session.get_inputs()}.get(meta.input_name)
    check_loaded_graph(
        name,
        meta,
        input_is_uint8=spec is not None and spec.type == "tensor(uint8)",
        input_dims=spec.shape if spec is not None else [],
        outputs=[o.name for o in session.get_outputs()],
    )


def _precision_reason(requested: str, on_gpu: bool) -> str:
    """Why ONNX Runtime runs the graph's own precision (a bf16 request never gets here on a CPU:
    :func:`service.engine.load_engine` refuses it)."""
    if on_gpu:
        return "the graph's precision on the GPU (RDAD_CPU_PRECISION applies to CPUs)"
    if requested == "auto":
        from rdad.openvino_runtime import bf16_problem

        why = bf16_problem() or f"ONNX Runtime: {ORT_NO_BF16}"
        return f"auto: the graph's precision, {why}"
    return "fp32 (bf16 only on request)"


@dataclass
class _Lane:
    """What one in-flight batch uses: its own bound buffers and padding buffers."""

    bound: dict[int, BoundBuffers] = field(default_factory=dict)
    """Per session (keyed by its batch bucket; 0 for the shared session)."""
    padded: dict[int, np.ndarray] = field(default_factory=dict)


class OnnxRuntimeEngine:
    """A loaded model: ``run(batch)`` plus what it runs on (``provider``, ``placement``).

    :meth:`run` may be called from up to ``inflight`` threads at once (one lane each).
    """

    def __init__(
        self,
        name: str,
        session: ort.InferenceSession,
        metadata: ModelMetadata,
        settings: Settings,
        source: ModelSource,
        placement: Counter[str] | None = None,
        bucket_sessions: dict[int, ort.InferenceSession] | None = None,
    ) -> None:
        self.name = name
        self.metadata = metadata
        self.identity = source.identity
        self._session = session
        self._bucket_sessions = dict(bucket_sessions or {})
        """GPU: one session per batch bucket, so that no session ever changes input shape."""
        self._device_id = settings.device_id
        self.provider = session.get_providers()[0]
        self.on_gpu = self.provider in GPU_PROVIDERS
        self.compute_precision = metadata.precision
        self.precision_reason = _precision_reason(settings.cpu_precision, self.on_gpu)
        self.placement: dict[str, int] = dict(placement or {})
        """Nodes per provider in a real run (from ORT's profile): what actually ran where."""
        self.buckets = batch_buckets(settings, self.on_gpu)
        self.inflight = settings.inflight_batches or (2 if self.on_gpu else 1)
        self.io_binding_device: str | None = "cuda" if self.on_gpu and settings.io_binding else None
        self._outputs = list(metadata.output_names)
        self._lanes: queue.SimpleQueue[_Lane] = queue.SimpleQueue()
        for _ in range(self.inflight):
            self._lanes.put(_Lane())

    @property
    def sessions(self) -> int:
        """How many ORT sessions this model holds (one per bucket on GPUs)."""
        return 1 + len(self._bucket_sessions)

    def _session_for(self, batch: int) -> tuple[int, ort.InferenceSession]:
        session = self._bucket_sessions.get(batch)
        return (batch, session) if session is not None else (0, self._session)

    @property
    def image_size(self) -> int:
        return self.metadata.image_size

    @classmethod
    def load(
        cls, name: str, source: ModelSource, meta: ModelMetadata, settings: Settings
    ) -> OnnxRuntimeEngine:
        """Build the sessions from ``source`` (the file's bytes, read once) under the device
        policy; raises :class:`ModelLoadError` (and its :class:`DevicePolicyError` when
        ``device=cuda`` cannot be honoured)."""
        strict = settings.device == "cuda"

        def session_options(no_cpu_fallback: bool, profile: bool = True) -> ort.SessionOptions:
            opts = ort.SessionOptions()
            opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
            opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
            opts.inter_op_num_threads = 1
            if settings.intra_op_threads:
                opts.intra_op_num_threads = settings.intra_op_threads
            opts.log_severity_level = 3  # placement is checked below from the profile, not the log
            if no_cpu_fallback:
                # ORT's own guard: session creation fails if any node is assigned to the CPU.
                opts.add_session_config_entry("session.disable_cpu_ep_fallback", "1")
            if profile:
                profiling_options(opts)
            return opts

        providers: list[str] = []
        try:
            providers = resolve_providers(settings)
            options = [provider_options(p, settings, meta) for p in providers]
            create = functools.partial(
                ort.InferenceSession, source.path, providers=providers, provider_options=options
            )
            try:
                session = create(sess_options=session_options(strict))
            except Exception as exc:
                if not strict:
                    raise
                # CUDA keeps a few shape-arithmetic nodes on the CPU on purpose, which ORT's
                # guard also refuses; the profiled run below tells those from real fallbacks.
                log.info("model %s: ORT refused any CPU node (%s); checking placement", name, exc)
                session = create(sess_options=session_options(False))
        except DevicePolicyError as exc:
            raise DevicePolicyError(f"model '{name}': {exc}") from None
        except Exception as exc:  # ORT raises its own Fail/InvalidGraph types
            if strict:
                raise DevicePolicyError(
                    f"model '{name}': RDAD_DEVICE=cuda but ONNX Runtime could not build the "
                    f"session on {providers}: {exc}"
                ) from exc
            raise ModelLoadError(f"model '{name}' cannot be loaded: {exc}") from exc
        got = session.get_providers()
        wanted_gpu = [p for p in providers if p in GPU_PROVIDERS]
        try:
            _check_graph(name, session, meta)
            if wanted_gpu and got[0] not in GPU_PROVIDERS:
                # The silent fallback: ORT drops a provider whose libraries are missing.
                reason = (
                    f"{'/'.join(wanted_gpu)} failed to start (missing CUDA/cuDNN libraries?); "
                    f"ONNX Runtime is using {got}"
                )
                if strict:
                    raise DevicePolicyError(f"model '{name}': RDAD_DEVICE=cuda but {reason}")
                log.warning("model %s: %s; running on the CPU", name, reason)
        except ModelLoadError:
            discard_profile(session)
            raise
        sample = warmup_batch(1, meta.image_size)
        try:
            placement, cpu_tensor_ops = node_placement(
                session, lambda: session.run(None, {meta.input_name: sample})
            )
        except Exception as exc:
            raise ModelLoadError(f"model '{name}' failed its first run: {exc}") from exc
        if wanted_gpu and (problem := placement_problem(placement, cpu_tensor_ops)):
            if strict:
                raise DevicePolicyError(f"model '{name}': RDAD_DEVICE=cuda but {problem}")
            log.warning("model %s: %s", name, problem)
        bucket_sessions: dict[int, ort.InferenceSession] = {}
        buckets = batch_buckets(settings, on_gpu=True)
        if got[0] in GPU_PROVIDERS and settings.session_per_bucket and len(buckets) > 1:
            # The first session serves the largest bucket; every smaller bucket gets its own, so
            # no session ever sees a second input shape (same graph and options: the placement
            # checked above holds for them too).
            for size in buckets[:-1]:
                try:
                    bucket_sessions[size] = ort.InferenceSession(
                        source.path,
                        session_options(False, profile=False),
                        providers=providers,
                        provider_options=[
                            provider_options(p, settings, meta, size) for p in providers
                        ],
                    )
                except Exception as exc:
                    raise ModelLoadError(
                        f"model '{name}': session for batch size {size} failed: {exc}"
                    ) from exc
        engine = cls(name, session, meta, settings, source, placement, bucket_sessions)
        log.info(
            "model %s: %s %dpx %s on %s (nodes %s; buckets %s in %d session(s); %d in flight; "
            "io binding %s; %s)",
            name,
            meta.backbone,
            meta.image_size,
            meta.precision,
            engine.provider,
            engine.placement,
            engine.buckets or "off",
            engine.sessions,
            engine.inflight,
            engine.io_binding_device or "off",
            engine.precision_reason,
        )
        return engine

    def _pad(self, lane: _Lane, images: np.ndarray) -> np.ndarray:
        n = len(images)
        target = next((b for b in self.buckets if b >= n), n)
        if target == n:
            return images
        buffer = lane.padded.get(target)
        if buffer is None:  # once per bucket and lane; rows past n keep old pixels (ignored)
            buffer = lane.padded[target] = np.zeros((target, *images.shape[1:]), np.uint8)
        buffer[:n] = images
        return buffer

    def run(self, images: np.ndarray) -> BatchOutput:
        """Score uint8 RGB ``images`` ``(B, H, W, 3)`` → maps ``(B, H, W)`` and scores ``(B,)``."""
        n = len(images)
        lane = self._lanes.get()
        try:
            batch = self._pad(lane, images)
            key, session = self._session_for(len(batch))
            if self.io_binding_device is not None:
                bound = lane.bound.get(key)
                if bound is None:
                    bound = lane.bound[key] = BoundBuffers(
                        session,
                        self.metadata.input_name,
                        self._outputs,
                        device=self.io_binding_device,
                        device_id=self._device_id,
                    )
                anomaly_map, score = bound.run(batch)
            else:
                anomaly_map, score = session.run(self._outputs, {self.metadata.input_name: batch})
        finally:
            self._lanes.put(lane)
        return BatchOutput(np.asarray(anomaly_map)[:n], np.asarray(score)[:n])

    def warmup_batch_sizes(self, settings: Settings) -> list[int]:
        """GPU providers choose kernels per input shape, so every batch size the engine can see
        (each bucket, or every size without buckets) is run once; on CPU the first run (arena
        growth) is the only one-off cost."""
        if settings.warmup_batch_sizes is not None:
            sizes = settings.warmup_batch_sizes
        elif self.buckets and self.on_gpu:
            sizes = self.buckets
        elif self.on_gpu:
            sizes = list(range(1, settings.max_batch_size + 1))
        else:
            sizes = [1, settings.max_batch_size]
        return sorted({s for s in sizes if 1 <= s <= settings.max_batch_size})
