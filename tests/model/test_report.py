"""``rdad eval --report`` and the training figures: files, content, and the page in chromium."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from rdad.cli import main
from rdad.metadata import Calibration
from rdad.model.plots import calibration_figure, pyplot
from rdad.model.report import (
    FIGURES,
    EvalArrays,
    example_title,
    histogram_figure,
    pick_examples,
)
from tests.browser import artifact_dir, browser


def test_training_writes_loss_and_calibration_figures(tiny_checkpoint: Path) -> None:
    for name in ("loss.png", "calibration.png"):
        with Image.open(tiny_checkpoint.parent / name) as im:
            assert im.format == "PNG" and im.width >= 300 and im.height >= 200
            # Not a blank canvas: a plot has many distinct colours.
            assert len(np.unique(np.asarray(im.convert("RGB")).reshape(-1, 3), axis=0)) > 20


def test_eval_report_renders_every_figure(tiny_onnx: Path, synthetic_data: Path, tmp_path: Path):
    out = tmp_path / "report"
    assert (
        main(
            ["eval", "--model", str(tiny_onnx), "--data", str(synthetic_data), "--report", str(out)]
        )
        == 0
    )
    page = out / "index.html"
    text = page.read_text()
    for name, _ in FIGURES:
        assert f'src="{name}"' in text
        with Image.open(out / name) as im:
            assert len(np.unique(np.asarray(im.convert("RGB")).reshape(-1, 3), axis=0)) > 20, name
    with browser(tmp_path) as tab:
        tab.goto(page.as_uri())
        sizes = tab.locator("figure img").evaluate_all(
            "imgs => imgs.map(i => [i.complete, i.naturalWidth])"
        )
        assert len(sizes) == len(FIGURES) and all(ok and w > 100 for ok, w in sizes)
        assert "image_auroc" in tab.inner_text("table")
        tab.screenshot(path=str(artifact_dir() / "eval-report.png"), full_page=True)


def six_images(threshold: float | None = 0.4) -> EvalArrays:
    """Three good images (scores 0.1, 0.9, 0.3) and three cracked ones (0.2, 0.8, 0.5)."""
    return EvalArrays(
        images=np.zeros((6, 4, 4, 3), np.uint8),
        masks=np.zeros((6, 4, 4), bool),
        maps=np.zeros((6, 4, 4), np.float32),
        scores=np.array([0.1, 0.9, 0.3, 0.2, 0.8, 0.5]),
        labels=np.array([0, 0, 0, 1, 1, 1]),
        defects=["good"] * 3 + ["crack"] * 3,
        paths=[Path(f"{i}.png") for i in range(6)],
        image_threshold=threshold,
        pixel_threshold=0.5,
    )


def test_examples_are_the_extremes() -> None:
    arrays = six_images()
    chosen = dict((i, c) for c, i in pick_examples(arrays, per_group=1))
    assert chosen[1] == "worst good"  # the good image with the highest score
    assert chosen[3] == "worst defective"  # the defective one with the lowest score
    assert chosen[0] == "best good" and chosen[4] == "best defective"


def test_example_titles_show_the_verdict_beside_the_truth() -> None:
    arrays = six_images(threshold=0.4)
    missed = example_title(arrays, "worst defective", 3)  # a crack scored 0.2: judged normal
    assert missed.splitlines()[1:] == [
        "crack/3.png",
        "score 0.2",
        "verdict normal",
        "truth defective: ✗ missed",
    ]
    assert "✓" not in missed
    assert example_title(arrays, "worst good", 1).endswith("truth good: ✗ false alarm")
    assert example_title(arrays, "best good", 0).endswith("truth good: ✓ correct")
    assert example_title(arrays, "best defective", 4).endswith("truth defective: ✓ caught")
    uncalibrated = example_title(six_images(threshold=None), "worst defective", 3)
    assert uncalibrated.endswith("truth defective") and "verdict" not in uncalibrated


def y_ticks(figure: Any) -> np.ndarray:
    (axes,) = figure.axes
    figure.canvas.draw()
    low, high = axes.get_ylim()
    ticks = np.asarray(axes.get_yticks())
    pyplot().close(figure)
    return ticks[(ticks >= low) & (ticks <= high)]


def test_histograms_count_images_in_whole_numbers() -> None:
    # A handful of images, one per bin: matplotlib alone would label 0.2, 0.4, ... images.
    ticks = y_ticks(histogram_figure(six_images()))
    assert len(ticks) >= 2 and np.array_equal(ticks, np.round(ticks)), ticks
    calibration = Calibration(
        image_threshold=0.35,
        pixel_threshold=0.5,
        score_scale=0.1,
        threshold_percentile=99.0,
        pixel_threshold_percentile=99.9,
        num_images=4,
    )
    ticks = y_ticks(calibration_figure(np.array([0.1, 0.2, 0.3, 0.35]), calibration))
    assert len(ticks) >= 2 and np.array_equal(ticks, np.round(ticks)), ticks
