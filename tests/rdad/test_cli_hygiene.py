"""CLI hygiene: every option documents its default, every error is one line on stderr with a
non-zero exit, and argument mistakes are caught before torch is imported."""

from __future__ import annotations

import argparse
import re
import shlex
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


def test_unexpected_failures_are_one_line_too(tmp_path: Path) -> None:
    broken = tmp_path / "checkpoint.pt"
    broken.write_bytes(b"not a torch file")
    result = rdad("eval", "--model", str(broken), "--data", str(tmp_path))
    assert result.returncode == 1
    one_error_line(result, "eval")


@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_every_option_states_one_default(command: str) -> None:
    """A help line that names its default in its text gets no second, different one appended."""
    parser = subcommand_parser(command)
    formatter = HelpFormatter(prog=f"rdad {command}")
    for action in parser._actions:
        if action.option_strings and action.dest != "help" and not action.required:
            text = formatter._expand_help(action)
            assert len(re.findall(r"\(default|default:", text)) == 1, (action.option_strings, text)


def examples(command: str) -> list[str]:
    """The example command lines of ``rdad COMMAND --help`` as printed, continuations joined."""
    epilog = subcommand_parser(command).format_help().split("examples:\n", 1)[1]
    lines: list[str] = []
    joining = False
    for line in epilog.splitlines():
        if joining:
            lines[-1] = lines[-1].removesuffix("\\").rstrip() + " " + line.strip()
        elif re.match(r"  ([A-Z_]+=\S* )*rdad ", line):
            lines.append(line.strip())
        else:
            continue  # a description line
        joining = lines[-1].endswith("\\")
    return lines


@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_every_help_example_is_a_valid_command_line(command: str) -> None:
    listed = examples(command)
    assert listed
    for example in listed:
        # A continuation printed on the same line (a lost backslash-newline) shows as a gap.
        assert not re.search(r"\S {3,}-", example), example
        words = shlex.split(example)
        while re.match(r"[A-Z_]+=", words[0]):
            words.pop(0)
        cut = [i for i, w in enumerate(words) if w in {">", "&&", "|", "||", ";"}]
        words = words[1 : cut[0] if cut else None]
        assert words[0] == command, example
        try:
            build_parser(command).parse_args(words)
        except SystemExit as exc:
            pytest.fail(f"rdad {command} --help shows an example it refuses: {example} ({exc})")


def test_top_level_help_says_what_bench_measures() -> None:
    from rdad.benchmark import ONNX_RUNTIMES, TORCH

    result = rdad("--help")
    assert result.returncode == 0
    # The bench entry and its wrapped continuation lines (indented deeper than the names).
    listing = result.stdout.split("\n    bench ", 1)[1]
    line = re.split(r"\n {0,6}\S", listing, maxsplit=1)[0]
    said = " ".join(line.split()).lower().replace(" ", "")
    families = {runtime.split("-")[0] for runtime in (*ONNX_RUNTIMES, TORCH)}
    assert families == {"onnxruntime", "openvino", "torch"}
    assert all(family in said for family in families), line


def test_a_warning_is_one_log_line_without_its_source() -> None:
    code = (
        "from rdad.commands._common import setup_logging\n"
        "from rdad.model.backbones import Teacher\n"
        "setup_logging()\n"
        "Teacher(backbone='resnet18', weights='random')\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stderr
    (line,) = result.stderr.strip().splitlines()
    assert line.startswith("WARNING rdad: teacher resnet18 uses RANDOM weights (seed 0)"), line
