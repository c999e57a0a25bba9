"""The vocabulary of the scoring flow (:mod:`service.scoring`): what goes in (:class:`Upload`),
what the batcher answers per model input (:class:`ItemResult`), what comes out (:class:`Scored`),
what the flow needs to know of a model (:class:`ScoringModel`) and of the places its steps run in
(:class:`Inference`, :class:`Workers`), and the verdict on a score (:func:`judge`). No web
framework, no torch.

The verdict for one image score is judged against the calibrated threshold, or a per-request
override given in normalised units (``threshold=`` on ``/predict``). Normalised scores are a
logistic curve of the raw score centred on the calibrated image threshold (see
:class:`rdad.metadata.Calibration`), so a normalised threshold ``t`` is the raw threshold
``image_threshold + score_scale · logit(t)``; ``t = 0.5`` is the calibrated one. Clients can
re-judge a result locally with ``normalized_score > t`` and get the verdict the service would give.
"""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol, TypeVar

import numpy as np

from rdad.imaging import Buffer, ImageDecodeError
from rdad.metadata import Calibration

from .errors import BadImageError, ImageTooLargeError, UnsupportedMediaTypeError
from .plan import Layout
from .render import RenderedOutputs

T = TypeVar("T")

CALIBRATED = 0.5
"""The normalised threshold that equals the calibrated raw image threshold."""


@dataclass(frozen=True)
class Verdict:
    normalized_score: float
    is_anomalous: bool
    threshold: float
    """Raw image-score threshold the verdict used."""
    normalized_threshold: float


def raw_threshold(calibration: Calibration, normalized_threshold: float) -> float:
    """The raw score at which ``calibration.normalize`` equals ``normalized_threshold`` (0, 1)."""
    if not 0.0 < normalized_threshold < 1.0:
        raise ValueError(f"a normalised threshold is in (0, 1), got {normalized_threshold}")
    if normalized_threshold == CALIBRATED:
        return calibration.image_threshold
    logit = math.log(normalized_threshold / (1.0 - normalized_threshold))
    return calibration.image_threshold + calibration.score_scale * logit


def judge(calibration: Calibration, score: float, normalized_threshold: float | None) -> Verdict:
    """Judge ``score`` against the override (normalised units) or the calibrated threshold."""
    t = CALIBRATED if normalized_threshold is None else normalized_threshold
    threshold = raw_threshold(calibration, t)
    return Verdict(
        normalized_score=calibration.normalize(score),
        is_anomalous=float(score) > threshold,
        threshold=threshold,
        normalized_threshold=t,
    )


Runner = Callable[[np.ndarray], tuple[np.ndarray, np.ndarray]]
"""Runs a batch: uint8 ``(B, H, W, 3)`` → maps ``(B, H, W)`` and scores ``(B,)``."""

FILE_ERRORS = (BadImageError, ImageTooLargeError, UnsupportedMediaTypeError, ImageDecodeError)
"""Failures that belong to one file: in a multi-file request they become that file's result."""


@dataclass(frozen=True)
class ItemResult:
    """What the batcher answers for one model input."""

    anomaly_map: np.ndarray
    """float32 ``(S, S)`` at the model's resolution."""
    score: float
    queue_s: float
    inference_s: float
    batch_size: int


class Upload:
    """One file of a request. The flow takes its bytes when it decodes them, so that they are
    freed (and leave the memory budget) as soon as the model inputs exist."""

    def __init__(self, filename: str, data: Buffer) -> None:
        self.filename = filename
        self.size = len(data)
        self._data: Buffer | None = data

    def take(self) -> Buffer:
        data, self._data = self._data, None
        if data is None:
            raise RuntimeError(f"{self.filename}: its bytes were already decoded")
        return data

    def peek(self) -> Buffer:
        if self._data is None:
            raise RuntimeError(f"{self.filename}: its bytes were already decoded")
        return self._data


@dataclass(frozen=True)
class Timings:
    decode_s: float
    queue_s: float
    inference_s: float
    encode_s: float
    """Merge (stitching) and rendering."""


@dataclass(frozen=True)
class Scored:
    """One file's answer."""

    filename: str
    width: int
    height: int
    score: float
    verdict: Verdict | None
    """``None`` only for a model without calibration (``rdad eval`` of a raw checkpoint)."""
    rendered: RenderedOutputs
    timings: Timings
    anomaly_map: np.ndarray | None = None
    """float32 map on the model's grid (whole image) or the prepared image's grid (tiled); kept
    only when :meth:`Scorer.score` is asked to (``rdad eval``)."""


@dataclass(frozen=True)
class ScoringModel:
    """What the flow needs to know of a model."""

    name: str
    version: str
    layout: Layout
    calibration: Calibration | None
    """Served models always have one; ``rdad eval`` may score a checkpoint without (no verdicts,
    no pictures)."""
    max_pixels: int


class Inference(Protocol):
    """Where batches run: the model's batcher in the service, :class:`DirectInference` here."""

    def expecting(self, count: int) -> contextlib.AbstractContextManager[Any]: ...

    async def infer(
        self, images: Sequence[np.ndarray], *, deadline: float, arrival: Any = None
    ) -> list[ItemResult]: ...


class Workers(Protocol):
    """Where CPU work runs; both return ``(result, its own run seconds)``."""

    async def run(self, fn: Callable[[], T]) -> tuple[T, float]: ...

    async def decode(self, fn: Callable[[], T]) -> tuple[T, float]: ...


def timed(fn: Callable[[], T]) -> tuple[T, float]:
    """``fn()`` and its own run time (not a pool's wait); top-level so a process pool can run it."""
    start = time.perf_counter()
    result = fn()
    return result, time.perf_counter() - start
