"""Dynamic micro-batching: per model, a bounded asyncio queue feeding one inference thread.

Why batching and not worker processes: a GPU runs a batch of 16 in little more than the time of
one image, while N processes would each hold a copy of the model and its CUDA context and
time-slice the device. So the service runs one process per GPU and gets its concurrency here.

Policy. A batch closes when it holds ``max_batch_size`` images, or ``max_delay`` after its first
image arrived, whichever comes first, but never while ``max_inflight`` batches are still running
(1 on CPU; 2 on GPUs, so the next batch is stacked and uploaded while one computes): under load the
queue fills while the lanes are busy and the next batch leaves full, with no added delay.
It also closes at once when no other image is on its way (no request for the model is still
decoding): then the delay could only add latency, which is what a lone client would otherwise pay.
Images from one request may be split over several batches and share them with other requests.
A batch leaves from whichever step makes it ready — the request that queued its images, the end
of the previous batch, or the collector task's timer for the delay — so no extra turn of a busy
event loop sits between "ready" and "running".

Failure isolation. How many images may be in flight is admission's decision
(:mod:`service.admission`), taken before any work; the batcher owns what is queued and running. A
request past its deadline is taken out of the queue if its batch has not started (504), and so is
one that would time out before its batch could finish, judged by the measured time of a batch of
that size (504 at once, no compute spent); an exception in the runner fails that batch only.

State. Everything here is owned by the batcher and changed only by its own methods on the event
loop: the queue, the images announced as on their way (:meth:`Batcher.expecting`), the batches in
flight (read by admission and the liveness check through :meth:`Batcher.running`) and the
:class:`~service.admission.LatencyModel` it records every batch into.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np

from .admission import LatencyModel
from .errors import InferenceError, NotReadyError, RequestTimeoutError
from .metrics import ModelMetrics
from .scoring_types import ItemResult, Runner

log = logging.getLogger("rdad.service.batcher")


@dataclass(frozen=True)
class RunningWork:
    """What the model is running now: admission's wait estimate and the liveness check read it."""

    since: float | None
    """``loop.time()`` when the oldest batch in flight started (``None``: nothing runs)."""
    images: int
    """Images in the batches in flight."""


class Arrival:
    """Images announced to a batcher as on their way (being decoded): see
    :meth:`Batcher.expecting`."""

    def __init__(self, count: int) -> None:
        self._pending = count

    def take(self, count: int) -> int:
        """``count`` of the announced images arrive: how many were still announced."""
        taken = min(self._pending, count)
        self._pending -= taken
        return taken

    def withdraw(self) -> int:
        """The rest will not come: how many were still announced."""
        return self.take(self._pending)


@dataclass(eq=False)
class _Item:
    image: np.ndarray
    future: asyncio.Future[ItemResult]
    enqueued_at: float
    deadline: float
    started: bool = False
    abandoned: bool = False  # the request stopped waiting (timeout, error, disconnect)


class Batcher:
    """Collects images of one model into batches and runs them on a dedicated thread."""

    def __init__(
        self,
        name: str,
        runner: Runner,
        *,
        max_batch_size: int,
        max_delay_s: float,
        early_close: bool = True,
        retry_after_s: int = 1,
        metrics: ModelMetrics | None = None,
        max_inflight: int = 1,
    ) -> None:
        self.name = name
        self.runner = runner
        self.max_batch_size = max_batch_size
        self.max_delay_s = max_delay_s
        self.early_close = early_close
        self.retry_after_s = retry_after_s
        self.metrics = metrics
        self.latency = LatencyModel()
        """Seconds per batch size, recorded from every batch run here (and from warm-up)."""
        # One thread per in-flight batch: on CPU one (an ORT session already uses every core);
        # on a GPU two, so stacking and uploading batch k+1 overlaps the device running batch k.
        # Warm-up runs on these threads too, before any request.
        self.max_inflight = max_inflight
        self.executor = ThreadPoolExecutor(max_inflight, thread_name_prefix=f"rdad-infer-{name}")
        self._pending: deque[_Item] = deque()
        self._incoming = 0  # images announced as being decoded (see `expecting`)
        self._wakeup = asyncio.Event()
        self._running_batches: dict[int, tuple[float, int]] = {}
        """The batches in flight: ``id(batch)`` → (started, size)."""
        self._closed = False
        self._loop_task: asyncio.Task[None] | None = None
        self._batch_tasks: set[asyncio.Task[None]] = set()

    @property
    def depth(self) -> int:
        return len(self._pending)

    def running(self) -> RunningWork:
        """The batches in flight as one: the oldest one's start and every running image (two
        batches may be in flight on a GPU)."""
        batches = self._running_batches.values()
        if not batches:
            return RunningWork(None, 0)
        return RunningWork(min(t for t, _ in batches), sum(n for _, n in batches))

    def collector_failure(self) -> str | None:
        """Why the collector task is not running (``None`` while it runs, or after close)."""
        task = self._loop_task
        if self._closed or task is None or not task.done():
            return None
        if task.cancelled():
            return f"the batch collector of model '{self.name}' was cancelled"
        error = task.exception()
        return f"the batch collector of model '{self.name}' died: {error!r}"[:300]

    @contextlib.contextmanager
    def expecting(self, count: int) -> Iterator[Arrival]:
        """Announce ``count`` images that are being decoded: while any image is announced, a
        batch waits its window for them instead of closing early. Pass the :class:`Arrival` to
        :meth:`infer`, which takes the images off the announcement and queues them in one step
        (so the collector never sees them as neither announced nor queued); leaving the block
        withdraws whatever was not submitted (a failed decode, a cancelled request)."""
        arrival = Arrival(count)
        self._incoming += count
        try:
            yield arrival
        finally:
            self._incoming -= arrival.withdraw()
            self._wakeup.set()

    def start(self) -> None:
        self._loop_task = asyncio.create_task(self._collect(), name=f"rdad-batcher-{self.name}")

    async def infer(
        self,
        images: Sequence[np.ndarray],
        *,
        deadline: float,
        arrival: Arrival | None = None,
    ) -> list[ItemResult]:
        """Score ``images`` (each uint8 ``(H, W, 3)``) before ``deadline`` (``loop.time()`` clock).

        ``arrival``: the announcement (:meth:`expecting`) these images were part of; they leave
        it as they are queued, in the same step. How many images may be queued is admission's
        decision, taken before the request did any work.
        """
        if self._closed:
            raise NotReadyError("the service is shutting down", retry_after_s=self.retry_after_s)
        loop = asyncio.get_running_loop()
        now = loop.time()
        items = [_Item(img, loop.create_future(), now, deadline) for img in images]
        if arrival is not None:
            self._incoming -= arrival.take(len(items))
        self._pending.extend(items)
        self._update_depth()
        # Launch here rather than through the collector task: under a burst, every extra turn
        # of the event loop waits behind hundreds of other requests' steps.
        self._launch_ready()
        self._wakeup.set()
        futures = [item.future for item in items]
        try:
            _, waiting = await asyncio.wait(
                futures, timeout=max(0.0, deadline - now), return_when=asyncio.FIRST_EXCEPTION
            )
            errors = [fut.exception() for fut in futures if fut.done()]  # marks all retrieved
            first_error = next((e for e in errors if e is not None), None)
            if first_error is not None:
                raise first_error
            if waiting:
                raise RequestTimeoutError("the request timed out waiting for inference")
            return [fut.result() for fut in futures]
        finally:
            self._abandon(items)

    def _abandon(self, items: list[_Item]) -> None:
        """Drop this request's images that have not started (no-op once all are done)."""
        dropped = False
        for item in items:
            item.abandoned = True
            if not item.started:
                with contextlib.suppress(ValueError):
                    self._pending.remove(item)
                    dropped = True
        if dropped:
            self._update_depth()
            self._wakeup.set()

    async def _collect(self) -> None:
        while True:
            self._wakeup.clear()
            timeout = self._launch_ready()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wakeup.wait(), timeout)

    def _launch_ready(self) -> float | None:
        """Launch every batch that may leave now; return how long until the next may (``None``:
        until something changes)."""
        loop = asyncio.get_running_loop()
        while self._pending and len(self._running_batches) < self.max_inflight:
            now = loop.time()
            closes_at = self._pending[0].enqueued_at + self.max_delay_s
            # Waiting only pays when another image can still join: if no request for this
            # model is being decoded, nothing can arrive sooner than a fresh decode (~30 ms
            # for a 900×900 PNG), so the window would be pure added latency.
            nothing_coming = self.early_close and self._incoming == 0
            if len(self._pending) < self.max_batch_size and now < closes_at and not nothing_coming:
                return closes_at - now
            self._launch()
        return None

    def _cannot_finish(self, item: _Item, expected: float | None, now: float) -> bool:
        # Only drop what the queue wait made late: if one batch takes longer than a whole request
        # timeout (a hiccup, or a slow first batch), the estimate says nothing useful, and
        # dropping on it would refuse every request and never run a batch to correct it.
        if expected is None or expected >= item.deadline - item.enqueued_at:
            return False
        return now + expected > item.deadline

    def _launch(self) -> None:
        # An image whose request would time out before this batch can finish (judged by the
        # measured time of a batch of this size) is answered 504 now instead of running: under
        # overload, compute goes to requests that can still be answered.
        loop = asyncio.get_running_loop()
        now = loop.time()
        expected = self.latency.expected(min(len(self._pending), self.max_batch_size))
        batch: list[_Item] = []
        while self._pending and len(batch) < self.max_batch_size:
            item = self._pending.popleft()
            if self._cannot_finish(item, expected, now):
                if not item.abandoned and not item.future.done():
                    item.future.set_exception(
                        RequestTimeoutError("the request would time out before its batch finished")
                    )
                continue
            item.started = True
            batch.append(item)
        self._update_depth()
        if not batch:
            return
        self._running_batches[id(batch)] = (now, len(batch))
        # Submitted now, not from the task's first step (one loop turn later).
        job = loop.run_in_executor(self.executor, self._run_sync, [item.image for item in batch])
        self._batch_tasks.add(asyncio.create_task(self._finish(batch, job, started=now)))

    def _run_sync(self, images: list[np.ndarray]) -> tuple[tuple[np.ndarray, np.ndarray], float]:
        stacked = np.stack(images)
        start = time.perf_counter()
        maps, scores = self.runner(stacked)
        elapsed = time.perf_counter() - start
        n = len(images)
        if maps.shape[0] != n or scores.shape[0] != n:
            raise RuntimeError(f"runner returned {scores.shape[0]} results for {n} images")
        return (maps, scores), elapsed

    async def _finish(
        self,
        batch: list[_Item],
        job: asyncio.Future[tuple[tuple[np.ndarray, np.ndarray], float]],
        *,
        started: float,
    ) -> None:
        """Wait for a launched batch and hand each image its result (or the batch's error)."""
        loop = asyncio.get_running_loop()
        try:
            (maps, scores), inference_s = await job
        except Exception as exc:
            log.error(
                "model %s: inference failed for a batch of %d", self.name, len(batch), exc_info=exc
            )
            if self.metrics:
                self.metrics.inference_failures.inc()
            error = InferenceError(
                f"inference failed on model '{self.name}'; the service is still up"
            )
            for item in batch:
                if not item.abandoned and not item.future.done():
                    item.future.set_exception(error)
        else:
            self.latency.record(len(batch), loop.time() - started)
            if self.metrics:
                self.metrics.inference.observe(inference_s)
                self.metrics.batch_size.observe(len(batch))
            for k, item in enumerate(batch):
                queue_s = started - item.enqueued_at
                if self.metrics:
                    self.metrics.queue_wait.observe(queue_s)
                if not item.future.done():
                    result = ItemResult(maps[k], float(scores[k]), queue_s, inference_s, len(batch))
                    item.future.set_result(result)
        finally:
            self._running_batches.pop(id(batch), None)
            task = asyncio.current_task()
            if task is not None:
                self._batch_tasks.discard(task)
            self._launch_ready()
            self._wakeup.set()

    def _update_depth(self) -> None:
        if self.metrics:
            self.metrics.queue_depth.set(len(self._pending))

    async def close(self, timeout_s: float) -> None:
        """Finish queued and running work (bounded by ``timeout_s``), then stop the thread."""
        self._closed = True
        loop = asyncio.get_running_loop()
        end = loop.time() + timeout_s
        while (self._pending or self._running_batches) and loop.time() < end:
            await asyncio.sleep(0.01)
        if self._loop_task:
            self._loop_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._loop_task
        for item in self._pending:
            if not item.future.done():
                item.future.set_exception(NotReadyError("the service is shutting down"))
        self._pending.clear()
        self.executor.shutdown(wait=False, cancel_futures=True)
