"""The running service: the model repository, the CPU pools and memory budget every version's
scoring runs in, readiness and draining.

Lifecycle (driven by the app's lifespan): :meth:`ServiceRuntime.start` loads every model in the
folder (:mod:`service.repository`: broken files are listed as failed, the others serve), then
warm-up runs in the background so that liveness answers while a long warm-up (cuDNN search,
TensorRT engine builds) is in progress, and the folder is polled for changes; ``/readyz`` turns
200 once the models found at start are warm (see :meth:`ModelRepository.readiness`).
:meth:`begin_drain` (SIGTERM) turns readiness off at once; :meth:`stop` lets queued work finish,
bounded by the grace period.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import multiprocessing
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Executor, ProcessPoolExecutor, ThreadPoolExecutor
from typing import TypeVar

import cv2

from .engine import InferenceEngine
from .errors import ModelNotFoundError, NotReadyError
from .gpu_decode import JpegDecoder, gpu_jpeg_decoder
from .liveness import keep_fresh
from .memory import MemoryBudget
from .metrics import Metrics
from .model_repository import ModelRepository
from .model_version import ModelState, ScoringPlaces, ServedModel, open_served_model
from .scoring_types import Runner, timed
from .settings import Settings

log = logging.getLogger("rdad.service")

T = TypeVar("T")

RunnerHook = Callable[[str, Runner], Runner]
"""Wraps a model's runner (``name, engine.run`` → runner); tests use it to inject slow or failing
inference around the real engine."""

__all__ = ["ModelState", "PoolWorkers", "RunnerHook", "ServedModel", "ServiceRuntime"]


def budget_cpu_threads(settings: Settings) -> str:
    """The CPU thread budget: inference threads and image threads must not oversubscribe.

    For C usable cores, the inference runtime (ONNX Runtime intra-op pool or OpenVINO) gets C
    threads (``RDAD_INTRA_OP_THREADS`` = 0 keeps the runtime's own default, one per physical
    core): on a CPU host inference is the bottleneck and one batch runs at a time. Decoding and
    PNG encoding run in the CPU pool, ``RDAD_CPU_WORKERS`` threads (default C), each
    **single-threaded inside OpenCV**: parallelism across uploads comes from the pool; OpenCV's
    own pool would add up to C more threads per resize, which then compete with the runtime's
    threads for the same cores — and a runtime thread that loses its core stalls every other one
    at the next layer's barrier. Applied process-wide; returns the line the log shows.
    """
    cv2.setNumThreads(1)
    runtime = settings.intra_op_threads or "runtime default (one per physical core)"
    return (
        f"thread budget: inference {runtime}; image pool {settings.cpu_worker_count} worker(s), "
        "OpenCV single-threaded in each"
    )


class PoolWorkers:
    """CPU work of the scoring flow in the service's pools: threads (OpenCV releases the GIL),
    and decodes in processes when ``RDAD_DECODE_PROCESSES`` is set."""

    def __init__(self, threads: Executor, decodes: Executor | None = None) -> None:
        self._threads = threads
        self._decodes = decodes or threads

    async def run(self, fn: Callable[[], T]) -> tuple[T, float]:
        return await asyncio.get_running_loop().run_in_executor(self._threads, timed, fn)

    async def decode(self, fn: Callable[[], T]) -> tuple[T, float]:
        # Processes: small JPEGs hit the GIL in threads. The work travels pickled: a partial of
        # a top-level function, no decoder object in it.
        return await asyncio.get_running_loop().run_in_executor(self._decodes, timed, fn)


class ServiceRuntime:
    def __init__(
        self, settings: Settings, metrics: Metrics, runner_hook: RunnerHook | None = None
    ) -> None:
        self.settings = settings
        self.metrics = metrics
        self.repository = ModelRepository(settings, metrics, self.open_version)
        self.models = self.repository.models
        """The serving version of each model (the repository's dict; failed and loading files
        are in ``repository.pending``, old versions in ``repository.draining``)."""
        self.draining = False
        self.cpu_pool = ThreadPoolExecutor(settings.cpu_worker_count, thread_name_prefix="rdad-cpu")
        self.decode_pool: Executor | None = None
        """Process pool for decoding (``decode_processes`` > 0), started in :meth:`start`."""
        self.jpeg_decoder: JpegDecoder | None = None
        """GPU JPEG decoder when ``gpu_decode`` is on and nvImageCodec works here."""
        self.memory = MemoryBudget(
            settings.memory_budget_bytes,
            pixel_reserve=settings.pixel_reserve_bytes,
            on_change=metrics.memory_in_use.set,
            workers=settings.decode_processes or settings.cpu_worker_count,
        )
        self._runner_hook = runner_hook
        self._drain_deadline: float | None = None  # time.monotonic() by which to be gone
        self._liveness: asyncio.Task[None] | None = None  # one of several workers only

    def open_version(self, name: str, engine: InferenceEngine, file: str) -> ServedModel:
        """A new version of ``name`` around a loaded engine, scoring in this service's pools."""
        runner = engine.run if self._runner_hook is None else self._runner_hook(name, engine.run)
        places = ScoringPlaces(
            PoolWorkers(self.cpu_pool, self.decode_pool), self.memory, self.jpeg_decoder
        )
        return open_served_model(name, engine, runner, self.settings, self.metrics, places, file)

    @property
    def default_model(self) -> str | None:
        return self.repository.default_model

    @property
    def ready(self) -> bool:
        return self.repository.readiness()[0] and not self.draining

    async def start(self) -> None:
        settings = self.settings
        if settings.decode_processes:
            # spawn, not fork: the parent may hold CUDA and ORT thread pools by then.
            self.decode_pool = ProcessPoolExecutor(
                settings.decode_processes, mp_context=multiprocessing.get_context("spawn")
            )
        if settings.gpu_decode and settings.device != "cpu":
            self.jpeg_decoder = await asyncio.to_thread(gpu_jpeg_decoder, settings.device_id)
        log.info(budget_cpu_threads(settings))
        await self.repository.start()
        if self.metrics.multiprocess:  # /metrics shows every worker's liveness (service.liveness)
            self._liveness = asyncio.create_task(keep_fresh(self), name="rdad-liveness")

    def get(self, name: str | None) -> ServedModel:
        """The named model (or the default one); raises :class:`ModelNotFoundError`, or
        :class:`NotReadyError` for a model that is loading or failed."""
        if name is None:
            if self.default_model is None:
                if not self.repository.names():
                    raise NotReadyError(
                        self.repository.why_nothing_serves(),
                        retry_after_s=self.settings.retry_after_s,
                    )
                raise ModelNotFoundError(
                    "no default model (several are served): use POST /models/{name}/predict"
                )
            name = self.default_model
        model = self.models.get(name)
        if model is None:
            if name in self.repository.pending:
                raise NotReadyError(
                    f"model {self.repository.describe(name)}",
                    retry_after_s=self.settings.retry_after_s,
                )
            raise ModelNotFoundError(f"unknown model '{name[:64]}'")
        return model

    @contextlib.contextmanager
    def lease(self, name: str | None) -> Iterator[ServedModel]:
        """:meth:`get`, held for one request: a version replaced meanwhile (hot reload) finishes
        this request before it is released."""
        with self.get(name).lease() as model:
            yield model

    def begin_drain(self) -> None:
        """SIGTERM: report not-ready at once; requests keep being served until the server stops."""
        if not self.draining:
            self._drain_deadline = time.monotonic() + self.settings.grace_period_s
        self.draining = True

    async def stop(self) -> None:
        """Finish queued work within what is left of the grace period, then release everything."""
        self.draining = True
        deadline = self._drain_deadline or time.monotonic() + self.settings.grace_period_s
        if self._liveness is not None:
            self._liveness.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._liveness
        await self.repository.stop(deadline)
        self.cpu_pool.shutdown(wait=False, cancel_futures=True)
        if self.decode_pool is not None:
            self.decode_pool.shutdown(wait=False, cancel_futures=True)
