"""Measured wall time per batch size: what admission and the batcher predict waits from.

An exponential moving average per size, interpolated between sizes. It replaces "the last batch
took X" with "a batch of B takes X(B)", so a batch of 1 after a batch of 16 does not make the queue
look 16× faster. The batcher records every batch it runs; warm-up records provisional first guesses.
"""

from __future__ import annotations

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
