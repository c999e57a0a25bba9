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
from collections.abc import Awaitable, Callable, Iterator, Sequence
from dataclasses import dataclass
from functools import partial
from typing import Any, TypeVar

import numpy as np

from rdad.imaging import ImageDecodeError

from .admission import Reservation
from .decode import DecodedImage, read_header
from .errors import BadImageError, ImageTooLargeError, ServiceError
from .gpu_decode import JpegDecoder
from .memory import Grant, MemoryBudget, PixelRequest
from .plan import FilePlan, decode_file, merge, plan_file
from .render import OutputOptions, RenderedOutputs, render_outputs
from .scoring_types import (
    FILE_ERRORS,
    Inference,
    ItemResult,
    Scored,
    ScoringModel,
    Timings,
    Upload,
    Verdict,
    Workers,
    judge,
)

T = TypeVar("T")


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


@dataclass
class _Prepared:
    """A decoded wave waiting for inference: what it holds (its memory grant and its images'
    announcement to the batcher) is released by closing ``stack``."""

    files: list[_File]
    outcomes: list[tuple[DecodedImage, float] | BaseException]
    decoded: list[_Decoded]
    arrival: Any
    stack: contextlib.ExitStack
    decode_s: float
    """Its own time on the loop (from asking for memory to decoded)."""


def _need(files: list[_File]) -> int:
    return sum(f.plan.need_bytes for f in files)


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
        memory: MemoryBudget | None = None,
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
        slots: Reservation | None = None,
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
        waves = list(self._waves(files, wave_size))
        if not waves:
            return [r for r in results if r is not None]
        memory = None
        if self._memory is not None:
            memory = self._memory.pixel_request(_need(files), deadline=deadline)
        own_s = 0.0
        with memory if memory is not None else contextlib.nullcontext():
            # While one wave is inferred and rendered, the next one is decoded (its memory
            # granted beside it): the decodes of a many-file request follow each other as
            # closely as they would in one wave.
            ahead: asyncio.Future[_Prepared] | None = None
            try:
                prepared = await self._prepare(waves[0], options, deadline, memory, body)
                for index in range(len(waves)):
                    if index + 1 < len(waves):
                        ahead = asyncio.ensure_future(
                            self._prepare(waves[index + 1], options, deadline, memory, body)
                        )
                    wave_results, wave_own_s = await self._complete(
                        prepared, deadline, threshold, wave_size, options, keep_maps
                    )
                    own_s += wave_own_s
                    for file, outcome in zip(prepared.files, wave_results, strict=True):
                        results[file.index] = outcome
                    if ahead is not None:
                        prepared, ahead = await ahead, None
            finally:
                if ahead is not None:  # the request failed or was cancelled mid-way
                    ahead.cancel()
                    with contextlib.suppress(BaseException):
                        (await ahead).stack.close()
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

    async def _prepare(
        self,
        files: list[_File],
        options: OutputOptions,
        deadline: float,
        memory: PixelRequest | None,
        body: Grant | None,
    ) -> _Prepared:
        """A wave's memory grant, its images announced to the batcher, its files decoded; the
        grant shrunk to what the decoded images keep."""
        loop = asyncio.get_running_loop()
        started = loop.time()
        stack = contextlib.ExitStack()
        try:
            grant = None
            if memory is not None:
                grant = stack.enter_context(await memory.acquire(_need(files)))
            arrival = stack.enter_context(
                self._inference.expecting(sum(f.plan.inputs for f in files))
            )
            outcomes = await decode_all(
                [partial(self._decode, f, options, deadline, body) for f in files]
            )
            decoded = [
                _Decoded(f, *o)
                for f, o in zip(files, outcomes, strict=True)
                if not isinstance(o, BaseException)
            ]
            if grant is not None:
                grant.shrink(sum(d.file.plan.keep_bytes for d in decoded))
        except BaseException:
            stack.close()
            raise
        return _Prepared(files, outcomes, decoded, arrival, stack, loop.time() - started)

    async def _complete(
        self,
        wave: _Prepared,
        deadline: float,
        threshold: float | None,
        wave_size: int,
        options: OutputOptions,
        keep_maps: bool,
    ) -> tuple[list[Scored | ServiceError], float]:
        """Infer, merge and render a decoded wave, then give its memory back; returns each
        file's outcome and the wave's own time on the loop outside inference."""
        loop = asyncio.get_running_loop()
        with wave.stack:
            images = [image for d in wave.decoded for image in d.image.inputs]
            items: list[ItemResult] = []
            for start in range(0, len(images), wave_size):
                chunk = images[start : start + wave_size]
                items += await self._inference.infer(chunk, deadline=deadline, arrival=wave.arrival)
            render_started = loop.time()
            per_file = _split(items, [len(d.image.inputs) for d in wave.decoded])
            finished = await asyncio.gather(
                *(
                    self._workers.run(partial(self._finish, d.image, own, options, keep_maps))
                    for d, own in zip(wave.decoded, per_file, strict=True)
                )
            )
            own_s = wave.decode_s + loop.time() - render_started
        answers = iter(
            self._answer(d, own, done, encode_s, threshold)
            for d, own, (done, encode_s) in zip(wave.decoded, per_file, finished, strict=True)
        )
        results: list[Scored | ServiceError] = []
        for file, outcome in zip(wave.files, wave.outcomes, strict=True):
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
