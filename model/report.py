"""``rdad eval --report DIR``: an HTML page with matplotlib figures of one evaluation.

``DIR/index.html`` shows the metrics table and, as PNGs beside it: image and pixel ROC curves,
the PRO curve, good vs anomalous score histograms with the calibrated threshold, per-defect AUROC
bars, the confusion matrix at the threshold, and the best and worst examples (image, ground truth,
heatmap overlay).
"""

from __future__ import annotations

import html
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from . import metrics
from .plots import count_axis, pyplot

PIXEL_SAMPLE = 2_000_000
"""Pixels drawn (seeded) for the pixel ROC *plot*; the AUROC printed is computed on all pixels."""


@dataclass
class EvalArrays:
    """Everything one evaluation scored, in test-split order."""

    images: np.ndarray
    """uint8 ``(N, S, S, 3)``."""
    masks: np.ndarray
    """bool ``(N, S, S)`` ground truth."""
    maps: np.ndarray
    """float32 ``(N, S, S)`` anomaly maps."""
    scores: np.ndarray
    """float ``(N,)`` image scores."""
    labels: np.ndarray
    """int ``(N,)``: 1 anomalous, 0 good."""
    defects: list[str]
    paths: list[Path]
    image_threshold: float | None
    pixel_threshold: float | None


def _roc_figure(arrays: EvalArrays, report: dict[str, Any], path: Path) -> None:
    from sklearn.metrics import roc_curve

    plt = pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(10, 4.4))
    fpr, tpr, _ = roc_curve(arrays.labels, arrays.scores)
    axes[0].plot(fpr, tpr, color="C0", lw=2)
    axes[0].set_title(f"Image ROC — AUROC {report['image_auroc']:.4f}")
    y = arrays.masks.ravel()
    a = arrays.maps.ravel()
    if y.size > PIXEL_SAMPLE:
        pick = np.random.default_rng(0).choice(y.size, PIXEL_SAMPLE, replace=False)
        y, a = y[pick], a[pick]
    if y.any() and not y.all():
        fpr, tpr, _ = roc_curve(y, a)
        axes[1].plot(fpr, tpr, color="C1", lw=2)
    axes[1].set_title(f"Pixel ROC — AUROC {report['pixel_auroc']:.4f}")
    for ax in axes:
        ax.plot([0, 1], [0, 1], ls=":", color="grey")
        ax.set_xlabel("false positive rate")
        ax.set_ylabel("true positive rate")
        ax.set_xlim(0, 1)
        ax.set_ylim(0, 1.01)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def _pro_figure(arrays: EvalArrays, report: dict[str, Any], path: Path) -> None:
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(5.5, 4.4))
    fprs, pros = metrics.pro_curve(arrays.masks, arrays.maps, num_thresholds=400)
    if fprs.size:
        ax.plot(fprs, pros, color="C2", lw=2)
    ax.axvspan(0, 0.3, color="C2", alpha=0.08, label="integrated: FPR ≤ 0.3")
    ax.set_title(f"PRO curve — AUPRO@0.3 {report['aupro']:.4f}")
    ax.set_xlabel("false positive rate (pixels of good regions)")
    ax.set_ylabel("per-region overlap")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1.01)
    ax.legend(loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def histogram_figure(arrays: EvalArrays) -> Any:
    """Image scores of good and defective images, threshold dashed (a matplotlib figure)."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6.5, 4.2))
    bins = np.linspace(float(arrays.scores.min()), float(arrays.scores.max()), 40)
    good = arrays.scores[arrays.labels == 0]
    bad = arrays.scores[arrays.labels == 1]
    ax.hist(good, bins=bins, alpha=0.6, color="C2", label=f"good ({good.size})")
    ax.hist(bad, bins=bins, alpha=0.6, color="C3", label=f"anomalous ({bad.size})")
    if arrays.image_threshold is not None:
        ax.axvline(arrays.image_threshold, color="black", ls="--", lw=1.5, label="threshold")
    ax.set_xlabel("image score (raw)")
    ax.set_ylabel("images")
    count_axis(ax.yaxis)
    ax.set_title("Image scores, good vs anomalous")
    ax.legend()
    fig.tight_layout()
    return fig


def _per_defect_figure(report: dict[str, Any], path: Path) -> None:
    plt = pyplot()
    items = sorted(report["per_defect"].items(), key=lambda kv: kv[1])
    fig, ax = plt.subplots(figsize=(6.5, 0.5 * len(items) + 1.4))
    names = [k for k, _ in items]
    values = [v for _, v in items]
    bars = ax.barh(names, values, color="C0")
    for bar, value in zip(bars, values, strict=True):
        ax.text(
            min(value, 0.98),
            bar.get_y() + bar.get_height() / 2,
            f"{value:.3f}",
            ha="right",
            va="center",
            color="white",
            fontsize=9,
        )
    ax.set_xlim(0, 1)
    ax.set_xlabel("image AUROC (this defect vs all good images)")
    ax.set_title("Per-defect image AUROC")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def _confusion_figure(arrays: EvalArrays, path: Path) -> None:
    plt = pyplot()
    assert arrays.image_threshold is not None
    predicted = arrays.scores > arrays.image_threshold
    truth = arrays.labels == 1
    counts = np.array(
        [
            [np.sum(~truth & ~predicted), np.sum(~truth & predicted)],
            [np.sum(truth & ~predicted), np.sum(truth & predicted)],
        ]
    )
    fig, ax = plt.subplots(figsize=(4.6, 4.0))
    ax.imshow(counts, cmap="Blues")
    for (row, col), value in np.ndenumerate(counts):
        colour = "white" if value > counts.max() / 2 else "black"
        ax.text(col, row, str(value), ha="center", va="center", fontsize=16, color=colour)
    ax.set_xticks([0, 1], ["normal", "anomalous"])
    ax.set_yticks([0, 1], ["good", "defective"])
    ax.set_xlabel("verdict at the calibrated threshold")
    ax.set_ylabel("ground truth")
    ax.set_title(f"Confusion matrix (threshold {arrays.image_threshold:.4g})")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def pick_examples(arrays: EvalArrays, per_group: int = 2) -> list[tuple[str, int]]:
    """``(caption, index)`` pairs: the worst good and defective images (highest-scoring good,
    lowest-scoring defective) and the best ones (the clearest of each)."""
    good = np.flatnonzero(arrays.labels == 0)
    bad = np.flatnonzero(arrays.labels == 1)
    good_sorted = good[np.argsort(arrays.scores[good])]
    bad_sorted = bad[np.argsort(arrays.scores[bad])]
    groups = [
        ("worst good", good_sorted[::-1][:per_group]),
        ("worst defective", bad_sorted[:per_group]),
        ("best good", good_sorted[:per_group]),
        ("best defective", bad_sorted[::-1][:per_group]),
    ]
    chosen: list[tuple[str, int]] = []
    for caption, indices in groups:
        chosen += [(caption, int(i)) for i in indices if int(i) not in {c[1] for c in chosen}]
    return chosen


def example_title(arrays: EvalArrays, caption: str, index: int) -> str:
    """The title over one example: which image, its score, and the verdict beside the truth,
    each named, so that a missed defect reads as a miss (a lone ✓ for "judged normal" read as
    "correct")."""
    name = f"{arrays.defects[index]}/{arrays.paths[index].name}"
    lines = [caption, name, f"score {arrays.scores[index]:.3g}"]
    truth = "defective" if arrays.labels[index] == 1 else "good"
    if arrays.image_threshold is None:
        lines.append(f"truth {truth}")
    else:
        flagged = bool(arrays.scores[index] > arrays.image_threshold)
        outcome = {
            (True, "defective"): "✓ caught",
            (False, "good"): "✓ correct",
            (True, "good"): "✗ false alarm",
            (False, "defective"): "✗ missed",
        }[(flagged, truth)]
        lines += [f"verdict {'anomalous' if flagged else 'normal'}", f"truth {truth}: {outcome}"]
    return "\n".join(lines)


def _examples_figure(arrays: EvalArrays, path: Path) -> None:
    plt = pyplot()
    examples = pick_examples(arrays)
    fig, axes = plt.subplots(3, len(examples), figsize=(2.1 * len(examples), 7.6), squeeze=False)
    low, high = float(np.percentile(arrays.maps, 1)), float(arrays.maps.max())
    for col, (caption, index) in enumerate(examples):
        axes[0, col].imshow(arrays.images[index])
        axes[0, col].set_title(example_title(arrays, caption, index), fontsize=8)
        axes[1, col].imshow(arrays.masks[index], cmap="gray", vmin=0, vmax=1)
        axes[2, col].imshow(arrays.images[index])
        axes[2, col].imshow(arrays.maps[index], cmap="jet", alpha=0.5, vmin=low, vmax=high)
        for row in range(3):
            axes[row, col].set_xticks([])
            axes[row, col].set_yticks([])
    for row, label in enumerate(("image", "ground truth", "heatmap")):
        axes[row, 0].set_ylabel(label)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


FIGURES = (
    ("roc.png", "Image-level and pixel-level ROC curves."),
    ("pro.png", "Per-region overlap against the false positive rate."),
    (
        "histogram.png",
        "Image scores of good and defective test images, calibrated threshold dashed.",
    ),
    ("per_defect.png", "Image AUROC of each defect type against all good test images."),
    ("confusion.png", "Verdicts at the calibrated image threshold."),
    (
        "examples.png",
        "Worst and best examples: image (verdict at the calibrated threshold beside the truth), "
        "ground truth, heatmap overlay.",
    ),
)


def write_html_report(report: dict[str, Any], arrays: EvalArrays, out: Path) -> Path:
    """Write ``out/index.html`` and its figures; returns the HTML path."""
    out.mkdir(parents=True, exist_ok=True)
    _roc_figure(arrays, report, out / "roc.png")
    _pro_figure(arrays, report, out / "pro.png")
    histogram = histogram_figure(arrays)
    histogram.savefig(out / "histogram.png", dpi=100)
    pyplot().close(histogram)
    _per_defect_figure(report, out / "per_defect.png")
    figures = [f for f in FIGURES if f[0] != "confusion.png" or arrays.image_threshold is not None]
    if arrays.image_threshold is not None:
        _confusion_figure(arrays, out / "confusion.png")
    _examples_figure(arrays, out / "examples.png")
    esc = html.escape
    rows = "".join(
        f"<tr><td>{esc(key)}</td><td>{report[key]:.4f}</td></tr>"
        for key in ("image_auroc", "pixel_auroc", "aupro", "image_f1_max")
    )
    threshold_rows = ""
    if report.get("threshold_metrics"):
        threshold_rows = "".join(
            f"<tr><td>{esc(k)}</td><td>{v:.4g}</td></tr>"
            for k, v in report["threshold_metrics"].items()
        )
        threshold_rows = f"<h3>At the calibrated threshold</h3><table>{threshold_rows}</table>"
    images = "".join(
        f'<figure><img src="{name}" alt="{esc(caption)}"><figcaption>{esc(caption)}'
        "</figcaption></figure>"
        for name, caption in figures
    )
    page = f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>rdad evaluation</title>
<style>
body {{ font: 14px/1.45 system-ui, sans-serif; margin: 24px; color: #1d2330; }}
table {{ border-collapse: collapse; margin: 8px 24px 16px 0; display: inline-table; }}
td {{ border: 1px solid #d8dee6; padding: 3px 10px; font-variant-numeric: tabular-nums; }}
figure {{ display: inline-block; margin: 8px; vertical-align: top; }}
figure img {{ max-width: 100%; border: 1px solid #e3e7ee; }}
figcaption {{ color: #5f6b7a; font-size: 12px; }}
</style></head><body>
<h1>rdad evaluation</h1>
<p>{esc(report["model_description"])}<br>Data: <code>{esc(report["data"])}</code> —
{report["num_images"]} images ({report["num_anomalous"]} anomalous,
{report["num_skipped"]} unreadable skipped)</p>
<div><table>{rows}</table>{threshold_rows}</div>
{images}
</body></html>
"""
    target = out / "index.html"
    target.write_text(page, encoding="utf-8")
    return target
