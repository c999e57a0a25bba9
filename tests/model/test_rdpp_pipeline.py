"""RD++ end to end: train → checkpoint → export (fp32, fp16, int8) → ``rdad eval`` /
``rdad predict``, with RD's graph contract; old RD checkpoints still load; DDP needs no case."""

from __future__ import annotations

import json
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch

from rdad.commands.predict_io import EXIT_ANOMALY, EXIT_NORMAL
from rdad.metadata import read_onnx_metadata
from rdad.model.checkpoint import (
    TrainConfig,
    load_model,
    predict,
    read_checkpoint,
    save_checkpoint,
)
from rdad.model.data import parity_images
from rdad.model.evaluate import evaluate
from rdad.model.export import export_onnx
from rdad.model.train import train
from tests.conftest import SHARED, TINY_SIZE, TINY_TRAIN, shared_path
from tests.model.test_distributed import torchrun


def train_rdpp(data: Path, out: Path, epochs: int = 1) -> Path:
    # The stand-in pretrained teacher: int8 export checks that scores keep their ranking, which
    # a random teacher (near-identical scores for every image) cannot show.
    teacher = shared_path("RDAD_TEACHER_WEIGHTS", SHARED / "teachers" / "resnet18_cifar10.pth")
    settings = {**TINY_TRAIN, "teacher_weights": str(teacher), "method": "rd++"}
    cfg = TrainConfig(data=str(data), out=str(out), epochs=epochs, **settings)
    return train(cfg, progress=False)


@pytest.fixture(scope="module")
def rdpp_checkpoint(synthetic_data: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return train_rdpp(synthetic_data, tmp_path_factory.mktemp("rdpp"))


def rdad(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "rdad", *args], capture_output=True, text=True, timeout=600
    )


def test_checkpoint_holds_method_and_every_rdpp_weight_and_is_deterministic(
    rdpp_checkpoint: Path, synthetic_data: Path, tmp_path: Path
) -> None:
    ckpt = read_checkpoint(rdpp_checkpoint)
    config = ckpt["config"]
    assert config["method"] == "rd++"
    defaults = TrainConfig()
    for field in (
        "rdpp_projection_lr",
        "rdpp_projection_weight",
        "rdpp_ssot_weight",
        "rdpp_reconstruct_weight",
        "rdpp_contrast_weight",
        "rdpp_sinkhorn_blur",
        "rdpp_noise_strength",
    ):
        assert config[field] == getattr(defaults, field), field
    assert any(k.startswith("projection.") for k in ckpt["model"])
    assert np.isfinite(ckpt["history"][-1]["loss"])
    model, _ = load_model(rdpp_checkpoint)
    assert model.projection is not None
    # Seeded end to end (pseudo-anomalies, batch order, the SSOT shuffle): the same run again
    # gives the same weights.
    again = read_checkpoint(train_rdpp(synthetic_data, tmp_path))
    for key, value in ckpt["model"].items():
        torch.testing.assert_close(again["model"][key], value, rtol=0, atol=0, msg=key)


def test_rd_checkpoint_without_method_loads_as_rd(tiny_checkpoint: Path, tmp_path: Path) -> None:
    """A checkpoint written before RD++ existed has no ``method`` in its config."""
    ckpt = read_checkpoint(tiny_checkpoint)
    config = {k: v for k, v in ckpt["config"].items() if not k.startswith(("method", "rdpp_"))}
    old = tmp_path / "old.pt"
    save_checkpoint(old, **{**ckpt, "config": config})
    model, _ = load_model(old)
    assert model.projection is None
    current, _ = load_model(tiny_checkpoint)
    images = parity_images(ckpt, TINY_SIZE)
    np.testing.assert_array_equal(predict(model, images)[1], predict(current, images)[1])


def test_rdpp_graph_has_rds_contract_in_fp32_fp16_and_int8(
    rdpp_checkpoint: Path, synthetic_data: Path, tmp_path: Path
) -> None:
    fp32 = export_onnx(rdpp_checkpoint, tmp_path / "rdpp.onnx")  # parity-checked inside
    meta = read_onnx_metadata(fp32)
    assert meta.training["method"] == "rd++" and meta.calibration is not None
    proto = onnx.load(str(fp32))
    assert "RD++" in proto.doc_string
    assert [i.name for i in proto.graph.input] == ["images"]
    assert proto.graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.UINT8
    assert sum(n.op_type == "InstanceNormalization" for n in proto.graph.node) == 12
    # fp16: the projection runs in half precision like the rest of the network.
    half = export_onnx(rdpp_checkpoint, tmp_path / "half.onnx", precision="fp16")
    weights = {i.name: i.data_type for i in onnx.load(str(half)).graph.initializer}
    half_graph = onnx.load(str(half))
    convs = [n for n in half_graph.graph.node if n.op_type == "Conv" and "projection" in n.name]
    assert len(convs) == 12
    assert all(weights.get(n.input[1]) == onnx.TensorProto.FLOAT16 for n in convs)
    assert read_onnx_metadata(half).precision == "fp16"
    int8 = export_onnx(
        rdpp_checkpoint, tmp_path / "int8.onnx", "int8", calibration_data=synthetic_data
    )
    assert read_onnx_metadata(int8).precision == "int8"
    for graph in (half, int8):
        assert 0.0 <= evaluate(graph, synthetic_data)["image_auroc"] <= 1.0


def test_rdad_eval_and_predict_read_an_rdpp_graph_like_any_other(
    rdpp_checkpoint: Path, synthetic_data: Path, tmp_path: Path
) -> None:
    graph = export_onnx(rdpp_checkpoint, tmp_path / "rdpp.onnx")
    report = tmp_path / "report.json"
    result = rdad(
        "eval", "--model", str(graph), "--data", str(synthetic_data), "--json", str(report)
    )
    assert result.returncode == 0, result.stderr
    onnx_report = json.loads(report.read_text())
    # The graph scores the test set as the checkpoint does.
    torch_report = evaluate(rdpp_checkpoint, synthetic_data)
    for key in ("image_auroc", "pixel_auroc", "aupro"):
        assert onnx_report[key] == pytest.approx(torch_report[key], abs=1e-3), key
    images = sorted((synthetic_data / "test").rglob("*.png"))[:3]
    result = rdad("predict", "--model", str(graph), "--json", "--no-progress", *map(str, images))
    assert result.returncode in (EXIT_NORMAL, EXIT_ANOMALY), result.stderr
    results = json.loads(result.stdout)
    assert [Path(r["path"]) for r in results] == images
    assert all(r["width"] == TINY_SIZE and np.isfinite(r["score"]) for r in results)


@pytest.mark.slow
def test_two_gloo_processes_train_rdpp(synthetic_data: Path, tmp_path: Path) -> None:
    run = tmp_path / "run"
    args = ["--data", str(synthetic_data), "--out", str(run), "--epochs", "1", "--method", "rd++"]
    args += ["--backbone", "resnet18", "--image-size", str(TINY_SIZE), "--batch-size", "4"]
    args += ["--teacher-weights", "random", "--device", "cpu", "--no-progress"]
    with warnings.catch_warnings():
        result = torchrun(2, *args)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "effective batch size 8 (4 per process × 2 processes on cpu)" in result.stdout
    ckpt = read_checkpoint(run / "checkpoint.pt")
    assert ckpt["config"]["method"] == "rd++"
    assert any(k.startswith("projection.") for k in ckpt["model"])
    export_onnx(run / "checkpoint.pt", tmp_path / "ddp.onnx")


def test_tiled_rdpp_trains_exports_and_scores_like_its_checkpoint(
    tiled_data: Path, tmp_path: Path
) -> None:
    """Tiling is a data plan around the network: RD++ tiles (pseudo-anomalies on 64-px tiles),
    exports and stitches with no special case, the ONNX graph scoring as the checkpoint does."""
    from tests.conftest import TILED_IMAGE, TILED_TILE, train_tiny_tiled

    checkpoint = train_tiny_tiled(tiled_data, tmp_path / "run", method="rd++")
    graph = export_onnx(checkpoint, tmp_path / "tiled_rdpp.onnx")
    meta = read_onnx_metadata(graph)
    assert meta.tiling is not None and meta.tiling.tile_size == TILED_TILE
    onnx_report = evaluate(graph, tiled_data, pixel_size=TILED_IMAGE)
    torch_report = evaluate(checkpoint, tiled_data, pixel_size=TILED_IMAGE)
    assert onnx_report["tiling"] == torch_report["tiling"]
    for key in ("image_auroc", "pixel_auroc"):
        assert onnx_report[key] == pytest.approx(torch_report[key], abs=0.02)
