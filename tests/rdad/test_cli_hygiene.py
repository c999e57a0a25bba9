"""CLI hygiene: every option documents its default, every error is one line on stderr with a
non-zero exit, and argument mistakes are caught before torch is imported."""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

import pytest

from rdad.cli import COMMANDS, HelpFormatter, build_parser


def rdad(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "rdad", *args], capture_output=True, text=True, timeout=300
    )


def one_error_line(result: subprocess.CompletedProcess[str], command: str) -> str:
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith(f"rdad {command}: error: "), lines[0]
    assert "Traceback" not in result.stderr
    return lines[0]


def subcommand_parser(name: str) -> argparse.ArgumentParser:
    parser = build_parser(name)
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    chosen: argparse.ArgumentParser = sub.choices[name]
    return chosen


@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_every_option_has_a_description_and_a_default(command: str) -> None:
    parser = subcommand_parser(command)
    formatter = HelpFormatter(prog=f"rdad {command}")
    options = [a for a in parser._actions if a.option_strings and a.dest != "help"]
    assert options
    for action in options:
        assert action.help, f"rdad {command} {action.option_strings[0]} has no description"
        text = formatter._get_help_string(action) or ""
        assert "(default" in text or "(required)" in text, (action.option_strings, text)
        assert "(default: None)" not in text


@pytest.mark.parametrize(
    "content", [None, b"this is not a protobuf", b""], ids=["missing", "corrupt", "empty"]
)
def test_eval_and_bench_refuse_a_bad_onnx_in_one_line(
    tmp_path: Path, content: bytes | None
) -> None:
    model = tmp_path / "model.onnx"
    if content is not None:
        model.write_bytes(content)
    result = rdad("eval", "--model", str(model), "--data", str(tmp_path))
    assert result.returncode == 1
    assert str(model) in one_error_line(result, "eval")
    result = rdad("bench", str(model))
    assert result.returncode == 1
    assert str(model) in one_error_line(result, "bench")


def test_argument_errors_are_one_line_with_status_2() -> None:
    result = rdad("eval", "--data", ".")
    assert result.returncode == 2
    assert "--model" in one_error_line(result, "eval")
    result = rdad("train", "--out", "x", "--backbone", "resnet9")
    assert result.returncode == 2
    assert "resnet9" in one_error_line(result, "train")


@pytest.mark.parametrize(
    "args, expected",
    [
        (["--data", "{missing}"], "no such folder"),
        (["--data", "{tmp}", "--teacher-weights", "{missing}"], "no such file"),
        (["--data", "{tmp}", "--image-size", "100"], "multiple of 32"),
        (["--data", "{tmp}", "--holdout-fraction", "1.5"], "holdout-fraction"),
        (["--resume"], "last.pt"),
    ],
)
def test_train_argument_mistakes_are_reported_before_torch_loads(
    tmp_path: Path, args: list[str], expected: str
) -> None:
    filled = [a.format(missing=tmp_path / "nope", tmp=tmp_path) for a in args]
    argv = ["train", "--out", str(tmp_path / "out"), *filled]
    code = (
        "import sys\n"
        "from rdad.cli import main\n"
        f"status = main({argv!r})\n"
        "print('torch' in sys.modules)\n"
        "sys.exit(status)\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 1
    assert expected in one_error_line(result, "train")
    assert result.stdout.strip() == "False"  # torch was never imported


def test_unexpected_failures_are_one_line_too(tmp_path: Path) -> None:
    broken = tmp_path / "checkpoint.pt"
    broken.write_bytes(b"not a torch file")
    result = rdad("eval", "--model", str(broken), "--data", str(tmp_path))
    assert result.returncode == 1
    one_error_line(result, "eval")
