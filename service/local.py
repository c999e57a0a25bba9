"""The scoring flow without a service: ``rdad predict --model`` and ``rdad eval``.

The same :class:`~service.scoring.Scorer` as ``POST /predict``, with batches run in the calling
thread by the model's own runner and CPU work done inline: no batcher, no pools, no budget.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import time
from collections.abc import Callable, Iterator, Sequence
from typing import Any, TypeVar

import numpy as np

from rdad.imaging import Buffer

from .errors import ServiceError
from .render import OutputOptions
from .scoring import Scorer
from .scoring_types import ItemResult, Runner, Scored, Upload, timed

T = TypeVar("T")


class DirectInference:
    """Batches of at most ``max_batch_size`` run in the calling thread (``rdad predict --model``,
    ``rdad eval``); ``busy_s`` sums the runner's time."""

    def __init__(self, runner: Runner, max_batch_size: int) -> None:
        self._runner = runner
        self._max_batch_size = max_batch_size
        self.busy_s = 0.0

    @contextlib.contextmanager
    def expecting(self, count: int) -> Iterator[None]:
        yield None

    async def infer(
        self, images: Sequence[np.ndarray], *, deadline: float, arrival: Any = None
    ) -> list[ItemResult]:
        results: list[ItemResult] = []
        for start in range(0, len(images), self._max_batch_size):
            batch = np.stack(images[start : start + self._max_batch_size])
            began = time.perf_counter()
            maps, scores = self._runner(batch)
            seconds = time.perf_counter() - began
            self.busy_s += seconds
            results += [
                ItemResult(np.asarray(maps[k]), float(scores[k]), 0.0, seconds, len(batch))
                for k in range(len(batch))
            ]
        return results


class InlineWorkers:
    """CPU work in the calling thread."""

    async def run(self, fn: Callable[[], T]) -> tuple[T, float]:
        return timed(fn)

    async def decode(self, fn: Callable[[], T]) -> tuple[T, float]:
        return timed(fn)


def score_now(
    scorer: Scorer,
    files: Sequence[tuple[str, Buffer]],
    options: OutputOptions,
    *,
    threshold: float | None = None,
    keep_maps: bool = False,
) -> list[Scored | ServiceError]:
    """Run the flow to completion in this thread (no deadline): one result per ``(name, bytes)``."""
    uploads = [Upload(name, data) for name, data in files]
    work = scorer.score(
        uploads, options, deadline=float("inf"), threshold=threshold, keep_maps=keep_maps
    )
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(work)
    # Called from async code: the flow gets an event loop of its own, in a thread.
    with concurrent.futures.ThreadPoolExecutor(1) as thread:
        return thread.submit(asyncio.run, work).result()
