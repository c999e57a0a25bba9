"""The memory budget: bytes of request bodies and of decoded pixels in flight, across all requests.

Two kinds of grant share one total (``RDAD_MEMORY_BUDGET_MB``):

* **body** bytes — an upload as it is received. Checked against the room left before the body is
  read (``Content-Length``) and counted chunk by chunk as it streams; bodies never wait: when
  their room is full the request is refused at once (503 ``overloaded``). A stalled upload holds
  only the bytes it has sent, and only until the read deadline cuts it off.
* **pixel** bytes — everything a request's images need from decode to rendered answer (the
  decode's peak, the model inputs or tiles, the maps, the heatmap/mask/overlay renders), reserved
  as one grant before its first decode, shrunk when the decodes are done, released with the
  answer. A pixel grant may wait (first come, first served) and is refused at once (503) when its
  estimated wait runs past the request's deadline.

Why this cannot deadlock: a request waits for pixel bytes while holding body bytes, never the
other way round, and a pixel grant never waits once granted. Bodies may only use the budget beyond
``pixel_reserve`` (one image at the pixel limit), and a pixel grant is capped at that reserve, so
bodies alone can never keep a pixel grant waiting: the pixel holders finish and make room.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
from collections import deque
from collections.abc import AsyncIterator, Callable

from .errors import OverloadedError, RequestTimeoutError
from .latency import ALPHA


class Grant:
    """Bytes held by one request in a :class:`MemoryBudget`; a context manager that releases
    them (also on error or cancellation)."""

    def __init__(self, budget: MemoryBudget, nbytes: int, *, body: bool) -> None:
        self._budget = budget
        self._nbytes = nbytes
        self.body = body

    @property
    def nbytes(self) -> int:
        return self._nbytes

    def grow_now(self, nbytes: int) -> None:
        """Hold ``nbytes`` more at once, or raise 503 ``overloaded`` (bodies only: they never
        wait)."""
        self._budget._grow_body(self, nbytes)
        self._nbytes += nbytes

    def shrink(self, nbytes: int) -> None:
        """Hold only ``nbytes`` from now on (never more than held)."""
        if nbytes < self._nbytes:
            self._budget._give_back(self._nbytes - nbytes, body=self.body)
            self._nbytes = nbytes

    def release(self) -> None:
        """Give everything back (idempotent)."""
        self.shrink(0)

    def __enter__(self) -> Grant:
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


class MemoryBudget:
    """A byte budget for bodies and pixels; see the module docstring for the rules."""

    def __init__(
        self,
        total_bytes: int,
        *,
        pixel_reserve: int,
        on_change: Callable[[int], None] | None = None,
        workers: int = 1,
    ) -> None:
        self.total = total_bytes
        self.pixel_reserve = min(pixel_reserve, total_bytes)
        self.body_limit = total_bytes - self.pixel_reserve
        """Bodies together never hold more than this."""
        self._in_use = 0
        self._body_in_use = 0
        self._on_change = on_change  # the in-use gauge
        self._workers = max(1, workers)  # decode threads/processes: decodes that run at once
        self._waiters: deque[tuple[int, asyncio.Future[None], float]] = deque()
        """``(bytes, future, deadline)`` of the pixel grants waiting, in arrival order."""
        self._seconds_per_byte: float | None = None

    @property
    def in_use(self) -> int:
        return self._in_use

    @property
    def body_in_use(self) -> int:
        return self._body_in_use

    @property
    def seconds_per_byte(self) -> float | None:
        """Moving average of decode run time per granted byte (``None`` until one is recorded)."""
        return self._seconds_per_byte

    # --- bodies -------------------------------------------------------------------------------

    def body(self, declared: int | None) -> Grant:
        """A body grant for an upload about to be read, holding nothing yet. With a declared
        size (``Content-Length``) that does not fit in the room bodies have left, 503 at once,
        before one byte is read; an upload alone may always try (up to the body limit)."""
        if declared is not None and self._body_in_use > 0:
            room = min(self.body_limit - self._body_in_use, self.total - self._in_use)
            if declared > room:
                raise self._bodies_full(declared)
        return Grant(self, 0, body=True)

    def _grow_body(self, grant: Grant, nbytes: int) -> None:
        if not grant.body:
            raise ValueError("only body grants grow without waiting")
        if nbytes <= 0:
            return
        fits_bodies = self._body_in_use + nbytes <= self.body_limit
        fits_total = self._in_use + nbytes <= self.total
        # A body that is the only one in flight may go up to the body limit even when pixel
        # grants have borrowed part of it: they are transient and the limit bounds the excess.
        alone = self._body_in_use == grant.nbytes
        if not (fits_bodies and (fits_total or alone)):
            raise self._bodies_full(nbytes)
        self._body_in_use += nbytes
        self._in_use += nbytes
        self._changed()

    def _bodies_full(self, nbytes: int) -> OverloadedError:
        return OverloadedError(
            f"memory for uploads is full ({self._body_in_use:,} of {self.body_limit:,} bytes of "
            f"request bodies in flight); this upload needs {nbytes:,} more; retry later",
            retry_after_s=1,
        )

    # --- pixels -------------------------------------------------------------------------------

    @contextlib.asynccontextmanager
    async def hold(self, nbytes: int, *, deadline: float) -> AsyncIterator[Grant]:
        """``acquire`` … ``release`` around a block."""
        with await self.acquire(nbytes, deadline=deadline) as grant:
            yield grant

    async def acquire(self, nbytes: int, *, deadline: float) -> Grant:
        """Wait for ``nbytes`` of pixel memory (capped at the pixel reserve: one image at the
        pixel limit always fits); 503 as soon as the estimated wait runs past ``deadline`` (at
        once, or when a finished decode updates the estimate), 504 if ``deadline`` passes while
        waiting."""
        nbytes = min(nbytes, self.pixel_reserve)
        if not self._waiters and self._in_use + nbytes <= self.total:
            self._in_use += nbytes
            self._changed()
            return Grant(self, nbytes, body=False)
        loop = asyncio.get_running_loop()
        wait = self.estimated_wait(nbytes)
        if wait is not None and loop.time() + wait > deadline:
            raise self._late(wait, deadline - loop.time())
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
                    return Grant(self, nbytes, body=False)
                self._give_back(nbytes, body=False)  # cancelled (client gone): give it back
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
        return Grant(self, nbytes, body=False)

    def record(self, nbytes: int, seconds: float) -> None:
        """A decode that was granted ``nbytes`` ran for ``seconds`` in its worker (its own run
        time, not its wait for a worker): update the rate, then refuse the waiting grants that
        can no longer start in time by the new estimate."""
        if nbytes <= 0:
            return
        sample = seconds / nbytes
        old = self._seconds_per_byte
        self._seconds_per_byte = sample if old is None else old + ALPHA * (sample - old)
        self._refuse_hopeless(asyncio.get_running_loop().time())

    def estimated_wait(self, nbytes: int, ahead: int | None = None) -> float | None:
        """Seconds until a grant of ``nbytes`` queued now (or behind ``ahead`` bytes) would be
        done, behind the grants running and waiting; ``None`` before any decode was measured."""
        if self._seconds_per_byte is None:
            return None
        if ahead is None:
            ahead = self._in_use - self._body_in_use
            ahead += sum(n for n, w, _ in self._waiters if not w.done())
        side_by_side = max(1, min(self._workers, self.pixel_reserve // max(nbytes, 1)))
        return (ahead + nbytes) * self._seconds_per_byte / side_by_side

    def _late(self, wait: float, left: float) -> OverloadedError:
        return OverloadedError(
            f"about {wait:.1f} s of image decoding is ahead of this upload, more than the "
            f"{max(0.0, left):.1f} s its request has left; retry later",
            retry_after_s=max(1, math.ceil(wait)),
        )

    def _refuse_hopeless(self, now: float) -> None:
        ahead = self._in_use - self._body_in_use
        kept: deque[tuple[int, asyncio.Future[None], float]] = deque()
        for nbytes, waiter, deadline in self._waiters:
            if waiter.done():
                continue
            wait = self.estimated_wait(nbytes, ahead)
            if wait is not None and now + wait > deadline:
                waiter.set_exception(self._late(wait, deadline - now))
                continue
            kept.append((nbytes, waiter, deadline))
            ahead += nbytes
        if len(kept) < len(self._waiters):
            self._waiters = kept
            self._grant()  # a refused head may have been what the next one waited behind
            self._changed()

    # --- shared -------------------------------------------------------------------------------

    def _give_back(self, nbytes: int, *, body: bool) -> None:
        self._in_use -= nbytes
        if body:
            self._body_in_use -= nbytes
        self._grant()
        self._changed()

    def _changed(self) -> None:
        if self._on_change is not None:
            self._on_change(self._in_use)

    def _grant(self) -> None:
        while self._waiters:
            nbytes, waiter, _ = self._waiters[0]
            if waiter.done():
                self._waiters.popleft()
                continue
            if self._in_use + nbytes > self.total:
                return
            self._in_use += nbytes
            self._waiters.popleft()
            waiter.set_result(None)
