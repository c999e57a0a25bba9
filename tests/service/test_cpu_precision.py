"""``RDAD_CPU_PRECISION``: bf16 only on request, only where the CPU has it and parity passes, and
the precision used is shown everywhere (``/models``, ``rdad_model_info``, the log, ``rdad eval``).

The tests run on any CPU: where this one has no BF16 they check the refusal instead of the bf16
path (the way the GPU tests check the refusal on a host without a GPU).
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from rdad import openvino_runtime
from rdad.openvino_runtime import CpuPrecisionError, bf16_problem, compile_at
from rdad.parity import Bounds, compare, reference_images, spearman
from rdad.service.engine import choose_runtime, load_engine
from rdad.service.errors import ModelLoadError
from rdad.service.settings import Settings

HAS_BF16 = bf16_problem() is None


def test_bf16_refused_in_one_line_without_bf16(
    model_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(openvino_runtime, "cpu_capabilities", lambda: ["FP32", "INT8"])
    path = model_dir / "tiny.onnx"
    with pytest.raises(ModelLoadError) as refused:
        load_engine("tiny", path, Settings(model_dir=model_dir, cpu_precision="bf16"))
    assert "RDAD_CPU_PRECISION=bf16 refused: this CPU" in refused.value.detail
    assert "no BF16 support" in refused.value.detail and "\n" not in refused.value.detail
    settings = Settings(model_dir=model_dir, cpu_precision="auto", runtime="openvino")
    engine = load_engine("tiny", path, settings)
    assert engine.compute_precision == "fp32"
    assert engine.precision_reason.startswith("auto: fp32, this CPU")
    # Without BF16, auto leaves the runtime rule as it was (fp32 graphs: ONNX Runtime).
    auto = Settings(cpu_precision="auto", device="cpu")
    assert choose_runtime(auto, "fp32") == choose_runtime(Settings(device="cpu"), "fp32")


def test_bf16_refused_on_onnxruntime_with_the_way_out(model_dir: Path) -> None:
    settings = Settings(model_dir=model_dir, cpu_precision="bf16", runtime="onnxruntime")
    with pytest.raises(ModelLoadError, match=r"no bf16 kernels.*RDAD_RUNTIME=openvino"):
        load_engine("tiny", model_dir / "tiny.onnx", settings)
    runtime, why = choose_runtime(Settings(cpu_precision="bf16", device="cpu"), "fp32")
    assert runtime == "openvino" and "RDAD_CPU_PRECISION=bf16" in why
    runtime, why = choose_runtime(Settings(cpu_precision="auto", device="cpu"), "fp32")
    assert (runtime == "openvino") == HAS_BF16, why


def test_onednn_isa_cap_refuses_bf16(model_dir: Path, synthetic_dir: Path) -> None:
    """Capped below bf16 (ONEDNN_MAX_CPU_ISA=AVX512_CORE, as on a Skylake/Cascade Lake Xeon),
    ``rdad eval --cpu-precision bf16`` refuses in one line: OpenVINO still lists BF16 under the
    cap, so rdad reads the cap itself."""
    env = {**os.environ, "ONEDNN_MAX_CPU_ISA": "AVX512_CORE"}
    args = [sys.executable, "-m", "rdad.cli", "eval", "--model", str(model_dir / "tiny.onnx")]
    args += ["--data", str(synthetic_dir), "--runtime", "openvino", "--cpu-precision", "bf16"]
    done = subprocess.run(args, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 1, done.stderr
    (line,) = [x for x in done.stderr.splitlines() if x.strip()]
    reason = "AVX512_CORE caps oneDNN" if HAS_BF16 else "no BF16 support"
    assert "bf16 refused" in line and reason in line


def test_bf16_that_drifts_is_refused_and_auto_says_why(
    model_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(openvino_runtime, "BF16_BOUNDS", Bounds(1.01, 0.0))  # unreachable
    path = model_dir / "tiny.onnx"
    with pytest.raises(CpuPrecisionError, match="bf16 refused") as refused:
        compile_at(path, "bf16", "fp32", 64)
    expected = "parity vs fp32 failed: score rank correlation" if HAS_BF16 else "no BF16"
    assert expected in str(refused.value)
    auto = compile_at(path, "auto", "fp32", 64)
    assert auto.precision == "fp32" and auto.reason.startswith("auto: fp32, ")
    assert (auto.parity is not None and not auto.parity.ok) == HAS_BF16


def test_rank_correlation_matches_scipy() -> None:
    from scipy.stats import spearmanr

    rng = np.random.default_rng(3)
    a = rng.normal(size=40)
    b = a + rng.normal(scale=0.5, size=40)
    b[:6] = b[0]  # ties share their average rank
    assert spearman(a, b) == pytest.approx(spearmanr(a, b).statistic, abs=1e-12)
    assert np.isnan(spearman(a, np.ones(40)))


def test_reference_images_are_deterministic_and_spread_the_scores(model_dir: Path) -> None:
    """The load check's images score over a range far wider than bf16's error (|Δscore| ≤ ~1e-2
    measured), so that the rank correlation judges content, not rounding."""
    images = reference_images(64)
    assert images.shape == (16, 64, 64, 3) and np.array_equal(images, reference_images(64))
    fp32 = compile_at(model_dir / "tiny.onnx", "fp32", "fp32", 64).compiled
    scores = np.array(fp32.create_infer_request().infer({0: images})[fp32.output(1)])
    assert np.ptp(scores) > 0.1, np.sort(scores)
    assert compare((np.ones((16, 4, 4)), scores), (np.ones((16, 4, 4)), scores + 1e-3)).ok


async def test_served_precision_is_shown_and_scores_equal_eval(
    make_client: Any,
    images: Any,
    model_dir: Path,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """``auto``: bf16 here when the CPU has it (fp32 elsewhere); ``/models``, the metric label and
    the log say which, and the served raw scores equal ``rdad eval``'s at the same precision."""
    from rdad.model.evaluate import load_for_eval
    from rdad.model.scoring import score_images

    caplog.set_level(logging.INFO, logger="rdad.service.openvino")
    pngs = [images.png(90 + 7 * i, 80, seed=i) for i in range(3)]
    async with make_client(runtime="openvino", cpu_precision="auto") as client:
        info = (await client.get("/models/tiny")).json()
        served = [
            (await client.post("/predict", files=images.upload(png))).json()["score"]
            for png in pngs
        ]
        metrics = (await client.get("/metrics")).text
    used = "bf16" if HAS_BF16 else "fp32"
    assert info["precision"] == "fp32" and info["compute_precision"] == used
    assert info["precision_reason"].startswith(f"{used} auto: " if HAS_BF16 else "auto: fp32, ")
    assert images.metric(metrics, "rdad_model_info", model="tiny", precision=used) == 1
    assert any(f"runs {used}: " in r.getMessage() for r in caplog.records)

    paths = []
    for i, png in enumerate(pngs):
        paths.append(tmp_path / f"{i}.png")
        paths[-1].write_bytes(png)
    model = load_for_eval(model_dir / "tiny.onnx", runtime="openvino", cpu_precision="auto")
    assert f"running {used}" in model.description
    scored = score_images(model.predict, paths, image_size=64, tiling=None, grid=64)
    np.testing.assert_allclose(served, scored.scores, rtol=0, atol=1e-5)
    if HAS_BF16:  # bf16 is really in use: fp32 scores differ by more than the tolerance
        fp32 = load_for_eval(model_dir / "tiny.onnx", runtime="openvino")
        exact = score_images(fp32.predict, paths, image_size=64, tiling=None, grid=64).scores
        assert np.abs(exact - scored.scores).max() > 1e-5
