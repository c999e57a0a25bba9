"""Wrong option values are usage errors: exit status 2, one line that names the option, for every
command alike (predict's 1 means "nothing could be scored", not "you mistyped")."""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

import pytest

from rdad.commands.argtypes import int_at_least, int_list, multiple_of, number_in


@pytest.mark.parametrize(
    ("argv", "option", "reason"),
    [
        (["predict", "--threshold", "2", "{tmp}"], "--threshold", "(0, 1)"),
        (["predict", "--threshold", "nan", "{tmp}"], "--threshold", "finite"),
        (["predict", "--batch", "0", "{tmp}"], "--batch", "≥ 1"),
        (["predict", "--timeout", "0", "{tmp}"], "--timeout", "(0, ∞)"),
        (
            ["train", "--out", "{tmp}", "--data", "{tmp}", "--image-size", "100"],
            "--image-size",
            "multiple of 32",
        ),
        (["train", "--out", "{tmp}", "--data", "{tmp}", "--epochs", "-1"], "--epochs", "≥ 0"),
        (
            ["train", "--out", "{tmp}", "--data", "{tmp}", "--holdout-fraction", "1"],
            "--holdout-fraction",
            "(0, 1)",
        ),
        (
            ["train", "--out", "{tmp}", "--data", "{tmp}", "--tile-size", "48"],
            "--tile-size",
            "or 0",
        ),
        (
            ["eval", "--model", "m.onnx", "--data", "{tmp}", "--batch-size", "0"],
            "--batch-size",
            "≥ 1",
        ),
        (
            ["export", "c.pt", "--out", "m.onnx", "--calibration-count", "0"],
            "--calibration-count",
            "≥ 1",
        ),
        (["bench", "m.onnx", "--batch-sizes", "1,x"], "--batch-sizes", "'x' is not an integer"),
        (["bench", "m.onnx", "--batch-sizes", "1,0"], "--batch-sizes", "≥ 1"),
    ],
)
def test_a_wrong_value_exits_2_naming_its_option(
    tmp_path: Path, argv: list[str], option: str, reason: str
) -> None:
    filled = [a.format(tmp=tmp_path) for a in argv]
    result = subprocess.run(
        [sys.executable, "-m", "rdad", *filled], capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 2, result.stderr
    (line,) = result.stderr.strip().splitlines()
    assert line.startswith(f"rdad {argv[0]}: error: argument {option}: "), line
    assert reason in line, line


def test_value_types_accept_their_range_and_refuse_the_rest() -> None:
    assert int_at_least(0)("0") == 0
    assert multiple_of(32)("64") == 64 and multiple_of(32, zero=True)("0") == 0
    assert number_in(0.0, 1.0, high_open=True)("0.5") == 0.5
    assert number_in(0.0, 100.0)("100") == 100.0
    assert int_list(1)(" 1, 8 ,32 ") == [1, 8, 32]
    for parse, text in [
        (multiple_of(32), "0"),
        (multiple_of(32), "33"),
        (number_in(0.0, 100.0), "0"),
        (number_in(0.0), "inf"),
        (int_at_least(1), "1.5"),
        (int_list(1), ","),
    ]:
        with pytest.raises(argparse.ArgumentTypeError):
            parse(text)
