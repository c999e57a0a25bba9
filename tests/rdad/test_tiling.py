"""Tile geometry and stitching (rdad.tiling) and the tiling record in the ONNX metadata."""

from __future__ import annotations

import itertools
import json

import numpy as np
import pytest

from rdad.metadata import Calibration, MetadataError, ModelMetadata
from rdad.tiling import (
    Tiling,
    axis_positions,
    cut_tiles,
    image_score,
    map_to_image,
    prepare_image,
    prepared_size,
    run_tiled,
    split_by_grids,
    stitch,
    tile_grid,
    tile_image,
)


@pytest.mark.parametrize(
    ("length", "tile", "overlap"),
    [(64, 64, 0), (65, 64, 0), (100, 64, 16), (1000, 256, 32), (1024, 256, 0), (900, 256, 128)],
)
def test_axis_positions_cover_the_axis_with_at_least_the_overlap(
    length: int, tile: int, overlap: int
) -> None:
    starts = axis_positions(length, tile, overlap)
    assert starts[0] == 0 and starts[-1] == length - tile
    assert all(b > a for a, b in itertools.pairwise(starts))  # no duplicate tile
    assert all(a + tile - b >= overlap for a, b in itertools.pairwise(starts))
    covered = np.zeros(length, bool)
    for s in starts:
        covered[s : s + tile] = True
    assert covered.all()


def test_no_overlap_on_an_exact_multiple_gives_disjoint_tiles() -> None:
    assert axis_positions(1024, 256, 0) == (0, 256, 512, 768)


@pytest.mark.parametrize(("height", "width"), [(64, 64), (96, 200), (333, 257), (512, 100)])
def test_grid_covers_every_pixel_and_stays_inside(height: int, width: int) -> None:
    tiling = Tiling(tile_size=64, overlap=16)
    grid = tile_grid(height, width, tiling)
    hits = np.zeros((height, width), int)
    for y, x in grid.positions:
        assert 0 <= y <= height - 64 and 0 <= x <= width - 64
        hits[y : y + 64, x : x + 64] += 1
    assert hits.min() >= 1
    assert len(grid) == len(grid.positions)


@pytest.mark.parametrize("rule", ["mean", "max"])
def test_stitching_is_exact_for_constant_maps(rule: str) -> None:
    grid = tile_grid(333, 257, Tiling(tile_size=64, overlap=24))
    maps = np.full((len(grid), 64, 64), 0.7311, np.float32)
    stitched = stitch(maps, grid, rule)
    assert stitched.shape == (333, 257)
    np.testing.assert_array_equal(stitched, np.float32(0.7311))


def test_stitching_puts_tiles_back_where_they_came_from() -> None:
    """Maps cut from one global map stitch back to that map exactly, under both rules."""
    rng = np.random.default_rng(0)
    truth = rng.random((200, 300)).astype(np.float32)
    grid = tile_grid(200, 300, Tiling(tile_size=64, overlap=20))
    maps = np.stack([truth[y : y + 64, x : x + 64] for y, x in grid.positions])
    np.testing.assert_allclose(stitch(maps, grid, "mean"), truth, rtol=1e-6)
    np.testing.assert_array_equal(stitch(maps, grid, "max"), truth)


def test_overlap_rule_mean_versus_max() -> None:
    grid = tile_grid(64, 96, Tiling(tile_size=64, overlap=32))  # two tiles, 32 px overlap
    assert grid.xs == (0, 32)
    maps = np.stack([np.zeros((64, 64), np.float32), np.ones((64, 64), np.float32)])
    mean, peak = stitch(maps, grid, "mean"), stitch(maps, grid, "max")
    assert mean[0, 0] == 0 and mean[0, 95] == 1 and mean[0, 48] == 0.5
    assert peak[0, 48] == 1 and peak[0, 0] == 0


def test_tiles_are_cut_in_grid_order_from_the_prepared_image() -> None:
    image = np.arange(128 * 160 * 3, dtype=np.uint32).reshape(128, 160, 3).astype(np.uint8)
    tiles, grid = tile_image(image, Tiling(tile_size=64))
    assert tiles.shape == (len(grid), 64, 64, 3) and tiles.dtype == np.uint8
    for tile, (y, x) in zip(tiles, grid.positions, strict=True):
        np.testing.assert_array_equal(tile, image[y : y + 64, x : x + 64])
    with pytest.raises(ValueError, match="does not match"):
        cut_tiles(image[:100], grid)


def test_scale_and_small_images() -> None:
    assert prepared_size(1000, 800, Tiling(tile_size=64, scale=0.5)) == (500, 400)
    # Shorter than a tile after scaling: enlarged so the short side is one tile, aspect kept.
    assert prepared_size(40, 80, Tiling(tile_size=64)) == (64, 128)
    image = np.zeros((40, 80, 3), np.uint8)
    assert prepare_image(image, Tiling(tile_size=64)).shape == (64, 128, 3)
    assert prepare_image(image, Tiling(tile_size=32)).shape == (40, 80, 3)  # fits: untouched


def test_run_tiled_scores_the_max_of_the_stitched_map_and_maps_back() -> None:
    image = np.zeros((100, 150, 3), np.uint8)
    image[70:75, 120:130] = 255  # a small bright defect

    def run(tiles: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        maps = tiles.mean(axis=3).astype(np.float32) / 255.0
        return maps, maps.reshape(len(maps), -1).max(axis=1)

    stitched, score = run_tiled(image, Tiling(tile_size=64, overlap=8), run)
    assert stitched.shape == (100, 150)
    assert score == image_score(stitched) == pytest.approx(1.0)
    assert np.unravel_index(np.argmax(stitched), stitched.shape)[0] in range(70, 75)
    half = run_tiled(image, Tiling(tile_size=64, scale=0.5), run)[0]
    back = map_to_image(half, 150, 100)
    assert back.shape == (100, 150) and back[:60].max() < 0.05 and back[70:75, 120:130].max() > 0.3


def test_split_by_grids_checks_the_count() -> None:
    t = Tiling(tile_size=32)
    grids = [tile_grid(32, 64, t), tile_grid(64, 64, t)]
    maps = np.arange(6 * 4, dtype=np.float32).reshape(6, 2, 2)
    first, second = split_by_grids(maps, grids)
    assert len(first) == 2 and len(second) == 4
    with pytest.raises(ValueError, match="tile maps"):
        split_by_grids(maps[:5], grids)


@pytest.mark.parametrize(
    "bad",
    [
        {"tile_size": 50},
        {"tile_size": 64, "overlap": 64},
        {"tile_size": 64, "overlap": -1},
        {"tile_size": 64, "scale": 0.0},
        {"tile_size": 64, "stitch": "median"},
    ],
)
def test_bad_tilings_are_refused(bad: dict[str, object]) -> None:
    with pytest.raises(ValueError):
        Tiling(**bad)  # type: ignore[arg-type]


def _meta(tiling: Tiling | None) -> ModelMetadata:
    cal = Calibration(1.0, 0.9, 0.1, 99.0, 99.9, {}, 4)
    return ModelMetadata("resnet18", 64, "random", cal, tiling=tiling)


def test_tiling_round_trips_through_the_metadata() -> None:
    meta = _meta(Tiling(tile_size=64, overlap=16, scale=0.5, stitch="max"))
    back = ModelMetadata.from_json(meta.to_json())
    assert back == meta and back.tiling == Tiling(64, 16, 0.5, "max")


def test_metadata_without_tiling_still_reads_as_a_whole_image_model() -> None:
    raw = json.loads(_meta(None).to_json())
    del raw["tiling"]  # a file written before tiling existed
    assert ModelMetadata.from_json(json.dumps(raw)).tiling is None


def test_invalid_tiling_in_metadata_is_refused_clearly() -> None:
    raw = json.loads(_meta(Tiling(tile_size=64)).to_json())
    raw["tiling"]["overlap"] = 999
    with pytest.raises(MetadataError, match="invalid tiling"):
        ModelMetadata.from_json(json.dumps(raw))
