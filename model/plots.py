"""Training figures written beside the checkpoint: the loss curve and the calibration histogram
(held-out good scores with the chosen threshold). matplotlib runs headless (Agg backend)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from rdad.metadata import Calibration


def pyplot() -> Any:
    """``matplotlib.pyplot`` on the Agg backend (no display needed; imported on first use)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def count_axis(axis: Any) -> None:
    """Whole numbers only on a matplotlib axis of counts: a histogram of a few images would
    otherwise be labelled 0.25, 0.5, … images."""
    from matplotlib.ticker import MaxNLocator

    axis.set_major_locator(MaxNLocator(integer=True))


def calibration_figure(holdout_scores: np.ndarray, calibration: Calibration) -> Any:
    """The held-out good scores' histogram with the chosen threshold (a matplotlib figure)."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6, 3.6))
    scores = np.asarray(holdout_scores, dtype=np.float64)
    ax.hist(
        scores, bins=min(30, max(5, scores.size)), color="C2", alpha=0.75, label="held-out good"
    )
    ax.axvline(
        calibration.image_threshold,
        color="black",
        ls="--",
        label=f"threshold {calibration.image_threshold:.4g} "
        f"(p{calibration.threshold_percentile:g})",
    )
    ax.set_xlabel("image score (raw)")
    ax.set_ylabel("images")
    count_axis(ax.yaxis)
    ax.set_title(f"Calibration on {scores.size} held-out good images")
    ax.legend()
    fig.tight_layout()
    return fig


def write_training_plots(
    out: Path, history: list[dict[str, Any]], holdout_scores: np.ndarray, calibration: Calibration
) -> list[Path]:
    """``out/loss.png`` (loss per epoch) and ``out/calibration.png``; returns the paths."""
    plt = pyplot()
    out.mkdir(parents=True, exist_ok=True)
    written = []
    if history:
        fig, ax = plt.subplots(figsize=(6, 3.6))
        epochs = [h["epoch"] for h in history]
        ax.plot(epochs, [h["loss"] for h in history], marker="o" if len(epochs) < 30 else None)
        ax.set_xlabel("epoch")
        count_axis(ax.xaxis)
        ax.set_ylabel("distillation loss (1 − cosine)")
        ax.set_title("Training loss")
        ax.grid(alpha=0.3)
        fig.tight_layout()
        fig.savefig(out / "loss.png", dpi=100)
        plt.close(fig)
        written.append(out / "loss.png")
    fig = calibration_figure(holdout_scores, calibration)
    fig.savefig(out / "calibration.png", dpi=100)
    plt.close(fig)
    written.append(out / "calibration.png")
    return written
