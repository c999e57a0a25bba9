"""A Triton ``config.pbtxt`` for an exported rdad graph (ONNX Runtime backend). Torch-free.

The configuration mirrors what the graph declares, because Triton's ONNX Runtime backend checks
it against the graph when it loads the model: the graph's one input (uint8 ``(B, S, S, 3)``) and
every output, each with its data type and its dims *without* the batch dimension (``-1`` where
the graph leaves a dimension symbolic: the backend compares output dims exactly; a batch-only
tensor such as ``score`` is declared ``[1]`` with an empty ``reshape``). Every tensor's
first dimension must be dynamic, so ``max_batch_size`` is at least 1 (a batchable graph with
``max_batch_size: 0`` would be auto-completed by the backend to its own default and then no
longer match the dims written here).

The calibration travels as model ``parameters`` (Triton parameters are strings): each number on
its own (``rdad_image_threshold`` …, floats written so that ``float(text)`` gives the same value
back) and the whole :class:`~rdad.metadata.ModelMetadata` as JSON in ``rdad_metadata``, which a
client reads from ``GET /v2/models/NAME/config`` to judge scores exactly as ``rdad serve`` does.

The text is written from plain dicts (:func:`render`); the tests parse it with Triton's own
``model_config_pb2`` schema.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import onnx
from google.protobuf.text_encoding import CEscape

from rdad.metadata import ModelMetadata

PLATFORM = "onnxruntime_onnx"
NAME_PATTERN = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]*")
"""Model names become folder names and URL path segments: no separators, no leading dot."""
INSTANCE_KINDS = {"gpu": "KIND_GPU", "cpu": "KIND_CPU"}
DEFAULT_MAX_BATCH_SIZE = 16
DEFAULT_QUEUE_DELAY_US = 5000
"""Same as ``rdad serve``: batch size 16, a batch closes 5 ms after its first image."""

TRITON_TYPES: dict[int, str] = {
    onnx.TensorProto.UINT8: "TYPE_UINT8",
    onnx.TensorProto.INT8: "TYPE_INT8",
    onnx.TensorProto.INT32: "TYPE_INT32",
    onnx.TensorProto.INT64: "TYPE_INT64",
    onnx.TensorProto.FLOAT16: "TYPE_FP16",
    onnx.TensorProto.FLOAT: "TYPE_FP32",
    onnx.TensorProto.DOUBLE: "TYPE_FP64",
    onnx.TensorProto.BOOL: "TYPE_BOOL",
}
"""ONNX element types an rdad graph can carry, as Triton's ``DataType`` names."""


class TritonError(ValueError):
    """The graph or the model repository does not allow the requested Triton model."""


class TritonOptionError(TritonError):
    """One option is out of range; ``field`` names the :class:`TritonOptions` field."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(message)
        self.field = field


class Enum(str):
    """A protobuf enum value: written bare (``KIND_GPU``), not quoted."""


@dataclass(frozen=True)
class TritonOptions:
    """How Triton serves the model: name, version, batching, instances, TensorRT."""

    name: str
    version: int = 1
    max_batch_size: int = DEFAULT_MAX_BATCH_SIZE
    preferred_batch_sizes: tuple[int, ...] | None = None
    """``None``: the powers of two from 4 up to ``max_batch_size``."""
    queue_delay_us: int = DEFAULT_QUEUE_DELAY_US
    instance_kind: str = "gpu"
    instance_count: int = 1
    tensorrt_fp16: bool = False
    replace: bool = False
    """Overwrite a version folder that already holds a different model."""

    def __post_init__(self) -> None:
        if not NAME_PATTERN.fullmatch(self.name):
            raise TritonOptionError(
                "name", f"{self.name!r} is not a model name (letters, digits, _ . -)"
            )
        for field in ("version", "max_batch_size", "instance_count"):
            if getattr(self, field) < 1:
                raise TritonOptionError(field, f"must be at least 1, got {getattr(self, field)}")
        if self.queue_delay_us < 0:
            raise TritonOptionError("queue_delay_us", f"must be ≥ 0, got {self.queue_delay_us}")
        bad = [s for s in self.preferred_batch_sizes or () if not 1 <= s <= self.max_batch_size]
        if bad:
            raise TritonOptionError(
                "preferred_batch_sizes",
                f"sizes must be in [1, max batch size {self.max_batch_size}], got {bad}",
            )
        if self.instance_kind not in INSTANCE_KINDS:
            raise TritonOptionError(
                "instance_kind",
                f"must be one of {sorted(INSTANCE_KINDS)}, got {self.instance_kind}",
            )
        if self.tensorrt_fp16 and self.instance_kind != "gpu":
            raise TritonOptionError("tensorrt_fp16", "TensorRT needs GPU instances")

    @property
    def preferred(self) -> list[int]:
        if self.preferred_batch_sizes is not None:
            return sorted(set(self.preferred_batch_sizes))
        return [1 << k for k in range(2, self.max_batch_size.bit_length())]


@dataclass(frozen=True)
class TensorSpec:
    """One graph input or output as Triton declares it: dims without the batch dimension."""

    name: str
    data_type: str
    dims: tuple[int, ...]


def _spec(value: onnx.ValueInfoProto) -> TensorSpec:
    tensor = value.type.tensor_type
    if tensor.elem_type not in TRITON_TYPES:
        kind = onnx.TensorProto.DataType.Name(tensor.elem_type)
        raise TritonError(f"tensor {value.name!r}: type {kind} has no Triton mapping here")
    dims = [d.dim_value if d.HasField("dim_value") else -1 for d in tensor.shape.dim]
    if not dims or dims[0] != -1:
        raise TritonError(
            f"tensor {value.name!r} has no dynamic batch dimension (shape {dims}): "
            "Triton's batching needs one on every input and output"
        )
    return TensorSpec(value.name, TRITON_TYPES[tensor.elem_type], tuple(dims[1:]))


def graph_signature(
    graph: onnx.GraphProto, meta: ModelMetadata
) -> tuple[list[TensorSpec], list[TensorSpec]]:
    """(inputs, outputs) of an exported graph, checked against its rdad metadata: one uint8
    input ``(B, S, S, 3)`` with ``S`` the metadata's image size, the metadata's outputs."""
    initializers = {init.name for init in graph.initializer}
    inputs = [_spec(v) for v in graph.input if v.name not in initializers]
    outputs = [_spec(v) for v in graph.output]
    expected = TensorSpec(meta.input_name, "TYPE_UINT8", (meta.image_size, meta.image_size, 3))
    if inputs != [expected]:
        raise TritonError(f"graph inputs {inputs} are not the rdad input {expected}")
    if [o.name for o in outputs] != list(meta.output_names):
        raise TritonError(
            f"graph outputs {[o.name for o in outputs]} are not the metadata's {meta.output_names}"
        )
    return inputs, outputs


def model_parameters(meta: ModelMetadata, sha256: str) -> dict[str, str]:
    """The ``parameters`` of the Triton model: calibration, geometry and provenance as strings."""
    cal = meta.calibration
    if cal is None:
        raise TritonError("the model is not calibrated: no threshold to judge its scores by")
    params = {
        "rdad_image_threshold": repr(cal.image_threshold),
        "rdad_pixel_threshold": repr(cal.pixel_threshold),
        "rdad_score_scale": repr(cal.score_scale),
        "rdad_threshold_percentile": repr(cal.threshold_percentile),
        "rdad_pixel_threshold_percentile": repr(cal.pixel_threshold_percentile),
        "rdad_calibration_images": str(cal.num_images),
        "rdad_image_size": str(meta.image_size),
        "rdad_model_version": meta.model_version,
        "rdad_precision": meta.precision,
        "rdad_backbone": meta.backbone,
        "rdad_version": meta.rdad_version,
        "rdad_model_sha256": sha256,
        "rdad_metadata": meta.to_json(),
    }
    if meta.tiling is not None:
        params.update(
            rdad_tile_size=str(meta.tiling.tile_size),
            rdad_tile_overlap=str(meta.tiling.overlap),
            rdad_tile_scale=repr(meta.tiling.scale),
            rdad_tile_stitch=meta.tiling.stitch,
        )
    return params


def _tensorrt(options: TritonOptions, image: TensorSpec) -> dict[str, Any]:
    """The TensorRT accelerator: fp16 kernels, and one optimisation profile over 1 … max batch
    (ORT's ``input:NxHxWxC`` syntax) so the engine is built once, not per new batch size."""
    shape = "x".join(str(d) for d in image.dims)
    low, high = (f"{image.name}:{b}x{shape}" for b in (1, options.max_batch_size))
    trt = {
        "precision_mode": "FP16",
        "trt_profile_min_shapes": low,
        "trt_profile_opt_shapes": high,
        "trt_profile_max_shapes": high,
    }
    return {
        "name": "tensorrt",
        "parameters": [{"key": key, "value": value} for key, value in trt.items()],
    }


def build_config(
    options: TritonOptions,
    inputs: Sequence[TensorSpec],
    outputs: Sequence[TensorSpec],
    parameters: Mapping[str, str],
) -> dict[str, Any]:
    """The ``ModelConfig`` message as nested dicts (field name → value), ready for :func:`render`.

    The version policy serves exactly ``options.version``: the parameters describe that file."""

    def tensor(spec: TensorSpec) -> dict[str, Any]:
        entry: dict[str, Any] = {
            "name": spec.name,
            "data_type": Enum(spec.data_type),
            "dims": list(spec.dims),
        }
        if not spec.dims:
            # Triton requires non-empty dims: a batch-only tensor (score, (B,)) is declared [1]
            # and reshaped to [] for the graph; clients receive it as (B, 1).
            entry.update(dims=[1], reshape={"shape": []})
        return entry

    batching: dict[str, Any] = {"max_queue_delay_microseconds": options.queue_delay_us}
    if options.preferred:
        batching = {"preferred_batch_size": options.preferred, **batching}
    config: dict[str, Any] = {
        "name": options.name,
        "platform": PLATFORM,
        "max_batch_size": options.max_batch_size,
        "version_policy": {"specific": {"versions": [options.version]}},
        "input": [tensor(s) for s in inputs],
        "output": [tensor(s) for s in outputs],
        "dynamic_batching": batching,
        "instance_group": [
            {"count": options.instance_count, "kind": Enum(INSTANCE_KINDS[options.instance_kind])}
        ],
    }
    if options.tensorrt_fp16:
        accelerator = _tensorrt(options, inputs[0])
        config["optimization"] = {
            "execution_accelerators": {"gpu_execution_accelerator": [accelerator]}
        }
    config["parameters"] = [
        {"key": key, "value": {"string_value": value}} for key, value in parameters.items()
    ]
    return config


def _scalar(value: Any) -> str:
    if isinstance(value, Enum):
        return str(value)
    if isinstance(value, str):
        return f'"{CEscape(value, as_utf8=True)}"'
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    raise TypeError(f"no protobuf text form for {value!r}")


def render(message: Mapping[str, Any], indent: str = "") -> str:
    """Protobuf text format of ``message``: dicts are messages, lists of dicts repeated messages
    (``field [ {…}, {…} ]``), other lists repeated scalars (``field: [1, 2]``)."""
    lines = []
    inner = indent + "  "
    for key, value in message.items():
        if isinstance(value, Mapping):
            lines.append(f"{indent}{key} {{\n{render(value, inner)}{indent}}}")
        elif isinstance(value, list) and value and isinstance(value[0], Mapping):
            items = ",\n".join(f"{inner}{{\n{render(v, inner + '  ')}{inner}}}" for v in value)
            lines.append(f"{indent}{key} [\n{items}\n{indent}]")
        elif isinstance(value, list):
            lines.append(f"{indent}{key}: [{', '.join(_scalar(v) for v in value)}]")
        else:
            lines.append(f"{indent}{key}: {_scalar(value)}")
    return "".join(line + "\n" for line in lines)
