"""``rdad bench`` on the tiny exported model."""

from __future__ import annotations

import json
from pathlib import Path

from rdad.cli import main


def test_bench_prints_and_writes_figures_per_batch_size(tiny_onnx: Path, tmp_path: Path) -> None:
    out = tmp_path / "bench.json"
    code = main(
        ["bench", str(tiny_onnx), "--batch-sizes", "1,3", "--seconds", "0.2", "--json", str(out)]
    )
    assert code == 0
    results = json.loads(out.read_text())["results"]
    assert [r["batch_size"] for r in results] == [1, 3]
    for r in results:
        assert r["runs"] >= 3 and r["images_per_second"] > 0
        assert r["latency_p95_ms"] >= r["latency_p50_ms"] > 0


def test_bench_on_a_missing_model_fails_with_one_line(tmp_path: Path, capsys) -> None:  # type: ignore[no-untyped-def]
    assert main(["bench", str(tmp_path / "none.onnx")]) == 1
    assert "model not found" in capsys.readouterr().err
