"""The embedded demo model that ``rdad serve`` builds when it finds no model to serve.

A small resnet18 Reverse Distillation model, trained for a few epochs on CPU on the built-in
synthetic parts (:mod:`rdad.model.synthetic`) with a *random* teacher, calibrated and exported to
``MODEL_DIR/demo.onnx``. It exists so that one command gives a working service on a fresh machine;
it knows nothing about real products. Needs the ``train`` extra (torch), imported only here and
only when a build is needed: the serving image has no torch and must be given a model folder.
"""

from __future__ import annotations

import os
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from rdad.errors import CommandError

DEMO_NAME = "demo"
DEMO_IMAGE_SIZE = 128
DEMO_EPOCHS = 4
DEMO_TRAIN_IMAGES = 48
DEMO_SEED = 0


def demo_model_path(model_dir: Path) -> Path:
    return model_dir / f"{DEMO_NAME}.onnx"


def build_demo_model(model_dir: Path, *, say: Callable[[str], None] = print) -> Path:
    """Train and export the demo model into ``model_dir``; returns the ONNX path.

    The file appears atomically (written beside, then renamed), so a crashed build leaves no
    half-written model behind and two concurrent starts cannot serve a torn file.
    """
    try:
        import torch  # noqa: F401  (only to fail early with a clear message)
    except ImportError:
        raise CommandError(
            "no model to serve and torch is not installed to build the demo model: give "
            "--model-dir with NAME.onnx files, or install the train extra "
            "(pip install -e '.[train]')"
        ) from None
    from rdad.model.export import export_onnx
    from rdad.model.synthetic import write_synthetic_dataset
    from rdad.model.train import TrainConfig, train

    model_dir.mkdir(parents=True, exist_ok=True)
    target = demo_model_path(model_dir)
    say(
        f"building the embedded demo model: resnet18, {DEMO_IMAGE_SIZE}px, {DEMO_EPOCHS} epochs on "
        f"{DEMO_TRAIN_IMAGES} synthetic images, on CPU (a few minutes, once; cached)"
    )
    say(
        "WARNING: the demo model uses teacher_weights='random' (no pretrained teacher): it is fine "
        "for the synthetic demo parts and useless on real images. Train a real model with "
        "`rdad train --teacher-weights imagenet|PATH` and serve it with --model-dir."
    )
    start = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="rdad-demo-") as tmp:
        data = write_synthetic_dataset(
            Path(tmp) / "data",
            image_size=DEMO_IMAGE_SIZE,
            num_train=DEMO_TRAIN_IMAGES,
            num_test=4,
            seed=DEMO_SEED,
        )
        config = TrainConfig(
            data=str(data),
            out=str(Path(tmp) / "run"),
            backbone="resnet18",
            image_size=DEMO_IMAGE_SIZE,
            epochs=DEMO_EPOCHS,
            batch_size=8,
            teacher_weights="random",
            seed=DEMO_SEED,
            device="cpu",
        )
        checkpoint = train(config, progress=False)
        staging = model_dir / f".{DEMO_NAME}.{os.getpid()}.onnx.tmp"
        try:
            export_onnx(checkpoint, staging)
            os.replace(staging, target)
        finally:
            staging.unlink(missing_ok=True)
    say(f"demo model written to {target} in {time.perf_counter() - start:.0f} s")
    return target
