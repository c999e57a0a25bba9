"""``rdad eval``: score an exported ONNX model (through ONNX Runtime) or a checkpoint (through
torch) on an MVTec-layout folder, and report AUROC, AUPRO, F1-max, per-defect AUROC and the
confusion figures at the calibrated threshold.

Evaluating the ONNX file is the default path of the product: what is served is what is scored.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from rdad.metadata import INPUT_NAME, OUTPUT_NAMES, Calibration, read_onnx_metadata

from . import metrics
from .data import DatasetError, list_test_samples, load_images, load_mask

Predict = Callable[[np.ndarray], tuple[np.ndarray, np.ndarray]]


@dataclass
class LoadedModel:
    predict: Predict
    """uint8 ``(B, S, S, 3)`` → maps ``(B, S, S)``, scores ``(B,)``."""
    image_size: int
    calibration: Calibration | None
    description: str


def load_for_eval(path: Path, *, batch_size: int = 16, device: str = "cpu") -> LoadedModel:
    """An ``.onnx`` file runs on ONNX Runtime (CPU here, CUDA if available); anything else is
    read as a torch checkpoint."""
    if path.suffix == ".onnx":
        import onnxruntime as ort

        meta = read_onnx_metadata(path)
        wanted = ["CUDAExecutionProvider", "CPUExecutionProvider"] if device != "cpu" else []
        providers = [p for p in wanted if p in ort.get_available_providers()] or [
            "CPUExecutionProvider"
        ]
        session = ort.InferenceSession(str(path), providers=providers)

        def run_onnx(images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
            maps, scores = [], []
            for i in range(0, len(images), batch_size):
                m, s = session.run(list(OUTPUT_NAMES), {INPUT_NAME: images[i : i + batch_size]})
                maps.append(m)
                scores.append(s)
            return np.concatenate(maps), np.concatenate(scores)

        return LoadedModel(
            run_onnx,
            meta.image_size,
            meta.calibration,
            f"onnx {path.name} ({meta.backbone}, {meta.precision}, teacher {meta.teacher_weights})",
        )

    from .checkpoint import checkpoint_calibration, load_model, predict

    net, ckpt = load_model(path)

    def run_torch(images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        return predict(net, images, batch_size=batch_size, device=device)

    cfg = ckpt["config"]
    return LoadedModel(
        run_torch,
        net.image_size,
        checkpoint_calibration(ckpt),
        f"checkpoint {path.name} ({cfg['backbone']}, teacher {ckpt.get('teacher_source')})",
    )


def evaluate(
    model_path: Path, data: Path, *, batch_size: int = 16, device: str = "cpu"
) -> dict[str, Any]:
    """Run the whole test split of ``data`` and return the report dictionary (JSON-ready)."""
    model = load_for_eval(Path(model_path), batch_size=batch_size, device=device)
    samples = list_test_samples(Path(data))
    loaded = load_images([s.path for s in samples], model.image_size)
    by_path = {s.path: s for s in samples}
    kept = [by_path[p] for p in loaded.paths]
    if not kept:
        raise DatasetError(f"no readable test images under {data}")
    labels = np.array([s.label for s in kept])
    defects = [s.defect for s in kept]
    masks = np.stack([load_mask(s.mask_path, model.image_size) for s in kept])

    t0 = time.perf_counter()
    maps, scores = model.predict(loaded.images)
    seconds = time.perf_counter() - t0

    f1, f1_threshold = metrics.f1_max(labels, scores)
    report: dict[str, Any] = {
        "model": str(model_path),
        "model_description": model.description,
        "data": str(data),
        "num_images": len(kept),
        "num_anomalous": int(labels.sum()),
        "num_skipped": len(loaded.skipped),
        "image_auroc": metrics.image_auroc(labels, scores),
        "pixel_auroc": metrics.pixel_auroc(masks, maps),
        "aupro": metrics.aupro(masks, maps),
        "image_f1_max": f1,
        "image_f1_max_threshold": f1_threshold,
        "per_defect": metrics.per_defect_auroc(defects, labels, scores),
        "threshold_metrics": None,
        "inference_images_per_second": len(kept) / seconds if seconds > 0 else None,
    }
    if model.calibration is not None:
        threshold = model.calibration.image_threshold
        report["threshold_metrics"] = {
            "threshold": threshold,
            **metrics.threshold_metrics(labels, scores, threshold),
        }
    return report


def _fmt(value: Any) -> str:
    return f"{value:.4f}" if isinstance(value, float) else str(value)


def markdown_report(report: dict[str, Any]) -> str:
    lines = [
        f"# rdad evaluation — {report['model_description']}",
        "",
        f"Data: `{report['data']}` — {report['num_images']} images "
        f"({report['num_anomalous']} anomalous, {report['num_skipped']} unreadable skipped)",
        "",
        "| metric | value |",
        "|---|---|",
    ]
    for key in ("image_auroc", "pixel_auroc", "aupro", "image_f1_max"):
        lines.append(f"| {key} | {_fmt(report[key])} |")
    lines += ["", "| defect type | image AUROC |", "|---|---|"]
    lines += [f"| {k} | {_fmt(v)} |" for k, v in report["per_defect"].items()]
    tm = report.get("threshold_metrics")
    if tm:
        lines += [
            "",
            "At the calibrated threshold (good images only):",
            "",
            "| metric | value |",
            "|---|---|",
        ]
        lines += [f"| {k} | {_fmt(v)} |" for k, v in tm.items()]
    return "\n".join(lines) + "\n"


def write_reports(report: dict[str, Any], json_path: Path | None) -> None:
    if json_path is None:
        return
    json_path.parent.mkdir(parents=True, exist_ok=True)
    json_path.write_text(json.dumps(report, indent=2) + "\n")
    json_path.with_suffix(".md").write_text(markdown_report(report))
