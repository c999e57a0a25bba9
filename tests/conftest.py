"""Shared fixtures: a tiny synthetic dataset, a 2-epoch resnet18 model trained on it (random
teacher, 64 px), and its exported ONNX file — built once per session by the real code paths."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import warnings
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"
TINY_SIZE = 64
# The tiny model every fast test shares: resnet18, random teacher (shape/speed only), 64 px.
TINY_TRAIN = {
    "backbone": "resnet18",
    "image_size": TINY_SIZE,
    "batch_size": 8,
    "teacher_weights": "random",
    "seed": 0,
    "checkpoint_every": 1,
}


def shared_path(env: str, default: Path) -> Path:
    """A path to shared test data; a missing one FAILS the test (never skips): CI provides it."""
    path = Path(os.environ.get(env, default))
    if not path.exists():
        pytest.fail(f"{env}={path} does not exist: set {env} (.ci/run does) to run this test")
    return path


@pytest.fixture(scope="session")
def synthetic_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from rdad.model.synthetic import write_synthetic_dataset

    return write_synthetic_dataset(
        tmp_path_factory.mktemp("synthetic"), image_size=TINY_SIZE, num_train=24, num_test=8
    )


@pytest.fixture(scope="session")
def tiny_checkpoint(synthetic_data: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    from rdad.model.train import TrainConfig, train

    cfg = TrainConfig(
        data=str(synthetic_data), out=str(tmp_path_factory.mktemp("run")), epochs=2, **TINY_TRAIN
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # the deliberate "random teacher" warning
        return train(cfg, progress=False)


@pytest.fixture(scope="session")
def tiny_onnx(tiny_checkpoint: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    from rdad.model.export import export_onnx

    return export_onnx(tiny_checkpoint, tmp_path_factory.mktemp("models") / "tiny.onnx")


@pytest.fixture(scope="session")
def built_wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The rdad wheel, built by ``pip wheel --no-deps`` (isolated build, as a user's) from a copy
    of the checkout's files (git's tracked + untracked-not-ignored), so that a stale ``build/``
    folder in the checkout cannot leak into it."""
    listed = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=REPO,
        capture_output=True,
        check=True,
    ).stdout.decode()
    src = tmp_path_factory.mktemp("wheel-src")
    for name in filter(None, listed.split("\0")):
        if (REPO / name).is_file():
            (src / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(REPO / name, src / name)
    out = tmp_path_factory.mktemp("wheel")
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "--quiet",
            "--wheel-dir",
            str(out),
            str(src),
        ],
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    (wheel,) = out.glob("rdad-*.whl")
    return wheel


TILED_IMAGE = 128
TILED_TILE = 64


@pytest.fixture(scope="session")
def tiled_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Synthetic parts at 128 px: a tiled model cuts them into 64-px tiles."""
    from rdad.model.synthetic import write_synthetic_dataset

    return write_synthetic_dataset(
        tmp_path_factory.mktemp("tiled-data"), image_size=TILED_IMAGE, num_train=12, num_test=6
    )


def train_tiny_tiled(data: Path, out: Path, **overrides: Any) -> Path:
    """A tiled resnet18 (random teacher, 1 epoch): 64-px tiles, 16 px overlap, mean stitching;
    ``overrides`` change TrainConfig fields (e.g. ``method``)."""
    from rdad.model.train import TrainConfig, train

    settings = {**TINY_TRAIN, "image_size": TILED_TILE, **overrides}
    cfg = TrainConfig(
        data=str(data),
        out=str(out),
        epochs=1,
        tile_size=TILED_TILE,
        tile_overlap=16,
        device="cpu",
        **settings,
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        return train(cfg, progress=False)


@pytest.fixture(scope="session")
def tiny_tiled_checkpoint(tiled_data: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return train_tiny_tiled(tiled_data, tmp_path_factory.mktemp("tiled-run"))


@pytest.fixture(scope="session")
def tiny_tiled_onnx(tiny_tiled_checkpoint: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    from rdad.model.export import export_onnx

    return export_onnx(tiny_tiled_checkpoint, tmp_path_factory.mktemp("tiled") / "tiled.onnx")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """In CI every test must run: a skip would hide a missing dependency, so it fails instead."""
    if os.environ.get("CI") and not items:
        raise pytest.UsageError("CI collected no tests")


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]):  # type: ignore[no-untyped-def]
    outcome = yield
    report = outcome.get_result()
    if os.environ.get("CI") and report.skipped:
        report.outcome = "failed"
        report.longrepr = f"skipped in CI (not allowed): {report.longrepr}"


@pytest.fixture(scope="session")
def int8_pair(synthetic_data: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """(fp32, int8) exports of a tiny model with the stand-in *pretrained* teacher: a random
    teacher gives near-identical scores to every image, so no ranking could survive int8 noise
    (the export would rightly refuse it); a pretrained one spreads them like a real model."""
    from rdad.model.export import export_onnx
    from rdad.model.train import TrainConfig, train

    teacher = shared_path("RDAD_TEACHER_WEIGHTS", SHARED / "teachers" / "resnet18_cifar10.pth")
    settings = {**TINY_TRAIN, "teacher_weights": str(teacher)}
    cfg = TrainConfig(
        data=str(synthetic_data), out=str(tmp_path_factory.mktemp("run-int8")), epochs=2, **settings
    )
    checkpoint = train(cfg, progress=False)
    out = tmp_path_factory.mktemp("models-int8")
    fp32 = export_onnx(checkpoint, out / "fp32.onnx")
    int8 = export_onnx(checkpoint, out / "int8.onnx", "int8", calibration_data=synthetic_data)
    return fp32, int8
