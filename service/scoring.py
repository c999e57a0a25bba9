"""The scoring flow: from the bytes of uploaded files to one answer per file.

    header → plan → (memory) → decode → batches → merge → render → verdict

Every way rdad scores files runs this one flow: ``POST /predict`` (single and multi-file),
``rdad predict --model`` and ``rdad eval``. What differs is only where each step runs, given to
:class:`Scorer` from outside: the service hands it the model's batcher, its CPU pools, the memory
budget and the request's admission reservation; ``rdad predict --model`` and ``rdad eval`` run
batches in the calling thread (:class:`DirectInference`, :class:`InlineWorkers`) with no budget.

A tiled model is a plan and a merge inside the flow (:mod:`service.plan`): a file sends its tiles
to the batcher as its images, and its tile maps are stitched back. A request never has more images
in the batcher than its admission reservation holds; one that brings more (many tiles) runs in
waves of that size. Its memory is one grant per wave, taken before the first decode and shrunk
when the decodes are done (see :mod:`service.memory` for why that cannot deadlock).

This module imports no web framework and no torch: ``rdad eval`` runs it in a training install.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable, Iterator, Sequence
from dataclasses import dataclass
from functools import partial
from typing import Any, Protocol, TypeVar

import numpy as np

from rdad.imaging import Buffer, ImageDecodeError
from rdad.metadata import Calibration

from .decode import DecodedImage, read_header
from .errors import BadImageError, ImageTooLargeError, ServiceError, UnsupportedMediaTypeError
from .gpu_decode import JpegDecoder
from .plan import FilePlan, Layout, decode_file, merge, plan_file
from .render import OutputOptions, RenderedOutputs, render_outputs
from .verdict import Verdict, judge

T = TypeVar("T")

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


class Slots(Protocol):
    """The request's admission reservation (:class:`service.admission.Reservation`)."""

    def cover(self, images: int, *, now: float, deadline: float) -> int: ...

    def record_overhead(self, seconds: float) -> None: ...


class Grant(Protocol):
    @property
    def nbytes(self) -> int: ...

    def shrink(self, nbytes: int) -> None: ...

    def release(self) -> None: ...


class Memory(Protocol):
    """The memory budget (:class:`service.memory.MemoryBudget`)."""

    pixel_reserve: int

    async def acquire(self, nbytes: int, *, deadline: float) -> Any: ...

    def record(self, nbytes: int, seconds: float) -> None: ...


def timed(fn: Callable[[], T]) -> tuple[T, float]:
    """``fn()`` and its own run time (not a pool's wait); top-level so a process pool can run it."""
    start = time.perf_counter()
    result = fn()
    return result, time.perf_counter() - start


@dataclass(frozen=True)
class _File:
    index: int
    upload: Upload
    plan: FilePlan


@dataclass(frozen=True)
class _Decoded:
    file: _File
    image: DecodedImage
    decode_s: float


@dataclass(frozen=True)
class _Finished:
    anomaly_map: np.ndarray | None
    score: float
    rendered: RenderedOutputs


class Scorer:
    """The flow for one model, with the places its steps run in."""

    def __init__(
        self,
        model: ScoringModel,
        inference: Inference,
        workers: Workers,
        *,
        memory: Memory | None = None,
        jpeg_decoder: JpegDecoder | None = None,
        observe: Callable[[Verdict], None] | None = None,
    ) -> None:
        self.model = model
        self._inference = inference
        self._workers = workers
        self._memory = memory
        self._jpeg_decoder = jpeg_decoder
        self._observe = observe

    async def score(
        self,
        uploads: Sequence[Upload | ServiceError],
        options: OutputOptions,
        *,
        deadline: float,
        threshold: float | None = None,
        slots: Slots | None = None,
        body: Grant | None = None,
        keep_maps: bool = False,
    ) -> list[Scored | ServiceError]:
        """One result per upload, in order. An upload that is already an error, or that fails
        for reasons of its own (:data:`FILE_ERRORS`), gets that error as its result; anything
        else (timeout, overload, inference failure) fails the whole request. ``threshold``
        (normalised) overrides the calibrated one for the verdicts; ``body`` is the memory held
        by the uploads' bytes, given back as they are decoded."""
        loop = asyncio.get_running_loop()
        results: list[Scored | ServiceError | None] = [
            u if isinstance(u, ServiceError) else None for u in uploads
        ]
        files: list[_File] = []
        for index, upload in enumerate(uploads):
            if isinstance(upload, Upload):
                plan = self._plan(upload, options)
                if isinstance(plan, ServiceError):
                    results[index] = plan
                else:
                    files.append(_File(index, upload, plan))
        total = sum(f.plan.inputs for f in files)
        wave_size = total
        if slots is not None:
            wave_size = slots.cover(total, now=loop.time(), deadline=deadline)
        own_s = 0.0
        for wave in self._waves(files, wave_size):
            outcomes, wave_own_s = await self._score_wave(
                wave, options, deadline, threshold, wave_size, body, keep_maps
            )
            own_s += wave_own_s
            for file, outcome in zip(wave, outcomes, strict=True):
                results[file.index] = outcome
        if body is not None:
            body.release()
        if slots is not None and files:
            slots.record_overhead(own_s)
        return [r for r in results if r is not None]

    def _plan(self, upload: Upload, options: OutputOptions) -> FilePlan | ServiceError:
        try:
            header = read_header(upload.peek(), max_pixels=self.model.max_pixels)
        except (ImageDecodeError, BadImageError) as exc:
            return BadImageError(f"{upload.filename}: {exc}")
        except ImageTooLargeError as exc:
            return ImageTooLargeError(f"{upload.filename}: {exc.detail}")
        return plan_file(header, self.model.layout, options)

    def _waves(self, files: list[_File], wave_size: int) -> Iterator[list[_File]]:
        """Consecutive files whose images fit the wave size and whose memory fits the pixel
        reserve together (a file too big for either is a wave of its own)."""
        reserve = self._memory.pixel_reserve if self._memory is not None else None
        wave: list[_File] = []
        images = need = 0
        for file in files:
            fits = images + file.plan.inputs <= wave_size
            fits = fits and (reserve is None or need + file.plan.need_bytes <= reserve)
            if wave and not fits:
                yield wave
                wave, images, need = [], 0, 0
            wave.append(file)
            images += file.plan.inputs
            need += file.plan.need_bytes
        if wave:
            yield wave

    async def _score_wave(
        self,
        wave: list[_File],
        options: OutputOptions,
        deadline: float,
        threshold: float | None,
        wave_size: int,
        body: Grant | None,
        keep_maps: bool,
    ) -> tuple[list[Scored | ServiceError], float]:
        """Decode, infer, merge and render one wave under one memory grant; returns each file's
        outcome and the wave's own time on the loop outside inference."""
        loop = asyncio.get_running_loop()
        started = loop.time()
        need = sum(f.plan.need_bytes for f in wave)
        grant = await self._memory.acquire(need, deadline=deadline) if self._memory else None
        with grant if grant is not None else contextlib.nullcontext():
            with self._inference.expecting(sum(f.plan.inputs for f in wave)) as arrival:
                outcomes = await decode_all(
                    [partial(self._decode, f, options, deadline, body) for f in wave]
                )
                decoded = [
                    _Decoded(f, *o)
                    for f, o in zip(wave, outcomes, strict=True)
                    if not isinstance(o, BaseException)
                ]
                if grant is not None:
                    grant.shrink(sum(d.file.plan.keep_bytes for d in decoded))
                images = [image for d in decoded for image in d.image.inputs]
                items: list[ItemResult] = []
                for start in range(0, len(images), wave_size):
                    chunk = images[start : start + wave_size]
                    items += await self._inference.infer(chunk, deadline=deadline, arrival=arrival)
            own_s = loop.time() - started
            render_started = loop.time()
            per_file = _split(items, [len(d.image.inputs) for d in decoded])
            finished = await asyncio.gather(
                *(
                    self._workers.run(partial(self._finish, d.image, own, options, keep_maps))
                    for d, own in zip(decoded, per_file, strict=True)
                )
            )
            own_s += loop.time() - render_started
        answers = iter(
            self._answer(d, own, done, encode_s, threshold)
            for d, own, (done, encode_s) in zip(decoded, per_file, finished, strict=True)
        )
        results: list[Scored | ServiceError] = []
        for file, outcome in zip(wave, outcomes, strict=True):
            if isinstance(outcome, ServiceError):
                results.append(outcome)
            elif isinstance(outcome, BaseException):
                results.append(BadImageError(f"{file.upload.filename}: {outcome}"))
            else:
                results.append(next(answers))
        return results, own_s

    async def _decode(
        self, file: _File, options: OutputOptions, deadline: float, body: Grant | None
    ) -> tuple[DecodedImage, float]:
        data = file.upload.take()
        layout = self.model.layout
        try:
            if self._jpeg_decoder is not None:
                work = partial(
                    decode_file, data, file.plan, layout, options, deadline, self._jpeg_decoder
                )
                result = await self._workers.run(work)
            else:  # picklable: a process pool may run it
                result = await self._workers.decode(
                    partial(decode_file, data, file.plan, layout, options, deadline)
                )
        except (ImageDecodeError, BadImageError) as exc:
            raise BadImageError(f"{file.upload.filename}: {exc}") from None
        finally:
            del data
            if body is not None:
                body.shrink(max(0, body.nbytes - file.upload.size))
        if self._memory is not None:
            self._memory.record(file.plan.decode_bytes, result[1])
        return result

    def _finish(
        self,
        decoded: DecodedImage,
        items: list[ItemResult],
        options: OutputOptions,
        keep_map: bool,
    ) -> _Finished:
        """Merge and render one file (in a worker)."""
        maps = np.stack([it.anomaly_map for it in items])
        scores = np.array([it.score for it in items], np.float32)
        anomaly_map, score = merge(decoded, self.model.layout, maps, scores)
        rendered = render_outputs(decoded, anomaly_map, self.model.calibration, options)
        return _Finished(anomaly_map if keep_map else None, score, rendered)

    def _answer(
        self,
        decoded: _Decoded,
        items: list[ItemResult],
        done: _Finished,
        encode_s: float,
        threshold: float | None,
    ) -> Scored:
        calibration = self.model.calibration
        verdict = None if calibration is None else judge(calibration, done.score, threshold)
        if self._observe is not None and verdict is not None:
            self._observe(verdict)
        return Scored(
            filename=decoded.file.upload.filename,
            width=decoded.image.width,
            height=decoded.image.height,
            score=done.score,
            verdict=verdict,
            rendered=done.rendered,
            timings=Timings(
                decode_s=decoded.decode_s,
                queue_s=max(it.queue_s for it in items),
                inference_s=max(it.inference_s for it in items),
                encode_s=encode_s,
            ),
            anomaly_map=done.anomaly_map,
        )


def _split(items: list[ItemResult], counts: list[int]) -> list[list[ItemResult]]:
    """The batcher's results, in input order, cut back into one list per file."""
    out, start = [], 0
    for count in counts:
        out.append(items[start : start + count])
        start += count
    return out


async def decode_all(
    decodes: Sequence[Callable[[], Awaitable[T]]],
) -> list[T | BaseException]:
    """Run every decode concurrently; each outcome in order. An error of the file's own
    (:data:`FILE_ERRORS`) stays that file's outcome; any other error (timeout, overload) fails
    the whole request at once: the other decodes are cancelled rather than awaited."""
    if len(decodes) == 1:  # awaited in place: no task, so no extra turn of a busy loop
        try:
            return [await decodes[0]()]
        except FILE_ERRORS as exc:
            return [exc]
    tasks = [asyncio.ensure_future(decode()) for decode in decodes]
    try:
        pending: set[asyncio.Future[T]] = set(tasks)
        while pending:
            done, pending = await asyncio.wait(pending, return_when=asyncio.FIRST_EXCEPTION)
            for task in done:
                error = task.exception()
                if error is not None and not isinstance(error, FILE_ERRORS):
                    raise error
    finally:  # a request-level error, or this request cancelled (client gone)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
    return [t.exception() or t.result() for t in tasks]
