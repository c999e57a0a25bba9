"""The ONNX metadata contract shared by model/ and service/."""

from __future__ import annotations

import json

import pytest

from rdad.metadata import Calibration, MetadataError, ModelMetadata


def sample() -> ModelMetadata:
    cal = Calibration(
        image_threshold=1.5,
        pixel_threshold=1.2,
        score_scale=0.1,
        threshold_percentile=99.0,
        pixel_threshold_percentile=99.9,
        score_percentiles={"p50": 1.3},
        num_images=21,
    )
    return ModelMetadata(
        backbone="resnet18",
        image_size=256,
        teacher_weights="imagenet",
        calibration=cal,
        training={"epochs": 10},
    )


def test_round_trip_through_json() -> None:
    meta = sample()
    assert ModelMetadata.from_json(meta.to_json()) == meta
    assert ModelMetadata.from_props({"rdad": meta.to_json(), "other": "x"}) == meta


def test_unknown_versions_and_garbage_are_refused_clearly() -> None:
    raw = json.loads(sample().to_json())
    raw["format_version"] = 99
    with pytest.raises(MetadataError, match="format_version 99"):
        ModelMetadata.from_json(json.dumps(raw))
    with pytest.raises(MetadataError, match="not valid JSON"):
        ModelMetadata.from_json("{nope")
    with pytest.raises(MetadataError, match="no 'rdad' entry"):
        ModelMetadata.from_props({})
    raw["format_version"] = 1
    raw["surprise"] = True
    with pytest.raises(MetadataError, match="unexpected fields"):
        ModelMetadata.from_json(json.dumps(raw))


def test_verdict_and_normalisation_agree_at_the_threshold() -> None:
    cal = sample().calibration
    assert cal is not None
    assert cal.normalize(1.5) == 0.5
    assert not cal.is_anomalous(1.5) and cal.is_anomalous(1.5001)
    assert cal.normalize(1.4) < 0.5 < cal.normalize(1.6)


def test_metadata_is_read_from_the_file_without_its_graph(tmp_path) -> None:  # type: ignore[no-untyped-def]
    """Only ``metadata_props`` is parsed (the graph's weights are skipped, never loaded): the
    same metadata as the ONNX library reads, and a cut-short or empty file is refused."""
    import numpy as np
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    from rdad.metadata import METADATA_KEY, read_onnx_metadata

    meta = ModelMetadata(
        backbone="resnet18",
        image_size=64,
        teacher_weights="random",
        calibration=None,
        precision="fp32",
    )
    weights = numpy_helper.from_array(np.ones((1000, 1000), np.float32), "w")  # 4 MB
    graph = helper.make_graph(
        [helper.make_node("Identity", ["x"], ["y"])],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])],
        [weights],
    )
    model = helper.make_model(graph)
    helper.set_model_props(model, {"other": "x", METADATA_KEY: meta.to_json()})
    path = tmp_path / "m.onnx"
    onnx.save(model, str(path))
    assert read_onnx_metadata(path) == meta
    data = path.read_bytes()
    (tmp_path / "cut.onnx").write_bytes(data[: len(data) // 2])
    (tmp_path / "empty.onnx").write_bytes(b"")
    for name in ("cut.onnx", "empty.onnx"):
        with pytest.raises(MetadataError, match="not a readable ONNX model"):
            read_onnx_metadata(tmp_path / name)
