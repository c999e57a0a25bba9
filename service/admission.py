"""Admission control: decide before any work whether a request can be answered in time.

:class:`LatencyModel` is what the waits are predicted from: measured wall time per batch size
(an exponential moving average per size, interpolated between sizes), so a batch of 1 after a
batch of 16 does not make the queue look 16× faster. The batcher records every batch it runs
into its own model; warm-up records provisional first guesses.

:class:`ModelAdmission` counts the images a model has accepted (being uploaded, decoded, queued or
running) and estimates the wait a new request would face from the batcher's measured latency per
batch size and what it is running now. A request that cannot finish before its deadline is
refused at once with 503 + ``Retry-After`` (:class:`OverloadedError`): never tried, so never a 504.
A request alone on the model is always admitted, so a slow estimate can never refuse every
request and starve the model of the batches that would correct it.

A request holds its images as a :class:`Reservation`: taken before its body is read, grown as its
files (and, for a tiled model, its tiles) become known, given back when it is answered. The count
lives here alone and changes only through these synchronous methods, so concurrent requests see
each other's reservations at once. A reservation never holds more than ``max_queue`` images: a
request that brings more (many tiles) is admitted for ``max_queue`` and runs in waves of that size.
"""

from __future__ import annotations

import math
from typing import Protocol

from .errors import OverloadedError, QueueFullError

ALPHA = 0.3
"""Weight of the newest sample: adapts within a few batches, smooths single hiccups."""


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
            self._by_size[batch_size] = old + ALPHA * (seconds - old)

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


SAFETY = 1.2
"""Headroom on the wait estimate: a refusal now beats a 504 after the whole timeout."""


class _Running(Protocol):
    @property
    def since(self) -> float | None: ...

    @property
    def images(self) -> int: ...


class BatchSource(Protocol):
    """What admission reads from the model's batcher (:class:`service.batcher.Batcher`)."""

    max_batch_size: int
    latency: LatencyModel

    def running(self) -> _Running: ...


class ModelAdmission:
    """The images one model has accepted, and whether it can take more in time."""

    def __init__(
        self, name: str, batches: BatchSource, *, max_queue: int, retry_after_s: int
    ) -> None:
        self.name = name
        self.max_queue = max_queue
        self.retry_after_s = retry_after_s
        self._batches = batches
        self._admitted = 0
        self._overhead_s = 0.0

    @property
    def admitted(self) -> int:
        """Images accepted and not yet answered: uploading, decoding, queued or running."""
        return self._admitted

    @property
    def overhead_s(self) -> float:
        """Moving average of a request's own CPU time outside inference (decode + encode)."""
        return self._overhead_s

    def record_overhead(self, seconds: float) -> None:
        self._overhead_s += ALPHA * (seconds - self._overhead_s)

    def estimated_wait(self, extra: int, now: float) -> float | None:
        """Seconds until ``extra`` more images would be scored, behind everything admitted."""
        running = self._batches.running()
        latency = self._batches.latency
        waiting = self._admitted - running.images + extra
        drain = latency.drain_s(waiting, self._batches.max_batch_size)
        if drain is None:
            return None
        remaining = 0.0
        if running.since is not None:
            expected = latency.expected(running.images) or 0.0
            remaining = max(0.0, expected - (now - running.since))
        return remaining + drain

    def reserve(self, count: int, *, now: float, deadline: float) -> Reservation:
        """A new request's first ``count`` images, or 503 (queue full / cannot finish in time)."""
        reservation = Reservation(self)
        reservation.grow(count, now=now, deadline=deadline)
        return reservation

    def _take(self, count: int, *, work: int, own: int, now: float, deadline: float) -> None:
        """Admit ``count`` more images for a request holding ``own`` that brings ``work`` images
        not yet counted, or raise."""
        if self._admitted + count > self.max_queue:
            raise QueueFullError(
                f"model '{self.name}' has {self._admitted} images in flight (limit "
                f"{self.max_queue}); retry later",
                retry_after_s=self._retry_after(self.estimated_wait(0, now)),
            )
        if self._admitted > own:  # a request alone on the model always gets to try
            wait = self.estimated_wait(work, now)
            if wait is not None and now + SAFETY * wait + self._overhead_s > deadline:
                raise OverloadedError(
                    f"model '{self.name}' is busy: about {wait:.1f} s of work is ahead of this "
                    f"request, more than its {max(0.0, deadline - now):.1f} s left; retry later",
                    retry_after_s=self._retry_after(self.estimated_wait(0, now)),
                )
        self._admitted += count

    def _give_back(self, count: int) -> None:
        self._admitted -= count

    def _retry_after(self, wait: float | None) -> int:
        return max(self.retry_after_s, math.ceil(wait or 0.0))


class Reservation:
    """The images one request holds in its model's admission; a context manager that gives them
    back (also on error or cancellation)."""

    def __init__(self, admission: ModelAdmission) -> None:
        self._admission = admission
        self._images = 0

    @property
    def images(self) -> int:
        return self._images

    @property
    def limit(self) -> int:
        """The most images one reservation can hold (the model's ``max_queue``)."""
        return self._admission.max_queue

    def grow(self, count: int, *, now: float, deadline: float) -> None:
        """Hold ``count`` more images, or raise 503 and hold what was held before."""
        if count > 0:
            self._admission._take(count, work=count, own=self._images, now=now, deadline=deadline)
            self._images += count

    def cover(self, images: int, *, now: float, deadline: float) -> int:
        """Make room for a request that will send ``images`` images to the batcher: hold
        ``min(images, limit)`` and judge the wait of all ``images``. Returns how many the request
        may have in the batcher at once (its wave size)."""
        target = min(images, self.limit)
        extra = target - self._images
        if extra > 0:
            work = images - self._images
            self._admission._take(extra, work=work, own=self._images, now=now, deadline=deadline)
            self._images += extra
        else:
            self.shrink(target)
        return max(1, self._images)

    def shrink(self, images: int) -> None:
        """Give back what is held beyond ``images`` (files that turned out fewer, or bad)."""
        if images < self._images:
            self._admission._give_back(self._images - images)
            self._images = images

    def record_overhead(self, seconds: float) -> None:
        """The request's own CPU time outside inference, for the model's wait estimates."""
        self._admission.record_overhead(seconds)

    def release(self) -> None:
        """Give every image back (idempotent)."""
        self._admission._give_back(self._images)
        self._images = 0

    def __enter__(self) -> Reservation:
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()
