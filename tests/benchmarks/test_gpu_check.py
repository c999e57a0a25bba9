"""``benchmarks/gpu_check.sh`` in its CPU small mode (what runs where there is no GPU): every step
runs and the table has every column filled, so the script is right the first time on a GPU."""

from __future__ import annotations

import json
import os
import re
import subprocess
from pathlib import Path

import pytest

from tests.processes import free_port

REPO = Path(__file__).resolve().parents[2]


def _table(text: str, header: str) -> list[list[str]]:
    """Rows (cells) of the markdown table whose header row starts with ``header``."""
    lines = text.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(header))
    width = lines[start].count("|")
    rows = []
    for line in lines[start + 2 :]:
        if not line.startswith("|"):
            break
        assert line.count("|") == width, f"ragged row: {line}"
        rows.append([cell.strip() for cell in line.strip("|").split("|")])
    return rows


@pytest.mark.slow
@pytest.mark.timeout(1500)
def test_gpu_check_cpu_mode_runs_every_step(tmp_path: Path) -> None:
    env = {
        **os.environ,
        "RESULTS": str(tmp_path / "results"),
        "GPU_CHECK_WORK": str(tmp_path / "work"),
        "PORT": str(free_port()),
        "GPU_DIR": str(tmp_path / "no-wheels"),
    }
    done = subprocess.run(
        ["bash", "benchmarks/gpu_check.sh", "--cpu-small"],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=1400,
        check=False,
    )
    out = done.stdout + done.stderr
    assert done.returncode == 0, out[-4000:]
    assert "CPU SMALL MODE" in out and "not GPU figures" in out
    number = re.compile(r"^[\d,]+(\.\d+)?$")

    model = _table(out, "| engine | variant | batch |")
    variants = {(r[0], r[1]) for r in model}
    assert ("torch", "fp32") in variants
    ort_variants = ("fp32-run", "fp32-bind", "fp16-run", "fp16-bind", "fp16-bind-2lanes")
    for v in (*ort_variants, "fp16-static-bind"):
        assert ("onnxruntime", v) in variants, variants
    for row in model:
        assert number.match(row[3]) and float(row[3].replace(",", "")) > 0, row
        assert "GFLOP" in row[5] and "TFLOP/s" in row[5], row

    decode = _table(out, "| images | how | img/s |")
    assert {r[0] for r in decode} == {"jpeg256", "jpeg900", "png900"}
    assert {"1 core", "2 threads", "2 processes"} <= {r[1] for r in decode}
    assert all(number.match(r[2]) for r in decode), decode

    service = _table(out, "| load | servers | concurrency |")
    loads = {r[0] for r in service}
    skipped = [line for line in out.splitlines() if "SKIPPED" in line]
    expected = {"jpeg256-c4", "png900-c4", "jpeg256-c8", "png900-c8", "jpeg256-c8-f8"}
    assert expected | {"jpeg256-c8-2servers", "jpeg256-c8-2workers"} <= loads, skipped
    for row in service:
        assert float(row[4].replace(",", "")) > 0 and row[8] == "-", row  # img/s, no errors
        assert number.match(row[6]) and number.match(row[7]), row  # p50, p99
    servers = {r[0]: r[1] for r in service}
    assert servers["jpeg256-c8-2workers"] == "1 × 2 workers"
    assert servers["jpeg256-c8-2servers"] == "2" and servers["jpeg256-c8"] == "1"
    assert "provider CPUExecutionProvider" in out

    merged = json.loads((tmp_path / "results" / "gpu_check.json").read_text())
    assert merged["mode"] == "cpu" and merged["bench"]["gflop_per_image"] > 0
    assert merged["service_info"]["readyz"]["providers"]
