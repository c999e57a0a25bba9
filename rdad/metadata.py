"""The metadata stored inside every exported ONNX file.

It is the one contract between model/ and service/.

It is a single JSON document under the ``metadata_props`` key :data:`METADATA_KEY`. This module is
torch-free and FastAPI-free so that the serving image can import it.
"""

from __future__ import annotations

import io
import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

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


_MODEL_GRAPH = 7
_MODEL_METADATA_PROPS = 14
"""``ModelProto.metadata_props``: repeated ``StringStringEntryProto {key = 1; value = 2}``."""


def _varint(stream: BinaryIO) -> int | None:
    """One protobuf varint from ``stream``; ``None`` at a clean end of the stream."""
    value = shift = 0
    while True:
        byte = stream.read(1)
        if not byte:
            if shift:
                raise MetadataError("truncated protobuf varint")
            return None
        value |= (byte[0] & 0x7F) << shift
        if not byte[0] & 0x80:
            return value
        shift += 7
        if shift > 63:
            raise MetadataError("malformed protobuf varint")


def _metadata_props(stream: BinaryIO) -> dict[str, str]:
    """The top-level ``metadata_props`` of a serialised ``ModelProto``, read field by field and
    skipping everything else (the graph and its weights are never read into memory)."""
    props: dict[str, str] = {}
    graph = False
    while (tag := _varint(stream)) is not None:
        number, wire = tag >> 3, tag & 7
        if wire == 0:
            _varint(stream)
        elif wire in (1, 5):
            stream.seek(8 if wire == 1 else 4, 1)
        elif wire == 2:
            length = _varint(stream)
            if length is None:
                raise MetadataError("truncated protobuf field")
            if number != _MODEL_METADATA_PROPS:
                graph = graph or number == _MODEL_GRAPH
                stream.seek(length, 1)
                continue
            entry = io.BytesIO(stream.read(length))
            key = value = ""
            while (inner := _varint(entry)) is not None:
                size = _varint(entry)
                if inner & 7 != 2 or size is None:
                    raise MetadataError("malformed metadata entry")
                text = entry.read(size).decode("utf-8")
                if inner >> 3 == 1:
                    key = text
                elif inner >> 3 == 2:
                    value = text
            props[key] = value
        else:
            raise MetadataError(f"unexpected protobuf wire type {wire}")
    if not graph:
        raise MetadataError("no graph in it")
    return props


def read_onnx_metadata(path: str | Path) -> ModelMetadata:
    """Read the metadata of an ONNX file without loading its graph: only the model's
    ``metadata_props`` are parsed from the protobuf (no runtime, no torch, no onnx package; a
    1 GB model costs no more than a small one)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"model not found: {path}")
    size = path.stat().st_size
    try:
        with path.open("rb") as stream:
            props = _metadata_props(stream)
            if stream.tell() != size:  # a skip past the end: the file is cut short
                raise MetadataError("truncated protobuf field")
    except (MetadataError, UnicodeDecodeError, OSError) as exc:
        raise MetadataError(f"{path} is not a readable ONNX model ({exc})") from None
    return ModelMetadata.from_props(props)
