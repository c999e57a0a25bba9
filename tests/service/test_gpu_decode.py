"""RDAD_GPU_DECODE: optional nvImageCodec JPEG decode that must never break the service when the
package (or a GPU) is missing."""

from __future__ import annotations

import io
import logging
import types
from typing import Any

import cv2
import numpy as np
import pytest
from PIL import Image

import rdad.service.gpu_decode as gpu_decode
from rdad.service.decode import decode_whole, read_header


def _jpeg(size: int = 96) -> bytes:
    buf = io.BytesIO()
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 255, (size, size, 3), dtype=np.uint8)).save(buf, "JPEG")
    return buf.getvalue()


@pytest.fixture(autouse=True)
def _fresh_cache() -> None:
    gpu_decode.gpu_jpeg_decoder.cache_clear()


def test_missing_package_falls_back_with_one_warning(
    caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    def absent() -> None:
        raise ImportError("No module named 'nvidia.nvimgcodec'")

    monkeypatch.setattr(gpu_decode, "_load_module", absent)
    caplog.set_level(logging.WARNING)
    assert gpu_decode.gpu_jpeg_decoder(0) is None
    assert gpu_decode.gpu_jpeg_decoder(0) is None  # cached: one warning only
    warnings = [r for r in caplog.records if "nvImageCodec unavailable" in r.message]
    assert len(warnings) == 1 and warnings[0].levelno == logging.WARNING


def test_decoder_is_used_for_jpegs_only(monkeypatch: pytest.MonkeyPatch) -> None:
    """Wiring check with a stand-in module that decodes through OpenCV and counts its calls (the
    real nvImageCodec is measured by benchmarks/gpu_check.sh on a GPU)."""
    calls: list[int] = []

    class Decoder:
        def __init__(self, device_id: int = 0) -> None:
            self.device_id = device_id

        def decode(self, data: bytes, params: object = None) -> object:
            calls.append(len(data))
            bgr = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
            rgb = cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)
            return types.SimpleNamespace(cpu=lambda: rgb)

    fake = types.SimpleNamespace(
        Decoder=Decoder,
        DecodeParams=lambda **kw: kw,
        ColorSpec=types.SimpleNamespace(SRGB="srgb"),
    )
    monkeypatch.setattr(gpu_decode, "_load_module", lambda: fake)
    decoder = gpu_decode.gpu_jpeg_decoder(0)
    assert decoder is not None and len(calls) == 1  # the start-up probe
    jpeg = _jpeg()
    header = read_header(jpeg, max_pixels=10**6)
    got = decode_whole(jpeg, header, model_size=64, overlay_max_side=None, jpeg_decoder=decoder)
    assert len(calls) == 2 and got.inputs.shape == (1, 64, 64, 3)
    cpu = decode_whole(jpeg, header, model_size=64, overlay_max_side=None)
    assert np.abs(got.inputs.astype(int) - cpu.inputs.astype(int)).max() <= 2
    png = io.BytesIO()
    Image.new("RGB", (80, 80), (10, 20, 30)).save(png, "PNG")
    data = png.getvalue()
    header = read_header(data, max_pixels=10**6)
    decode_whole(data, header, model_size=64, overlay_max_side=None, jpeg_decoder=decoder)
    assert len(calls) == 2  # PNG stays on the CPU codec


async def test_service_with_gpu_decode_on_and_no_package_still_serves(
    make_client: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    def absent() -> None:
        raise ImportError("No module named 'nvidia'")

    monkeypatch.setattr(gpu_decode, "_load_module", absent)
    async with make_client(gpu_decode=True, device="auto") as client:
        assert client.app.state.runtime.jpeg_decoder is None
        answer = await client.post("/predict", files={"file": ("a.jpg", _jpeg(), "image/jpeg")})
        assert answer.status_code == 200, answer.text


async def test_decode_process_pool_serves_and_reports_bad_images(make_client: Any) -> None:
    """RDAD_DECODE_PROCESSES: decoding in spawned processes (small JPEGs hit the GIL in threads);
    results and domain errors cross the process boundary unchanged."""
    async with make_client(decode_processes=2) as client:
        runtime = client.app.state.runtime
        assert runtime.decode_pool is not None
        jpeg = _jpeg()
        answer = await client.post("/predict", files={"file": ("a.jpg", jpeg, "image/jpeg")})
        assert answer.status_code == 200, answer.text
        body = answer.json()
        assert body["width"] == 96 and body["timings_ms"]["decode"] > 0
        garbage = b"\xff\xd8\xff" + b"not a jpeg" * 50
        broken = await client.post("/predict", files={"file": ("b.jpg", garbage, "image/jpeg")})
        assert broken.status_code == 400 and broken.json()["error"] == "bad_image", broken.text
