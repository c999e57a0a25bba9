"""Triton model repositories for exported graphs: ``config.pbtxt`` parsed with Triton's own schema
(``tritonclient.grpc.model_config_pb2``) and checked against the ONNX graph and its metadata."""

from __future__ import annotations

import dataclasses
import hashlib
import math
from collections.abc import Callable
from pathlib import Path

import onnx
import onnxruntime as ort
import pytest
from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2 as mc
from tritonclient.utils import np_to_triton_dtype

from rdad.metadata import METADATA_KEY, ModelMetadata, read_onnx_metadata
from rdad.model.triton import write_triton_repository
from rdad.model.triton_config import TritonError, TritonOptions

from ..conftest import TILED_TILE


def parse(config: Path) -> mc.ModelConfig:
    return text_format.Parse(config.read_text(), mc.ModelConfig())


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def triton_type(elem_type: int) -> int:
    """Triton's DataType for an ONNX element type, through the libraries' own mappings."""
    name = np_to_triton_dtype(onnx.helper.tensor_dtype_to_np_dtype(elem_type))
    return int(mc.DataType.Value(f"TYPE_{name}"))


def check_against_graph(config: mc.ModelConfig, model: Path) -> None:
    """Every graph input and output is declared with its type and its dims after the batch
    dimension (-1 where the graph's are symbolic; a batch-only tensor as [1] reshaped to [])."""
    graph = onnx.load(str(model)).graph
    declared = {t.name: t for t in [*config.input, *config.output]}
    values = [*graph.input, *graph.output]
    assert [t.name for t in config.input] == [v.name for v in graph.input]
    assert [t.name for t in config.output] == [v.name for v in graph.output]
    for value in values:
        tensor = value.type.tensor_type
        dims = [d.dim_value if d.HasField("dim_value") else -1 for d in tensor.shape.dim]
        entry = declared[value.name]
        assert dims[0] == -1, value.name  # batch dimension: dynamic
        assert entry.data_type == triton_type(tensor.elem_type), value.name
        assert len(entry.dims) >= 1, value.name  # Triton refuses a tensor without dims
        if entry.HasField("reshape"):
            assert list(entry.dims) == [1] and list(entry.reshape.shape) == dims[1:] == []
        else:
            assert list(entry.dims) == dims[1:], value.name


def test_config_declares_the_graph_and_the_default_serving_settings(
    tiny_onnx: Path, tmp_path: Path
) -> None:
    written = write_triton_repository(tiny_onnx, tmp_path, TritonOptions(name="bottle"))
    assert written.config == tmp_path / "bottle" / "config.pbtxt"
    assert written.model == tmp_path / "bottle" / "1" / "model.onnx"
    config = parse(written.config)
    check_against_graph(config, tiny_onnx)
    (image,) = config.input
    assert image.data_type == mc.TYPE_UINT8 and list(image.dims) == [64, 64, 3]
    assert config.name == "bottle" and config.platform == "onnxruntime_onnx"
    assert config.max_batch_size == 16
    assert list(config.version_policy.specific.versions) == [1]
    assert list(config.dynamic_batching.preferred_batch_size) == [4, 8, 16]
    assert config.dynamic_batching.max_queue_delay_microseconds == 5000
    (group,) = config.instance_group
    assert group.kind == mc.ModelInstanceGroup.KIND_GPU and group.count == 1
    assert not config.HasField("optimization")  # no TensorRT unless asked


def test_config_passes_the_onnxruntime_backends_load_checks(
    tiny_onnx: Path, tmp_path: Path
) -> None:
    """The checks Triton's ONNX Runtime backend makes when it loads the model
    (``CompareDimsSupported``), on the shapes ONNX Runtime reports for the copied file: with
    batching, the graph's first dim is -1 and ``[-1, *dims]`` (``reshape`` when given) matches
    the graph's shape — exactly for outputs, with -1 as a wildcard for inputs."""
    written = write_triton_repository(tiny_onnx, tmp_path, TritonOptions(name="m"))
    config = parse(written.config)
    assert config.max_batch_size > 0
    session = ort.InferenceSession(str(written.model), providers=["CPUExecutionProvider"])
    declared = {t.name: t for t in [*config.input, *config.output]}
    tensors = [(t, False) for t in session.get_inputs()] + [
        (t, True) for t in session.get_outputs()
    ]
    assert sorted(declared) == sorted(t.name for t, _ in tensors)
    for tensor, exact in tensors:
        entry = declared[tensor.name]
        assert len(entry.dims) >= 1 and all(d >= 1 or d == -1 for d in entry.dims)
        dims = list(entry.reshape.shape) if entry.HasField("reshape") else list(entry.dims)
        model = [d if isinstance(d, int) else -1 for d in tensor.shape]  # symbolic: -1
        full = [-1, *dims]
        assert model[0] == -1 and len(model) == len(full), (tensor.name, model, full)
        assert all(m == f or (m == -1 and not exact) for m, f in zip(model, full, strict=True))
        type_name = mc.DataType.Name(entry.data_type).removeprefix("TYPE_")
        ort_name = {"UINT8": "tensor(uint8)", "FP32": "tensor(float)"}[type_name]
        assert tensor.type == ort_name, tensor.name


def test_the_model_file_is_the_exported_file(tiny_onnx: Path, tmp_path: Path) -> None:
    written = write_triton_repository(tiny_onnx, tmp_path, TritonOptions(name="bottle"))
    assert written.model.read_bytes() == tiny_onnx.read_bytes()
    assert written.sha256 == sha256(tiny_onnx) == sha256(written.model)
    assert parse(written.config).parameters["rdad_model_sha256"].string_value == written.sha256


def test_parameters_carry_the_calibration_and_reproduce_the_verdict(
    tiny_onnx: Path, tmp_path: Path
) -> None:
    meta = read_onnx_metadata(tiny_onnx)
    cal = meta.calibration
    assert cal is not None
    params = {
        key: value.string_value
        for key, value in parse(
            write_triton_repository(tiny_onnx, tmp_path, TritonOptions(name="m")).config
        ).parameters.items()
    }
    assert float(params["rdad_image_threshold"]) == cal.image_threshold
    assert float(params["rdad_pixel_threshold"]) == cal.pixel_threshold
    assert float(params["rdad_score_scale"]) == cal.score_scale
    assert float(params["rdad_threshold_percentile"]) == cal.threshold_percentile
    assert int(params["rdad_calibration_images"]) == cal.num_images
    assert int(params["rdad_image_size"]) == meta.image_size
    assert params["rdad_model_version"] == meta.model_version
    assert params["rdad_precision"] == meta.precision
    assert ModelMetadata.from_json(params["rdad_metadata"]) == meta
    assert "rdad_tile_size" not in params  # a whole-image model
    threshold, scale = float(params["rdad_image_threshold"]), float(params["rdad_score_scale"])
    for score in (threshold - 3 * scale, threshold, threshold + 0.5 * scale):
        normalised = 1.0 / (1.0 + math.exp(-(score - threshold) / scale))
        assert normalised == pytest.approx(cal.normalize(score), abs=1e-12)
        assert (score > threshold) == cal.is_anomalous(score)


def test_options_reach_the_config(tiny_onnx: Path, tmp_path: Path) -> None:
    options = TritonOptions(
        name="cpu-model",
        version=3,
        max_batch_size=8,
        preferred_batch_sizes=(8, 2),
        queue_delay_us=250,
        instance_kind="cpu",
        instance_count=4,
    )
    config = parse(write_triton_repository(tiny_onnx, tmp_path, options).config)
    assert (tmp_path / "cpu-model" / "3" / "model.onnx").is_file()
    assert list(config.version_policy.specific.versions) == [3]
    assert config.max_batch_size == 8
    assert list(config.dynamic_batching.preferred_batch_size) == [2, 8]
    assert config.dynamic_batching.max_queue_delay_microseconds == 250
    (group,) = config.instance_group
    assert group.kind == mc.ModelInstanceGroup.KIND_CPU and group.count == 4
    check_against_graph(config, tiny_onnx)


def test_tensorrt_fp16_accelerator_with_one_profile_over_the_batch_range(
    tiny_onnx: Path, tmp_path: Path
) -> None:
    options = TritonOptions(name="trt", max_batch_size=8, tensorrt_fp16=True)
    config = parse(write_triton_repository(tiny_onnx, tmp_path, options).config)
    (accelerator,) = config.optimization.execution_accelerators.gpu_execution_accelerator
    assert accelerator.name == "tensorrt"
    assert accelerator.parameters["precision_mode"] == "FP16"
    assert accelerator.parameters["trt_profile_min_shapes"] == "images:1x64x64x3"
    assert accelerator.parameters["trt_profile_max_shapes"] == "images:8x64x64x3"
    assert not config.optimization.execution_accelerators.cpu_execution_accelerator
    assert config.instance_group[0].kind == mc.ModelInstanceGroup.KIND_GPU


def test_tiled_model_declares_its_tile_and_tiling(tiny_tiled_onnx: Path, tmp_path: Path) -> None:
    meta = read_onnx_metadata(tiny_tiled_onnx)
    assert meta.tiling is not None
    config = parse(write_triton_repository(tiny_tiled_onnx, tmp_path, TritonOptions("t")).config)
    check_against_graph(config, tiny_tiled_onnx)
    assert list(config.input[0].dims) == [TILED_TILE, TILED_TILE, 3]
    params = {key: value.string_value for key, value in config.parameters.items()}
    assert int(params["rdad_tile_size"]) == meta.tiling.tile_size
    assert int(params["rdad_tile_overlap"]) == meta.tiling.overlap
    assert float(params["rdad_tile_scale"]) == meta.tiling.scale
    assert params["rdad_tile_stitch"] == meta.tiling.stitch


def test_a_version_folder_holding_another_model_is_refused_unless_replaced(
    tiny_onnx: Path, tiny_tiled_onnx: Path, tmp_path: Path
) -> None:
    first = write_triton_repository(tiny_onnx, tmp_path, TritonOptions("m"))
    config_before = first.config.read_bytes()
    with pytest.raises(TritonError, match=r"different model.*next free: 2"):
        write_triton_repository(tiny_tiled_onnx, tmp_path, TritonOptions("m"))
    assert sha256(first.model) == sha256(tiny_onnx)  # untouched
    assert first.config.read_bytes() == config_before
    # The same file again is fine; a new version is fine and becomes the one served.
    write_triton_repository(tiny_onnx, tmp_path, TritonOptions("m"))
    second = write_triton_repository(tiny_tiled_onnx, tmp_path, TritonOptions("m", version=2))
    assert list(parse(second.config).version_policy.specific.versions) == [2]
    assert sha256(first.model) == sha256(tiny_onnx)
    replaced = write_triton_repository(tiny_tiled_onnx, tmp_path, TritonOptions("m", replace=True))
    assert sha256(replaced.model) == sha256(tiny_tiled_onnx)
    assert sorted(p.name for p in (tmp_path / "m").iterdir()) == ["1", "2", "config.pbtxt"]
    assert sorted(p.name for p in (tmp_path / "m" / "1").iterdir()) == ["model.onnx"]


def test_a_version_folder_with_other_files_is_refused(tiny_onnx: Path, tmp_path: Path) -> None:
    (tmp_path / "m" / "1").mkdir(parents=True)
    (tmp_path / "m" / "1" / "model.plan").write_bytes(b"someone else's engine")
    with pytest.raises(TritonError, match=r"model\.plan"):
        write_triton_repository(tiny_onnx, tmp_path, TritonOptions("m"))
    assert not (tmp_path / "m" / "config.pbtxt").exists()


def fixed_batch(proto: onnx.ModelProto) -> None:
    proto.graph.input[0].type.tensor_type.shape.dim[0].dim_value = 1


def uncalibrated(proto: onnx.ModelProto) -> None:
    entry = next(e for e in proto.metadata_props if e.key == METADATA_KEY)
    entry.value = dataclasses.replace(
        ModelMetadata.from_json(entry.value), calibration=None
    ).to_json()


@pytest.mark.parametrize(
    "edit, reason",
    [(fixed_batch, "no dynamic batch dimension"), (uncalibrated, "not calibrated")],
)
def test_graphs_triton_cannot_batch_or_judge_are_refused_before_writing(
    tiny_onnx: Path, tmp_path: Path, edit: Callable[[onnx.ModelProto], None], reason: str
) -> None:
    proto = onnx.load(str(tiny_onnx))
    edit(proto)
    model = tmp_path / "edited.onnx"
    onnx.save(proto, str(model))
    with pytest.raises(TritonError, match=reason):
        write_triton_repository(model, tmp_path / "repo", TritonOptions("m"))
    assert not (tmp_path / "repo").exists()
