"""Static int8 quantisation of an exported fp32 RD graph (QDQ), and the int8 parity check.

What is quantised: every ``Conv`` / ``ConvTranspose`` of the teacher, bottleneck and student
(weights int8 per output channel, activations uint8 — the U8S8 pair that x86 int8 kernels and
OpenVINO's CPU plugin run natively). What stays fp32: the input cast/normalisation and the whole
anomaly-map tail (per-scale cosine distance, bilinear upsampling, the Gaussian blur — which is a
``Conv`` too — and the max). The tail is found by the exporter's module scope: every node under
``/net/anomaly_map/`` is excluded, so the blur's convolutions are never quantised.

Calibration: ``count`` good images (default :data:`DEFAULT_CALIBRATION_COUNT`) from a folder,
never the images the parity check uses; activation ranges by min/max.

Parity (int8 against the fp32 graph it came from, both through ONNX Runtime on CPU): the
held-out good images of the run plus the same images with synthetic defects painted in (scratch,
spot, chunk — so that scores spread and a rank correlation means something). Accepted when

* Spearman rank correlation of the image scores ≥ :data:`INT8_MIN_SCORE_RANK_CORR` (0.90): the
  order of parts, which is all AUROC and a threshold depend on, is kept;
* mean |map_int8 − map_fp32| / mean |map_fp32| ≤ :data:`INT8_MAX_MAP_ERROR` (0.10): the heatmap
  is the same picture within 10 % of its typical level.

The comparison itself is :func:`rdad.parity.compare`, shared with the bf16 check at load.

int8 cannot meet the fp32 tolerance of 1e-3 absolute (activations keep ~2 significant digits
through ~60 layers); these bounds judge what a user sees instead: the ranking and the heatmap.
"""

from __future__ import annotations

import json
import logging
import tempfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx

from rdad.metadata import INPUT_NAME, METADATA_KEY, OUTPUT_NAMES
from rdad.parity import INT8_BOUNDS, Bounds, Parity, compare

from .data import load_images, parity_images
from .synthetic import DEFECTS, add_defect

log = logging.getLogger(__name__)

DEFAULT_CALIBRATION_COUNT = 32
INT8_MIN_SCORE_RANK_CORR = INT8_BOUNDS.min_score_rank_corr
INT8_MAX_MAP_ERROR = INT8_BOUNDS.max_map_error
TAIL_SCOPE = "/anomaly_map/"
QUANTISED_OPS = ("Conv", "ConvTranspose")


class QuantizationError(RuntimeError):
    """int8 export refused (no calibration images, parity outside tolerance)."""


def tail_nodes(model: onnx.ModelProto) -> list[str]:
    """Names of the anomaly-map nodes (kept fp32)."""
    return [n.name for n in model.graph.node if TAIL_SCOPE in n.name]


def calibration_images(
    folder: Path, image_size: int, count: int, exclude: Sequence[Path] = ()
) -> tuple[np.ndarray, list[Path]]:
    """Up to ``count`` good images from ``folder`` (MVTec layout: its ``train/good``), skipping
    ``exclude`` (the parity images); spread evenly over the sorted list, deterministic."""
    from .data import good_training_images

    folder = Path(folder)
    if not folder.is_dir():
        raise QuantizationError(f"calibration folder {folder} does not exist")
    excluded = {p.resolve() for p in exclude}
    paths = [p for p in good_training_images(folder) if p.resolve() not in excluded]
    if not paths:
        raise QuantizationError(f"no good images for calibration under {folder}")
    if len(paths) > count:
        picks = np.linspace(0, len(paths) - 1, count).round().astype(int)
        paths = [paths[i] for i in picks]
    loaded = load_images(paths, image_size)
    if len(loaded.images) == 0:
        raise QuantizationError(f"none of the calibration images under {folder} could be read")
    return loaded.images, loaded.paths


def parity_set(good: np.ndarray, seed: int = 0) -> np.ndarray:
    """``good`` images followed by the same images with one synthetic defect each."""
    rng = np.random.default_rng(seed)
    defective = [add_defect(rng, img, DEFECTS[i % len(DEFECTS)])[0] for i, img in enumerate(good)]
    return np.concatenate([good, np.stack(defective)])


class _Reader:
    """onnxruntime's CalibrationDataReader protocol over uint8 ``(N, S, S, 3)`` images."""

    def __init__(self, images: np.ndarray, batch_size: int = 4) -> None:
        self._batches: Iterator[np.ndarray] = iter(
            [images[i : i + batch_size] for i in range(0, len(images), batch_size)]
        )

    def get_next(self) -> dict[str, np.ndarray] | None:
        batch = next(self._batches, None)
        return None if batch is None else {INPUT_NAME: batch}


def quantize_int8(fp32_path: Path, out: Path, calibration: np.ndarray) -> None:
    """Write the QDQ int8 graph of ``fp32_path`` to ``out``; metadata props are kept."""
    from onnxruntime.quantization import (
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quantize_static,
    )
    from onnxruntime.quantization.shape_inference import quant_pre_process

    model = onnx.load(str(fp32_path))
    with tempfile.TemporaryDirectory() as tmp:
        # ORT's recommended pre-pass: constant folding turns the exporter's Constant-node biases
        # into initializers (quantisable int32 biases) and fills in shapes.
        prepared = Path(tmp) / "prepared.onnx"
        quant_pre_process(str(fp32_path), str(prepared), skip_symbolic_shape=True)
        quantize_static(
            prepared,
            Path(tmp) / "q.onnx",
            _Reader(calibration),
            quant_format=QuantFormat.QDQ,
            op_types_to_quantize=list(QUANTISED_OPS),
            nodes_to_exclude=tail_nodes(onnx.load(str(prepared))),
            per_channel=True,
            activation_type=QuantType.QUInt8,
            weight_type=QuantType.QInt8,
            calibrate_method=CalibrationMethod.MinMax,
            calibration_providers=["CPUExecutionProvider"],
        )
        quantized = onnx.load(str(Path(tmp) / "q.onnx"))
    # quantize_static keeps the graph but not always the model-level fields: copy them over, and
    # make the metadata say what the graph now is.
    del quantized.metadata_props[:]
    quantized.metadata_props.extend(model.metadata_props)
    for entry in quantized.metadata_props:
        if entry.key == METADATA_KEY:
            entry.value = json.dumps(
                {**json.loads(entry.value), "precision": "int8"}, sort_keys=True
            )
    quantized.doc_string = model.doc_string
    quantized.producer_name = model.producer_name
    quantized.producer_version = model.producer_version
    onnx.save(quantized, str(out))


def _ort_predict(path: Path, images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    import onnxruntime as ort

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    maps, scores = [], []
    for i in range(0, len(images), 8):
        m, s = session.run(list(OUTPUT_NAMES), {INPUT_NAME: images[i : i + 8]})
        maps.append(m)
        scores.append(s)
    return np.concatenate(maps), np.concatenate(scores)


def check_int8(fp32_path: Path, int8_path: Path, images: np.ndarray) -> Parity:
    """Run both graphs on ``images`` and compare (see the module docstring for the bounds)."""
    bounds = Bounds(INT8_MIN_SCORE_RANK_CORR, INT8_MAX_MAP_ERROR)
    return compare(_ort_predict(fp32_path, images), _ort_predict(int8_path, images), bounds)


@dataclass(frozen=True)
class Int8Plan:
    """What an int8 export will calibrate on and check against, decided before exporting."""

    calibration: np.ndarray
    """uint8 ``(N, S, S, 3)`` calibration images."""
    parity: np.ndarray
    """uint8 ``(M, S, S, 3)``: held-out good images, then the same with synthetic defects."""
    metadata: dict[str, object]
    """Recorded in the model's metadata under ``quantization``."""


def plan_int8(
    ckpt: dict[str, object], image_size: int, folder: Path, count: int, parity_count: int = 16
) -> Int8Plan:
    """Pick calibration images from ``folder`` and parity images from the run's held-out set
    (never the same files); synthetic good parts when the held-out files are gone."""
    if count < 1:
        raise QuantizationError(f"calibration count must be ≥ 1, got {count}")
    summary = ckpt.get("data_summary") or {}
    holdout = [Path(p) for p in summary.get("holdout", [])] if isinstance(summary, dict) else []
    images, used = calibration_images(folder, image_size, count, exclude=holdout)
    parity = parity_set(parity_images(ckpt, image_size, count=parity_count))
    return Int8Plan(
        calibration=images,
        parity=parity,
        metadata={
            "method": "onnxruntime static QDQ, MinMax calibration",
            "weights": "int8 per output channel",
            "activations": "uint8 per tensor",
            "quantized_ops": list(QUANTISED_OPS),
            "fp32_kept": "input normalisation, anomaly-map tail (cosine, upsample, blur, max)",
            # Names only: metadata travels with the model and must not leak the build machine's
            # paths.
            "calibration_data": Path(folder).resolve().name,
            "calibration_images": len(used),
            "calibration_files": [p.name for p in used],
        },
    )


def write_int8(fp32_path: Path, plan: Int8Plan) -> Path:
    """Quantise ``fp32_path`` next to itself, check parity; returns the int8 file's path or
    raises :class:`QuantizationError` (nothing is written to the destination then)."""
    int8_path = fp32_path.with_name(fp32_path.stem + ".int8.onnx")
    quantize_int8(fp32_path, int8_path, plan.calibration)
    parity = check_int8(fp32_path, int8_path, plan.parity)
    print(f"parity (int8 vs fp32): {parity.describe()}")
    if not parity.ok:
        raise QuantizationError(f"int8 parity check failed: {parity.describe()}; not written")
    _record_parity(int8_path, parity)
    return int8_path


def _record_parity(path: Path, parity: Parity) -> None:
    proto = onnx.load(str(path))
    entry = next(p for p in proto.metadata_props if p.key == METADATA_KEY)
    raw = json.loads(entry.value)
    raw["quantization"]["parity"] = {
        "images": parity.images,
        "score_rank_corr": round(parity.score_rank_corr, 6),
        "map_error": round(parity.map_error, 6),
        "min_score_rank_corr": INT8_MIN_SCORE_RANK_CORR,
        "max_map_error": INT8_MAX_MAP_ERROR,
    }
    entry.value = json.dumps(raw, sort_keys=True)
    onnx.save(proto, str(path))
