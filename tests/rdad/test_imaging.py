"""Shared decoding: the pixels training, eval and the service all see."""

from __future__ import annotations

import io

import cv2
import numpy as np
import pytest
from PIL import Image

from rdad.imaging import ImageDecodeError, decode_image, probe_size, resize_rgb


def encode(array: np.ndarray, fmt: str = "PNG", **kwargs: object) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(array).save(buf, format=fmt, **kwargs)
    return buf.getvalue()


def test_probe_reads_the_header_without_decoding() -> None:
    data = encode(np.zeros((30, 50, 3), np.uint8))
    assert probe_size(data) == (50, 30)
    with pytest.raises(ImageDecodeError):
        probe_size(b"garbage")


def test_large_jpeg_is_decoded_reduced_but_not_below_the_target() -> None:
    rng = np.random.default_rng(0)
    big = cv2.resize(rng.integers(0, 256, (60, 80, 3), dtype=np.uint8), (1600, 1200))
    data = encode(big, "JPEG", quality=90)
    reduced = decode_image(data, min_side=256)
    assert reduced.shape == (300, 400, 3)  # 4x DCT scaling keeps the short side ≥ 256
    assert decode_image(data).shape == (1200, 1600, 3)
    # Reduced decoding approximates the full decode followed by an area resize.
    full = resize_rgb(decode_image(data), 256).astype(int)
    assert np.abs(resize_rgb(reduced, 256).astype(int) - full).mean() < 3


def test_exif_orientation_is_applied() -> None:
    array = np.zeros((20, 40, 3), np.uint8)  # wide image...
    array[:, :20] = 255
    exif = Image.Exif()
    exif[0x0112] = 6  # ...stored "rotate 90° clockwise to display"
    buf = io.BytesIO()
    Image.fromarray(array).save(buf, format="JPEG", exif=exif.tobytes(), quality=95)
    decoded = decode_image(buf.getvalue())
    assert decoded.shape == (40, 20, 3)  # displayed upright: tall


def test_truncated_and_empty_data_raise() -> None:
    data = encode(np.zeros((64, 64, 3), np.uint8), "JPEG")
    for bad in (data[:40], b"", b"\x89PNG\r\n\x1a\n" + b"\0" * 30):
        with pytest.raises(ImageDecodeError):
            decode_image(bad)


def test_resize_shrinks_with_area_and_is_identity_at_size() -> None:
    checker = (np.indices((64, 64)).sum(0) % 2 * 255).astype(np.uint8)
    image = np.dstack([checker] * 3)
    small = resize_rgb(image, 32)
    assert small.shape == (32, 32, 3)
    assert np.all(np.abs(small.astype(int) - 127) <= 1)  # area averaging, no aliasing
    assert resize_rgb(small, 32) is not None and np.array_equal(resize_rgb(small, 32), small)
