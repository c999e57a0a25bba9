"""The metadata stored inside every exported ONNX file.

It is the one contract between model/ and service/.

It is a single JSON document under the ``metadata_props`` key :data:`METADATA_KEY`. This module is
torch-free and FastAPI-free so that the serving image can import it.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from .tiling import Tiling

METADATA_KEY = "rdad"
FORMAT_VERSION = 1
INPUT_NAME = "images"
"""Graph input: uint8 ``(B, H, W, 3)`` RGB, dynamic batch (cast/normalisation/layout in-graph)."""
OUTPUT_NAMES = ("anomaly_map", "score")
"""Graph outputs: float32 ``(B, H, W)`` smoothed anomaly map and float32 ``(B,)`` image score."""


class MetadataError(ValueError):
    """The file carries no rdad metadata, or metadata this version cannot read."""


@dataclass(frozen=True)
class Calibration:
    """Thresholds and score normalisation fitted on held-out *good* images only.

    ``normalize`` maps a raw score to (0, 1) with a logistic curve centred on the image threshold:
    exactly 0.5 at the threshold, monotone, never clipped (so ranking is preserved), and scaled by
    the spread of good scores so that typical good images land well below 0.5.
    """

    image_threshold: float
    pixel_threshold: float
    score_scale: float
    threshold_percentile: float
    pixel_threshold_percentile: float
    score_percentiles: dict[str, float] = field(default_factory=dict)
    num_images: int = 0

    def normalize(self, score: float) -> float:
        z = (float(score) - self.image_threshold) / self.score_scale
        # Clamp the exponent: math.exp overflows past ~709 and a NaN score must stay NaN.
        z = max(-60.0, min(60.0, z))
        return 1.0 / (1.0 + math.exp(-z))

    def is_anomalous(self, score: float) -> bool:
        return float(score) > self.image_threshold


@dataclass(frozen=True)
class ModelMetadata:
    """Everything a server or an evaluator needs to know about one exported model."""

    backbone: str
    image_size: int
    teacher_weights: str
    calibration: Calibration | None
    precision: str = "fp32"
    model_version: str = "1"
    rdad_version: str = ""
    format_version: int = FORMAT_VERSION
    training: dict[str, Any] = field(default_factory=dict)
    created_at: str = ""
    input_name: str = INPUT_NAME
    output_names: tuple[str, ...] = OUTPUT_NAMES
    tiling: Tiling | None = None
    """Set for tiled models (see :mod:`rdad.tiling`): images are cut into tiles of
    ``image_size``; absent (``None``) in whole-image models and in files written before tiling."""
    quantization: dict[str, Any] = field(default_factory=dict)
    """int8 models: method, calibration folder and files, ops kept in fp32 (empty otherwise)."""

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> ModelMetadata:
        try:
            raw = json.loads(text)
        except json.JSONDecodeError as exc:
            raise MetadataError(f"rdad metadata is not valid JSON: {exc}") from exc
        if not isinstance(raw, dict):
            raise MetadataError("rdad metadata must be a JSON object")
        version = raw.get("format_version")
        if version != FORMAT_VERSION:
            raise MetadataError(
                f"unsupported rdad metadata format_version {version!r} "
                f"(this build reads {FORMAT_VERSION})"
            )
        cal = raw.pop("calibration", None)
        tiling = raw.pop("tiling", None)
        raw["output_names"] = tuple(raw.get("output_names", OUTPUT_NAMES))
        try:
            tiles = Tiling.from_dict(tiling) if tiling else None
        except (TypeError, KeyError, ValueError) as exc:
            raise MetadataError(f"rdad metadata has an invalid tiling {tiling!r}: {exc}") from exc
        try:
            return cls(calibration=Calibration(**cal) if cal else None, tiling=tiles, **raw)
        except TypeError as exc:
            raise MetadataError(f"rdad metadata has unexpected fields: {exc}") from exc

    @classmethod
    def from_props(cls, props: dict[str, str]) -> ModelMetadata:
        """Parse from an ONNX ``metadata_props`` mapping (e.g. ORT's ``custom_metadata_map``)."""
        if METADATA_KEY not in props:
            raise MetadataError(f"no '{METADATA_KEY}' entry in the model's metadata_props")
        return cls.from_json(props[METADATA_KEY])


def read_onnx_metadata(source: str | Path | bytes) -> ModelMetadata:
    """Read the metadata of an ONNX file — a path, or the file's bytes already read — with ONNX
    Runtime (no torch, no onnx package needed)."""
    import onnxruntime as ort  # local import: keep `import rdad.metadata` cheap

    if not isinstance(source, bytes) and not Path(source).is_file():
        raise FileNotFoundError(f"model not found: {source}")
    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    model = source if isinstance(source, bytes) else str(source)
    try:
        session = ort.InferenceSession(model, opts, providers=["CPUExecutionProvider"])
    except Exception as exc:  # ORT's pybind errors (InvalidProtobuf, Fail, ...) share no base
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        what = "the file" if isinstance(source, bytes) else str(source)
        raise MetadataError(f"{what} is not a readable ONNX model ({reason})") from None
    return ModelMetadata.from_props(dict(session.get_modelmeta().custom_metadata_map))
