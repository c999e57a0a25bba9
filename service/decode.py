"""Uploads to model inputs: the header check (limits before any pixel), then the decode.

Decoding goes through :mod:`rdad.imaging` (``decode_image`` + ``resize_rgb``, and the tile cutting
of :mod:`rdad.tiling`) exactly as training and ``rdad eval`` do, so the served pixels are the
evaluated pixels. Everything here is CPU work for a worker, never for the event loop. What an
image keeps after its decode is only what later steps need: its model inputs (one resized image,
or the tiles of a tiled model) and, when an overlay is asked for, an overlay-size view.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import cv2
import numpy as np
from PIL import Image

from rdad.imaging import (
    Buffer,
    ImageBombError,
    ImageDecodeError,
    decode_image,
    is_jpeg,
    open_buffer,
    probe_size,
    resize_rgb,
)
from rdad.tiling import TileGrid, Tiling, tile_image

from .errors import BadImageError, ImageTooLargeError, RequestTimeoutError
from .gpu_decode import JpegDecoder

_EXIF_ORIENTATION = 0x0112


@dataclass(frozen=True)
class Header:
    """What the header says, read before any pixel is decoded."""

    width: int
    height: int
    jpeg: bool


@dataclass(frozen=True)
class DecodedImage:
    inputs: np.ndarray
    """uint8 ``(N, S, S, 3)`` RGB: the one model-size image (N = 1), or a tiled model's tiles."""
    view: np.ndarray | None
    """uint8 RGB at the overlay's size (EXIF orientation applied), kept only when an overlay is
    asked for: the full-resolution decode is never kept past the decode."""
    width: int
    """Full-resolution width after EXIF orientation."""
    height: int
    grid: TileGrid | None = None
    """Where the tiles sit in the prepared image (tiled models)."""

    @property
    def retained_bytes(self) -> int:
        """Pixels this image keeps alive after its decode (model inputs and overlay view)."""
        return self.inputs.nbytes + (0 if self.view is None else self.view.nbytes)


def read_header(data: Buffer, *, max_pixels: int) -> Header:
    """Size from the header against ``max_pixels``: decompression bombs are refused before any
    allocation."""
    if not len(data):
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
    return Header(width, height, is_jpeg(data))


def overlay_size(width: int, height: int, max_side: int) -> tuple[int, int]:
    scale = min(1.0, max_side / max(width, height))
    return max(1, round(width * scale)), max(1, round(height * scale))


def _check_deadline(deadline: float) -> None:
    # The worker may have been busy: a request past its deadline is not decoded at all.
    # (loop.time() is time.monotonic() under asyncio's default loop.)
    if time.monotonic() > deadline:
        raise RequestTimeoutError("the request timed out before its images were decoded")


def _rotated(data: Buffer, header: Header, view: np.ndarray) -> bool:
    """Whether the decoder turned the image by 90° for its EXIF orientation."""
    width, height = header.width, header.height
    if width == height:
        return False
    view_h, view_w = view.shape[:2]
    if view_w != view_h:
        return (view_w > view_h) != (width > height)
    # A DCT-reduced near-square image can come out square: ask the EXIF tag itself.
    try:
        with Image.open(open_buffer(data)) as im:
            return im.getexif().get(_EXIF_ORIENTATION, 1) in (5, 6, 7, 8)
    except Exception:
        return False


def _overlay_view(decoded: np.ndarray, target: tuple[int, int]) -> np.ndarray:
    shrink = target[0] < decoded.shape[1]
    return cv2.resize(decoded, target, interpolation=cv2.INTER_AREA if shrink else cv2.INTER_LINEAR)


def decode_whole(
    data: Buffer,
    header: Header,
    *,
    model_size: int,
    overlay_max_side: int | None,
    deadline: float = float("inf"),
    jpeg_decoder: JpegDecoder | None = None,
) -> DecodedImage:
    """Decode and resize for a whole-image model. JPEGs are decoded at a DCT-reduced size that
    keeps the short side at least ``model_size``; with ``overlay_max_side`` a JPEG that the codec
    reduced too much for the overlay is decoded a second time at a finer scale, so that the model
    input itself stays exactly what evaluation sees. ``jpeg_decoder`` (the optional GPU decoder)
    replaces the CPU codec for JPEGs, at full size."""
    _check_deadline(deadline)
    size = (header.width, header.height)
    if jpeg_decoder is not None and header.jpeg:
        decoded = jpeg_decoder(bytes(data))
    else:
        decoded = decode_image(data, min_side=model_size, size=size)
    width, height = size[::-1] if _rotated(data, header, decoded) else size
    model_input = resize_rgb(decoded, model_size)
    view = None
    if overlay_max_side is not None:
        target = overlay_size(width, height, overlay_max_side)
        if header.jpeg and min(target) > min(decoded.shape[:2]):
            del decoded  # dropped first: the coarse and the fine decode are never held together
            decoded = decode_image(data, min_side=min(target), size=size)
        view = _overlay_view(decoded, target)
    return DecodedImage(model_input[None], view, width, height)


def decode_tiles(
    data: Buffer,
    header: Header,
    *,
    tiling: Tiling,
    overlay_max_side: int | None,
    deadline: float = float("inf"),
) -> DecodedImage:
    """Decode at full resolution (tiles are cut at native scale, never from a DCT-reduced JPEG)
    and cut the tiles exactly as ``rdad eval`` does; the full decode is dropped before return."""
    _check_deadline(deadline)
    full = decode_image(data)
    height, width = full.shape[:2]  # EXIF orientation is applied by the decoder
    tiles, grid = tile_image(full, tiling)
    view = None
    if overlay_max_side is not None:
        view = _overlay_view(full, overlay_size(width, height, overlay_max_side))
    return DecodedImage(tiles, view, width, height, grid)


def decode_error(filename: str, exc: Exception) -> BadImageError:
    """A codec failure as the file's own 400, named."""
    return BadImageError(f"{filename}: {exc}")


__all__ = [
    "DecodedImage",
    "Header",
    "ImageDecodeError",
    "decode_error",
    "decode_tiles",
    "decode_whole",
    "overlay_size",
    "read_header",
]
