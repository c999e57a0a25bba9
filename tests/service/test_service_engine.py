"""The ONNX Runtime engine: provider choice, IO binding, load errors, warm-up sizes."""

from __future__ import annotations

import logging
import os
import tempfile
from pathlib import Path

import httpx
import numpy as np
import onnxruntime as ort
import pytest
from asgi_lifespan import LifespanManager

from rdad.service.app import create_app
from rdad.service.device import (
    CPU,
    CUDA,
    TENSORRT,
    DevicePolicyError,
    cuda_problem,
    gpu_problem,
    resolve_providers,
)
from rdad.service.engine import ModelSource, load_engine
from rdad.service.engine_onnxruntime import OnnxRuntimeEngine
from rdad.service.errors import ModelLoadError
from rdad.service.iobinding import BoundBuffers
from rdad.service.provider_options import provider_options
from rdad.service.settings import Settings

NO_GPU = cuda_problem(0) is not None


def ort_engine(name: str, path: Path, settings: Settings) -> OnnxRuntimeEngine:
    """The file loaded as the service loads it, on ONNX Runtime."""
    engine = load_engine(name, path, settings.model_copy(update={"runtime": "onnxruntime"}))
    assert isinstance(engine, OnnxRuntimeEngine)
    return engine


def test_auto_policy_without_gpu_warns_once_and_never_errors(
    caplog: pytest.LogCaptureFixture,
) -> None:
    from rdad.service import device

    device._warn_once.cache_clear()  # once per process: earlier tests may have used it up
    caplog.set_level(logging.DEBUG)
    chosen = resolve_providers(Settings(device="auto", providers=["tensorrt", "cuda", "cpu"]))
    assert TENSORRT not in chosen  # only when enabled
    assert chosen[-1] == CPU
    if not NO_GPU:
        assert chosen[0] == CUDA
        return
    assert chosen == [CPU]
    resolve_providers(Settings(device="auto"))  # a second model: no second warning
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "running on the CPU" in warnings[0].message


def test_cpu_policy_never_asks_for_cuda() -> None:
    assert resolve_providers(Settings(device="cpu", providers=["cuda", "cpu"])) == [CPU]
    assert gpu_problem(Settings(device="cpu")) == "RDAD_DEVICE=cpu"
    assert resolve_providers(Settings(device="auto", providers=["nonexistent"])) == [CPU]


@pytest.mark.skipif(not NO_GPU, reason="checks the refusal on a host without a GPU")
def test_cuda_policy_refuses_without_gpu(model_dir: Path) -> None:
    settings = Settings(device="cuda", model_dir=model_dir)
    with pytest.raises(DevicePolicyError, match="RDAD_DEVICE=cuda") as info:
        resolve_providers(settings)
    assert "driver" in str(info.value) or "onnxruntime build" in str(info.value)
    with pytest.raises(DevicePolicyError, match=r"model 'tiny'.*RDAD_DEVICE=cuda"):
        ort_engine("tiny", model_dir / "tiny.onnx", settings)


async def test_cuda_policy_service_never_becomes_ready(model_dir: Path) -> None:
    if not NO_GPU:
        pytest.skip("checks the refusal on a host without a GPU")
    app = create_app(Settings(device="cuda", model_dir=model_dir, model_poll_s=5.0))
    async with LifespanManager(app, startup_timeout=60):
        runtime = app.state.runtime
        # The model is listed as failed with the reason; the service stays up but never ready.
        assert not runtime.ready
        described = runtime.repository.describe("tiny")
        assert "failed" in described and "RDAD_DEVICE=cuda" in described, described
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
            answer = await client.get("/readyz")
            assert answer.status_code == 503


def test_placement_is_read_from_a_real_run(model_dir: Path) -> None:
    engine = ort_engine("tiny", model_dir / "tiny.onnx", Settings(model_dir=model_dir))
    assert engine.provider == CPU
    assert set(engine.placement) == {CPU} and engine.placement[CPU] > 20  # every node, counted


def test_io_binding_buffers_allocated_once_per_batch_size(model_dir: Path) -> None:
    engine = ort_engine("tiny", model_dir / "tiny.onnx", Settings(model_dir=model_dir))
    session = engine._session
    bound = BoundBuffers(session, "images", ["anomaly_map", "score"], device="cpu")
    rng = np.random.default_rng(0)
    first = rng.integers(0, 255, (3, 64, 64, 3), dtype=np.uint8)
    second = rng.integers(0, 255, (3, 64, 64, 3), dtype=np.uint8)
    out_first = bound.run(first)
    addresses = bound.buffer_addresses(3)
    out_second = bound.run(second)
    assert bound.allocations == 1 and bound.buffer_addresses(3) == addresses  # reused
    bound.run(first[:1])
    assert bound.allocations == 2  # a new size gets its own buffers, once
    bound.run(first[:1])
    assert bound.allocations == 2
    # Same numbers as session.run, and results do not alias the reused buffers.
    plain_first = session.run(["anomaly_map", "score"], {"images": first})
    plain_second = session.run(["anomaly_map", "score"], {"images": second})
    for got, want in [(out_first, plain_first), (out_second, plain_second)]:
        np.testing.assert_allclose(got[0], want[0], atol=1e-6)
        np.testing.assert_allclose(got[1], want[1], atol=1e-6)


def test_placement_tells_shape_arithmetic_from_tensor_fallbacks(model_dir: Path) -> None:
    from collections import Counter

    from rdad.service.device import node_placement, placement_problem, profiling_options

    opts = ort.SessionOptions()
    profiling_options(opts)
    session = ort.InferenceSession(str(model_dir / "tiny.onnx"), opts, providers=[CPU])
    sample = np.zeros((1, 64, 64, 3), np.uint8)
    placement, cpu_tensor_ops = node_placement(
        session, lambda: session.run(None, {"images": sample})
    )
    assert {"Conv", "MatMul", "ReduceMax"} <= cpu_tensor_ops  # float outputs: real work
    assert "Shape" not in cpu_tensor_ops  # int64 outputs: shape arithmetic
    # What an H200 showed for the fp16 wide_resnet50_2 graph: 16 int64 shape nodes on the CPU.
    on_gpu = Counter({CUDA: 293, CPU: 16})
    assert placement_problem(on_gpu, set()) is None
    assert "Resize" in (placement_problem(on_gpu, {"Resize"}) or "")
    assert "no node ran on a GPU" in (placement_problem(placement, cpu_tensor_ops) or "")


def test_one_session_per_bucket_never_changes_shape(model_dir: Path) -> None:
    """Each bucket's session only ever sees its own batch size (GPU layout, built here by hand
    on the CPU provider)."""
    path = str(model_dir / "tiny.onnx")
    settings = Settings(model_dir=model_dir, batch_buckets="1,2,4", max_batch_size=4)
    seen: dict[int, set[int]] = {}

    class Recording:
        def __init__(self, key: int) -> None:
            self.key, self.inner = key, ort.InferenceSession(path, providers=[CPU])

        def run(self, outputs: list[str], feed: dict[str, np.ndarray]) -> list[np.ndarray]:
            seen.setdefault(self.key, set()).add(len(feed["images"]))
            return self.inner.run(outputs, feed)

        def __getattr__(self, name: str) -> object:
            return getattr(self.inner, name)

    loaded = ort_engine("tiny", model_dir / "tiny.onnx", settings)
    engine = OnnxRuntimeEngine(
        "tiny",
        Recording(4),  # type: ignore[arg-type]
        loaded.metadata,
        settings,
        ModelSource("", loaded.identity.sha256),
        bucket_sessions={1: Recording(1), 2: Recording(2)},  # type: ignore[dict-item]
    )
    assert engine.sessions == 3 and engine.buckets == [1, 2, 4]
    rng = np.random.default_rng(2)
    for n in (1, 3, 2, 4, 1, 3):
        out = engine.run(rng.integers(0, 255, (n, 64, 64, 3), dtype=np.uint8))
        assert out.score.shape == (n,)
    assert seen == {1: {1}, 2: {2}, 4: {4}}


def test_buckets_pad_and_slice(model_dir: Path) -> None:
    settings = Settings(model_dir=model_dir, batch_buckets="4,8", max_batch_size=8)
    engine = ort_engine("tiny", model_dir / "tiny.onnx", settings)
    assert engine.buckets == [4, 8]
    calls: list[int] = []
    real_run = engine._session.run
    engine._session.run = lambda out, feed: calls.append(len(feed["images"])) or real_run(out, feed)  # type: ignore[method-assign]
    batch = np.random.default_rng(1).integers(0, 255, (3, 64, 64, 3), dtype=np.uint8)
    padded = engine.run(batch)
    assert calls == [4] and padded.anomaly_map.shape == (3, 64, 64)
    unpadded = real_run(["anomaly_map", "score"], {"images": batch})
    np.testing.assert_allclose(padded.score, unpadded[1], atol=1e-6)
    assert engine.warmup_batch_sizes(settings) == [1, 8]  # CPU: buckets are not tuned per shape
    engine.on_gpu = True
    assert engine.warmup_batch_sizes(settings) == [4, 8]


def test_default_buckets_gpu_only(model_dir: Path) -> None:
    from rdad.service.provider_options import batch_buckets

    assert batch_buckets(Settings(max_batch_size=48), on_gpu=True) == [1, 2, 4, 8, 16, 32, 48]
    assert batch_buckets(Settings(max_batch_size=48), on_gpu=False) == []
    assert batch_buckets(Settings(batch_buckets="0"), on_gpu=True) == []


def test_tensorrt_options(tmp_path: Path, model_dir: Path) -> None:
    from rdad.metadata import read_onnx_metadata

    meta = read_onnx_metadata(model_dir / "tiny.onnx")
    cache = tmp_path / "trt"
    settings = Settings(tensorrt=True, trt_cache_dir=cache, max_batch_size=16)
    opts = provider_options(TENSORRT, settings, meta)
    assert cache.is_dir()  # created, writable
    assert opts["trt_engine_cache_path"] == opts["trt_timing_cache_path"] == str(cache)
    assert opts["trt_engine_cache_enable"] == opts["trt_timing_cache_enable"] == "True"
    assert opts["trt_fp16_enable"] == "True"
    # One exact profile per bucket the engine pads to: every batch shape has its engine profile.
    mins = opts["trt_profile_min_shapes"].split(",")
    assert mins == [f"images:{b}x64x64x3" for b in (1, 2, 4, 8, 16)]
    assert opts["trt_profile_max_shapes"] == opts["trt_profile_min_shapes"]
    plain = provider_options(
        TENSORRT,
        Settings(
            tensorrt=True, trt_cache_dir=cache, batch_buckets="0", max_batch_size=16, trt_fp16=False
        ),
        meta,
    )
    assert plain["trt_profile_min_shapes"] == "images:1x64x64x3"
    assert plain["trt_profile_max_shapes"] == "images:16x64x64x3"
    assert plain["trt_fp16_enable"] == "False"
    if TENSORRT in ort.get_available_providers():
        chosen = resolve_providers(Settings(tensorrt=True, device="auto"))
        assert (TENSORRT in chosen) == (not NO_GPU)


def test_warmup_batch_sizes(model_dir: Path) -> None:
    engine = ort_engine("tiny", model_dir / "tiny.onnx", Settings(model_dir=model_dir))
    assert engine.warmup_batch_sizes(Settings(max_batch_size=8)) == [1, 8]
    engine.on_gpu, engine.buckets = True, []  # GPU providers pick kernels per shape: every size
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
    profiles = f"rdad-placement-{os.getpid()}*"
    before = set(Path(tempfile.gettempdir()).glob(profiles))
    with pytest.raises(ModelLoadError, match=expected[case]):
        ort_engine("broken", path, Settings(model_dir=tmp_path))
    # A refused file leaves nothing behind (its session's placement profile is removed).
    assert set(Path(tempfile.gettempdir()).glob(profiles)) == before
    # With polling off, a folder where nothing loads fails the start with the reason.
    app = create_app(Settings(model_dir=tmp_path, model_poll_s=0))
    with pytest.raises(ModelLoadError, match=f"broken.*{expected[case]}"):
        async with LifespanManager(app):
            pass
