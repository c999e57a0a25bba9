"""The embedded demo model's first-run experience: sample parts and ready-to-paste commands, and a
demo model that really passes the good samples and flags the defective ones."""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from pathlib import Path, PurePosixPath

import numpy as np
import pytest
from PIL import Image

from rdad.default_model import (
    DEMO_IMAGE_SIZE,
    SAMPLE_NAMES,
    build_demo_model,
    demo_samples_dir,
    try_it_lines,
)
from rdad.model.synthetic import defective_part, good_part


def test_try_it_lines_point_at_written_samples(tmp_path: Path) -> None:
    models = tmp_path / "models"
    lines = try_it_lines(models, "http://127.0.0.1:8000")
    folder = demo_samples_dir(models)
    assert folder.parent == tmp_path  # beside the model folder, not inside it
    for name in SAMPLE_NAMES:
        with Image.open(folder / f"{name}.png") as im:
            assert im.size == (DEMO_IMAGE_SIZE, DEMO_IMAGE_SIZE) and im.mode == "RGB"
    curls = [line for line in lines if "curl" in line]
    files = [Path(m) for line in curls for m in re.findall(r"file=@(\S+)", line)]
    assert [f.name for f in files] == ["good_1.png", "defect_scratch.png"]
    assert all(f.is_file() for f in files)
    assert any(f"rdad predict --url http://127.0.0.1:8000 {folder}" in line for line in lines)


def test_try_it_lines_work_from_a_new_shell(tmp_path: Path) -> None:
    lines = try_it_lines(tmp_path / "models", "http://127.0.0.1:8000")
    curls = [line for line in lines if "curl" in line]
    # The verdict only: the default answer's base64 heatmap would flood the terminal.
    assert len(curls) == 2
    assert all('"http://127.0.0.1:8000/predict?heatmap=false"' in line for line in curls)
    # A new shell has not activated this environment: the command is given by its full path.
    (predict,) = [line for line in lines if " predict --url " in line]
    command = Path(shlex.split(predict)[0])
    assert command.is_absolute() and command.is_file() and os.access(command, os.X_OK)
    assert command.parent == Path(sys.executable).parent
    done = subprocess.run([command, "--version"], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0 and done.stdout.startswith("rdad ")


def test_demo_build_warns_once_about_its_random_teacher(tmp_path: Path) -> None:
    # The real build, made small (16 parts, 64 px, one epoch), with the command's logging.
    code = (
        "import sys\n"
        "from pathlib import Path\n"
        "import rdad.default_model as demo\n"
        "from rdad.commands._common import setup_logging\n"
        "demo.DEMO_EPOCHS, demo.DEMO_TRAIN_IMAGES, demo.DEMO_IMAGE_SIZE = 1, 16, 64\n"
        "setup_logging()\n"
        "demo.build_demo_model(Path(sys.argv[1]))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code, str(tmp_path / "models")],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr
    output = result.stdout + result.stderr
    said = [line for line in output.splitlines() if "random" in line.lower()]
    assert len(said) == 1, output
    assert "UserWarning" not in output and "py.warnings" not in output


@pytest.mark.slow
def test_demo_model_passes_good_samples_and_flags_defects(tmp_path: Path) -> None:
    from rdad.commands.predict_io import Input
    from rdad.commands.predict_sources import LocalSource

    models = tmp_path / "models"
    model = build_demo_model(models, say=lambda line: None)
    try_it_lines(models, "http://127.0.0.1:8000")
    folder = demo_samples_dir(models)
    inputs = [Input(folder / f"{n}.png", PurePosixPath(f"{n}.png")) for n in SAMPLE_NAMES]
    source = LocalSource(model, batch_size=8)
    results = source.score(inputs, images=False, threshold=None)
    verdicts = {n: r["is_anomalous"] for n, r in zip(SAMPLE_NAMES, results, strict=True)}  # type: ignore[index]
    assert verdicts == {name: name.startswith("defect") for name in SAMPLE_NAMES}

    # Beyond the shipped samples: 10 unseen seeds of each kind. Scratches and chunks are flagged
    # every time; the threshold (99th percentile of 5 held-out parts) lets about one good part in
    # 10-30 through as a false alarm; small dark spots (not shipped) are caught about half the time.
    flagged: dict[str, int] = {"good": 0, "scratch": 0, "chunk": 0, "spot": 0}
    for seed in range(100, 110):
        rng = np.random.default_rng(seed)
        batch = {"good": good_part(rng, DEMO_IMAGE_SIZE)}
        for kind in ("scratch", "chunk", "spot"):
            batch[kind] = defective_part(rng, DEMO_IMAGE_SIZE, kind)[0]
        output = source.engine.run(np.stack(list(batch.values())))
        calibration = source.engine.metadata.calibration
        assert calibration is not None
        for kind, score in zip(batch, output.score, strict=True):
            flagged[kind] += calibration.is_anomalous(float(score))
    assert flagged["good"] <= 2 and flagged["scratch"] == flagged["chunk"] == 10, flagged
    print(f"demo model, 10 unseen parts each, flagged: {flagged}")
