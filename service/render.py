"""The picture outputs of one scored image: heatmap, mask and overlay PNGs, and regions.

CPU work for a worker. Only what the client asked for is made, in the smallest dtype that holds
it: the float map is resized once (4 bytes a pixel), turned into colour levels and the mask
(1 byte a pixel each) and dropped before the colour image (3 bytes a pixel) is made. An
original-size heatmap or mask is bounded by ``original_max_side`` (the whole picture scaled down
to fit), so one huge upload cannot ask for an unbounded render; :func:`render_bytes` is the peak
memory the budget reserves for it.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from rdad.metadata import Calibration

from .decode import DecodedImage, overlay_size

MAX_REGIONS = 64
# Fastest deflate level (smooth maps compress well even so) and the "up" row filter instead of
# libpng's per-row adaptive choice: 1.5-3x faster to encode heatmaps, masks and overlays, files
# within a few percent of the adaptive size (docs/performance.md). OpenCV < 4.10 lacks the flag.
_PNG_FLAGS = [cv2.IMWRITE_PNG_COMPRESSION, 1]
if hasattr(cv2, "IMWRITE_PNG_FILTER"):
    _PNG_FLAGS += [cv2.IMWRITE_PNG_FILTER, cv2.IMWRITE_PNG_FILTER_UP]

# Peak bytes per output pixel: the resized float map (4) beside the levels and the mask (1 + 1),
# then levels, mask, the colour image (3) and PNG buffers.
_GRID_BYTES_PER_PIXEL = 8
# Overlay: the float map at overlay size (4), its colours (3), the view as BGR (3), the blend (3).
_OVERLAY_BYTES_PER_PIXEL = 13
# Regions on the map's grid: the mask (1), component labels (4), the peak pass (8).
_REGION_BYTES_PER_PIXEL = 13


@dataclass(frozen=True)
class OutputOptions:
    heatmap: bool = True
    overlay: bool = False
    mask: bool = False
    regions: bool = False
    original_size: bool = False
    """Heatmap and mask at the image's own size (bounded by ``original_max_side``) instead of
    the map's grid."""
    overlay_max_side: int = 1024
    original_max_side: int = 4096


@dataclass(frozen=True)
class Region:
    x: int
    y: int
    width: int
    height: int
    area: int
    max_score: float


@dataclass(frozen=True)
class RenderedOutputs:
    heatmap_png: bytes | None = None
    overlay_png: bytes | None = None
    mask_png: bytes | None = None
    regions: list[Region] | None = None


def output_size(
    map_shape: tuple[int, int], width: int, height: int, options: OutputOptions
) -> tuple[int, int]:
    """``(width, height)`` of the heatmap and mask PNGs."""
    if not options.original_size:
        return map_shape[1], map_shape[0]
    return overlay_size(width, height, options.original_max_side)


def render_bytes(
    map_shape: tuple[int, int], width: int, height: int, options: OutputOptions
) -> int:
    """Peak bytes :func:`render_outputs` allocates for one image with these options."""
    total = 0
    if options.heatmap or options.mask:
        w, h = output_size(map_shape, width, height, options)
        total += _GRID_BYTES_PER_PIXEL * w * h
    if options.overlay:
        w, h = overlay_size(width, height, options.overlay_max_side)
        total += _OVERLAY_BYTES_PER_PIXEL * w * h
    if options.regions:
        total += _REGION_BYTES_PER_PIXEL * map_shape[0] * map_shape[1]
    return total


def png_bytes(image: np.ndarray) -> bytes:
    ok, buf = cv2.imencode(".png", image, _PNG_FLAGS)
    if not ok:
        raise RuntimeError("PNG encoding failed")
    return buf.tobytes()


def _levels(anomaly_map: np.ndarray, pixel_threshold: float) -> np.ndarray:
    """Float map → uint8 colour levels on the fixed per-model scale (see :func:`colorize`)."""
    scale = 255.0 / (2.0 * pixel_threshold) if pixel_threshold > 0 else 255.0
    # Negative values clip to 0 (never mirrored): the map is zeroed below 0 first, in a copy
    # only when there is anything below 0.
    source = np.maximum(anomaly_map, 0) if anomaly_map.min() < 0 else anomaly_map
    return cv2.convertScaleAbs(source, alpha=scale)


def colorize(anomaly_map: np.ndarray, pixel_threshold: float) -> np.ndarray:
    """``(H, W)`` float map → ``(H, W, 3)`` uint8 BGR JET image on a fixed per-model scale.

    0 is blue, the calibrated pixel threshold is the middle of the scale, twice it is red: a
    good part looks the same colour on every image (no per-image min-max stretching).
    """
    return cv2.applyColorMap(_levels(anomaly_map, pixel_threshold), cv2.COLORMAP_JET)


def resize_map(anomaly_map: np.ndarray, width: int, height: int) -> np.ndarray:
    """``(h, w)`` float map → ``(height, width)``, bilinear (the map is smooth)."""
    if anomaly_map.shape == (height, width):
        return anomaly_map
    return cv2.resize(anomaly_map, (width, height), interpolation=cv2.INTER_LINEAR)


def _mask(grid: np.ndarray, threshold: float) -> np.ndarray:
    """uint8 0/255 where ``grid`` is over ``threshold``, made in place of a bool array."""
    mask = np.greater(grid, threshold).view(np.uint8)
    mask *= 255
    return mask


def find_regions(
    anomaly_map: np.ndarray, mask: np.ndarray, width: int, height: int
) -> list[Region]:
    """Connected components of ``mask`` (``(h, w)`` uint8, same grid as ``anomaly_map``) in
    original-image coordinates, the most anomalous first; area is in original pixels."""
    count, labels, stats, _ = cv2.connectedComponentsWithStats(mask, connectivity=8)
    sy, sx = height / mask.shape[0], width / mask.shape[1]
    # Peak per component in one pass over the map (not one masked scan per component).
    peaks = np.full(count, -np.inf, dtype=np.float64)
    np.maximum.at(peaks, np.asarray(labels, dtype=np.intp).ravel(), anomaly_map.ravel())
    regions = []
    for label in range(1, count):
        x, y, w, h, area = (int(v) for v in stats[label])
        regions.append(
            Region(
                x=round(x * sx),
                y=round(y * sy),
                width=max(1, round(w * sx)),
                height=max(1, round(h * sy)),
                area=max(1, round(area * sx * sy)),
                max_score=float(peaks[label]),
            )
        )
    regions.sort(key=lambda r: r.max_score, reverse=True)
    return regions[:MAX_REGIONS]


def render_outputs(
    decoded: DecodedImage,
    anomaly_map: np.ndarray,
    calibration: Calibration | None,
    options: OutputOptions,
) -> RenderedOutputs:
    """Encode only what ``options`` asks for. ``anomaly_map`` is float32 on the model's grid (a
    whole image) or the prepared image's grid (a tiled model). Pictures are drawn on the
    calibrated pixel threshold's scale: without a calibration, none can be asked for."""
    if not (options.heatmap or options.mask or options.regions or options.overlay):
        return RenderedOutputs()
    if calibration is None:
        raise ValueError("heatmaps, masks, overlays and regions need a calibrated model")
    threshold = calibration.pixel_threshold
    width, height = decoded.width, decoded.height
    heatmap = mask_png = None
    if options.heatmap or options.mask:
        grid = resize_map(anomaly_map, *output_size(anomaly_map.shape, width, height, options))
        levels = _levels(grid, threshold) if options.heatmap else None
        mask = _mask(grid, threshold) if options.mask else None
        del grid  # the float copy goes before the colour image is made
        if mask is not None:
            mask_png = png_bytes(mask)
            del mask
        if levels is not None:
            heatmap = png_bytes(cv2.applyColorMap(levels, cv2.COLORMAP_JET))
    regions = None
    if options.regions:
        # Components are found on the map's own grid (cheap), then scaled to image coordinates.
        regions = find_regions(anomaly_map, _mask(anomaly_map, threshold), width, height)
    overlay = None
    if options.overlay:
        if decoded.view is None:
            raise ValueError("an overlay needs the image decoded with an overlay view")
        base = decoded.view  # already at the overlay's size
        heat = colorize(resize_map(anomaly_map, base.shape[1], base.shape[0]), threshold)
        blended = cv2.addWeighted(cv2.cvtColor(base, cv2.COLOR_RGB2BGR), 0.55, heat, 0.45, 0.0)
        overlay = png_bytes(blended)
    return RenderedOutputs(heatmap, overlay, mask_png, regions)
