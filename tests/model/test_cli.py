"""The offline command line: help with examples, exit codes, one-line errors, a full CLI run."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from rdad.cli import COMMANDS, main


def rdad(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "rdad", *args], capture_output=True, text=True, timeout=600
    )


@pytest.mark.parametrize("command", ["train", "export", "eval"])
def test_every_offline_subcommand_has_help_with_examples(
    command: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exc:
        main([command, "--help"])
    assert exc.value.code == 0
    out = capsys.readouterr().out
    assert "examples:" in out and f"rdad {command}" in out


def test_top_level_help_lists_all_commands(capsys: pytest.CaptureFixture[str]) -> None:
    assert main([]) == 0
    out = capsys.readouterr().out
    assert all(name in out for name in COMMANDS)


def test_errors_exit_non_zero_with_one_line_on_stderr(tmp_path: Path) -> None:
    result = rdad("export", str(tmp_path / "missing.pt"), "--out", str(tmp_path / "m.onnx"))
    assert result.returncode == 1
    assert result.stderr.strip().count("\n") == 0 and "not found" in result.stderr
    result = rdad(
        "train",
        "--data",
        str(tmp_path),
        "--out",
        str(tmp_path / "o"),
        "--teacher-weights",
        "random",
    )
    assert result.returncode == 1 and "rdad train: error: no images" in result.stderr
    assert "Traceback" not in result.stderr


def test_cli_train_export_eval_round_trip(synthetic_data: Path, tmp_path: Path) -> None:
    run = tmp_path / "run"
    result = rdad(
        "train",
        "--data",
        str(synthetic_data),
        "--out",
        str(run),
        "--backbone",
        "resnet18",
        "--image-size",
        "64",
        "--epochs",
        "1",
        "--batch-size",
        "8",
        "--teacher-weights",
        "random",
        "--no-progress",
    )
    assert result.returncode == 0, result.stderr
    assert "epoch 1/1 loss" in result.stdout and "RANDOM weights" in result.stderr
    onnx_path = tmp_path / "m.onnx"
    result = rdad("export", str(run / "checkpoint.pt"), "--out", str(onnx_path))
    assert result.returncode == 0, result.stderr
    assert "parity (fp32" in result.stdout and onnx_path.is_file()
    report = tmp_path / "report.json"
    result = rdad(
        "eval", "--model", str(onnx_path), "--data", str(synthetic_data), "--json", str(report)
    )
    assert result.returncode == 0, result.stderr
    data = json.loads(report.read_text())
    for key in (
        "image_auroc",
        "pixel_auroc",
        "aupro",
        "image_f1_max",
        "per_defect",
        "threshold_metrics",
    ):
        assert key in data
    assert report.with_suffix(".md").read_text().startswith("# rdad evaluation")
