"""The running service: models with their batchers, the CPU pool, readiness and draining.

Lifecycle (driven by the app's lifespan): :meth:`ServiceRuntime.start` loads every model (a broken
model repository fails the start, loudly) and starts their batchers, then warm-up runs in the
background so that liveness answers while a long warm-up (cuDNN search, TensorRT engine builds)
is in progress; ``/readyz`` turns 200 only when every model is warm. :meth:`begin_drain` (SIGTERM)
turns readiness off at once; :meth:`stop` lets queued work finish, bounded by the grace period.
"""

from __future__ import annotations

import asyncio
import enum
import logging
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from .admission import ModelAdmission, PixelBudget
from .batcher import Batcher, Runner
from .engine import Engine, warmup_batch
from .errors import ModelLoadError, ModelNotFoundError
from .metrics import Metrics
from .registry import choose_default, discover_models
from .settings import Settings

log = logging.getLogger("rdad.service")

RunnerHook = Callable[[str, Runner], Runner]
"""Wraps a model's runner (``name, engine.run`` → runner); tests use it to inject slow or failing
inference around the real engine."""


class ModelState(enum.StrEnum):
    WARMING = "warming"
    READY = "ready"
    FAILED = "failed"


@dataclass
class ServedModel:
    name: str
    engine: Engine
    runner: Runner
    batcher: Batcher
    admission: ModelAdmission
    state: ModelState = ModelState.WARMING
    error: str | None = None


class ServiceRuntime:
    def __init__(
        self, settings: Settings, metrics: Metrics, runner_hook: RunnerHook | None = None
    ) -> None:
        self.settings = settings
        self.metrics = metrics
        self.models: dict[str, ServedModel] = {}
        self.default_model: str | None = None
        self.draining = False
        self.cpu_pool = ThreadPoolExecutor(settings.cpu_worker_count, thread_name_prefix="rdad-cpu")
        self.pixel_budget = PixelBudget(
            settings.pixel_budget_bytes, on_change=metrics.pixel_budget_in_use.set
        )
        self._runner_hook = runner_hook
        self._warmup_task: asyncio.Task[None] | None = None
        self._drain_deadline: float | None = None  # time.monotonic() by which to be gone

    @property
    def ready(self) -> bool:
        states = [m.state for m in self.models.values()]
        return bool(states) and all(s is ModelState.READY for s in states) and not self.draining

    async def start(self) -> None:
        settings = self.settings
        paths = discover_models(settings.model_dir)
        if not paths:
            raise ModelLoadError(
                f"no models in {settings.model_dir} (expected NAME.onnx or NAME/model.onnx)"
            )
        self.default_model = choose_default(list(paths), settings.default_model)
        for name, path in paths.items():
            engine = await asyncio.to_thread(Engine.load, name, path, settings)
            runner = (
                engine.run if self._runner_hook is None else self._runner_hook(name, engine.run)
            )
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
                metrics=self.metrics.for_model(name),
                admission=admission,
            )
            batcher.start()
            self.models[name] = ServedModel(name, engine, runner, batcher, admission)
            meta = engine.metadata
            self.metrics.model_info.labels(
                name, meta.model_version, engine.provider, str(meta.image_size), meta.backbone
            ).set(1)
            self.metrics.model_ready.labels(name).set(0)
        self._warmup_task = asyncio.create_task(self._warm_up(), name="rdad-warmup")

    async def _warm_up(self) -> None:
        loop = asyncio.get_running_loop()
        for model in self.models.values():
            sizes = model.engine.warmup_batch_sizes(self.settings)
            start = time.perf_counter()
            try:
                for size in sizes:
                    batch = warmup_batch(size, model.engine.image_size)
                    # On the model's own inference thread: no request can run concurrently.
                    began = loop.time()
                    await loop.run_in_executor(model.batcher.executor, model.runner, batch)
                    # A first guess for admission's wait estimates; real batches refine it.
                    model.admission.latency.record(size, loop.time() - began, provisional=True)
            except Exception as exc:
                model.state, model.error = ModelState.FAILED, f"warm-up failed: {exc}"
                log.error("model %s: warm-up failed; it will not serve", model.name, exc_info=exc)
                continue
            model.state = ModelState.READY
            self.metrics.model_ready.labels(model.name).set(1)
            log.info(
                "model %s warm on %s (batch sizes %s) in %.2f s",
                model.name,
                model.engine.provider,
                ",".join(map(str, sizes)),
                time.perf_counter() - start,
            )
        if self.ready:
            log.info("ready: %d model(s), default %s", len(self.models), self.default_model)

    def get(self, name: str | None) -> ServedModel:
        """The named model (or the default one); raises :class:`ModelNotFoundError`."""
        if name is None:
            if self.default_model is None:
                raise ModelNotFoundError(
                    "no default model (several are served): use POST /models/{name}/predict"
                )
            name = self.default_model
        model = self.models.get(name)
        if model is None:
            raise ModelNotFoundError(f"unknown model '{name[:64]}'")
        return model

    def begin_drain(self) -> None:
        """SIGTERM: report not-ready at once; requests keep being served until the server stops."""
        if not self.draining:
            self._drain_deadline = time.monotonic() + self.settings.grace_period_s
        self.draining = True

    async def stop(self) -> None:
        """Finish queued work within what is left of the grace period, then release everything."""
        self.draining = True
        if self._warmup_task and not self._warmup_task.done():
            self._warmup_task.cancel()
        deadline = self._drain_deadline or time.monotonic() + self.settings.grace_period_s
        for model in self.models.values():
            await model.batcher.close(timeout_s=max(0.0, deadline - time.monotonic()))
        self.cpu_pool.shutdown(wait=False, cancel_futures=True)
