"""The embedded demo model that ``rdad serve`` builds when it finds no model to serve.

A small resnet18 Reverse Distillation model, trained for a few epochs on CPU on the built-in
synthetic parts (:mod:`rdad.model.synthetic`) with a *random* teacher, calibrated and exported to
``MODEL_DIR/demo.onnx``. It exists so that one command gives a working service on a fresh machine;
it knows nothing about real products. Needs the ``train`` extra (torch), imported only here and
only when a build is needed: the serving image has no torch and must be given a model folder.
"""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
import time
import warnings
from collections.abc import Callable
from pathlib import Path

from rdad.errors import CommandError

DEMO_NAME = "demo"
DEMO_IMAGE_SIZE = 128
DEMO_EPOCHS = 4
DEMO_TRAIN_IMAGES = 64
"""Synthetic good parts generated; a quarter are held out to calibrate (see build_demo_model)."""
DEMO_HOLDOUT_FRACTION = 0.25
DEMO_SEED = 0
DEMO_SAMPLE_SEED = 2026
"""Seed of the sample parts written for the user: never the training seed, so they are unseen."""
SAMPLE_NAMES = ("good_1", "good_2", "defect_scratch", "defect_chunk")
"""No "spot" sample: the random-teacher demo model misses small dark spots about half the time
(scratches and chunks it flags every time; the slow demo test measures all three)."""


def demo_model_path(model_dir: Path) -> Path:
    return model_dir / f"{DEMO_NAME}.onnx"


def demo_samples_dir(model_dir: Path) -> Path:
    """Beside the model folder (``~/.cache/rdad/demo-samples``), not in it: it is no model."""
    return model_dir.parent / "demo-samples"


def write_demo_samples(folder: Path) -> dict[str, Path]:
    """Write good and defective synthetic parts (PNG, unseen in training); name → path."""
    import cv2
    import numpy as np

    from rdad.model.synthetic import defective_part, good_part

    rng = np.random.default_rng(DEMO_SAMPLE_SEED)
    folder.mkdir(parents=True, exist_ok=True)
    written = {}
    for name in SAMPLE_NAMES:
        if name.startswith("good"):
            image = good_part(rng, DEMO_IMAGE_SIZE)
        else:
            image, _ = defective_part(rng, DEMO_IMAGE_SIZE, name.removeprefix("defect_"))
        path = folder / f"{name}.png"
        if not cv2.imwrite(str(path), cv2.cvtColor(image, cv2.COLOR_RGB2BGR)):
            raise CommandError(f"cannot write the demo sample {path}")
        written[name] = path
    return written


def rdad_command() -> str:
    """How to run this very ``rdad`` from any shell: the script beside this Python (a virtual
    environment's ``bin/rdad``) by its full path, since a new shell has not activated that
    environment and would answer ``rdad: command not found``."""
    script = shutil.which("rdad", path=str(Path(sys.executable).parent))
    return str(Path(script).absolute()) if script else f"{sys.executable} -m rdad"


def try_it_lines(model_dir: Path, url: str) -> list[str]:
    """Ready-to-paste commands scoring one good and one defective demo sample (written if
    missing): the first thing a new user sees is a good part passing and a bad one flagged."""
    folder = demo_samples_dir(model_dir)
    samples = {name: folder / f"{name}.png" for name in SAMPLE_NAMES}
    if not all(p.is_file() for p in samples.values()):
        samples = write_demo_samples(folder)
    good, bad = samples["good_1"], samples["defect_scratch"]
    # heatmap=false: the verdict alone; the default answer carries ~10 KB of base64 PNG, which
    # would flood the terminal. The URL is quoted for shells (zsh) that glob the "?".
    predict = f'"{url}/predict?heatmap=false"'
    return [
        f"demo sample parts (good and defective) in {folder}; from another shell, try:",
        f"  curl -F file=@{good} {predict}   # a good part: is_anomalous false",
        f"  curl -F file=@{bad} {predict}   # a scratch: is_anomalous true",
        f"  {rdad_command()} predict --url {url} {folder}",
        f"  or open {url}/ in a browser and drop the files there",
    ]


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
            # Synthetic parts cost nothing: calibrate on 16 held-out parts instead of the default
            # 10 % (5), so the 99th-percentile threshold is not set by one or two lucky parts.
            holdout_fraction=DEMO_HOLDOUT_FRACTION,
        )
        with warnings.catch_warnings():
            # Said above, in the demo's own words: the teacher's warning would repeat it.
            warnings.filterwarnings("ignore", message=r"teacher \S+ uses RANDOM weights")
            checkpoint = train(config, progress=False)
        staging = model_dir / f".{DEMO_NAME}.{os.getpid()}.onnx.tmp"
        try:
            export_onnx(checkpoint, staging)
            os.replace(staging, target)
        finally:
            staging.unlink(missing_ok=True)
    say(f"demo model written to {target} in {time.perf_counter() - start:.0f} s")
    return target
