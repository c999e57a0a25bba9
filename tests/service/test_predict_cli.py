"""``rdad predict``: folders, local engine vs service, --out layout, bad files, exit codes."""

from __future__ import annotations

import csv
import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
from PIL import Image

from tests.browser import serve


def rdad(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "rdad", "predict", *args],
        capture_output=True,
        text=True,
        timeout=300,
    )


def parts(synthetic_dir: Path, tmp_path: Path) -> Path:
    """good/ and scratch/ images that share file names (000.png ...), plus one broken file."""
    root = tmp_path / "parts"
    for kind in ("good", "scratch"):
        shutil.copytree(synthetic_dir / "test" / kind, root / kind)
    (root / "scratch" / "broken.png").write_bytes(b"not a png at all")
    return root


def test_local_folder_run_writes_mirrored_outputs(
    model_dir: Path, synthetic_dir: Path, tmp_path: Path
) -> None:
    root = parts(synthetic_dir, tmp_path)
    out = tmp_path / "out"
    result = rdad("--model", str(model_dir / "tiny.onnx"), str(root), "--out", str(out))
    assert result.returncode in (3, 4), result.stderr  # broken.png: never a clean 0
    images = sorted(p for p in root.rglob("*.png") if p.name != "broken.png")
    rows = list(csv.DictReader((out / "results.csv").open()))
    scored = [r for r in rows if r["status"] == "scored"]
    assert len(scored) == len(images) and len(rows) == len(images) + 1
    assert next(r for r in rows if r["status"] == "not scored")["path"].endswith("broken.png")
    assert "broken.png" in result.stderr and "Traceback" not in result.stderr
    # good/000.png and scratch/000.png: two sets of pictures, nothing overwritten.
    for kind in ("good", "scratch"):
        for picture in ("heatmap", "overlay", "mask"):
            path = out / "parts" / kind / f"000.{picture}.png"
            assert path.is_file(), path
            with Image.open(path) as im:
                assert im.size == Image.open(root / kind / "000.png").size
    assert not np.array_equal(
        np.asarray(Image.open(out / "parts/good/000.heatmap.png")),
        np.asarray(Image.open(out / "parts/scratch/000.heatmap.png")),
    )
    records = json.loads((out / "results.json").read_text())
    assert len(records) == len(rows)
    first = next(r for r in records if r["status"] == "scored")
    assert {"score", "normalized_score", "is_anomalous", "heatmap_png"} <= set(first)
    assert (out / first["heatmap_png"]).is_file()
    anomalous = sum(r["is_anomalous"] == "True" for r in scored)
    assert result.returncode == (3 if anomalous else 4)
    # Not a terminal: no progress bar in the captured stderr.
    assert "\r" not in result.stderr and "img/s" not in result.stderr
    # The same folder again: a resume that finds every file already in the result table.
    again = rdad("--model", str(model_dir / "tiny.onnx"), str(root), "--out", str(out))
    assert again.returncode == result.returncode
    assert f"0 new files, {len(images) + 1} already in the table" in again.stderr


def test_exit_status_follows_the_threshold(model_dir: Path, synthetic_dir: Path) -> None:
    image = str(synthetic_dir / "test" / "good" / "000.png")
    model = str(model_dir / "tiny.onnx")
    strict = rdad("--model", model, "--threshold", "0.000001", image)
    lenient = rdad("--model", model, "--threshold", "0.999999", image)
    assert strict.returncode == 3 and strict.stdout.startswith("ANOMALOUS")
    assert lenient.returncode == 0 and lenient.stdout.startswith("normal")


def test_local_and_service_answers_agree(
    model_dir: Path, synthetic_dir: Path, tmp_path: Path
) -> None:
    folder = synthetic_dir / "test"
    local = rdad("--model", str(model_dir / "tiny.onnx"), "--json", str(folder))
    with serve(model_dir) as url:
        remote = rdad("--url", url, "--json", "--batch", "3", str(folder))
        broken = tmp_path / "broken.jpg"
        broken.write_bytes(b"\xff\xd8 truncated")
        mixed = rdad("--url", url, str(folder / "good" / "000.png"), str(broken))
    assert local.returncode == remote.returncode != 1, remote.stderr
    by_path = {r["path"]: r for r in json.loads(local.stdout)}
    remote_results = json.loads(remote.stdout)
    assert len(remote_results) == len(by_path) == len(list(folder.rglob("*.png")))
    for record in remote_results:
        mine = by_path[record["path"]]
        assert abs(mine["score"] - record["score"]) < 1e-4
        assert mine["is_anomalous"] == record["is_anomalous"]
    # One bad file in a batch: it is listed, the good one is still scored.
    assert mixed.returncode in (3, 4) and "broken.jpg" in mixed.stderr
    assert "000.png" in mixed.stdout


def test_argument_mistakes_are_one_line(tmp_path: Path) -> None:
    missing = rdad("--model", str(tmp_path / "m.onnx"), str(tmp_path))
    assert missing.returncode == 1 and missing.stderr.count("\n") == 1
    assert "no such file" in missing.stderr
    named = rdad("--model", "bottle", str(tmp_path))
    assert named.returncode == 1 and "use --name" in named.stderr
    nothing = rdad("--model", str(tmp_path), str(tmp_path / "nope"))
    assert nothing.returncode == 1
    both = rdad("--model", "a.onnx", "--url", "http://x", str(tmp_path))
    assert both.returncode == 2 and both.stderr.count("\n") == 1
    bad_threshold = rdad("--threshold", "1.5", str(tmp_path))
    assert bad_threshold.returncode == 2 and "argument --threshold" in bad_threshold.stderr


def test_a_local_run_says_only_what_the_user_needs(
    model_dir: Path, synthetic_dir: Path, tmp_path: Path
) -> None:
    fake = tmp_path / "fake.png"
    fake.write_bytes(b"not a png at all")
    good = synthetic_dir / "test" / "good" / "000.png"
    result = rdad("--model", str(model_dir / "tiny.onnx"), str(good), str(fake))
    assert result.returncode == 4, result.stderr
    # The file's name once, not again at the start of the reason.
    assert f"rdad predict: not scored: {fake}: not a readable image" in result.stderr
    assert result.stderr.count("fake.png") == 1
    # No settings the user never gave (the local engine runs on the CPU, without saying so).
    assert "RDAD_" not in result.stderr, result.stderr
