"""OpenVINO runtime for CPUs, behind the same small interface as the ONNX Runtime :class:`Engine`.

The same ``.onnx`` file (fp32, or int8 QDQ from ``rdad export --precision int8``) is read by
OpenVINO's ONNX frontend and compiled for the CPU plugin, which runs the QDQ convolutions as real
int8 kernels (VNNI where the CPU has it) and fuses more than ONNX Runtime's CPU provider does.

Compilation settings are shared with ``rdad eval`` and ``rdad bench`` (:mod:`rdad.openvino_runtime`:
one stream; f32 inference precision unless ``RDAD_CPU_PRECISION`` asks for bf16, which is checked
against fp32 at load); threads come from ``RDAD_INTRA_OP_THREADS``, the same knob as ONNX
Runtime's intra-op threads.

Outputs are copied out of the infer request's buffers, which the next run overwrites while the
batcher may still be handing out the previous batch's maps.
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np

from rdad.metadata import ModelMetadata
from rdad.openvino_runtime import CompiledAt, CpuPrecisionError, compile_at

from .engine import BatchOutput, ModelSource, check_loaded_graph
from .errors import ModelLoadError
from .settings import Settings

log = logging.getLogger("rdad.service.openvino")

PROVIDER = "OpenVINO:CPU"


def openvino_problem() -> str | None:
    """Why OpenVINO cannot be used here (``None`` if it can)."""
    try:
        import openvino  # noqa: F401
    except ImportError:
        return "the openvino package is not installed (pip install 'rdad[openvino]')"
    return None


class OpenVinoEngine:
    """A model compiled by OpenVINO for the CPU. :meth:`run` is called from one thread only."""

    provider = PROVIDER
    inflight = 1  # one infer request; the batcher runs one batch at a time on it

    def __init__(
        self, name: str, built: CompiledAt, metadata: ModelMetadata, source: ModelSource
    ) -> None:
        compiled = built.compiled
        self.name = name
        self.compute_precision = built.precision
        self.precision_reason = built.reason
        self.identity = source.identity
        self.placement: dict[str, int] = {PROVIDER: len(compiled.get_runtime_model().get_ops())}
        self.metadata = metadata
        self._compiled = compiled
        self._request = compiled.create_infer_request()
        self._outputs = [compiled.output(n) for n in metadata.output_names]

    @property
    def image_size(self) -> int:
        return self.metadata.image_size

    @classmethod
    def load(
        cls, name: str, source: ModelSource, meta: ModelMetadata, settings: Settings
    ) -> OpenVinoEngine:
        """Compile ``source`` (the file's bytes, read once) for the CPU plugin."""
        if problem := openvino_problem():
            raise ModelLoadError(f"model '{name}': OpenVINO requested but {problem}")
        try:
            built = compile_at(
                source.path,
                settings.cpu_precision,
                meta.precision,
                meta.image_size,
                settings.intra_op_threads,
            )
        except CpuPrecisionError as exc:
            raise ModelLoadError(f"model '{name}': RDAD_CPU_PRECISION={exc}") from exc
        except Exception as exc:  # OpenVINO raises RuntimeError subclasses of its own
            raise ModelLoadError(f"model '{name}' cannot be loaded by OpenVINO: {exc}") from exc
        _check_graph(name, built.compiled, meta)
        log.info(
            "model %s: %s, %dpx, %s graph, OpenVINO CPU, runs %s: %s",
            name,
            meta.backbone,
            meta.image_size,
            meta.precision,
            built.precision,
            built.reason,
        )
        return cls(name, built, meta, source)

    def run(self, images: np.ndarray) -> BatchOutput:
        """Score uint8 RGB ``images`` ``(B, H, W, 3)`` → maps ``(B, H, W)`` and scores ``(B,)``."""
        results = self._request.infer({self.metadata.input_name: np.ascontiguousarray(images)})
        anomaly_map, score = (np.array(results[out], copy=True) for out in self._outputs)
        return BatchOutput(anomaly_map, score)

    def warmup_batch_sizes(self, settings: Settings) -> list[int]:
        """The plugin prepares kernels per new input shape on first use: run batch 1 and the
        largest batch (other sizes cost little extra on CPU), or the configured sizes."""
        sizes = settings.warmup_batch_sizes or [1, settings.max_batch_size]
        return sorted({s for s in sizes if 1 <= s <= settings.max_batch_size})


def _check_graph(name: str, compiled: Any, meta: ModelMetadata) -> None:
    ports = {n: port for port in compiled.inputs for n in port.get_names()}
    port = ports.get(meta.input_name)
    shape = port.get_partial_shape() if port is not None else []
    check_loaded_graph(
        name,
        meta,
        input_is_uint8=port is not None and port.get_element_type().get_type_name() == "u8",
        input_dims=[d.get_length() if d.is_static else None for d in shape],
        outputs=[n for port in compiled.outputs for n in port.get_names()],
    )
