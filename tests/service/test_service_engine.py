"""The ONNX Runtime engine: provider choice, IO binding, load errors, warm-up sizes."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest
from asgi_lifespan import LifespanManager

from rdad.service.app import create_app
from rdad.service.engine import CPU, CUDA, TENSORRT, Engine, cuda_problem, resolve_providers
from rdad.service.errors import ModelLoadError
from rdad.service.settings import Settings


def test_providers_only_those_that_can_start(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING)
    chosen = resolve_providers(Settings(providers=["tensorrt", "cuda", "cpu"]))
    assert TENSORRT not in chosen  # only when enabled
    assert chosen[-1] == CPU
    if cuda_problem(0) is None:
        assert chosen[0] == CUDA
    else:  # a CPU-only host with onnxruntime-gpu: loud error, then CPU
        assert chosen == [CPU]
        assert any(
            "cannot start" in r.message and r.levelno == logging.ERROR for r in caplog.records
        )
    assert resolve_providers(Settings(providers=["nonexistent"])) == [CPU]


def test_io_binding_path_matches_plain_run(model_dir: Path) -> None:
    engine = Engine.load("tiny", model_dir / "tiny.onnx", Settings(model_dir=model_dir))
    batch = np.random.default_rng(0).integers(0, 255, (3, 64, 64, 3), dtype=np.uint8)
    plain = engine.run(batch)
    engine.io_binding_device = "cpu"  # the GPU code path, with host memory as the "device"
    bound = engine.run(batch)
    assert plain.anomaly_map.shape == (3, 64, 64) and plain.score.shape == (3,)
    np.testing.assert_allclose(bound.anomaly_map, plain.anomaly_map, atol=1e-6)
    np.testing.assert_allclose(bound.score, plain.score, atol=1e-6)


def test_warmup_batch_sizes(model_dir: Path) -> None:
    engine = Engine.load("tiny", model_dir / "tiny.onnx", Settings(model_dir=model_dir))
    assert engine.provider == CPU
    assert engine.warmup_batch_sizes(Settings(max_batch_size=8)) == [1, 8]
    engine.provider = CUDA  # GPU providers pick kernels per shape: every size
    assert engine.warmup_batch_sizes(Settings(max_batch_size=4)) == [1, 2, 3, 4]
    explicit = Settings(max_batch_size=8, warmup_batch_sizes="2, 4, 99")
    assert engine.warmup_batch_sizes(explicit) == [2, 4]


def _strip(model_dir: Path, out: Path, *, calibration_only: bool) -> Path:
    import dataclasses

    import onnx

    from rdad.metadata import METADATA_KEY, ModelMetadata

    proto = onnx.load(str(model_dir / "tiny.onnx"))
    entry = next(p for p in proto.metadata_props if p.key == METADATA_KEY)
    if calibration_only:
        meta = ModelMetadata.from_json(entry.value)
        entry.value = dataclasses.replace(meta, calibration=None).to_json()
    else:
        del proto.metadata_props[:]
    onnx.save(proto, str(out))
    return out


@pytest.mark.parametrize("case", ["garbage", "no metadata", "no calibration"])
async def test_unservable_models_fail_a_start_without_polling(
    model_dir: Path, tmp_path: Path, case: str
) -> None:
    path = tmp_path / "broken.onnx"
    if case == "garbage":
        path.write_bytes(b"not an onnx file")
    else:
        _strip(model_dir, path, calibration_only=case == "no calibration")
    expected = {
        "garbage": "cannot be loaded",
        "no metadata": "rdad",
        "no calibration": "calibration",
    }
    with pytest.raises(ModelLoadError, match=expected[case]):
        Engine.load("broken", path, Settings(model_dir=tmp_path))
    # With polling off, a folder where nothing loads fails the start with the reason.
    app = create_app(Settings(model_dir=tmp_path, model_poll_s=0))
    with pytest.raises(ModelLoadError, match=f"broken.*{expected[case]}"):
        async with LifespanManager(app):
            pass
