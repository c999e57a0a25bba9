"""``rdad bench`` on the tiny model: every runtime available here, every column filled."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from rdad.cli import main
from rdad.flops import graph_gflop


def test_bench_reports_every_column_for_every_runtime(
    tiny_onnx: Path, tiny_checkpoint: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from rdad.benchmark import ORT_CUDA, ORT_TRT, unavailable_reason

    out = tmp_path / "bench.json"
    args = ["bench", str(tiny_onnx), str(tiny_checkpoint), "--batch-sizes", "1,3"]
    args += ["--cpu-precisions", "fp32"]  # bf16 rows: the next test
    code = main([*args, "--repeats", "2", "--latency-runs", "3", "--json", str(out)])
    assert code == 0
    report = json.loads(out.read_text())
    printed = capsys.readouterr().out
    assert printed.startswith("CPU: ") and "vector extensions" in printed
    assert report["system"]["cores"] >= 1 and report["matmul_gflops"] > 0
    runtimes = {r["runtime"] for r in report["results"]}
    assert {"onnxruntime-cpu", "openvino-cpu", "torch-eager"} <= runtimes
    gpu = {ORT_CUDA, ORT_TRT}
    listed = {u["runtime"] for u in report["unavailable"]}
    assert gpu <= runtimes | listed  # a GPU runtime is measured or said to be unavailable
    assert all(u["reason"] for u in report["unavailable"])
    assert listed == {r for r in gpu if unavailable_reason(r)}
    for r in report["results"]:
        assert set(r["img_per_s"]) == {"1", "3"} and min(r["img_per_s"].values()) > 0
        assert r["p99_ms"] >= r["p50_ms"] > 0
        assert r["peak_mib"] > 0
        assert r["gflop_per_image"] > 0 and r["gflops"] > 0 and r["fraction_of_matmul"] > 0
        assert r["runtime"] in printed
    eager = next(r for r in report["results"] if r["runtime"] == "torch-eager")
    graph = next(r for r in report["results"] if r["runtime"] == "onnxruntime-cpu")
    # Two independent counts of the same network (torch's FlopCounter vs the ONNX graph).
    assert eager["gflop_per_image"] == pytest.approx(graph["gflop_per_image"], rel=0.05)


def test_bench_rows_per_cpu_precision_name_the_cpu_units(
    int8_pair: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """fp32 / bf16 / int8 / int8+bf16 rows per CPU runtime; a precision that cannot run here is
    listed with its reason (ONNX Runtime has no bf16; OpenVINO needs BF16 units)."""
    from rdad import sysinfo
    from rdad.openvino_runtime import bf16_problem

    fp32, int8 = int8_pair
    out = tmp_path / "bench.json"
    args = ["bench", str(fp32), str(int8), "--batch-sizes", "2", "--repeats", "1"]
    args += ["--latency-runs", "1", "--no-memory", "--json", str(out)]
    assert main([*args, "--runtimes", "onnxruntime-cpu,openvino-cpu"]) == 0
    printed = capsys.readouterr().out
    assert printed.splitlines()[1] == sysinfo.fast_path_line()
    for unit in ("AMX-BF16", "AMX-INT8", "AVX512-BF16", "AVX512-VNNI", "AVX-VNNI"):
        assert f"{unit} yes" in printed or f"{unit} no" in printed
    report = json.loads(out.read_text())
    rows = {(r["runtime"], r["precision"]) for r in report["results"]}
    expected = {(rt, p) for rt in ("onnxruntime-cpu", "openvino-cpu") for p in ("fp32", "int8")}
    if bf16_problem() is None:
        expected |= {("openvino-cpu", "bf16"), ("openvino-cpu", "int8+bf16")}
    assert rows == expected
    for runtime, precision in rows:
        assert f"| {runtime} | {precision} |" in printed
    refused = {(u["runtime"], Path(u["model"]).name) for u in report["unavailable"]}
    assert {("onnxruntime-cpu", fp32.name), ("onnxruntime-cpu", int8.name)} <= refused
    assert all(u["reason"].startswith("bf16: ") for u in report["unavailable"])
    assert ("openvino-cpu", fp32.name) in refused or bf16_problem() is None


def test_graph_flops_of_one_conv(tmp_path: Path) -> None:
    import onnx
    from onnx import TensorProto, helper

    weight = helper.make_tensor("w", TensorProto.FLOAT, [8, 3, 3, 3], [0.0] * 216)
    node = helper.make_node("Conv", ["x", "w"], ["y"], pads=[1, 1, 1, 1])
    graph = helper.make_graph(
        [node],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 3, 16, 16])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
        [weight],
    )
    path = tmp_path / "conv.onnx"
    onnx.save(helper.make_model(graph), str(path))
    assert graph_gflop(path) == pytest.approx(2 * 8 * 16 * 16 * 3 * 3 * 3 / 1e9)


def test_bench_on_a_missing_model_fails_with_one_line(tmp_path: Path, capsys) -> None:  # type: ignore[no-untyped-def]
    assert main(["bench", str(tmp_path / "none.onnx")]) == 1
    assert "model not found" in capsys.readouterr().err
