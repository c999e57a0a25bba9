"""``rdad predict --out``: the Parquet result table, resume after a kill, manifests, the schema."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from rdad.commands.predict_table import SCHEMA, TABLE, parts
from tests.conftest import REPO, SHARED, shared_path
from tests.service.test_predict_cli import rdad


def bottle_copies(tmp_path: Path, copies: int) -> Path:
    """The bottle test images, ``copies`` times over (900 px: slow enough to be killed)."""
    bottle = shared_path("RDAD_MVTEC_BOTTLE", SHARED / "datasets" / "mvtec_bottle")
    folder = tmp_path / "archive"
    for n in range(copies):
        for image in sorted((bottle / "test").rglob("*.png")):
            target = folder / f"c{n}" / image.parent.name / image.name
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy(image, target)
    return folder


def table(out: Path) -> pa.Table:
    """The whole parts of the table (not the torn one a test puts there)."""
    return pa.concat_tables([pq.read_table(p) for p in parts(out) if "torn" not in p.name])


def test_killed_run_resumes_with_every_file_exactly_once(model_dir: Path, tmp_path: Path) -> None:
    folder = bottle_copies(tmp_path, 2)
    files = sorted(str(p) for p in folder.rglob("*.png"))
    out = tmp_path / "out"
    args = ["--model", str(model_dir / "tiny.onnx"), str(folder), "--out", str(out)]
    args += ["--batch", "2", "--no-images"]
    first = subprocess.Popen(
        [sys.executable, "-m", "rdad", "predict", *args],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    while len(parts(out)) < 5 and first.poll() is None:
        time.sleep(0.005)
    first.send_signal(signal.SIGKILL)
    assert first.wait() == -signal.SIGKILL  # killed half-way, not finished
    before = {p.name: p.read_bytes() for p in parts(out)}
    done = table(out).num_rows
    assert 0 < done < len(files)
    # A torn part (as a kill amid Ray's own write could leave): skipped, not fatal.
    (out / TABLE / "zz-torn.parquet").write_bytes(b"PAR1 cut short")
    again = rdad(*args)
    assert again.returncode in (3, 4) and "skipped a torn part zz-torn.parquet" in again.stderr
    assert f"{len(files) - done} new files, {done} already in the table" in again.stderr
    paths = table(out)["path"].to_pylist()
    assert sorted(paths) == files  # every file exactly once
    # The earlier parts were never rewritten; the summaries describe the whole table.
    assert all((out / TABLE / name).read_bytes() == data for name, data in before.items())
    assert len(json.loads((out / "results.json").read_text())) == len(files)
    assert (out / "results.csv").read_text().count("\n") == len(files) + 1


def test_resume_by_stat_or_by_content_hash(model_dir: Path, synthetic_dir: Path, tmp_path: Path):
    folder = tmp_path / "good"
    shutil.copytree(synthetic_dir / "test" / "good", folder)
    out = tmp_path / "out"
    model = ["--model", str(model_dir / "tiny.onnx"), "--threshold", "0.999999"]
    assert rdad(*model, str(folder), "--out", str(out), "--resume-by", "hash").returncode == 0
    touched = sorted(folder.iterdir())[0]
    os.utime(touched, ns=(1, 1))  # same bytes, another mtime
    by_hash = rdad(*model, str(folder), "--out", str(out), "--resume-by", "hash")
    assert by_hash.returncode == 0 and "0 new files" in by_hash.stderr
    by_stat = rdad(*model, str(folder), "--out", str(out))
    assert by_stat.returncode == 0 and "1 new files" in by_stat.stderr
    rows = table(out).to_pylist()
    assert [r["mtime_ns"] for r in rows if r["path"] == str(touched)][-1] == 1
    assert all(len(r["sha256"]) == 64 for r in rows if r["mtime_ns"] != 1)
    # The summaries hold the newest row per file: one each.
    assert len(json.loads((out / "results.json").read_text())) == len(list(folder.iterdir()))


def test_manifest_with_missing_and_broken_files_gives_error_rows(
    model_dir: Path, synthetic_dir: Path, tmp_path: Path
) -> None:
    good = sorted((synthetic_dir / "test" / "good").iterdir())[:2]
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"not a png at all")
    listed = tmp_path / "list.txt"
    listed.write_text(f"# parts\n{good[0]}\nmissing.png\nbroken.png\n")
    as_csv = tmp_path / "list.csv"
    as_csv.write_text(f"line,path\n3,{good[1]}\n")
    as_parquet = tmp_path / "list.parquet"
    pq.write_table(pa.table({"path": [str(good[0])]}), as_parquet)  # twice: scored once
    out = tmp_path / "out"
    model = ["--model", str(model_dir / "tiny.onnx"), "--threshold", "0.999999"]
    result = rdad(*model, str(listed), str(as_csv), str(as_parquet), "--out", str(out))
    assert result.returncode == 4, result.stderr
    assert "Traceback" not in result.stderr
    rows = {Path(r["path"]).name: r for r in table(out).to_pylist()}
    assert table(out).num_rows == len(rows) == 4
    assert rows["missing.png"]["error"] == "missing" and rows["missing.png"]["size"] is None
    assert rows["broken.png"]["status"] == "not scored" and rows["broken.png"]["detail"]
    assert rows[good[0].name]["status"] == rows[good[1].name]["status"] == "scored"
    assert f"not scored: {tmp_path / 'missing.png'}: no such file" in result.stderr


def documented_schema() -> list[tuple[str, str, str]]:
    """(column, type, description) rows of the schema table in docs/offline-scoring.md."""
    text = (REPO / "docs" / "offline-scoring.md").read_text()
    section = text.split("<!-- schema -->")[1]
    return re.findall(r"^\| `(\w+)` \| `([^`]+)` \| (.+?) \|$", section, re.MULTILINE)


def test_the_written_schema_is_the_documented_one(model_dir: Path, synthetic_dir: Path, tmp_path):
    out = tmp_path / "out"
    image = synthetic_dir / "test" / "good" / "000.png"
    result = rdad("--model", str(model_dir / "tiny.onnx"), str(image), "--out", str(out))
    assert result.returncode in (0, 3), result.stderr
    written = pq.read_schema(parts(out)[0])
    assert written.equals(SCHEMA, check_metadata=False)
    expected = [(f.name, str(f.type), f.metadata[b"doc"].decode()) for f in SCHEMA]
    assert documented_schema() == expected
