"""``rdad predict`` manifests whose entries are URIs, read through pyarrow filesystems: here
``file://`` URIs (``s3://`` / ``gs://`` take the same path but are not reachable from the tests)."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from rdad.commands.predict_table import parts
from tests.conftest import SHARED, shared_path
from tests.service.test_predict_cli import rdad


def table(out: Path) -> list[dict]:
    return pa.concat_tables([pq.read_table(p) for p in parts(out)]).to_pylist()


def bottle_images() -> list[Path]:
    bottle = shared_path("RDAD_MVTEC_BOTTLE", SHARED / "datasets" / "mvtec_bottle") / "test"
    return [sorted((bottle / kind).glob("*.png"))[0] for kind in ("good", "broken_large")]


def test_file_uris_score_like_paths_and_resume(model_dir: Path, tmp_path: Path) -> None:
    images = bottle_images()
    model = ["--model", str(model_dir / "tiny.onnx")]
    as_paths = rdad(*model, *map(str, images), "--out", str(tmp_path / "paths"), "--no-images")
    assert as_paths.returncode in (0, 3), as_paths.stderr
    manifest = tmp_path / "uris.txt"
    manifest.write_text("".join(f"{p.as_uri()}\n" for p in images))
    out = tmp_path / "uris"
    first = rdad(*model, str(manifest), "--out", str(out))
    assert first.returncode in (0, 3), first.stderr
    assert f"{len(images)} new files" in first.stderr
    by_path = {r["path"]: r["score"] for r in table(tmp_path / "paths")}
    rows = table(out)
    assert sorted(r["path"] for r in rows) == sorted(p.as_uri() for p in images)
    for row in rows:
        assert row["status"] == "scored" and row["size"] and row["mtime_ns"]
        local = str(Path(row["path"].removeprefix("file://")))
        assert abs(row["score"] - by_path[local]) < 1e-6
        # PNGs mirror the URI: DIR/file/<absolute path>.
        heatmap = out / row["heatmap_png"]
        assert heatmap.is_file() and row["heatmap_png"].startswith("file/")
    records = json.loads((out / "results.json").read_text())
    assert sorted(r["path"] for r in records) == sorted(p.as_uri() for p in images)
    again = rdad(*model, str(manifest), "--out", str(out))
    assert again.returncode == first.returncode
    assert f"0 new files, {len(images)} already in the table" in again.stderr


def test_unknown_scheme_and_missing_uri_become_error_rows(
    model_dir: Path, synthetic_dir: Path, tmp_path: Path
) -> None:
    good = sorted((synthetic_dir / "test" / "good").iterdir())[:2]
    missing = (tmp_path / "gone.png").as_uri()
    manifest = tmp_path / "list.csv"
    rows_in = [good[0].as_uri(), "nosuch://x/y.png", missing, str(good[1])]
    manifest.write_text("path\n" + "".join(f"{r}\n" for r in rows_in))
    out = tmp_path / "out"
    model = ["--model", str(model_dir / "tiny.onnx"), "--threshold", "0.999999"]
    result = rdad(*model, str(manifest), "--out", str(out), "--no-images")
    assert result.returncode == 4, result.stderr
    assert "Traceback" not in result.stderr
    rows = {r["path"]: r for r in table(out)}
    assert len(rows) == 4
    assert rows[good[0].as_uri()]["status"] == rows[str(good[1])]["status"] == "scored"
    unknown = rows["nosuch://x/y.png"]
    assert unknown["status"] == "not scored" and unknown["error"] == "unreadable"
    assert "nosuch" in unknown["detail"]
    assert rows[missing]["error"] == "missing" and rows[missing]["size"] is None
    assert f"not scored: {missing}: no such file" in result.stderr
    again = rdad(*model, str(manifest), "--out", str(out), "--no-images")
    assert again.returncode == 4 and "0 new files" in again.stderr
    assert len(table(out)) == 4  # the error rows are not written twice
