"""One HTTP request's way into the scoring flow, whatever its protocol (``POST /predict`` or the
Open Inference Protocol's ``infer``): the model version leased, one image's admission reserved and
a body grant opened before a byte of the body is read; more images reserved as the body brings
them; the work cancelled when the client hangs up; refusals counted.

The routes differ only in how they read a body into :class:`~service.scoring_types.Upload` s and
how they write the answer; everything between the socket and :meth:`Scorer.score` is here.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Coroutine
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any, TypeVar

from starlette.requests import Request

from .admission import Reservation
from .errors import ClientDisconnectedError, NotReadyError, QueueFullError
from .memory import Grant
from .middleware import ARRIVAL_KEY
from .runtime import ServedModel, ServiceRuntime

T = TypeVar("T")


def arrival_time(request: Request) -> float:
    """When the request reached the app (``loop.time()``), stamped by the metrics middleware."""
    arrived = request.scope.get("state", {}).get(ARRIVAL_KEY)
    return float(arrived) if arrived is not None else asyncio.get_running_loop().time()


def declared_length(request: Request) -> int | None:
    value = request.headers.get("content-length")
    return int(value) if value is not None and value.isdigit() else None


@dataclass
class AdmittedRequest:
    """What an admitted request holds while its body is read and its images scored."""

    model: ServedModel
    reservation: Reservation
    body: Grant
    due: float
    """The latest its answer may come (loop time), judged from its arrival."""
    timeout_s: float

    def hold_images(self, count: int) -> None:
        """The request brings ``count`` images in all: reserve those not reserved yet (503 when
        they do not fit)."""
        more = count - self.reservation.images
        if more > 0:
            now = asyncio.get_running_loop().time()
            self.reservation.grow(more, now=now, deadline=self.due)

    def deadline(self) -> float:
        """The scoring deadline, counted from now: the end of the upload."""
        return asyncio.get_running_loop().time() + self.timeout_s


@asynccontextmanager
async def admitted(
    request: Request, runtime: ServiceRuntime, name: str | None
) -> AsyncIterator[AdmittedRequest]:
    """Lease model ``name`` (the default when ``None``), check it serves, reserve one image and
    open a body grant sized by ``Content-Length``; everything is given back on exit. A refusal
    (queue full, overloaded, no memory) is counted in the model's metrics and raised."""
    loop = asyncio.get_running_loop()
    arrival = arrival_time(request)
    settings = runtime.settings
    # The lease keeps this version serving until the answer is built, even if a hot reload
    # replaces it meanwhile (service/model_repository.py).
    with runtime.lease(name) as model:
        # A draining version (replaced by a hot reload) still answers the requests routed to it.
        if not model.state.serves:
            reason = model.error or "the model is still warming up"
            raise NotReadyError(reason, retry_after_s=settings.retry_after_s)
        # Judged against the earliest the answer could be due: the upload has its own deadline
        # (the read timeout and minimum rate), and the request timeout counts from its end.
        due = arrival + settings.request_timeout_s
        try:
            with (
                model.admission.reserve(1, now=loop.time(), deadline=due) as reservation,
                runtime.memory.body(declared_length(request)) as body,
            ):
                yield AdmittedRequest(model, reservation, body, due, settings.request_timeout_s)
        except QueueFullError as exc:
            runtime.metrics.overloaded.labels(model.name, exc.code).inc()
            runtime.metrics.shed_latency.labels(model.name).observe(loop.time() - arrival)
            raise


async def until_disconnect(request: Request, work: Coroutine[Any, Any, T]) -> T:
    """Run ``work`` but cancel it when the client hangs up: its queued images leave the batcher
    and its decodes are not started (no work for nobody).

    ``work`` runs in this task (not a task of its own, which would start one turn of the event
    loop later — under a burst, behind hundreds of other requests' steps); the watcher cancels
    this task. The watcher only runs while ``work`` awaits: ``finally`` cancels it before this
    task awaits anything else.
    """
    task = asyncio.current_task()
    assert task is not None
    gone = False

    async def watch() -> None:
        nonlocal gone
        while True:
            message = await request.receive()
            if message["type"] == "http.disconnect":
                gone = True
                task.cancel()
                return

    watcher = asyncio.ensure_future(watch())
    try:
        return await work
    except asyncio.CancelledError:
        if gone:  # cancelled by the watcher: the client is gone, not the server stopping
            task.uncancel()
            raise ClientDisconnectedError("the client closed the connection") from None
        raise
    finally:
        watcher.cancel()
