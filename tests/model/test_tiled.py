"""Tiled mode end to end on the tiny model: train on tiles → calibrate on stitched maps → export
with the tiling in the metadata → ``rdad eval`` tiles and stitches (torch and ONNX agree)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest

from rdad.imaging import load_image
from rdad.metadata import INPUT_NAME, OUTPUT_NAMES, read_onnx_metadata
from rdad.model.checkpoint import TrainConfig, read_checkpoint
from rdad.model.data import list_test_samples
from rdad.model.evaluate import evaluate
from rdad.model.tiles import config_tiling, load_tiles
from rdad.tiling import Tiling, run_tiled, tile_grid

from ..conftest import TILED_IMAGE, TILED_TILE

TILING = Tiling(tile_size=TILED_TILE, overlap=16)


def test_training_set_is_the_tiles_of_every_image(tiled_data: Path) -> None:
    paths = sorted((tiled_data / "train" / "good").glob("*.png"))[:3]
    loaded = load_tiles(paths, TILING)
    per_image = len(tile_grid(TILED_IMAGE, TILED_IMAGE, TILING))
    assert per_image == 9  # 128 px, 64-px tiles, ≥16 px overlap: 3 × 3
    assert loaded.images.shape == (3 * per_image, TILED_TILE, TILED_TILE, 3)
    assert loaded.paths == paths and len(loaded.grids) == 3
    first = load_image(paths[0])
    np.testing.assert_array_equal(loaded.images[0], first[:TILED_TILE, :TILED_TILE])


def test_tile_size_must_be_the_model_input() -> None:
    with pytest.raises(ValueError, match="image_size must equal"):
        config_tiling(TrainConfig(image_size=128, tile_size=64))
    assert config_tiling(TrainConfig(image_size=64)) is None


def test_checkpoint_and_onnx_record_the_tiling(
    tiny_tiled_checkpoint: Path, tiny_tiled_onnx: Path
) -> None:
    ckpt = read_checkpoint(tiny_tiled_checkpoint)
    assert config_tiling(TrainConfig.from_dict(ckpt["config"])) == TILING
    meta = read_onnx_metadata(tiny_tiled_onnx)
    assert meta.tiling == TILING and meta.image_size == TILED_TILE
    assert meta.calibration is not None and meta.calibration.num_images >= 2


def test_calibration_uses_stitched_image_scores(
    tiny_tiled_onnx: Path, tiny_tiled_checkpoint: Path
) -> None:
    """The image threshold is a percentile of held-out images' stitched-map maxima: recompute it."""
    ckpt = read_checkpoint(tiny_tiled_checkpoint)
    holdout = [Path(p) for p in ckpt["data_summary"]["holdout"]]
    meta = read_onnx_metadata(tiny_tiled_onnx)
    session = ort.InferenceSession(str(tiny_tiled_onnx), providers=["CPUExecutionProvider"])

    def run(tiles: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        maps, scores = session.run(list(OUTPUT_NAMES), {INPUT_NAME: tiles})
        return maps, scores

    scores = [run_tiled(load_image(p), TILING, run)[1] for p in holdout]
    assert meta.calibration is not None
    expected = np.percentile(scores, meta.calibration.threshold_percentile)
    assert meta.calibration.image_threshold == pytest.approx(expected, rel=1e-3)


def test_eval_tiles_and_stitches_identically_for_onnx_and_checkpoint(
    tiny_tiled_onnx: Path, tiny_tiled_checkpoint: Path, tiled_data: Path
) -> None:
    onnx_report = evaluate(tiny_tiled_onnx, tiled_data, pixel_size=TILED_IMAGE)
    torch_report = evaluate(tiny_tiled_checkpoint, tiled_data, pixel_size=TILED_IMAGE)
    assert onnx_report["tiling"] == TILING.to_dict() == torch_report["tiling"]
    assert onnx_report["pixel_metrics_size"] == TILED_IMAGE
    assert onnx_report["num_images"] == len(list_test_samples(tiled_data))
    for key in ("image_auroc", "pixel_auroc"):
        assert 0.0 <= onnx_report[key] <= 1.0
        assert onnx_report[key] == pytest.approx(torch_report[key], abs=0.02)


def test_cli_refuses_a_tile_size_that_is_not_the_model_input(
    tiled_data: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from rdad.cli import main

    args = ["train", "--data", str(tiled_data), "--out", str(tmp_path), "--backbone", "resnet18"]
    code = main([*args, "--tile-size", "64", "--image-size", "128", "--teacher-weights", "random"])
    assert code == 1
    assert "image_size must equal" in capsys.readouterr().err
    assert not (tmp_path / "checkpoint.pt").exists()
