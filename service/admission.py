"""Admission control: decide before any work whether a request can be answered in time.

Three pieces, all on the event loop (no locks: nothing here awaits between a check and its
update, so concurrent requests see each other's reservations at once):

* :class:`LatencyModel` — measured wall time per batch size (an exponential moving average per
  size, interpolated between sizes). It replaces "the last batch took X" with "a batch of B takes
  X(B)", so a batch of 1 after a batch of 16 does not make the queue look 16× faster.
* :class:`ModelAdmission` — the images a model has accepted (queued, being decoded, being uploaded,
  running) and the wait a new request would face. A request that cannot finish before its deadline
  is refused at once with 503 + ``Retry-After`` (:class:`OverloadedError`): never tried, so never a
  504. A request arriving at an empty model is always admitted, so a slow estimate can never refuse
  every request and starve the model of the batches that would correct it.
* :class:`PixelBudget` — bytes of decoded pixels in flight across all requests. A decode reserves
  its peak size (from the image header) before it starts and gives it back when it returns; the
  full-size decode is gone by then (only the model input, and an overlay-size view when an overlay
  is asked for, are kept).
"""

from __future__ import annotations

import asyncio
import contextlib
import math
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import TypeVar

from .errors import QueueFullError, RequestTimeoutError

T = TypeVar("T")

_ALPHA = 0.3  # weight of the newest sample: adapts within a few batches, smooths single hiccups
_SAFETY = 1.2  # headroom on the wait estimate: a refusal now beats a 504 after the whole timeout


class OverloadedError(QueueFullError):
    """The request would not finish before its deadline: refused before any work (503)."""

    code = "overloaded"


class LatencyModel:
    """Wall seconds per batch, by batch size."""

    def __init__(self) -> None:
        self._by_size: dict[int, float] = {}
        self._provisional: set[int] = set()

    def record(self, batch_size: int, seconds: float, *, provisional: bool = False) -> None:
        """Add a measurement. A ``provisional`` one (warm-up: caches cold, nothing else running)
        only stands until the first real batch of that size replaces it."""
        old = self._by_size.get(batch_size)
        if provisional:
            if old is None:
                self._by_size[batch_size] = seconds
                self._provisional.add(batch_size)
            return
        if old is None or batch_size in self._provisional:
            self._provisional.discard(batch_size)
            self._by_size[batch_size] = seconds
        else:
            self._by_size[batch_size] = old + _ALPHA * (seconds - old)

    def expected(self, batch_size: int) -> float | None:
        """Seconds a batch of ``batch_size`` takes; ``None`` before any batch was measured."""
        if batch_size <= 0:
            return 0.0
        known = self._by_size
        if not known:
            return None
        if batch_size in known:
            return known[batch_size]
        below = [s for s in known if s < batch_size]
        above = [s for s in known if s > batch_size]
        if below and above:
            lo, hi = max(below), min(above)
            t = (batch_size - lo) / (hi - lo)
            return known[lo] + t * (known[hi] - known[lo])
        if above:  # smaller than any measured size: no faster than the smallest one measured
            return known[min(above)]
        lo = max(below)  # larger than any measured size: scale linearly (pessimistic)
        return known[lo] * batch_size / lo

    def drain_s(self, images: int, max_batch_size: int) -> float | None:
        """Seconds to run ``images`` images in full batches (the last one partial)."""
        full, rest = divmod(images, max_batch_size)
        per_full = self.expected(max_batch_size)
        per_rest = self.expected(rest)
        if per_full is None or per_rest is None:
            return None
        return full * per_full + per_rest


@dataclass
class ModelAdmission:
    """Admission bookkeeping of one model."""

    name: str
    max_batch_size: int
    max_queue: int
    retry_after_s: int
    latency: LatencyModel = field(default_factory=LatencyModel)
    admitted: int = 0
    """Images accepted and not yet answered: uploading, decoding, queued or running."""
    overhead_s: float = 0.0
    """Moving average of a request's own CPU time outside inference (decode + encode)."""
    running_since: float | None = None
    running_size: int = 0

    def record_overhead(self, seconds: float) -> None:
        self.overhead_s += _ALPHA * (seconds - self.overhead_s)

    def estimated_wait(self, extra: int, now: float) -> float | None:
        """Seconds until ``extra`` more images would be scored, behind everything admitted."""
        waiting = self.admitted - self.running_size + extra
        drain = self.latency.drain_s(waiting, self.max_batch_size)
        if drain is None:
            return None
        remaining = 0.0
        if self.running_since is not None:
            expected = self.latency.expected(self.running_size) or 0.0
            remaining = max(0.0, expected - (now - self.running_since))
        return remaining + drain

    def admit(self, count: int, *, now: float, deadline: float) -> None:
        """Reserve ``count`` images or raise 503 (queue full / cannot finish in time)."""
        if self.admitted + count > self.max_queue:
            raise QueueFullError(
                f"model '{self.name}' has {self.admitted} images in flight (limit "
                f"{self.max_queue}); retry later",
                retry_after_s=self._retry_after(self.estimated_wait(0, now)),
            )
        if self.admitted > 0:  # an idle model always gets to try (see the module docstring)
            wait = self.estimated_wait(count, now)
            if wait is not None and now + _SAFETY * wait + self.overhead_s > deadline:
                raise OverloadedError(
                    f"model '{self.name}' is busy: about {wait:.1f} s of work is ahead of this "
                    f"request, more than its {max(0.0, deadline - now):.1f} s left; retry later",
                    retry_after_s=self._retry_after(self.estimated_wait(0, now)),
                )
        self.admitted += count

    def release(self, count: int) -> None:
        self.admitted -= count

    def _retry_after(self, wait: float | None) -> int:
        return max(self.retry_after_s, math.ceil(wait or 0.0))


class PixelBudget:
    """A byte budget for decoded pixels, granted first come, first served.

    When the budget is full (huge images), a decode waits behind the bytes ahead of it. That wait
    is estimated from the measured decode time per byte (PNG and JPEG decode time grows with the
    pixel count) and the decodes that can run side by side; a decode that could not even start
    before its request's deadline is refused at once (503 ``overloaded``) instead of waiting for
    the deadline to pass and answering 504.
    """

    def __init__(
        self,
        total_bytes: int,
        on_change: Callable[[int], None] | None = None,
        *,
        workers: int = 1,
    ) -> None:
        self.total = total_bytes
        self.in_use = 0
        self._on_change = on_change  # the in-use gauge
        self._workers = max(1, workers)  # decode threads/processes: decodes that run at once
        self._waiters: deque[tuple[int, asyncio.Future[None], float]] = deque()
        """``(bytes, future, deadline)`` of the decodes waiting, in arrival order."""
        self.seconds_per_byte: float | None = None
        """Moving average of decode run time per reserved byte (``None`` until one is recorded)."""

    @contextlib.asynccontextmanager
    async def hold(self, nbytes: int, *, deadline: float) -> AsyncIterator[int]:
        """``acquire`` … ``release`` around a decode; yields the bytes granted."""
        granted = await self.acquire(nbytes, deadline=deadline)
        try:
            yield granted
        finally:
            self.release(granted)

    async def run(
        self, nbytes: int, work: Callable[[], Awaitable[tuple[T, float]]], *, deadline: float
    ) -> tuple[T, float]:
        """Hold ``nbytes`` while ``work`` runs — a decode returning ``(result, its own run
        seconds)`` — and record that time for the wait estimate."""
        async with self.hold(nbytes, deadline=deadline) as granted:
            result = await work()
        self.record(granted, result[1])
        return result

    def record(self, nbytes: int, seconds: float) -> None:
        """A decode that reserved ``nbytes`` ran for ``seconds`` in its worker (its own run time,
        not its wait for a worker): update the rate, then refuse the waiting decodes that can no
        longer start in time by the new estimate."""
        if nbytes <= 0:
            return
        sample = seconds / nbytes
        old = self.seconds_per_byte
        self.seconds_per_byte = sample if old is None else old + _ALPHA * (sample - old)
        self._refuse_hopeless(asyncio.get_running_loop().time())

    def estimated_wait(self, nbytes: int, ahead: int | None = None) -> float | None:
        """Seconds until a decode of ``nbytes`` queued now (or behind ``ahead`` bytes) would be
        done, behind the decodes running and waiting; ``None`` before any decode was measured."""
        if self.seconds_per_byte is None:
            return None
        if ahead is None:
            ahead = self.in_use + sum(n for n, w, _ in self._waiters if not w.done())
        side_by_side = max(1, min(self._workers, self.total // max(nbytes, 1)))
        return (ahead + nbytes) * self.seconds_per_byte / side_by_side

    def _overloaded(self, wait: float, left: float) -> OverloadedError:
        return OverloadedError(
            f"about {wait:.1f} s of image decoding is ahead of this upload, more than the "
            f"{max(0.0, left):.1f} s its request has left; retry later",
            retry_after_s=max(1, math.ceil(wait)),
        )

    def _refuse_hopeless(self, now: float) -> None:
        ahead = self.in_use
        kept: deque[tuple[int, asyncio.Future[None], float]] = deque()
        for nbytes, waiter, deadline in self._waiters:
            if waiter.done():
                continue
            wait = self.estimated_wait(nbytes, ahead)
            if wait is not None and now + wait > deadline:
                waiter.set_exception(self._overloaded(wait, deadline - now))
                continue
            kept.append((nbytes, waiter, deadline))
            ahead += nbytes
        if len(kept) < len(self._waiters):
            self._waiters = kept
            self._grant()  # a refused head may have been what the next one waited behind
            self._changed()

    async def acquire(self, nbytes: int, *, deadline: float) -> int:
        """Wait for ``nbytes`` (capped at the whole budget: one image at the pixel limit always
        fits); 503 as soon as the estimated wait runs past ``deadline`` (at once, or when a
        finished decode updates the estimate), 504 if ``deadline`` passes while waiting.
        Returns the bytes granted, to release later."""
        nbytes = min(nbytes, self.total)
        if not self._waiters and self.in_use + nbytes <= self.total:
            self.in_use += nbytes
            self._changed()
            return nbytes
        loop = asyncio.get_running_loop()
        wait = self.estimated_wait(nbytes)
        if wait is not None and loop.time() + wait > deadline:
            raise self._overloaded(wait, deadline - loop.time())
        waiter: asyncio.Future[None] = loop.create_future()
        entry = (nbytes, waiter, deadline)
        self._waiters.append(entry)
        try:
            await asyncio.wait_for(asyncio.shield(waiter), max(0.0, deadline - loop.time()))
        except BaseException as exc:
            if waiter.done() and not waiter.cancelled() and waiter.exception() is not None:
                raise  # refused by _refuse_hopeless: never granted, already off the queue
            if waiter.done() and not waiter.cancelled():  # granted just as the wait ended
                if isinstance(exc, TimeoutError):
                    return nbytes
                self.release(nbytes)  # cancelled (client gone): give it back
                raise
            waiter.cancel()
            if entry in self._waiters:
                self._waiters.remove(entry)
            self._grant()  # a large waiter leaving may unblock smaller ones behind it
            self._changed()
            if isinstance(exc, TimeoutError):
                raise RequestTimeoutError(
                    "the request timed out waiting for memory to decode its images"
                ) from None
            raise
        self._changed()
        return nbytes

    def release(self, nbytes: int) -> None:
        self.in_use -= nbytes
        self._grant()
        self._changed()

    def _changed(self) -> None:
        if self._on_change is not None:
            self._on_change(self.in_use)

    def _grant(self) -> None:
        while self._waiters:
            nbytes, waiter, _ = self._waiters[0]
            if waiter.done():
                self._waiters.popleft()
                continue
            if self.in_use + nbytes > self.total:
                return
            self.in_use += nbytes
            self._waiters.popleft()
            waiter.set_result(None)
