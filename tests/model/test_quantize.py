"""int8 export: static QDQ quantisation with the anomaly-map tail in fp32, parity against fp32."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest

from rdad.metadata import read_onnx_metadata
from rdad.model import quantize
from rdad.model.data import load_images
from rdad.model.export import ExportError, export_onnx
from rdad.model.quantize import QuantizationError, check_int8, parity_set

pytestmark = pytest.mark.slow


def test_int8_graph_quantises_convolutions_but_not_the_map_tail(
    int8_pair: tuple[Path, Path],
) -> None:
    _, int8 = int8_pair
    graph = onnx.load(str(int8)).graph
    qdq = [n for n in graph.node if n.op_type in ("QuantizeLinear", "DequantizeLinear")]
    assert len(qdq) > 50  # every teacher/student conv gets its pairs
    assert not [n.name for n in qdq if "anomaly_map" in n.name]
    tail_matmuls = [n for n in graph.node if n.op_type == "MatMul" and "anomaly_map" in n.name]
    consumed_dq = {o for n in qdq if n.op_type == "DequantizeLinear" for o in n.output}
    assert tail_matmuls and not any(set(n.input) & consumed_dq for n in tail_matmuls)


def test_int8_metadata_records_precision_calibration_and_parity(
    int8_pair: tuple[Path, Path],
) -> None:
    meta = read_onnx_metadata(int8_pair[1])
    assert meta.precision == "int8"
    q = meta.quantization
    assert q["calibration_images"] == len(q["calibration_files"]) > 0
    assert q["calibration_data"] and "/" not in q["calibration_data"]
    parity = q["parity"]
    assert parity["score_rank_corr"] >= parity["min_score_rank_corr"]
    assert parity["map_error"] <= parity["max_map_error"]
    assert read_onnx_metadata(int8_pair[0]).quantization == {}


def test_int8_scores_like_fp32_on_unseen_images(
    int8_pair: tuple[Path, Path], synthetic_data: Path
) -> None:
    good = load_images(sorted((synthetic_data / "test" / "good").glob("*.png")), 64).images
    parity = check_int8(*int8_pair, parity_set(good, seed=7))
    assert parity.ok, parity.describe()
    assert parity.map_error > 0  # int8 is not a copy of fp32


def test_int8_export_refuses_outside_tolerance(
    tiny_checkpoint: Path, synthetic_data: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(quantize, "INT8_MIN_SCORE_RANK_CORR", 1.01)  # unreachable
    out = tmp_path / "m.onnx"
    with pytest.raises(QuantizationError, match="parity check failed"):
        export_onnx(
            tiny_checkpoint, out, "int8", calibration_data=synthetic_data, calibration_count=4
        )
    assert not out.exists() and not list(tmp_path.iterdir())


def test_int8_needs_calibration_images(tiny_checkpoint: Path, tmp_path: Path) -> None:
    with pytest.raises(ExportError, match="calibration-data"):
        export_onnx(tiny_checkpoint, tmp_path / "m.onnx", "int8")
    (tmp_path / "empty").mkdir()
    with pytest.raises(Exception, match="no images"):
        export_onnx(
            tiny_checkpoint, tmp_path / "m.onnx", "int8", calibration_data=tmp_path / "empty"
        )
    assert not (tmp_path / "m.onnx").exists()


def test_parity_compare_flags_reordered_scores() -> None:
    maps = np.ones((4, 8, 8), np.float32)
    scores = np.array([1.0, 2.0, 3.0, 4.0], np.float32)
    assert quantize.compare((maps, scores), (maps * 1.01, scores + 0.01)).ok
    assert not quantize.compare((maps, scores), (maps, scores[::-1].copy())).ok
    assert not quantize.compare((maps, scores), (maps * 1.5, scores)).ok


def test_eval_scores_int8_through_either_runtime(
    int8_pair: tuple[Path, Path], synthetic_data: Path
) -> None:
    from rdad.model.evaluate import evaluate

    ort = evaluate(int8_pair[1], synthetic_data, runtime="onnxruntime")
    ov = evaluate(int8_pair[1], synthetic_data, runtime="openvino")
    assert "int8" in ort["model_description"] and "OpenVINO" in ov["model_description"]
    assert ort["num_images"] == ov["num_images"] > 0
    assert abs(ort["image_auroc"] - ov["image_auroc"]) <= 0.1
    assert abs(ort["pixel_auroc"] - ov["pixel_auroc"]) <= 0.05
