"""``rdad export --triton``: the exported file lands in a Triton repository; ``--from-onnx`` does it
for an already-exported file without torch; mistakes are one line (2: arguments, 1: refusals)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2 as mc

from rdad.cli import main


def parse(config: Path) -> mc.ModelConfig:
    return text_format.Parse(config.read_text(), mc.ModelConfig())


def test_export_puts_the_very_file_it_wrote_into_the_repository(
    tiny_checkpoint: Path, tmp_path: Path
) -> None:
    out, repo = tmp_path / "bottle.onnx", tmp_path / "repo"
    argv = ["export", str(tiny_checkpoint), "--out", str(out), "--triton", str(repo)]
    assert main([*argv, "--triton-max-batch-size", "8", "--triton-tensorrt-fp16"]) == 0
    assert (repo / "bottle" / "1" / "model.onnx").read_bytes() == out.read_bytes()
    config = parse(repo / "bottle" / "config.pbtxt")
    assert config.name == "bottle" and config.max_batch_size == 8
    assert (
        config.optimization.execution_accelerators.gpu_execution_accelerator[0].name == "tensorrt"
    )


def test_from_onnx_writes_the_repository_without_torch(tiny_onnx: Path, tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    argv = ["export", "--from-onnx", str(tiny_onnx), "--triton", str(repo), "--triton-name", "m"]
    code = (
        "import sys\n"
        "from rdad.cli import main\n"
        f"status = main({argv!r})\n"
        "print('torch' in sys.modules)\n"
        "sys.exit(status)\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().splitlines()[-1] == "False"
    assert (repo / "m" / "1" / "model.onnx").read_bytes() == tiny_onnx.read_bytes()
    assert parse(repo / "m" / "config.pbtxt").input[0].name == "images"


FROM_ONNX = "--from-onnx {onnx} --triton {repo}"


@pytest.mark.parametrize(
    "args, option",
    [
        ("", "checkpoint"),
        ("--from-onnx {onnx}", "--triton"),
        (f"{FROM_ONNX} --out x.onnx", "--out"),
        ("{ckpt} --triton {repo}", "--out"),
        ("{ckpt} --out {tmp}/m.onnx --triton-version 2", "--triton-version"),
        ("{ckpt} --out {tmp}/m.onnx --triton-tensorrt-fp16", "--triton-tensorrt-fp16"),
        (f"{FROM_ONNX} --triton-version 0", "--triton-version"),
        (
            f"{FROM_ONNX} --triton-max-batch-size 4 --triton-preferred-batch-sizes 2 8",
            "--triton-preferred-batch-sizes",
        ),
        (
            f"{FROM_ONNX} --triton-instance-kind cpu --triton-tensorrt-fp16",
            "--triton-tensorrt-fp16",
        ),
        (f"{FROM_ONNX} --triton-name a/b", "--triton-name"),
    ],
)
def test_argument_mistakes_exit_2_naming_the_option(
    tiny_onnx: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    args: str,
    option: str,
) -> None:
    values = {"onnx": tiny_onnx, "repo": tmp_path / "repo", "tmp": tmp_path, "ckpt": "ck.pt"}
    with pytest.raises(SystemExit) as exc:
        main(["export", *args.format(**values).split()])
    assert exc.value.code == 2
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert line.startswith("rdad export: error: ") and option in line
    assert not (tmp_path / "repo").exists() and not (tmp_path / "m.onnx").exists()


def test_a_taken_version_is_refused_before_exporting(
    tiny_checkpoint: Path, tiny_onnx: Path, tmp_path: Path
) -> None:
    repo, out = tmp_path / "repo", tmp_path / "bottle.onnx"
    assert (
        main(
            [
                "export",
                "--from-onnx",
                str(tiny_onnx),
                "--triton",
                str(repo),
                "--triton-name",
                "bottle",
            ]
        )
        == 0
    )
    argv = ["export", str(tiny_checkpoint), "--out", str(out), "--triton", str(repo)]
    result = subprocess.run(
        [sys.executable, "-m", "rdad", *argv],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 1
    (line,) = result.stderr.strip().splitlines()
    assert "--triton-version" in line and "--triton-replace" in line and "next free: 2" in line
    assert not out.exists()  # refused before the export, not after
    assert (repo / "bottle" / "1" / "model.onnx").read_bytes() == tiny_onnx.read_bytes()
