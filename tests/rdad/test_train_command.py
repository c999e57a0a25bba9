"""``rdad train``'s own checks: argument mistakes and wrong files are reported before torch is
imported (or any data read), and a folder holding a run is never mixed with a second one."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from rdad.model.config import RUN_FILES


def train_without_torch(argv: list[str]) -> subprocess.CompletedProcess[str]:
    """``rdad train ARGV`` in a fresh process that prints, on exit, whether torch was imported."""
    code = (
        "import atexit, sys\n"
        "atexit.register(lambda: print('torch' in sys.modules))\n"
        "from rdad.cli import main\n"
        f"sys.exit(main({['train', *argv]!r}))\n"
    )
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)


def error_line(result: subprocess.CompletedProcess[str]) -> str:
    (line,) = result.stderr.strip().splitlines()
    assert line.startswith("rdad train: error: "), line
    return line


@pytest.mark.parametrize(
    "args, status, expected",
    [
        (["--data", "{missing}"], 1, "no such folder"),
        (["--data", "{tmp}", "--teacher-weights", "{missing}"], 1, "no such file"),
        (["--data", "{tmp}", "--image-size", "100"], 2, "argument --image-size"),
        (["--data", "{tmp}", "--holdout-fraction", "1.5"], 2, "argument --holdout-fraction"),
        ([], 2, "--data is required"),
        (["--resume"], 1, "last.pt"),
    ],
)
def test_train_argument_mistakes_are_reported_before_torch_loads(
    tmp_path: Path, args: list[str], status: int, expected: str
) -> None:
    filled = [a.format(missing=tmp_path / "nope", tmp=tmp_path) for a in args]
    result = train_without_torch(["--out", str(tmp_path / "out"), *filled])
    assert result.returncode == status
    assert expected in error_line(result)
    assert result.stdout.strip() == "False"  # torch was never imported


def test_teacher_weights_that_are_no_torch_file_are_refused_before_the_data(
    tmp_path: Path,
) -> None:
    weights = tmp_path / "notackpt.pt"
    weights.write_text("hello, I am a text file\n")
    result = train_without_torch(
        ["--out", str(tmp_path / "out"), "--data", str(tmp_path), "--teacher-weights", str(weights)]
    )
    assert result.returncode == 1
    line = error_line(result)
    assert f"--teacher-weights {weights}: not a state-dict file: not a PyTorch file" in line
    assert "'hello, I am a text file'" in line  # says what it is instead
    assert result.stdout.strip() == "False"  # nothing loaded: neither torch nor the data


@pytest.mark.parametrize("earlier", RUN_FILES)
def test_a_folder_holding_a_run_is_refused(tmp_path: Path, earlier: str) -> None:
    out = tmp_path / "run"
    out.mkdir()
    (out / earlier).write_bytes(b"an earlier run's file")
    result = train_without_torch(["--out", str(out), "--data", str(tmp_path)])
    assert result.returncode == 1
    line = error_line(result)
    assert f"--out {out} already holds a run ({earlier})" in line
    assert "--resume" in line and "--overwrite" in line
    assert (out / earlier).read_bytes() == b"an earlier run's file"
    both = train_without_torch(["--out", str(out), "--resume", "--overwrite"])
    assert both.returncode == 2 and "not allowed with argument" in error_line(both)


def test_overwrite_leaves_no_file_of_the_earlier_run(synthetic_data: Path, tmp_path: Path) -> None:
    from rdad.model.checkpoint import read_checkpoint

    out = tmp_path / "run"
    out.mkdir()
    for name in RUN_FILES:
        (out / name).write_bytes(b"an earlier run's file")
    (out / "notes.txt").write_text("not rdad's")
    # 0 epochs: this run writes no last.pt and no loss.png, so the earlier ones must be gone.
    result = subprocess.run(
        [sys.executable, "-m", "rdad", "train", "--data", str(synthetic_data), "--out", str(out),
         "--overwrite", "--epochs", "0", "--backbone", "resnet18", "--image-size", "64",
         "--teacher-weights", "random", "--no-progress"],
        capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert sorted(p.name for p in out.iterdir()) == [
        "calibration.png",
        "checkpoint.pt",
        "notes.txt",
    ]
    assert read_checkpoint(out / "checkpoint.pt")["epoch"] == 0


def test_run_files_names_every_file_a_run_writes(tiny_checkpoint: Path) -> None:
    # The tiny run has epochs and a checkpoint every epoch: it writes every kind of file.
    assert sorted(p.name for p in tiny_checkpoint.parent.iterdir()) == sorted(RUN_FILES)
