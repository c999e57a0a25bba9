"""Scoring image files in-process, without HTTP: ``rdad predict --model FILE.onnx``.

The same engine, decoding, rendering and verdict code as ``POST /predict`` (one ONNX Runtime
session, :func:`imaging.decode_upload`, :func:`imaging.render_outputs`, :func:`verdict.judge`), so
a file scored here gets the answer the service would give. Results are the service's JSON shape.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from rdad.imaging import ImageDecodeError

from . import imaging
from .engine import Engine
from .errors import BadImageError, ImageTooLargeError
from .settings import Settings
from .verdict import judge


@dataclass(frozen=True)
class FileError:
    filename: str
    error: str
    detail: str


class LocalScorer:
    """One model file loaded once; :meth:`score` takes a batch of ``(name, bytes)``."""

    def __init__(self, path: Path, settings: Settings | None = None) -> None:
        self.settings = settings or Settings(providers=["cpu"])
        self.engine = Engine.load(path.stem, path, self.settings)
        calibration = self.engine.metadata.calibration
        assert calibration is not None  # Engine.load refuses uncalibrated models
        self.calibration = calibration

    def score(
        self,
        files: list[tuple[str, bytes]],
        options: imaging.OutputOptions,
        threshold: float | None = None,
    ) -> list[dict[str, Any] | FileError]:
        """One result per file, in order: the service's result dict, or why it was not scored."""
        decoded: list[tuple[int, imaging.DecodedImage, float]] = []
        answers: list[dict[str, Any] | FileError] = []
        for index, (name, data) in enumerate(files):
            start = time.perf_counter()
            try:
                image = imaging.decode_upload(
                    data,
                    model_size=self.engine.image_size,
                    max_pixels=self.settings.max_pixels,
                    overlay_max_side=options.overlay_max_side if options.overlay else None,
                )
            except (BadImageError, ImageTooLargeError) as exc:
                answers.append(FileError(name, exc.code, exc.detail))
                continue
            except ImageDecodeError as exc:
                answers.append(FileError(name, "bad_image", str(exc)))
                continue
            decoded.append((index, image, time.perf_counter() - start))
            answers.append(FileError(name, "pending", ""))
        if not decoded:
            return answers
        start = time.perf_counter()
        output = self.engine.run(np.stack([image.model_input for _, image, _ in decoded]))
        inference_s = time.perf_counter() - start
        meta = self.engine.metadata
        for row, (index, image, decode_s) in enumerate(decoded):
            start = time.perf_counter()
            rendered = imaging.render_outputs(
                image, output.anomaly_map[row], self.calibration, options
            )
            encode_s = time.perf_counter() - start
            score = float(output.score[row])
            verdict = judge(self.calibration, score, threshold)
            result: dict[str, Any] = {
                "score": score,
                "normalized_score": verdict.normalized_score,
                "is_anomalous": verdict.is_anomalous,
                "threshold": verdict.threshold,
                "normalized_threshold": verdict.normalized_threshold,
                "width": image.width,
                "height": image.height,
                "heatmap_png": rendered.heatmap_png,
                "overlay_png": rendered.overlay_png,
                "mask_png": rendered.mask_png,
                "regions": None
                if rendered.regions is None
                else [vars(r) for r in rendered.regions],
                "filename": files[index][0],
                "model": {"name": self.engine.name, "version": meta.model_version},
                "timings_ms": {
                    "decode": round(decode_s * 1000, 3),
                    "queue": 0.0,
                    "inference": round(inference_s * 1000, 3),
                    "encode": round(encode_s * 1000, 3),
                },
            }
            answers[index] = {k: v for k, v in result.items() if v is not None}
        return answers
