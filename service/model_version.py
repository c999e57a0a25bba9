"""One loaded version of a model — engine, batcher, admission, scoring flow, leases — how one is
put together and warmed up, and the states a model file goes through in the repository
(:mod:`service.model_repository`)."""

from __future__ import annotations

import asyncio
import contextlib
import enum
from collections.abc import Iterator
from dataclasses import dataclass

from .admission import ModelAdmission
from .batcher import Batcher
from .engine import InferenceEngine, warmup_batch
from .gpu_decode import JpegDecoder
from .memory import MemoryBudget
from .metrics import Metrics
from .plan import Layout
from .scoring import Scorer
from .scoring_types import Runner, ScoringModel, Workers
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
    """One loaded version of a model: where its requests go."""

    name: str
    engine: InferenceEngine
    runner: Runner
    batcher: Batcher
    admission: ModelAdmission
    scorer: Scorer
    state: ModelState = ModelState.WARMING
    error: str | None = None
    file: str = ""
    """The file it came from, relative to the model folder."""
    leases: int = 0
    """Requests routed to this version and not yet answered."""

    @property
    def version(self) -> str:
        return self.engine.metadata.model_version

    def ready(self) -> None:
        """Warm: it takes requests."""
        self.state = ModelState.READY

    def drain(self) -> None:
        """Replaced or removed: it finishes the requests it has, takes no new ones."""
        self.state = ModelState.DRAINING

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

    def warming(self) -> None:
        """Loaded: its warm-up batches run."""
        self.state = ModelState.WARMING


@dataclass(frozen=True)
class ScoringPlaces:
    """Where every version's scoring steps run: the service's CPU pools and memory budget."""

    workers: Workers
    memory: MemoryBudget
    jpeg_decoder: JpegDecoder | None = None


def open_served_model(
    name: str,
    engine: InferenceEngine,
    runner: Runner,
    settings: Settings,
    metrics: Metrics,
    places: ScoringPlaces,
    file: str,
) -> ServedModel:
    """A new version around a loaded engine, its batcher started; it serves once warm."""
    batcher = Batcher(
        name,
        runner,
        max_batch_size=settings.max_batch_size,
        max_delay_s=settings.max_delay_s,
        early_close=settings.batch_early_close,
        retry_after_s=settings.retry_after_s,
        metrics=metrics.for_model(name),
        max_inflight=engine.inflight,
    )
    admission = ModelAdmission(
        name, batcher, max_queue=settings.max_queue, retry_after_s=settings.retry_after_s
    )
    meta = engine.metadata
    assert meta.calibration is not None  # every engine refuses uncalibrated models at load
    scorer = Scorer(
        ScoringModel(
            name=name,
            version=meta.model_version,
            layout=Layout(meta.image_size, meta.tiling),
            calibration=meta.calibration,
            max_pixels=settings.max_pixels,
        ),
        batcher,
        places.workers,
        memory=places.memory,
        jpeg_decoder=places.jpeg_decoder,
        observe=lambda verdict: metrics.observe_prediction(
            name, verdict.normalized_score, verdict.is_anomalous
        ),
    )
    batcher.start()
    return ServedModel(name, engine, runner, batcher, admission, scorer, file=file)


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
        model.batcher.latency.record(size, loop.time() - began, provisional=True)
    return sizes
