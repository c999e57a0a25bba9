"""train → checkpoint → export → ONNX parity → eval, and resume, on the tiny synthetic model."""

from __future__ import annotations

import json
import re
import warnings
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

from rdad.metadata import METADATA_KEY, ModelMetadata, read_onnx_metadata
from rdad.model.checkpoint import TrainConfig, load_model, predict, read_checkpoint
from rdad.model.data import parity_images
from rdad.model.evaluate import evaluate
from rdad.model.export import ExportError, export_onnx, parity_providers
from rdad.model.train import train
from tests.conftest import TINY_SIZE, TINY_TRAIN


def test_checkpoint_rebuilds_the_model_and_holds_config_and_calibration(
    tiny_checkpoint: Path,
) -> None:
    ckpt = read_checkpoint(tiny_checkpoint)
    cfg = TrainConfig.from_dict(ckpt["config"])
    assert (cfg.backbone, cfg.image_size, cfg.epochs) == ("resnet18", TINY_SIZE, 2)
    assert ckpt["teacher_source"] == "random" and ckpt["epoch"] == 2
    assert len(ckpt["history"]) == 2
    cal = ckpt["calibration"]
    assert cal["num_images"] >= 2 and cal["image_threshold"] > 0
    model, _ = load_model(tiny_checkpoint)
    assert not model.training
    images = parity_images(ckpt, TINY_SIZE)
    _, scores = predict(model, images)
    assert scores.shape == (len(images),) and np.all(np.isfinite(scores))
    assert (tiny_checkpoint.parent / "last.pt").is_file()


def test_onnx_graph_io_metadata_and_parity_at_other_batch_sizes(
    tiny_onnx: Path, tiny_checkpoint: Path
) -> None:
    proto = onnx.load(str(tiny_onnx))
    (inp,) = proto.graph.input
    assert inp.name == "images" and inp.type.tensor_type.elem_type == onnx.TensorProto.UINT8
    dims = [d.dim_param or d.dim_value for d in inp.type.tensor_type.shape.dim]
    assert dims == ["batch", TINY_SIZE, TINY_SIZE, 3]
    assert [o.name for o in proto.graph.output] == ["anomaly_map", "score"]
    props = {p.key: p.value for p in proto.metadata_props}
    meta = ModelMetadata.from_json(props[METADATA_KEY])
    assert meta == read_onnx_metadata(tiny_onnx)
    assert (meta.backbone, meta.image_size, meta.teacher_weights) == (
        "resnet18",
        TINY_SIZE,
        "random",
    )
    ckpt = read_checkpoint(tiny_checkpoint)
    assert meta.calibration is not None
    assert meta.calibration.image_threshold == ckpt["calibration"]["image_threshold"]
    assert meta.training["num_train"] + meta.training["num_holdout"] == 24

    # Dynamic batch: batch sizes never seen at export agree with torch.
    model, _ = load_model(tiny_checkpoint)
    session = ort.InferenceSession(str(tiny_onnx), providers=["CPUExecutionProvider"])
    rng = np.random.default_rng(0)
    for batch in (1, 5):
        images = rng.integers(0, 256, (batch, TINY_SIZE, TINY_SIZE, 3), dtype=np.uint8)
        maps, scores = session.run(None, {"images": images})
        ref_maps, ref_scores = predict(model, images)
        assert maps.shape == (batch, TINY_SIZE, TINY_SIZE) and maps.dtype == np.float32
        np.testing.assert_allclose(maps, ref_maps, atol=1e-4)
        np.testing.assert_allclose(scores, ref_scores, atol=1e-4)


def test_fp16_export_keeps_uint8_in_float32_out(tiny_checkpoint: Path, tmp_path: Path) -> None:
    path = export_onnx(tiny_checkpoint, tmp_path / "half.onnx", precision="fp16")
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    assert session.get_inputs()[0].type == "tensor(uint8)"
    assert [o.type for o in session.get_outputs()] == ["tensor(float)", "tensor(float)"]
    assert read_onnx_metadata(path).precision == "fp16"
    proto = onnx.load(str(path))
    assert any(i.data_type == onnx.TensorProto.FLOAT16 for i in proto.graph.initializer)


def test_fp16_export_keeps_the_anomaly_map_tail_in_fp32(
    tiny_checkpoint: Path, tmp_path: Path
) -> None:
    """Backbone in fp16, but cosine, upsampling, blur and max in fp32: read the node types."""
    from rdad.model.anomaly_map import blur_matrix, interpolation_matrix
    from rdad.model.export import tensor_types

    path = export_onnx(tiny_checkpoint, tmp_path / "half.onnx", precision="fp16")
    proto = onnx.load(str(path))
    types = tensor_types(proto)
    fp16, fp32 = onnx.TensorProto.FLOAT16, onnx.TensorProto.FLOAT
    tail = [n for n in proto.graph.node if n.name.startswith("/net/anomaly_map/")]
    ops = {n.op_type for n in tail}
    assert {"ReduceSum", "Sqrt", "Div", "MatMul", "ReduceMax"} <= ops
    for node in tail:
        float_outputs = [types.get(o) for o in node.output if types.get(o) in (fp16, fp32)]
        assert all(t == fp32 for t in float_outputs), f"{node.name} outputs {float_outputs}"
        if node.op_type != "Cast":  # only the casts read fp16 (the teacher/student features)
            inputs = [types.get(i) for i in node.input if types.get(i) in (fp16, fp32)]
            assert all(t == fp32 for t in inputs), f"{node.name} reads {inputs}"
    # The backbone really is fp16 (its convolutions read fp16 weights).
    teacher_convs = [n for n in proto.graph.node if n.op_type == "Conv" and "teacher" in n.name]
    assert teacher_convs and all(types.get(n.input[1]) == fp16 for n in teacher_convs)
    # The upsample-and-blur matrices are the exact fp32 ones, not fp16-rounded copies.
    weights = {i.name: i for i in proto.graph.initializer}
    consts = {n.output[0]: n.attribute[0].t for n in proto.graph.node if n.op_type == "Constant"}
    matrices = [
        onnx.numpy_helper.to_array(weights.get(name) or consts[name])
        for node in tail
        if node.op_type == "MatMul"
        for name in node.input
        if name in weights or name in consts
    ]
    size = int(proto.graph.output[0].type.tensor_type.shape.dim[1].dim_value)
    folded = blur_matrix(size, 4.0) @ interpolation_matrix(size // 4, size)
    assert any(
        m.shape == folded.shape and np.array_equal(m, folded.float().numpy()) for m in matrices
    ), [m.shape for m in matrices]


def test_map_tail_check_catches_an_fp16_tail() -> None:
    from onnx import TensorProto, helper

    from rdad.model.export import map_tail_problems

    def graph(tail_type: int) -> onnx.ModelProto:
        nodes = [
            helper.make_node("Cast", ["x"], ["f"], to=TensorProto.FLOAT, name="up"),
            helper.make_node("Cast", ["f"], ["g"], to=tail_type, name="down"),
            helper.make_node("ReduceMax", ["g"], ["y"], keepdims=0, name="max"),
        ]
        g = helper.make_graph(
            nodes,
            "t",
            [helper.make_tensor_value_info("x", TensorProto.FLOAT16, [2, 3])],
            [helper.make_tensor_value_info("y", tail_type, [])],
        )
        return helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])

    assert map_tail_problems(graph(TensorProto.FLOAT)) == []
    problems = map_tail_problems(graph(TensorProto.FLOAT16))
    assert problems and "FLOAT16" in problems[0]


def test_parity_runs_where_the_graph_will_be_served(
    tiny_checkpoint: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    cuda, cpu = "CUDAExecutionProvider", "CPUExecutionProvider"
    # On a GPU host with onnxruntime-gpu the check runs on CUDA (fp16 kernels really in half
    # precision there); a GPU build without a usable GPU, or a CPU build, checks on the CPU.
    assert parity_providers([cuda, cpu], gpu_usable=True) == [cuda, cpu]
    assert parity_providers([cuda, cpu], gpu_usable=False) == [cpu]
    assert parity_providers([cpu], gpu_usable=True) == [cpu]
    export_onnx(tiny_checkpoint, tmp_path / "half.onnx", precision="fp16")
    here = parity_providers(ort.get_available_providers(), torch.cuda.is_available())[0]
    assert re.search(rf"parity \(fp16, \d+ images, {here}\)", capsys.readouterr().out)


def test_export_refuses_when_parity_fails(
    tiny_checkpoint: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import rdad.model.export as export_module

    real = export_module._ort_run

    def drifted(path: Path, images: np.ndarray) -> tuple[np.ndarray, np.ndarray, str]:
        maps, scores, provider = real(path, images)
        return maps + 0.01, scores, provider

    monkeypatch.setattr(export_module, "_ort_run", drifted)
    out = tmp_path / "bad.onnx"
    with pytest.raises(ExportError, match="parity check failed"):
        export_onnx(tiny_checkpoint, out)
    assert not out.exists()


def test_eval_of_onnx_equals_eval_of_checkpoint(
    tiny_onnx: Path, tiny_checkpoint: Path, synthetic_data: Path
) -> None:
    onnx_report = evaluate(tiny_onnx, synthetic_data)
    torch_report = evaluate(tiny_checkpoint, synthetic_data)
    json.dumps(onnx_report)  # JSON-ready
    for key in ("image_auroc", "pixel_auroc", "aupro", "image_f1_max"):
        assert 0.0 <= onnx_report[key] <= 1.0
        assert onnx_report[key] == pytest.approx(torch_report[key], abs=1e-3), key
    assert set(onnx_report["per_defect"]) == {"scratch", "spot", "chunk"}
    tm = onnx_report["threshold_metrics"]
    assert tm["tp"] + tm["fp"] + tm["tn"] + tm["fn"] == onnx_report["num_images"] == 16


def test_resume_gives_the_same_state_as_an_uninterrupted_run(
    tiny_checkpoint: Path, synthetic_data: Path, tmp_path: Path
) -> None:
    cfg = TrainConfig(data=str(synthetic_data), out=str(tmp_path), epochs=1, **TINY_TRAIN)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        train(cfg, progress=False)  # "interrupted" after epoch 1
        resumed = train(cfg, resume=True, epochs_override=2, progress=False)
    a, b = read_checkpoint(tiny_checkpoint), read_checkpoint(resumed)
    assert b["epoch"] == 2 and [h["epoch"] for h in b["history"]] == [1, 2]
    for key, value in a["model"].items():
        torch.testing.assert_close(b["model"][key], value, rtol=0, atol=1e-6, msg=key)
    for key in ("image_threshold", "pixel_threshold", "score_scale"):
        assert b["calibration"][key] == pytest.approx(a["calibration"][key], rel=1e-5), key


def test_export_into_a_watched_folder_replaces_the_file_in_one_step(
    tiny_checkpoint: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """docs/export.md suggests exporting straight into the served model folder: the new graph is
    written under a hidden name there (which a folder scan never takes for a model) and renamed
    over the old file in one step, so the service sees the old file or the new one, never a
    half-written one."""
    import os

    from rdad import atomic
    from rdad.service.model_folder import scan_folder

    folder = tmp_path / "models"
    out = folder / "tiny.onnx"
    export_onnx(tiny_checkpoint, out)
    old = out.read_bytes()
    seen: list[tuple[str, bool, list[str]]] = []
    real_replace = os.replace

    def watching_replace(source: str, target: str) -> None:
        # The moment before the rename: the old file is whole, the new one beside it is hidden.
        seen.append((Path(source).name, out.read_bytes() == old, sorted(scan_folder(folder).files)))
        assert Path(source).parent == folder
        real_replace(source, target)

    monkeypatch.setattr(atomic.os, "replace", watching_replace)
    export_onnx(tiny_checkpoint, out, precision="fp16")
    ((partial, old_intact, models),) = seen
    assert partial.startswith(".") and not partial.endswith(".onnx")
    assert old_intact and models == ["tiny"]
    assert read_onnx_metadata(out).precision == "fp16"
    assert sorted(p.name for p in folder.iterdir()) == ["tiny.onnx"]  # nothing left behind
