"""A file that is not a PyTorch file is named as such, from its first bytes: ``rdad export`` on
the wrong file says what the file is not, never a bare ``KeyError`` from torch's unpickler."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch

from rdad.torch_files import torch_file_problem


@pytest.mark.parametrize("zipped", [True, False], ids=["zip", "legacy"])
def test_both_formats_of_torch_save_pass(tmp_path: Path, zipped: bool) -> None:
    path = tmp_path / "weights.pth"
    torch.save({"w": torch.zeros(2)}, path, _use_new_zipfile_serialization=zipped)
    assert torch_file_problem(path) is None


@pytest.mark.parametrize(
    ("content", "said"),
    [
        (b"", "the file is empty"),
        (b"hello this is not a checkpoint\n", "it is text: 'hello this is not a chec'"),
        (b"\x08\x07\x12\x07pytorch", "it starts with bytes 08 07 12 07"),
    ],
    ids=["empty", "text", "binary"],
)
def test_anything_else_is_described(tmp_path: Path, content: bytes, said: str) -> None:
    path = tmp_path / "notackpt.pt"
    path.write_bytes(content)
    assert said in (torch_file_problem(path) or "")


def test_export_of_a_wrong_file_says_what_it_is_not(tmp_path: Path) -> None:
    wrong = tmp_path / "notackpt.pt"
    wrong.write_text("hello this is not a checkpoint\n")
    result = subprocess.run(
        [sys.executable, "-m", "rdad", "export", str(wrong), "--out", str(tmp_path / "m.onnx")],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 1
    (line,) = result.stderr.strip().splitlines()
    assert line.startswith(f"rdad export: error: {wrong} is not an rdad checkpoint"), line
    assert "not a PyTorch file" in line and "KeyError" not in line
    assert not (tmp_path / "m.onnx").exists()
