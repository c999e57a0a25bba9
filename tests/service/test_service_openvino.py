"""The OpenVINO runtime behind the engine interface, and the runtime choice."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from rdad.model.quantize import compare
from rdad.service import engines
from rdad.service.device import CPU, cuda_problem
from rdad.service.engine import Engine
from rdad.service.engines import choose_runtime, load_engine
from rdad.service.errors import ModelLoadError
from rdad.service.openvino_engine import PROVIDER, OpenVinoEngine
from rdad.service.settings import Settings


def _batch(n: int = 3) -> np.ndarray:
    return np.random.default_rng(0).integers(0, 255, (n, 64, 64, 3), dtype=np.uint8)


def test_openvino_scores_like_onnxruntime_fp32(model_dir: Path) -> None:
    settings = Settings(model_dir=model_dir)
    ov = OpenVinoEngine.load("tiny", model_dir / "tiny.onnx", settings)
    ort = Engine.load("tiny", model_dir / "tiny.onnx", settings)
    assert ov.provider == PROVIDER and ov.metadata == ort.metadata
    first, again = ov.run(_batch()), ov.run(_batch(1))
    ref = ort.run(_batch())
    assert first.anomaly_map.shape == (3, 64, 64) and again.score.shape == (1,)
    np.testing.assert_allclose(first.anomaly_map, ref.anomaly_map, atol=1e-3)
    np.testing.assert_allclose(first.score, ref.score, atol=1e-3)
    assert ov.warmup_batch_sizes(Settings(max_batch_size=8)) == [1, 8]


@pytest.mark.slow
def test_int8_runs_in_both_runtimes_within_int8_tolerance(int8_pair: tuple[Path, Path]) -> None:
    fp32, int8 = int8_pair
    settings = Settings(model_dir=fp32.parent)
    ref = Engine.load("fp32", fp32, settings).run(_batch(6))
    for engine in (
        Engine.load("int8", int8, settings),
        OpenVinoEngine.load("int8", int8, settings),
    ):
        assert engine.metadata.precision == "int8"
        out = engine.run(_batch(6))
        parity = compare((ref.anomaly_map, ref.score), (out.anomaly_map, out.score))
        assert parity.map_error <= 0.1, (engine.provider, parity.describe())


def test_runtime_choice() -> None:
    assert choose_runtime(Settings(runtime="onnxruntime")) == "onnxruntime"
    assert choose_runtime(Settings(runtime="openvino")) == "openvino"
    assert choose_runtime(Settings(providers=["openvino", "cpu"])) == "openvino"
    if cuda_problem(0) is None:  # a GPU host: ONNX Runtime on the GPU
        assert choose_runtime(Settings()) == "onnxruntime"
    else:  # a CPU host with OpenVINO installed: measure both
        assert choose_runtime(Settings()) == "auto"


def test_auto_measures_both_and_keeps_one(
    model_dir: Path, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(engines, "choose_runtime", lambda settings: "auto")
    caplog.set_level(logging.INFO, logger="rdad.service.engines")
    engine = load_engine("tiny", model_dir / "tiny.onnx", Settings(model_dir=model_dir))
    assert engine.provider in (PROVIDER, CPU)
    (line,) = [r.getMessage() for r in caplog.records if "runtime auto chose" in r.getMessage()]
    assert engine.provider in line and "ONNX Runtime" in line and "OpenVINO" in line


def test_missing_openvino_is_a_load_error(model_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from rdad.service import openvino_engine

    monkeypatch.setattr(openvino_engine, "openvino_problem", lambda: "not installed (test)")
    with pytest.raises(ModelLoadError, match="not installed"):
        OpenVinoEngine.load("tiny", model_dir / "tiny.onnx", Settings(model_dir=model_dir))


async def test_service_serves_through_openvino(
    make_client: Any, images: Any, reference: Any
) -> None:
    png = images.png()
    async with make_client(runtime="openvino") as client:
        info = (await client.get("/models/tiny")).json()
        answer = await client.post("/predict", files=images.upload(png))
        metrics = (await client.get("/metrics")).text
    assert info["provider"] == PROVIDER
    assert answer.status_code == 200
    assert images.metric(metrics, "rdad_model_info", model="tiny", provider=PROVIDER) == 1
    assert answer.json()["score"] == pytest.approx(reference(png)[1], abs=1e-3)


async def test_service_budgets_opencv_threads(make_client: Any) -> None:
    import cv2

    cv2.setNumThreads(4)
    async with make_client():
        assert cv2.getNumThreads() == 1  # image workers single-threaded inside OpenCV
