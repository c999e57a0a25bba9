"""Upload decoding with limits, and the picture outputs: heatmap, overlay, mask PNGs and regions.

Decoding goes through :mod:`rdad.imaging` (``decode_image`` + ``resize_rgb``) exactly as training
and ``rdad eval`` do, so the served pixels are the evaluated pixels. Everything here is CPU work
for the thread pool, never for the event loop: a 900×900 PNG decodes in ~25 ms, and a colour PNG
of that size encodes in ~66 ms, more than a resnet18 inference. So only what the client asked
for is encoded.
"""

from __future__ import annotations

import base64
import io
from collections.abc import Callable
from dataclasses import dataclass

import cv2
import numpy as np
from PIL import Image

from rdad.imaging import (
    JPEG_MAGIC,
    ImageBombError,
    decode_image,
    probe_size,
    reduction_factor,
    resize_rgb,
)
from rdad.metadata import Calibration

from .errors import BadImageError, ImageTooLargeError

MAX_REGIONS = 64
# Fastest deflate level (smooth maps compress well even so) and the "up" row filter instead of
# libpng's per-row adaptive choice: 1.5-3x faster to encode heatmaps, masks and overlays, files
# within a few percent of the adaptive size (README, Speed). OpenCV < 4.10 lacks the flag.
_PNG_FLAGS = [cv2.IMWRITE_PNG_COMPRESSION, 1]
if hasattr(cv2, "IMWRITE_PNG_FILTER"):
    _PNG_FLAGS += [cv2.IMWRITE_PNG_FILTER, cv2.IMWRITE_PNG_FILTER_UP]
_EXIF_ORIENTATION = 0x0112


@dataclass(frozen=True)
class DecodedImage:
    model_input: np.ndarray
    """uint8 ``(S, S, 3)`` RGB at the model's size."""
    view: np.ndarray | None
    """uint8 RGB at the overlay's size (EXIF orientation applied), kept only when an overlay is
    asked for: the full-resolution decode is never kept past :func:`decode_upload`."""
    width: int
    """Full-resolution width after EXIF orientation."""
    height: int

    @property
    def retained_bytes(self) -> int:
        """Pixels this image keeps alive after its decode (model input and overlay view)."""
        return self.model_input.nbytes + (0 if self.view is None else self.view.nbytes)


@dataclass(frozen=True)
class Header:
    """What the header says, read before any pixel is decoded."""

    width: int
    height: int
    decode_bytes: int
    """Estimated peak bytes of decoding it (the codec's full- or DCT-reduced-size RGB buffer,
    plus a second finer JPEG decode for an overlay, plus what is kept)."""


@dataclass(frozen=True)
class OutputOptions:
    heatmap: bool = True
    overlay: bool = False
    mask: bool = False
    regions: bool = False
    original_size: bool = False
    """Heatmap and mask at the image's own size instead of the model's."""
    overlay_max_side: int = 1024


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
    heatmap_png: str | None
    overlay_png: str | None
    mask_png: str | None
    regions: list[Region] | None


def _rotated(data: bytes, width: int, height: int, view: np.ndarray) -> bool:
    """Whether the decoder turned the image by 90° for its EXIF orientation."""
    if width == height:
        return False
    view_h, view_w = view.shape[:2]
    if view_w != view_h:
        return (view_w > view_h) != (width > height)
    # A DCT-reduced near-square image can come out square: ask the EXIF tag itself.
    try:
        with Image.open(io.BytesIO(data)) as im:
            return im.getexif().get(_EXIF_ORIENTATION, 1) in (5, 6, 7, 8)
    except Exception:
        return False


def read_header(
    data: bytes, *, model_size: int, max_pixels: int, overlay_max_side: int | None = None
) -> Header:
    """Size from the header against ``max_pixels`` (decompression bombs are refused before any
    allocation), and the memory its decode will need."""
    if not data:
        raise BadImageError("the file is empty")
    try:
        width, height = probe_size(data)
    except ImageBombError as exc:
        raise ImageTooLargeError(str(exc)) from None
    if width <= 0 or height <= 0:
        raise BadImageError("the image has no pixels")
    if width * height > max_pixels:
        raise ImageTooLargeError(
            f"{width}x{height} is {width * height / 1e6:.1f} MP, over the "
            f"{max_pixels / 1e6:g} MP limit"
        )
    pixels = width * height
    if data[:3] == JPEG_MAGIC:
        factor = reduction_factor(width, height, model_size)
        pixels = (width // factor + 1) * (height // factor + 1)
        if overlay_max_side is not None:
            side = min(overlay_size(width, height, overlay_max_side))
            finer = reduction_factor(width, height, side)
            pixels += (width // finer + 1) * (height // finer + 1)
    kept = model_size * model_size + (overlay_max_side or 0) ** 2
    return Header(width, height, _BYTES_PER_PIXEL * pixels + 3 * kept)


# 3 bytes of RGB per pixel, plus what libpng/libjpeg and the resize hold alongside (measured:
# a 6000×6500 PNG raises the peak RSS by ~4.2 bytes per pixel).
_BYTES_PER_PIXEL = 5


def decode_upload(
    data: bytes,
    *,
    model_size: int,
    max_pixels: int,
    overlay_max_side: int | None = None,
    header: Header | None = None,
    jpeg_decoder: Callable[[bytes], np.ndarray] | None = None,
) -> DecodedImage:
    """Check the header against ``max_pixels``, decode and resize for the model.

    With ``overlay_max_side`` the image is also kept at the overlay's size; a JPEG that the codec
    reduced too much for it is decoded a second time at a finer DCT scale, so that the model input
    itself stays exactly what evaluation sees. Without it, only the model input is kept.
    ``jpeg_decoder`` (the optional GPU decoder) replaces the CPU codec for JPEGs, at full size.
    """
    if header is None:
        header = read_header(
            data, model_size=model_size, max_pixels=max_pixels, overlay_max_side=overlay_max_side
        )
    width, height = header.width, header.height
    if jpeg_decoder is not None and data[:3] == JPEG_MAGIC:
        decoded = jpeg_decoder(data)
    else:
        decoded = decode_image(data, min_side=model_size, size=(width, height))
    if _rotated(data, width, height, decoded):
        width, height = height, width
    model_input = resize_rgb(decoded, model_size)
    view = None
    if overlay_max_side is not None:
        target = overlay_size(width, height, overlay_max_side)
        if data[:3] == JPEG_MAGIC and min(target) > min(decoded.shape[:2]):
            del decoded  # dropped first: the coarse and the fine decode are never held together
            decoded = decode_image(data, min_side=min(target), size=(header.width, header.height))
        shrink = target[0] < decoded.shape[1]
        interpolation = cv2.INTER_AREA if shrink else cv2.INTER_LINEAR
        view = cv2.resize(decoded, target, interpolation=interpolation)
    return DecodedImage(model_input, view, width, height)


def overlay_size(width: int, height: int, max_side: int) -> tuple[int, int]:
    scale = min(1.0, max_side / max(width, height))
    return max(1, round(width * scale)), max(1, round(height * scale))


def _png_bytes(image: np.ndarray) -> bytes:
    ok, buf = cv2.imencode(".png", image, _PNG_FLAGS)
    if not ok:
        raise RuntimeError("PNG encoding failed")
    return buf.tobytes()


def _png_b64(image: np.ndarray) -> str:
    return base64.b64encode(_png_bytes(image)).decode("ascii")


def colorize(anomaly_map: np.ndarray, pixel_threshold: float) -> np.ndarray:
    """``(H, W)`` float map → ``(H, W, 3)`` uint8 BGR JET image on a fixed per-model scale.

    0 is blue, the calibrated pixel threshold is the middle of the scale, twice it is red: a
    good part looks the same colour on every image (no per-image min-max stretching).
    """
    scale = 255.0 / (2.0 * pixel_threshold) if pixel_threshold > 0 else 255.0
    levels = np.clip(anomaly_map * scale, 0, 255).astype(np.uint8)
    return cv2.applyColorMap(levels, cv2.COLORMAP_JET)


def heatmap_png(anomaly_map: np.ndarray, pixel_threshold: float) -> bytes:
    """The colour-mapped heatmap as PNG bytes (for ``Accept: image/png``)."""
    return _png_bytes(colorize(anomaly_map, pixel_threshold))


def resize_map(anomaly_map: np.ndarray, width: int, height: int) -> np.ndarray:
    """``(S, S)`` float map → ``(height, width)``, bilinear (the map is smooth)."""
    return cv2.resize(anomaly_map, (width, height), interpolation=cv2.INTER_LINEAR)


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
        peak = float(peaks[label])
        regions.append(
            Region(
                x=round(x * sx),
                y=round(y * sy),
                width=max(1, round(w * sx)),
                height=max(1, round(h * sy)),
                area=max(1, round(area * sx * sy)),
                max_score=peak,
            )
        )
    regions.sort(key=lambda r: r.max_score, reverse=True)
    return regions[:MAX_REGIONS]


def render_outputs(
    decoded: DecodedImage,
    anomaly_map: np.ndarray,
    calibration: Calibration,
    options: OutputOptions,
) -> RenderedOutputs:
    """Encode only what ``options`` asks for. ``anomaly_map`` is float32 ``(S, S)``."""
    threshold = calibration.pixel_threshold
    size = (decoded.width, decoded.height)
    grid = anomaly_map
    if options.original_size and (options.heatmap or options.mask):
        grid = resize_map(anomaly_map, *size)
    heatmap = _png_b64(colorize(grid, threshold)) if options.heatmap else None
    mask = None
    if options.mask:
        mask = _png_b64(np.where(grid > threshold, 255, 0).astype(np.uint8))
    regions = None
    if options.regions:
        # Components are found on the model grid (cheap), then scaled to image coordinates.
        model_mask = np.where(anomaly_map > threshold, 255, 0).astype(np.uint8)
        regions = find_regions(anomaly_map, model_mask, *size)
    overlay = None
    if options.overlay:
        if decoded.view is None:
            raise ValueError("an overlay needs the image decoded with overlay_max_side")
        base = decoded.view  # already at the overlay's size
        target = (base.shape[1], base.shape[0])
        heat = colorize(resize_map(anomaly_map, *target), threshold)
        blended = cv2.addWeighted(cv2.cvtColor(base, cv2.COLOR_RGB2BGR), 0.55, heat, 0.45, 0.0)
        overlay = _png_b64(blended)
    return RenderedOutputs(heatmap, overlay, mask, regions)
