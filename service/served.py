"""One loaded version of a model (engine, batcher, admission, leases), how one is put together and
warmed up, and the states a model file goes through in the repository (service/repository.py)."""

from __future__ import annotations

import asyncio
import contextlib
import enum
from collections.abc import Iterator
from dataclasses import dataclass

from .admission import ModelAdmission
from .batcher import Batcher, Runner
from .engine import warmup_batch
from .engines import InferenceEngine
from .metrics import Metrics
from .settings import Settings


class ModelState(enum.StrEnum):
    LOADING = "loading"
    WARMING = "warming"
    READY = "ready"
    FAILED = "failed"
    DRAINING = "draining"

    @property
    def serves(self) -> bool:
        """Requests routed to a model in this state are answered (a draining version finishes
        what it was given)."""
        return self in (ModelState.READY, ModelState.DRAINING)


@dataclass(eq=False)
class ServedModel:
    """One loaded version of a model, with its batcher."""

    name: str
    engine: InferenceEngine
    runner: Runner
    batcher: Batcher
    admission: ModelAdmission
    state: ModelState = ModelState.WARMING
    error: str | None = None
    file: str = ""
    """The file it came from, relative to the model folder."""
    leases: int = 0
    """Requests routed to this version and not yet answered."""

    @property
    def version(self) -> str:
        return self.engine.metadata.model_version

    @contextlib.contextmanager
    def lease(self) -> Iterator[ServedModel]:
        self.leases += 1
        try:
            yield self
        finally:
            self.leases -= 1


@dataclass(eq=False)
class PendingModel:
    """A model file with no version of its own serving: being loaded, or failed."""

    name: str
    file: str
    state: ModelState
    error: str | None = None


def open_served_model(
    name: str,
    engine: InferenceEngine,
    runner: Runner,
    settings: Settings,
    metrics: Metrics,
    file: str,
) -> ServedModel:
    """A new version around a loaded engine, its batcher started; it serves once warm."""
    admission = ModelAdmission(
        name,
        max_batch_size=settings.max_batch_size,
        max_queue=settings.max_queue,
        retry_after_s=settings.retry_after_s,
    )
    batcher = Batcher(
        name,
        runner,
        max_batch_size=settings.max_batch_size,
        max_delay_s=settings.max_delay_s,
        early_close=settings.batch_early_close,
        max_queue=settings.max_queue,
        retry_after_s=settings.retry_after_s,
        metrics=metrics.for_model(name),
        admission=admission,
        max_inflight=engine.inflight,
    )
    batcher.start()
    return ServedModel(name, engine, runner, batcher, admission, file=file)


async def warm_up(model: ServedModel, settings: Settings) -> list[int]:
    """Run one batch of each size the engine will see; returns those sizes. Raises what the
    engine raises (the model must not serve then)."""
    loop = asyncio.get_running_loop()
    sizes = model.engine.warmup_batch_sizes(settings)
    for size in sizes:
        batch = warmup_batch(size, model.engine.image_size)
        # On the model's own inference thread: no request can run concurrently.
        began = loop.time()
        await loop.run_in_executor(model.batcher.executor, model.runner, batch)
        # A first guess for admission's wait estimates; real batches refine it.
        model.admission.latency.record(size, loop.time() - began, provisional=True)
    return sizes
