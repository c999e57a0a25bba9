"""The OpenVINO runtime behind the engine interface, and the runtime choice."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from rdad.metadata import read_onnx_metadata
from rdad.model.quantize import compare
from rdad.service import engine_openvino
from rdad.service.device import CPU, cuda_problem
from rdad.service.engine import ModelSource, choose_runtime, load_engine
from rdad.service.engine_onnxruntime import OnnxRuntimeEngine
from rdad.service.engine_openvino import PROVIDER, OpenVinoEngine
from rdad.service.errors import ModelLoadError
from rdad.service.settings import Settings


def ort_engine(name: str, path: Path, settings: Settings) -> OnnxRuntimeEngine:
    """The file loaded as the service loads it, on ONNX Runtime."""
    engine = load_engine(name, path, settings.model_copy(update={"runtime": "onnxruntime"}))
    assert isinstance(engine, OnnxRuntimeEngine)
    return engine


def ov_engine(name: str, path: Path, settings: Settings) -> OpenVinoEngine:
    engine = load_engine(name, path, settings.model_copy(update={"runtime": "openvino"}))
    assert isinstance(engine, OpenVinoEngine)
    return engine


def _batch(n: int = 3) -> np.ndarray:
    return np.random.default_rng(0).integers(0, 255, (n, 64, 64, 3), dtype=np.uint8)


def test_openvino_scores_like_onnxruntime_fp32(model_dir: Path) -> None:
    settings = Settings(model_dir=model_dir)
    ov = ov_engine("tiny", model_dir / "tiny.onnx", settings)
    ort = ort_engine("tiny", model_dir / "tiny.onnx", settings)
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
    ref = ort_engine("fp32", fp32, settings).run(_batch(6))
    for engine in (
        ort_engine("int8", int8, settings),
        ov_engine("int8", int8, settings),
    ):
        assert engine.metadata.precision == "int8"
        out = engine.run(_batch(6))
        parity = compare((ref.anomaly_map, ref.score), (out.anomaly_map, out.score))
        assert parity.map_error <= 0.1, (engine.provider, parity.describe())


def test_runtime_choice_is_a_rule_with_its_reason() -> None:
    assert choose_runtime(Settings(runtime="onnxruntime"), "int8")[0] == "onnxruntime"
    assert choose_runtime(Settings(runtime="openvino"), "fp32")[0] == "openvino"
    assert choose_runtime(Settings(providers=["openvino", "cpu"]), "fp32")[0] == "openvino"
    if cuda_problem(0) is None:  # a GPU host: ONNX Runtime on the GPU
        assert choose_runtime(Settings(), "int8") == (
            "onnxruntime",
            "auto: a GPU provider can start",
        )
        return
    # A CPU host with OpenVINO installed: by precision, the same every time (no timing race).
    for _ in range(3):
        runtime, why = choose_runtime(Settings(), "int8")
        assert runtime == "openvino" and "int8" in why
        runtime, why = choose_runtime(Settings(), "fp32")
        assert runtime == "onnxruntime" and "fp32" in why


def test_auto_names_its_choice_in_the_log_and_models(
    make_client: Any, model_dir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="rdad.service.engine")
    engine = load_engine("tiny", model_dir / "tiny.onnx", Settings(model_dir=model_dir))
    expected = CPU if cuda_problem(0) is not None else engine.provider
    assert engine.provider == expected  # fp32 on a CPU host: ONNX Runtime, every time
    (line,) = [r.getMessage() for r in caplog.records if "sha256" in r.getMessage()]
    assert "onnxruntime" in line and engine.identity.runtime_reason in line


async def test_models_show_the_runtime_reason_and_file_hash(
    make_client: Any, model_dir: Path
) -> None:
    import hashlib

    async with make_client(runtime="auto") as client:
        info = (await client.get("/models/tiny")).json()
    assert info["sha256"] == hashlib.sha256((model_dir / "tiny.onnx").read_bytes()).hexdigest()
    assert info["runtime_reason"].startswith("auto:")


def test_a_model_is_built_from_one_read_of_its_file(
    model_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Metadata, thresholds and graph all come from the same bytes: the file is opened once."""
    path = tmp_path / "tiny.onnx"
    path.write_bytes((model_dir / "tiny.onnx").read_bytes())
    reads: list[Path] = []
    real_read = ModelSource.read.__func__  # type: ignore[attr-defined]

    @contextlib.contextmanager
    def counting_read(cls: type[ModelSource], where: Path) -> Iterator[ModelSource]:
        reads.append(where)
        with real_read(cls, where) as source:
            where.write_bytes(b"replaced while loading")  # a later open would see this
            yield source

    monkeypatch.setattr(ModelSource, "read", classmethod(counting_read))
    for runtime in ("onnxruntime", "openvino"):
        path.write_bytes((model_dir / "tiny.onnx").read_bytes())
        engine = load_engine("tiny", path, Settings(model_dir=tmp_path, runtime=runtime))
        assert engine.metadata == read_onnx_metadata(model_dir / "tiny.onnx")
        assert engine.run(_batch(1)).score.shape == (1,)
    assert reads == [path, path]


def test_missing_openvino_is_a_load_error(model_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(engine_openvino, "openvino_problem", lambda: "not installed (test)")
    with pytest.raises(ModelLoadError, match="not installed"):
        ov_engine("tiny", model_dir / "tiny.onnx", Settings(model_dir=model_dir))


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
