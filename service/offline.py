"""Scoring image files in-process, without HTTP: ``rdad predict --model FILE.onnx``.

The same engine, decoding, rendering and verdict code as ``POST /predict`` (one ONNX Runtime
session, :func:`imaging.decode_upload`, :func:`imaging.render_outputs`, :func:`verdict.judge`), so
a file scored here gets the answer the service would give (tiled models too: tiles cut, scored
and stitched as :mod:`service.tiled` does). Results are the service's JSON shape.
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
        if self.engine.metadata.tiling is not None:
            return [self._score_tiled(name, data, options, threshold) for name, data in files]
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
        for row, (index, image, decode_s) in enumerate(decoded):
            start = time.perf_counter()
            rendered = imaging.render_outputs(
                image, output.anomaly_map[row], self.calibration, options
            )
            encode_s = time.perf_counter() - start
            answers[index] = self._result(
                files[index][0],
                image,
                rendered,
                float(output.score[row]),
                threshold,
                (decode_s, inference_s, encode_s),
            )
        return answers

    def _score_tiled(
        self, name: str, data: bytes, options: imaging.OutputOptions, threshold: float | None
    ) -> dict[str, Any] | FileError:
        from rdad.tiling import image_score, stitch

        from .pipeline import Upload
        from .tiled import _decode

        tiling = self.engine.metadata.tiling
        assert tiling is not None
        start = time.perf_counter()
        try:
            imaging.read_header(
                data, model_size=tiling.tile_size, max_pixels=self.settings.max_pixels
            )
            image, grid = _decode(Upload(name, data), tiling, float("inf"))
        except (BadImageError, ImageTooLargeError) as exc:
            return FileError(name, exc.code, exc.detail)
        except ImageDecodeError as exc:
            return FileError(name, "bad_image", str(exc))
        decode_s = time.perf_counter() - start
        start = time.perf_counter()
        tiles = image.model_input
        step = self.settings.max_batch_size
        maps = np.concatenate(
            [self.engine.run(tiles[i : i + step]).anomaly_map for i in range(0, len(tiles), step)]
        )
        inference_s = time.perf_counter() - start
        start = time.perf_counter()
        stitched = stitch(maps, grid, tiling.stitch)
        rendered = imaging.render_outputs(image, stitched, self.calibration, options)
        encode_s = time.perf_counter() - start
        times = (decode_s, inference_s, encode_s)
        return self._result(name, image, rendered, image_score(stitched), threshold, times)

    def _result(
        self,
        name: str,
        image: imaging.DecodedImage,
        rendered: imaging.RenderedOutputs,
        score: float,
        threshold: float | None,
        times: tuple[float, float, float],
    ) -> dict[str, Any]:
        decode_s, inference_s, encode_s = times
        meta = self.engine.metadata
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
            "regions": None if rendered.regions is None else [vars(r) for r in rendered.regions],
            "filename": name,
            "model": {"name": self.engine.name, "version": meta.model_version},
            "timings_ms": {
                "decode": round(decode_s * 1000, 3),
                "queue": 0.0,
                "inference": round(inference_s * 1000, 3),
                "encode": round(encode_s * 1000, 3),
            },
        }
        return {k: v for k, v in result.items() if v is not None}
