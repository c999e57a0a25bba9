"""``rdad eval``: score an exported ONNX model (through ONNX Runtime) or a checkpoint (through
torch) on an MVTec-layout folder, and report AUROC, AUPRO, F1-max, per-defect AUROC and the
confusion figures at the calibrated threshold.

Evaluating the ONNX file is the default path of the product: what is served is what is scored.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from rdad.metadata import INPUT_NAME, OUTPUT_NAMES, Calibration, read_onnx_metadata
from rdad.tiling import Tiling

from . import metrics
from .data import DatasetError, list_test_samples, load_images, load_mask
from .report import EvalArrays
from .scoring import score_images

Predict = Callable[[np.ndarray], tuple[np.ndarray, np.ndarray]]


@dataclass
class LoadedModel:
    predict: Predict
    """uint8 ``(B, S, S, 3)`` → maps ``(B, S, S)``, scores ``(B,)``."""
    image_size: int
    calibration: Calibration | None
    description: str
    tiling: Tiling | None = None
    """Tiled models: images are cut into ``image_size`` tiles and the maps stitched."""


def _openvino_predict(compiled: Any, batch_size: int) -> Predict:
    request = compiled.create_infer_request()
    outputs = [compiled.output(name) for name in OUTPUT_NAMES]

    def run(images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        maps, scores = [], []
        for i in range(0, len(images), batch_size):
            result = request.infer({INPUT_NAME: images[i : i + batch_size]})
            maps.append(np.array(result[outputs[0]]))
            scores.append(np.array(result[outputs[1]]))
        return np.concatenate(maps), np.concatenate(scores)

    return run


def load_for_eval(
    path: Path,
    *,
    batch_size: int = 16,
    device: str = "cpu",
    runtime: str = "onnxruntime",
    cpu_precision: str = "fp32",
) -> LoadedModel:
    """An ``.onnx`` file runs on ONNX Runtime (CPU here, CUDA if available) or, with
    ``runtime="openvino"``, on OpenVINO's CPU plugin compiled as the service compiles it (fp32 and
    int8 files alike, at ``cpu_precision`` with the service's bf16 checks:
    :func:`rdad.openvino_runtime.compile_at`); anything else is read as a torch checkpoint."""
    from rdad.openvino_runtime import FP32, CpuPrecisionError

    if path.suffix == ".onnx" and runtime == "openvino":
        from rdad.openvino_runtime import compile_at

        meta = read_onnx_metadata(path)
        built = compile_at(path, cpu_precision, meta.precision, meta.image_size)
        return LoadedModel(
            _openvino_predict(built.compiled, batch_size),
            meta.image_size,
            meta.calibration,
            f"onnx {path.name} ({meta.backbone}, {meta.precision} graph, OpenVINO CPU running "
            f"{built.precision}: {built.reason}; teacher {meta.teacher_weights})",
            meta.tiling,
        )
    if cpu_precision != FP32:
        # ONNX Runtime and torch run the graph's own precision: saying so beats ignoring it.
        raise CpuPrecisionError(
            f"CPU precision {cpu_precision} runs on OpenVINO only (--runtime openvino)"
        )
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
            meta.tiling,
        )

    from .checkpoint import TrainConfig, checkpoint_calibration, load_model, predict
    from .tiles import config_tiling

    net, ckpt = load_model(path)

    def run_torch(images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        return predict(net, images, batch_size=batch_size, device=device)

    cfg = ckpt["config"]
    return LoadedModel(
        run_torch,
        net.image_size,
        checkpoint_calibration(ckpt),
        f"checkpoint {path.name} ({cfg['backbone']}, teacher {ckpt.get('teacher_source')})",
        config_tiling(TrainConfig.from_dict(cfg)),
    )


def evaluate(
    model_path: Path,
    data: Path,
    *,
    batch_size: int = 16,
    device: str = "cpu",
    pixel_size: int | None = None,
    runtime: str = "onnxruntime",
    cpu_precision: str = "fp32",
    collect: Callable[[EvalArrays], None] | None = None,
) -> dict[str, Any]:
    """Run the whole test split of ``data`` and return the report dictionary (JSON-ready).

    Pixel metrics are computed on a ``pixel_size`` square grid (default: the model input size).
    ``collect`` receives the images, masks, maps and scores on that grid (for the HTML report).
    """
    model = load_for_eval(
        Path(model_path),
        batch_size=batch_size,
        device=device,
        runtime=runtime,
        cpu_precision=cpu_precision,
    )
    samples = list_test_samples(Path(data))
    grid = pixel_size or model.image_size
    scored = score_images(
        model.predict,
        [s.path for s in samples],
        image_size=model.image_size,
        tiling=model.tiling,
        grid=grid,
        calibration=model.calibration,
        batch_size=batch_size,
    )
    by_path = {s.path: s for s in samples}
    kept = [by_path[p] for p in scored.paths]
    if not kept:
        raise DatasetError(f"no readable test images under {data}")
    labels = np.array([s.label for s in kept])
    defects = [s.defect for s in kept]
    masks = np.stack([load_mask(s.mask_path, grid) for s in kept])
    maps, scores, seconds = scored.maps, scored.scores, scored.seconds

    f1, f1_threshold = metrics.f1_max(labels, scores)
    report: dict[str, Any] = {
        "model": str(model_path),
        "model_description": model.description,
        "data": str(data),
        "num_images": len(kept),
        "num_anomalous": int(labels.sum()),
        "num_skipped": len(scored.skipped),
        "tiling": model.tiling.to_dict() if model.tiling else None,
        "pixel_metrics_size": grid,
        "image_auroc": metrics.image_auroc(labels, scores),
        "pixel_auroc": metrics.pixel_auroc(masks, maps),
        "aupro": metrics.aupro(masks, maps),
        "image_f1_max": f1,
        "image_f1_max_threshold": f1_threshold,
        "per_defect": metrics.per_defect_auroc(defects, labels, scores),
        "threshold_metrics": None,
        "inference_images_per_second": len(kept) / seconds if seconds > 0 else None,
    }
    if collect is not None:
        cal = model.calibration
        collect(
            EvalArrays(
                # Decoded again for the pictures only, on the metrics grid.
                images=load_images([s.path for s in kept], grid).images,
                masks=masks,
                maps=maps,
                scores=scores,
                labels=labels,
                defects=defects,
                paths=[s.path for s in kept],
                image_threshold=None if cal is None else cal.image_threshold,
                pixel_threshold=None if cal is None else cal.pixel_threshold,
            )
        )
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
