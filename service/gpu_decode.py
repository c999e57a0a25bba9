"""Optional GPU JPEG decode through NVIDIA nvImageCodec (``RDAD_GPU_DECODE=true``).

The package (``nvidia-nvimgcodec-cu13`` with ``nvidia-nvjpeg``) is optional: when it is missing or
cannot start (no GPU), :func:`gpu_jpeg_decoder` logs one warning and returns ``None``, and uploads
are decoded on the CPU as usual. Only JPEGs go to the GPU; other formats always use the CPU codec.
nvJPEG's IDCT is not libjpeg-turbo's: pixels can differ by a grey level or two from what
``rdad eval`` decoded, which is why this is off by default.
"""

from __future__ import annotations

import functools
import logging
import threading
from collections.abc import Callable
from typing import Any

import numpy as np

log = logging.getLogger("rdad.service.gpu_decode")

JpegDecoder = Callable[[bytes], np.ndarray]
"""JPEG bytes → RGB uint8 ``(H, W, 3)``, EXIF orientation applied."""


def _load_module() -> Any:
    from nvidia import nvimgcodec  # optional dependency

    return nvimgcodec


@functools.cache
def gpu_jpeg_decoder(device_id: int = 0) -> JpegDecoder | None:
    """A thread-safe GPU JPEG decoder, or ``None`` (with one warning) when it cannot be used."""
    try:
        nvimgcodec = _load_module()
        params = nvimgcodec.DecodeParams(
            color_spec=nvimgcodec.ColorSpec.SRGB, apply_exif_orientation=True
        )
        decoder = nvimgcodec.Decoder(device_id=device_id)
        probe = decoder.decode(_tiny_jpeg(), params=params)
        if probe is None:
            raise RuntimeError("nvImageCodec could not decode a test JPEG")
    except Exception as exc:  # ImportError, or a missing GPU / nvJPEG library
        log.warning("RDAD_GPU_DECODE: nvImageCodec unavailable (%s); decoding on the CPU", exc)
        return None
    lock = threading.Lock()  # one decoder (one CUDA stream) shared by the decode pool

    def decode(data: bytes) -> np.ndarray:
        with lock:
            image = decoder.decode(data, params=params)
            if image is None:
                raise ValueError("nvImageCodec could not decode the JPEG")
            host = np.asarray(image.cpu())
        if host.ndim == 2:
            host = np.repeat(host[:, :, None], 3, axis=2)
        return np.ascontiguousarray(host[:, :, :3])

    log.info("RDAD_GPU_DECODE: JPEGs are decoded on GPU %d by nvImageCodec", device_id)
    return decode


def _tiny_jpeg() -> bytes:
    """An 8×8 grey baseline JPEG to prove the decoder works before it is used."""
    import cv2

    ok, buf = cv2.imencode(".jpg", np.full((8, 8, 3), 128, np.uint8))
    return buf.tobytes() if ok else b""
