"""Tiled inference geometry, shared by training, ``rdad eval`` and the service (torch-free).

A factory photo of 5–20 MP resized to a 256×256 model input loses a 20-pixel scratch. A *tiled*
model is trained and run on tiles cut from the image at its native resolution (or at
``scale`` × native), and the per-tile anomaly maps are stitched back into one map of the image:

1. :func:`prepare_image` resizes the image by ``scale`` (area interpolation when shrinking) and,
   if a side is then shorter than a tile, enlarges it so that the short side is one tile;
2. :func:`tile_grid` places tiles of ``tile_size`` along each axis, first at 0 and last flush with
   the far edge, spread evenly so that neighbours overlap by at least ``overlap`` pixels — the
   tiles always cover every pixel and never leave the image (no padding);
3. :func:`cut_tiles` copies the tiles out in row-major order (the order of the model's batch);
4. :func:`stitch` puts the per-tile maps back: where tiles overlap, the stitched value is the
   **mean** of the overlapping tiles' values (rule ``"mean"``, the default: it damps the weaker
   context a tile has at its border) or their **max** (rule ``"max"``: the most sensitive);
5. the image score is the max of the stitched map (:func:`image_score`), as for whole images.

The stitched map lives on the prepared image's grid; :func:`map_to_image` brings it to the
original image's size. Everyone (training calibration, evaluation, the service) goes through
:func:`tile_image` and :func:`stitch`, so a served score equals the evaluated score.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

STITCH_RULES = ("mean", "max")


@dataclass(frozen=True)
class Tiling:
    """How a tiled model cuts images: recorded in the checkpoint config and the ONNX metadata."""

    tile_size: int
    """Tile side in prepared-image pixels; also the model's input size."""
    overlap: int = 0
    """Minimum overlap of neighbouring tiles, in prepared-image pixels."""
    scale: float = 1.0
    """Resize factor applied to every image before tiling (1.0 = native resolution)."""
    stitch: str = "mean"
    """How overlapping tile maps combine: ``"mean"`` or ``"max"``."""

    def __post_init__(self) -> None:
        if self.tile_size < 32 or self.tile_size % 32:
            raise ValueError(f"tile size must be a multiple of 32 and ≥ 32, got {self.tile_size}")
        if not 0 <= self.overlap < self.tile_size:
            raise ValueError(
                f"tile overlap must be in [0, tile size {self.tile_size}), got {self.overlap}"
            )
        if not (math.isfinite(self.scale) and 0.0 < self.scale <= 4.0):
            raise ValueError(f"tile scale must be in (0, 4], got {self.scale}")
        if self.stitch not in STITCH_RULES:
            raise ValueError(f"stitch rule must be one of {STITCH_RULES}, got {self.stitch!r}")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> Tiling:
        return cls(
            tile_size=int(raw["tile_size"]),
            overlap=int(raw.get("overlap", 0)),
            scale=float(raw.get("scale", 1.0)),
            stitch=str(raw.get("stitch", "mean")),
        )


@dataclass(frozen=True)
class TileGrid:
    """Tile positions over a prepared image of ``height`` × ``width``."""

    height: int
    width: int
    tile: int
    ys: tuple[int, ...]
    xs: tuple[int, ...]

    @property
    def positions(self) -> list[tuple[int, int]]:
        """Top-left ``(y, x)`` of every tile, row-major (the order of :func:`cut_tiles`)."""
        return [(y, x) for y in self.ys for x in self.xs]

    def __len__(self) -> int:
        return len(self.ys) * len(self.xs)


def axis_positions(length: int, tile: int, overlap: int) -> tuple[int, ...]:
    """Tile starts along one axis: 0 first, ``length - tile`` last, evenly spread, neighbours
    overlapping by ≥ ``overlap``; ``(0,)`` when one tile spans the axis."""
    if length < tile:
        raise ValueError(f"axis of {length} px is shorter than a tile ({tile} px)")
    if length == tile:
        return (0,)
    stride = tile - overlap
    count = math.ceil((length - tile) / stride) + 1
    span = length - tile
    return tuple(round(i * span / (count - 1)) for i in range(count))


def tile_grid(height: int, width: int, tiling: Tiling) -> TileGrid:
    """The grid of a prepared image ``height`` × ``width`` (both ≥ the tile size)."""
    t, o = tiling.tile_size, tiling.overlap
    return TileGrid(height, width, t, axis_positions(height, t, o), axis_positions(width, t, o))


def prepared_size(height: int, width: int, tiling: Tiling) -> tuple[int, int]:
    """``(height, width)`` after :func:`prepare_image`."""
    h = max(1, round(height * tiling.scale))
    w = max(1, round(width * tiling.scale))
    short = min(h, w)
    if short < tiling.tile_size:  # too small for one tile: enlarge, keeping the aspect ratio
        factor = tiling.tile_size / short
        h, w = max(tiling.tile_size, round(h * factor)), max(tiling.tile_size, round(w * factor))
    return h, w


def prepare_image(image: np.ndarray, tiling: Tiling) -> np.ndarray:
    """RGB uint8 ``(H, W, 3)`` → ``(H', W', 3)`` at the tiling's scale (see module docs)."""
    import cv2  # local: `import rdad.tiling` (via rdad.metadata) stays cheap

    height, width = image.shape[:2]
    h, w = prepared_size(height, width, tiling)
    if (h, w) == (height, width):
        return np.ascontiguousarray(image)
    interpolation = cv2.INTER_AREA if h * w < height * width else cv2.INTER_LINEAR
    return cv2.resize(image, (w, h), interpolation=interpolation)


def cut_tiles(image: np.ndarray, grid: TileGrid) -> np.ndarray:
    """``(H', W', 3)`` prepared image → uint8 ``(N, T, T, 3)`` tiles in grid order."""
    t = grid.tile
    if image.shape[:2] != (grid.height, grid.width):
        raise ValueError(f"image {image.shape[:2]} does not match grid {grid.height}x{grid.width}")
    return np.stack([image[y : y + t, x : x + t] for y, x in grid.positions])


def tile_image(image: np.ndarray, tiling: Tiling) -> tuple[np.ndarray, TileGrid]:
    """Original RGB image → ``(tiles (N, T, T, 3), grid)``."""
    prepared = prepare_image(image, tiling)
    grid = tile_grid(prepared.shape[0], prepared.shape[1], tiling)
    return cut_tiles(prepared, grid), grid


def stitch(maps: np.ndarray, grid: TileGrid, rule: str = "mean") -> np.ndarray:
    """Per-tile maps ``(N, T, T)`` → float32 ``(H', W')`` map of the prepared image.

    ``"mean"``: each pixel is the mean over the tiles that cover it; ``"max"``: their max. Either
    rule returns a constant map unchanged (every pixel is covered by at least one tile).
    """
    t = grid.tile
    if maps.shape != (len(grid), t, t):
        raise ValueError(f"expected maps of shape {(len(grid), t, t)}, got {maps.shape}")
    if rule == "max":
        out = np.full((grid.height, grid.width), -np.inf, np.float32)
        for (y, x), tile_map in zip(grid.positions, maps, strict=True):
            np.maximum(out[y : y + t, x : x + t], tile_map, out=out[y : y + t, x : x + t])
        return out
    if rule != "mean":
        raise ValueError(f"stitch rule must be one of {STITCH_RULES}, got {rule!r}")
    # float32 sums (4 bytes a pixel each, divided in place): stitched maps of large images are
    # held in the service's memory budget, and a float64 pair would be four times that.
    total = np.zeros((grid.height, grid.width), np.float32)
    count = np.zeros((grid.height, grid.width), np.float32)
    for (y, x), tile_map in zip(grid.positions, maps, strict=True):
        total[y : y + t, x : x + t] += tile_map
        count[y : y + t, x : x + t] += 1.0
    total /= count
    return total


def image_score(stitched: np.ndarray) -> float:
    """The image score of a tiled model: the max of its stitched map."""
    return float(np.max(stitched))


def map_to_image(stitched: np.ndarray, width: int, height: int) -> np.ndarray:
    """Stitched map → ``(height, width)`` of the original image (area when shrinking)."""
    import cv2

    if stitched.shape == (height, width):
        return stitched
    shrink = height * width < stitched.size
    interpolation = cv2.INTER_AREA if shrink else cv2.INTER_LINEAR
    return cv2.resize(stitched, (width, height), interpolation=interpolation)


TileRunner = Callable[[np.ndarray], tuple[np.ndarray, np.ndarray]]
"""uint8 ``(B, T, T, 3)`` → maps ``(B, T, T)`` and scores ``(B,)``."""


def run_tiled(image: np.ndarray, tiling: Tiling, run: TileRunner) -> tuple[np.ndarray, float]:
    """Tile, run and stitch one original image; returns ``(stitched map (H', W'), score)``."""
    tiles, grid = tile_image(image, tiling)
    maps, _ = run(tiles)
    stitched = stitch(np.asarray(maps, np.float32), grid, tiling.stitch)
    return stitched, image_score(stitched)


def split_by_grids(maps: np.ndarray, grids: Sequence[TileGrid]) -> list[np.ndarray]:
    """Tile maps of several images, concatenated in grid order → one ``(N_i, T, T)`` per image."""
    bounds = np.cumsum([0, *(len(g) for g in grids)])
    if bounds[-1] != len(maps):
        raise ValueError(f"{len(maps)} tile maps for grids holding {bounds[-1]} tiles")
    return [maps[a:b] for a, b in itertools.pairwise(bounds)]
