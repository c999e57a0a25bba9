"""The memory budget: bytes of request bodies and of decoded pixels in flight, across all requests.

Two kinds of grant share one total (``RDAD_MEMORY_BUDGET_MB``):

* **body** bytes — an upload as it is received. Checked against the room left before the body is
  read (``Content-Length``) and counted chunk by chunk as it streams; bodies never wait: when
  their room is full the request is refused at once (503 ``overloaded``). A stalled upload holds
  only the bytes it has sent, and only until the read deadline cuts it off.
* **pixel** bytes — everything a request's images need from decode to rendered answer (the
  decode's peak, the model inputs or tiles, the maps, the heatmap/mask/overlay renders), reserved
  as one grant per wave of its files before their decodes, shrunk when the decodes are done,
  released with the wave's answers. A request registers all its waves' bytes first
  (:class:`PixelRequest`): it is refused at once (503) when, by the measured decode rate, the
  work ahead of it and its own cannot be done by its deadline, and its waves go before those of
  requests that came later, so a started request finishes instead of every request crawling.

Why this cannot deadlock: a request waits for pixel bytes while holding body bytes, never the
other way round, and a pixel grant never waits once granted. Bodies may only use the budget beyond
``pixel_reserve`` (one image at the pixel limit), and a pixel grant is capped at that reserve, so
bodies alone can never keep a pixel grant waiting: the pixel holders finish and make room.
"""

from __future__ import annotations

import asyncio
import bisect
import contextlib
import math
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass

from .admission import ALPHA
from .errors import OverloadedError, RequestTimeoutError


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
        self._waiters: list[_Waiter] = []
        """The pixel grants waiting, in the order of their requests' registration."""
        self._requests: dict[int, PixelRequest] = {}
        """Registered requests by registration number (their remaining work is ahead of later
        ones)."""
        self._seq = 0
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
        size (``Content-Length``) that does not fit in the room left now, 503 at once, before
        one byte is read."""
        if declared is not None and declared > self._body_room():
            raise self._bodies_full(declared)
        return Grant(self, 0, body=True)

    def _body_room(self) -> int:
        return min(self.body_limit - self._body_in_use, self.total - self._in_use)

    def _grow_body(self, grant: Grant, nbytes: int) -> None:
        if not grant.body:
            raise ValueError("only body grants grow without waiting")
        if nbytes <= 0:
            return
        if nbytes > self._body_room():
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

    def pixel_request(self, total_bytes: int, *, deadline: float) -> PixelRequest:
        """Register a request that will take ``total_bytes`` of pixel grants (one per wave of its
        files), or refuse it at once (503) when, by the measured decode rate, everything ahead of
        it and its own work cannot be done before ``deadline``. Its grants go before those of any
        request registered later: a request that has started finishes first."""
        self._seq += 1
        request = PixelRequest(self, self._seq, total_bytes, deadline)
        wait = self._estimated_wait(request, total_bytes)
        now = asyncio.get_running_loop().time()
        if wait is not None and now + wait > deadline:
            raise self._late(wait, deadline - now)
        self._requests[request.seq] = request
        return request

    @contextlib.asynccontextmanager
    async def hold(self, nbytes: int, *, deadline: float) -> AsyncIterator[Grant]:
        """``acquire`` … ``release`` around a block."""
        with await self.acquire(nbytes, deadline=deadline) as grant:
            yield grant

    async def acquire(self, nbytes: int, *, deadline: float) -> Grant:
        """One grant of ``nbytes`` for a request with nothing else to take."""
        request = self.pixel_request(nbytes, deadline=deadline)
        try:
            return await request.acquire(nbytes)
        finally:
            request.close()

    async def _acquire(self, request: PixelRequest, nbytes: int) -> Grant:
        """Wait for ``nbytes`` of pixel memory (capped at the pixel reserve: one image at the
        pixel limit always fits); 503 as soon as the estimated wait runs past the request's
        deadline (at once, or when a finished decode updates the estimate), 504 if the deadline
        passes while waiting."""
        nbytes = min(nbytes, self.pixel_reserve)
        deadline = request.deadline
        if not self._waiters and self._fits(request, nbytes):
            self._in_use += nbytes
            self._changed()
            return Grant(self, nbytes, body=False)
        loop = asyncio.get_running_loop()
        wait = self._estimated_wait(request, request.remaining)
        if wait is not None and loop.time() + wait > deadline:
            raise self._late(wait, deadline - loop.time())
        waiter: asyncio.Future[None] = loop.create_future()
        entry = _Waiter(request.seq, nbytes, waiter, request)
        bisect.insort(self._waiters, entry, key=lambda w: w.seq)
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
        time, not its wait for a worker): update the rate, then refuse the waiting requests that
        can no longer finish in time by the new estimate."""
        if nbytes <= 0:
            return
        sample = seconds / nbytes
        old = self._seconds_per_byte
        self._seconds_per_byte = sample if old is None else old + ALPHA * (sample - old)
        self._refuse_hopeless(asyncio.get_running_loop().time())

    def estimated_wait(self, nbytes: int) -> float | None:
        """Seconds until a new request taking ``nbytes`` would be through its decodes, behind
        the grants held and every registered request's remaining work; ``None`` before any
        decode was measured."""
        return self._estimated_wait(None, nbytes)

    def _estimated_wait(self, request: PixelRequest | None, own: int) -> float | None:
        if self._seconds_per_byte is None:
            return None
        ahead = self._in_use - self._body_in_use
        ahead += sum(
            other.remaining
            for other in self._requests.values()
            if request is None or other.seq < request.seq
        )
        side_by_side = max(1, min(self._workers, self.pixel_reserve // max(own, 1)))
        return (ahead + own) * self._seconds_per_byte / side_by_side

    def _late(self, wait: float, left: float) -> OverloadedError:
        return OverloadedError(
            f"about {wait:.1f} s of image decoding is ahead of this upload, more than the "
            f"{max(0.0, left):.1f} s its request has left; retry later",
            retry_after_s=max(1, math.ceil(wait)),
        )

    def _refuse_hopeless(self, now: float) -> None:
        kept: list[_Waiter] = []
        for entry in self._waiters:
            if entry.future.done():
                continue
            wait = self._estimated_wait(entry.request, entry.request.remaining)
            if wait is not None and now + wait > entry.request.deadline:
                entry.future.set_exception(self._late(wait, entry.request.deadline - now))
                continue
            kept.append(entry)
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

    def _fits(self, request: PixelRequest, nbytes: int) -> bool:
        """Whether ``request`` may take ``nbytes`` now: they fit, and so does the next wave of
        every request registered before it (a later request may use what is free beside a
        started one, never what that one needs to go on)."""
        earlier = sum(
            min(other.remaining, self.pixel_reserve)
            for other in self._requests.values()
            if other.seq < request.seq
        )
        return self._in_use + nbytes + earlier <= self.total

    def _changed(self) -> None:
        if self._on_change is not None:
            self._on_change(self._in_use)

    def _grant(self) -> None:
        while self._waiters:
            head = self._waiters[0]
            if head.future.done():
                self._waiters.pop(0)
                continue
            if not self._fits(head.request, head.nbytes):
                return
            self._in_use += head.nbytes
            self._waiters.pop(0)
            head.future.set_result(None)


@dataclass(eq=False)
class _Waiter:
    seq: int
    nbytes: int
    future: asyncio.Future[None]
    request: PixelRequest


class PixelRequest:
    """One request's pixel memory across its waves (see :meth:`MemoryBudget.pixel_request`);
    a context manager that deregisters it."""

    def __init__(self, budget: MemoryBudget, seq: int, total: int, deadline: float) -> None:
        self._budget = budget
        self.seq = seq
        self.deadline = deadline
        self._remaining = total

    @property
    def remaining(self) -> int:
        """Bytes it has still to be granted (what the requests behind it wait for)."""
        return self._remaining

    async def acquire(self, nbytes: int) -> Grant:
        """The grant of one wave; waits behind the requests registered before this one."""
        grant = await self._budget._acquire(self, nbytes)
        self._remaining = max(0, self._remaining - nbytes)
        return grant

    def close(self) -> None:
        """Deregister (idempotent): requests behind it stop waiting for its next waves."""
        self._remaining = 0
        if self._budget._requests.pop(self.seq, None) is not None:
            self._budget._grant()

    def __enter__(self) -> PixelRequest:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
