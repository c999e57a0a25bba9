"""Torch-free image decoding and resizing shared by training, evaluation and serving.

Training, ``rdad eval`` and the service must see identical pixels, so all of them decode and resize
through these two functions. Conversions are deliberate:

* grayscale → replicated to RGB; palette → expanded to RGB;
* RGBA / grey+alpha → alpha dropped (colour channels kept, as PIL's ``convert("RGB")`` does);
* 16-bit → 8-bit by keeping the high byte (full range preserved);
* EXIF orientation is applied (a phone photo is scored the way it looks);
* CMYK JPEG → RGB by the codec.
"""

from __future__ import annotations

import io
import warnings
from pathlib import Path
from typing import Any

import cv2
import numpy as np
from PIL import Image

# Pillow's own decompression-bomb check stays on (its default MAX_IMAGE_PIXELS, about 89 MP):
# it is the last line of defence for any code that opens images with Pillow. The service adds its
# own, lower limit (RDAD_MAX_PIXELS) on top, checked from the header before decoding.

JPEG_MAGIC = b"\xff\xd8\xff"

Buffer = bytes | bytearray | memoryview
"""Encoded image bytes: an upload may arrive as a ``bytearray`` and is never copied to ``bytes``."""


class _BufferReader(io.RawIOBase):
    """A seekable read-only file over a buffer without copying it (``io.BytesIO`` copies a
    ``bytearray``: for a 50 MB upload that is 50 MB more just to read its header)."""

    def __init__(self, data: Buffer) -> None:
        self._view = memoryview(data).cast("B")
        self._pos = 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._pos

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self._pos, io.SEEK_END: len(self._view)}[whence]
        self._pos = max(0, base + offset)
        return self._pos

    def readinto(self, buffer: Any) -> int:
        chunk = self._view[self._pos : self._pos + len(buffer)]
        memoryview(buffer).cast("B")[: len(chunk)] = chunk
        self._pos += len(chunk)
        return len(chunk)


def open_buffer(data: Buffer) -> io.BufferedReader:
    """A binary file over ``data`` for Pillow, without a copy of the buffer."""
    return io.BufferedReader(_BufferReader(data))


class ImageDecodeError(ValueError):
    """The bytes are not an image this product can read (unknown format, corrupt or truncated)."""


class ImageBombError(ImageDecodeError):
    """The header declares more pixels than Pillow's ``MAX_IMAGE_PIXELS`` allows."""


def probe_size(data: Buffer) -> tuple[int, int]:
    """Return ``(width, height)`` from the header only, without decoding pixels.

    Used to refuse decompression bombs before any large allocation happens.
    """
    try:
        with warnings.catch_warnings():
            # Over MAX_IMAGE_PIXELS Pillow only warns (it raises over twice that): treat both alike.
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(open_buffer(data)) as im:
                width, height = im.size
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise ImageBombError(
            f"the image declares more than Pillow's limit of {Image.MAX_IMAGE_PIXELS:,} pixels"
        ) from exc
    except Exception as exc:  # PIL raises many types for garbage input
        raise ImageDecodeError("not a readable image") from exc
    return int(width), int(height)


def is_jpeg(data: Buffer) -> bool:
    return bytes(data[:3]) == JPEG_MAGIC


def reduction_factor(width: int, height: int, target: int) -> int:
    """Largest JPEG DCT scale (1, 2, 4, 8) that keeps the short side at least ``target``."""
    factor = 1
    while factor < 8 and min(width, height) // (factor * 2) >= target:
        factor *= 2
    return factor


_REDUCED_FLAGS = {
    1: cv2.IMREAD_COLOR,
    2: cv2.IMREAD_REDUCED_COLOR_2,
    4: cv2.IMREAD_REDUCED_COLOR_4,
    8: cv2.IMREAD_REDUCED_COLOR_8,
}


def decode_image(
    data: Buffer, *, min_side: int | None = None, size: tuple[int, int] | None = None
) -> np.ndarray:
    """Decode encoded image bytes to an RGB uint8 array ``(H, W, 3)``.

    With ``min_side``, JPEGs are decoded at a reduced size by the codec's DCT scaling (2×, 4× or 8×)
    while both sides stay at least ``min_side``: a 12 MP JPEG headed for a 256×256 model then
    costs a fraction of a full decode. Other formats are decoded at full size. ``size`` is the
    ``(width, height)`` from :func:`probe_size` when the caller already read it (no second parse).
    """
    buf = np.frombuffer(data, dtype=np.uint8)
    flag = cv2.IMREAD_COLOR
    if min_side is not None and is_jpeg(data):
        width, height = size or probe_size(data)
        flag = _REDUCED_FLAGS[reduction_factor(width, height, min_side)]
    try:
        bgr = cv2.imdecode(buf, flag)
    except cv2.error as exc:
        raise ImageDecodeError("corrupt image data") from exc
    if bgr is None or bgr.size == 0:
        raise ImageDecodeError("not a readable image (unknown format, corrupt or truncated)")
    if bgr.dtype == np.uint16:  # IMREAD_COLOR already gives 8 bits; be explicit if a codec does not
        bgr = (bgr.astype(np.uint32) // 256).astype(np.uint8)
    # In place: a second full-size buffer would double the peak memory of a large decode.
    return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB, dst=bgr)


def load_image(path: str | Path, *, min_side: int | None = None) -> np.ndarray:
    """Read and decode a file to RGB uint8 ``(H, W, 3)``; raises :class:`ImageDecodeError`."""
    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        raise ImageDecodeError(f"cannot read file: {exc.strerror or exc}") from exc
    return decode_image(data, min_side=min_side)


def resize_rgb(image: np.ndarray, size: int) -> np.ndarray:
    """Resize ``(H, W, 3)`` to ``(size, size, 3)``: area interpolation when shrinking (no aliasing),
    bilinear when enlarging."""
    height, width = image.shape[:2]
    if (height, width) == (size, size):
        return np.ascontiguousarray(image)
    shrinking = height * width > size * size
    interpolation = cv2.INTER_AREA if shrinking else cv2.INTER_LINEAR
    return cv2.resize(image, (size, size), interpolation=interpolation)
