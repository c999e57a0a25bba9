"""``rdad predict --engine ray``: the same scores as the local engine and the service, on one
local Ray instance with 2 CPUs shared by this module's tests; without Ray, one line."""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from rdad.cli import main
from rdad.commands.predict_table import SCHEMA, parts
from tests.browser import serve
from tests.conftest import SHARED, shared_path
from tests.service.test_predict_cli import rdad


@pytest.fixture(scope="module")
def local_ray() -> Iterator[None]:
    import ray

    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()


def scores(out: Path) -> dict[str, float]:
    rows = json.loads((out / "results.json").read_text())
    return {Path(r["path"]).name + r["path"].split("/")[-2]: r["score"] for r in rows}


def test_ray_scores_equal_local_and_service_for_every_bottle_test_image(
    local_ray: None, model_dir: Path, tmp_path: Path
) -> None:
    bottle = shared_path("RDAD_MVTEC_BOTTLE", SHARED / "datasets" / "mvtec_bottle") / "test"
    model = ["--model", str(model_dir / "tiny.onnx"), str(bottle), "--no-images"]
    assert main(["predict", *model, "--out", str(tmp_path / "local")]) in (0, 3, 4)
    ray_args = ["--engine", "ray", "--batch", "8", "--actors", "2", "--no-progress"]
    assert main(["predict", *model, "--out", str(tmp_path / "ray"), *ray_args]) in (0, 3, 4)
    with serve(model_dir) as url:
        served = rdad("--url", url, "--json", "--batch", "8", str(bottle))
    assert served.returncode != 1, served.stderr
    local, on_ray = scores(tmp_path / "local"), scores(tmp_path / "ray")
    service = {
        Path(r["path"]).name + r["path"].split("/")[-2]: r["score"]
        for r in json.loads(served.stdout)
    }
    assert len(local) == len(list(bottle.rglob("*.png"))) == 83
    assert local.keys() == on_ray.keys() == service.keys()
    for name, score in local.items():
        assert abs(on_ray[name] - score) < 1e-5, name
        assert abs(service[name] - score) < 1e-5, name
    written = [p for p in parts(tmp_path / "ray") if not p.name.startswith("local-")]
    # Written by Ray, no part longer than a batch: a killed job loses at most those in flight.
    assert sum(pq.read_metadata(p).num_rows for p in written) == 83
    assert all(pq.read_metadata(p).num_rows <= 8 for p in written)
    assert all(pq.read_schema(p).equals(SCHEMA, check_metadata=False) for p in written)
    engines = pq.read_table(written[0], columns=["engine"])["engine"].to_pylist()
    assert set(engines) == {"ray"}


def test_ray_resumes_the_local_table_and_writes_pictures(
    local_ray: None, model_dir: Path, synthetic_dir: Path, tmp_path: Path
) -> None:
    folder = synthetic_dir / "test"
    out = tmp_path / "out"
    one = next((folder / "good").iterdir())
    first = ["predict", "--model", str(model_dir / "tiny.onnx"), str(one), "--out", str(out)]
    assert main(first) in (0, 3)
    again = [*first[:3], str(folder), "--out", str(out), "--engine", "ray", "--actors", "1"]
    result = main([*again, "--no-progress"])
    assert result in (0, 3)
    rows = json.loads((out / "results.json").read_text())
    assert sorted(r["path"] for r in rows) == sorted(str(p) for p in folder.rglob("*.png"))
    assert all((out / r["heatmap_png"]).is_file() for r in rows)


def test_without_ray_the_error_says_how_to_install_it(
    model_dir: Path,
    synthetic_dir: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setitem(sys.modules, "ray", None)  # import ray → ImportError
    image = synthetic_dir / "test" / "good" / "000.png"
    args = ["--model", str(model_dir / "tiny.onnx"), str(image), "--out", str(tmp_path / "o")]
    assert main(["predict", *args, "--engine", "ray"]) == 1
    error = capsys.readouterr().err
    assert error.count("\n") == 1 and "pip install 'rdad[ray]'" in error


def test_ray_reads_file_uris_from_a_manifest(
    local_ray: None, model_dir: Path, synthetic_dir: Path, tmp_path: Path
) -> None:
    images = sorted((synthetic_dir / "test" / "good").iterdir())[:2]
    manifest = tmp_path / "uris.txt"
    manifest.write_text("".join(f"{p.as_uri()}\n" for p in images))
    out = tmp_path / "out"
    model = ["predict", "--model", str(model_dir / "tiny.onnx"), str(manifest)]
    assert main([*model, "--out", str(tmp_path / "local"), "--no-images"]) in (0, 3)
    assert main([*model, "--out", str(out), "--engine", "ray", "--actors", "1"]) in (0, 3)
    rows = json.loads((out / "results.json").read_text())
    assert sorted(r["path"] for r in rows) == [p.as_uri() for p in images]
    local = {
        r["path"]: r["score"] for r in json.loads((tmp_path / "local/results.json").read_text())
    }
    assert all(abs(r["score"] - local[r["path"]]) < 1e-6 for r in rows)
    assert all(
        r["heatmap_png"].startswith("file/") and (out / r["heatmap_png"]).is_file() for r in rows
    )
