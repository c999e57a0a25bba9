"""The model repository at run time: which models the folder holds, in which state, and changes.

Every ``NAME.onnx`` / ``NAME/model.onnx`` goes loading → warming → ready; a file that cannot load
or warm up is *failed*, with the reason, and the others serve. With polling on
(``RDAD_MODEL_POLL_S`` > 0, the default) the folder is read again every interval: a new file is
loaded, a changed file replaces the serving version, a removed file's model is drained and dropped.
A change is acted on once two polls in a row see the same file (a file still being copied is not
loaded half-written), and a failed file is tried again when it changes. ``POST
/models/{name}/reload`` (:meth:`ModelRepository.reload`) does the same for one model at once; with
several worker processes the others are asked to follow (:mod:`service.reload_requests`).

Replacement fails no request: a request holds a *lease* on the version it was routed to
(:meth:`ServedModel.lease`); the new version takes new requests as soon as it is warm, the old one
is *draining* until its last lease ends (bounded by the request timeout), then closed. For that
while both versions are in (GPU) memory.

A missing folder keeps serving what is loaded (a flaky mount must not unload every model); only an
existing folder that lacks a file removes its model.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from .engine import InferenceEngine, load_engine
from .errors import ModelLoadError, ModelNotFoundError
from .metrics import Metrics
from .model_folder import FolderScan, Signature, relative_name, scan_folder
from .model_gauges import ModelStateGauges
from .model_version import ModelState, PendingModel, ServedModel, warm_up
from .reload_requests import ReloadRequests
from .settings import Settings

log = logging.getLogger("rdad.service.repository")

VersionFactory = Callable[[str, InferenceEngine, str], ServedModel]
"""``(name, loaded engine, file)`` → a new version with its batcher started
(:meth:`service.runtime.ServiceRuntime.open_version`)."""


@dataclass
class _Seen:
    """What the repository last did with a name's file: loading is retried only on change."""

    file: str
    signature: Signature


class ModelRepository:
    """The models of one service: loading, warm-up, polling, reload, draining, readiness."""

    def __init__(self, settings: Settings, metrics: Metrics, open_version: VersionFactory) -> None:
        self.settings = settings
        self.metrics = metrics
        self._open_version = open_version
        self.models: dict[str, ServedModel] = {}
        """The serving version per name (warming or ready)."""
        self.pending: dict[str, PendingModel] = {}
        """Files being loaded or failed, by name (a name may also have a serving version)."""
        self.draining: list[ServedModel] = []
        self.folder_problem: str | None = None
        self.started = False
        """The models found at start are loaded and warm (or failed)."""
        self.start_error: str | None = None
        """Why :meth:`start` refused (polling off and nothing can serve)."""
        self._seen: dict[str, _Seen] = {}
        self._last_scan: FolderScan | None = None
        self._lock = asyncio.Lock()  # one change at a time: poll, reload
        self._task: asyncio.Task[None] | None = None
        self._requests = ReloadRequests.for_settings(settings)  # several workers, else None
        self._follow: asyncio.Task[None] | None = None
        self._drains: set[asyncio.Task[None]] = set()
        self._gauges = ModelStateGauges(metrics)

    # --- queries ------------------------------------------------------------------------------

    @property
    def poll_s(self) -> float:
        return self.settings.model_poll_s

    @property
    def default_model(self) -> str | None:
        """The configured default, or the only model the folder holds (even if it failed: then
        ``POST /predict`` says why it cannot answer)."""
        if self.settings.default_model is not None:
            return self.settings.default_model
        names = self.names()
        return names[0] if len(names) == 1 else None

    def names(self) -> list[str]:
        return sorted(set(self.models) | set(self.pending))

    def readiness(self) -> tuple[bool, str | None]:
        """``(ready, why not)``: ready once the start-up models are warm, at least one model is
        ready and the configured default (if any) is; failed models are listed, not waited for."""
        if not self.started:
            return False, "loading and warming up models"
        default = self.settings.default_model
        if default is not None:
            model = self.models.get(default)
            if model is None or model.state is not ModelState.READY:
                return False, f"default model {self.describe(default)}"
        if any(m.state is ModelState.READY for m in self.models.values()):
            return True, None
        return False, self.why_nothing_serves()

    def why_nothing_serves(self) -> str:
        watching = (
            f"; checking the folder every {self.poll_s:g} s (RDAD_MODEL_POLL_S)"
            if self.poll_s
            else ""
        )
        if self.folder_problem is not None:
            return self.folder_problem + watching
        if self.models:
            return "models are warming up"
        reasons = "; ".join(self.describe(name) for name in sorted(self.pending))
        # Answers never show paths (this reaches the open /readyz): "the model folder".
        return f"no model could be loaded from the model folder: {reasons}{watching}"

    def describe(self, name: str) -> str:
        """``'NAME' is STATE[: reason]`` for messages."""
        entry: ServedModel | PendingModel | None = self.models.get(name) or self.pending.get(name)
        if entry is None:
            return f"'{name}' is not in the model folder"
        reason = f": {entry.error}" if entry.error else ""
        return f"'{name}' is {entry.state}{reason}"

    # --- lifecycle ----------------------------------------------------------------------------

    async def start(self) -> None:
        """Load every model found (before the port opens); warm-up and polling continue in the
        background. Raises :class:`ModelLoadError` only with polling off, when nothing loads."""
        scan = scan_folder(self.settings.model_dir)
        self._last_scan = scan
        self.folder_problem = scan.problem
        for name, (path, signature) in scan.files.items():
            model = await self._load(name, scan, path, signature)
            if model is not None:
                self.models[name] = model
                self._clear_pending(name)
                self._publish(model)
        for name, reason in scan.conflicts.items():
            self._fail(name, "", reason)
        if not self.poll_s:
            problem = None
            default = self.settings.default_model
            if not self.models:
                problem = self.why_nothing_serves()
            elif default is not None and default not in scan.files:
                problem = f"default model '{default}' is not among {self.names()}"
            if problem is not None:
                self.start_error = problem
                log.error("%s (RDAD_MODEL_POLL_S=0: not waiting for models)", problem)
                raise ModelLoadError(problem)
        if self.folder_problem:
            log.error("%s: %s", self.settings.model_dir, self.why_nothing_serves())
        for name in sorted(self.pending):
            log.error("model %s", self.describe(name))
        self._task = asyncio.create_task(self._run(), name="rdad-model-repository")
        if self._requests is not None:
            follow = self._requests.follow(lambda name: self._reload(name, announce=False))
            self._follow = asyncio.create_task(follow, name="rdad-reload-requests")

    async def _run(self) -> None:
        async with self._lock:
            for model in list(self.models.values()):
                if not await self._warm(model):
                    self.models.pop(model.name, None)
                    self._unpublish(model)
                    await model.batcher.close(timeout_s=0)
            self.started = True
            ready = [n for n, m in self.models.items() if m.state is ModelState.READY]
            if ready:
                log.info("ready: %s (default %s)", ", ".join(ready), self.default_model)
        while self.poll_s:
            await asyncio.sleep(self.poll_s)
            try:
                await self.poll()
            except Exception:  # a poll must never end the watch
                log.exception("model folder poll failed; trying again in %g s", self.poll_s)

    async def stop(self, deadline: float) -> None:
        """Stop polling; let every version finish its queued work until ``deadline``
        (``time.monotonic()``), then release it."""
        for task in (self._task, self._follow):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        for task in list(self._drains):
            task.cancel()
        for model in [*self.models.values(), *self.draining]:
            await model.batcher.close(timeout_s=max(0.0, deadline - time.monotonic()))

    # --- changes ------------------------------------------------------------------------------

    async def poll(self) -> None:
        """Act on what changed since the last two scans (see the module docstring)."""
        async with self._lock:
            # A thread: on network storage a directory listing can take a while.
            scan = await asyncio.to_thread(scan_folder, self.settings.model_dir)
            previous, self._last_scan = self._last_scan, scan
            was_problem, self.folder_problem = self.folder_problem, scan.problem
            if scan.problem and scan.problem != was_problem:
                log.warning("%s: %s", scan.folder, scan.problem)
            if not scan.exists:
                return  # keep serving: a folder that went away is more often a mount hiccup
            before = previous.files if previous is not None else {}
            for name, (path, signature) in scan.files.items():
                seen = self._seen.get(name)
                file = relative_name(scan.folder, path)
                if seen is not None and seen == _Seen(file, signature):
                    continue  # loaded (or tried) exactly this file already
                if before.get(name) != (path, signature):
                    continue  # new or still changing: act once two polls agree
                await self._replace(name, scan, path, signature)
            gone = set(self.names()) - set(scan.files) - set(scan.conflicts) - set(before)
            for name in sorted(gone):
                self._remove(name)
            for name, reason in scan.conflicts.items():
                if name not in self.pending or self.pending[name].error != reason:
                    self._fail(name, "", reason)

    async def reload(self, name: str) -> ServedModel:
        """Load ``name``'s file now and swap it in once warm; other workers are asked to do the
        same. Raises :class:`ModelNotFoundError` (no such file) or :class:`ModelLoadError` (the
        reason; a previous version keeps serving)."""
        return await self._reload(name, announce=True)

    async def _reload(self, name: str, *, announce: bool) -> ServedModel:
        async with self._lock:
            # A thread: on network storage a directory listing can take a while.
            scan = await asyncio.to_thread(scan_folder, self.settings.model_dir)
            if name in scan.conflicts:
                raise ModelLoadError(scan.conflicts[name])
            if name not in scan.files:
                raise ModelNotFoundError(f"no file for model '{name[:64]}' in the model folder")
            path, signature = scan.files[name]
            if announce and self._requests is not None:
                self._requests.announce(name)  # now: the others load while this one does
            model = await self._replace(name, scan, path, signature)
            if model is None:
                pending = self.pending[name]
                still = self.models.get(name)
                keeps = f"; version {still.version} keeps serving" if still else ""
                raise ModelLoadError(f"model '{name}': {pending.error}{keeps}")
            return model

    async def _replace(
        self, name: str, scan: FolderScan, path: Path, signature: Signature
    ) -> ServedModel | None:
        old = self.models.get(name)
        log.info("model %s: %s %s", name, "reloading from" if old else "loading", path.name)
        new = await self._load(name, scan, path, signature)
        if new is None:
            return None
        self.pending[name].warming()
        self._publish(self.pending[name])
        if not await self._warm(new):
            await new.batcher.close(timeout_s=0)
            return None
        self.models[name] = new
        self._clear_pending(name)
        self._publish(new)
        if old is not None:
            log.info("model %s: version %s replaces %s", name, new.version, old.version)
            self._retire(old)
        return new

    def _remove(self, name: str) -> None:
        log.info("model %s: its file left the model folder; draining it", name)
        self._clear_pending(name)
        self._seen.pop(name, None)
        model = self.models.pop(name, None)
        if model is not None:
            self._retire(model)
        self._gauges.forget(name)

    def _clear_pending(self, name: str) -> None:
        pending = self.pending.pop(name, None)
        if pending is not None:
            self._unpublish(pending)

    def _retire(self, model: ServedModel) -> None:
        model.drain()
        self.draining.append(model)
        self._publish(model)
        task = asyncio.create_task(self._drain(model), name=f"rdad-drain-{model.name}")
        self._drains.add(task)
        task.add_done_callback(self._drains.discard)

    async def _drain(self, model: ServedModel) -> None:
        # Every request routed to this version has a deadline within request_timeout_s of now.
        end = time.monotonic() + self.settings.request_timeout_s + 1.0
        while model.leases and time.monotonic() < end:
            await asyncio.sleep(0.02)
        await model.batcher.close(timeout_s=max(0.0, end - time.monotonic()))
        self.draining.remove(model)
        self._unpublish(model)
        log.info("model %s: version %s drained and released", model.name, model.version)

    # --- one model ----------------------------------------------------------------------------

    async def _load(
        self, name: str, scan: FolderScan, path: Path, signature: Signature
    ) -> ServedModel | None:
        file = relative_name(scan.folder, path)
        self._seen[name] = _Seen(file, signature)
        self._clear_pending(name)
        entry = PendingModel(name, file, ModelState.LOADING)
        self.pending[name] = entry
        self._publish(entry)
        try:
            engine = await asyncio.to_thread(load_engine, name, path, self.settings)
        except Exception as exc:  # ModelLoadError, or anything else from a file we do not control
            reason = exc.detail if isinstance(exc, ModelLoadError) else f"cannot be loaded: {exc}"
            # ONNX Runtime quotes the full path: answers name the file relative to the folder.
            self._fail(name, file, reason.replace(str(path), file))
            return None
        model = self._open_version(name, engine, file)
        self.metrics.model_loads.labels(name, "ok").inc()
        return model

    async def _warm(self, model: ServedModel) -> bool:
        start = time.perf_counter()
        try:
            sizes = await warm_up(model, self.settings)
        except Exception as exc:
            log.error("model %s: warm-up failed; it will not serve", model.name, exc_info=exc)
            self._fail(model.name, model.file, f"warm-up failed: {exc}")
            return False
        model.ready()
        self._publish(model)
        log.info(
            "model %s (version %s) warm on %s (batch sizes %s) in %.2f s",
            model.name,
            model.version,
            model.engine.provider,
            ",".join(map(str, sizes)),
            time.perf_counter() - start,
        )
        return True

    def _fail(self, name: str, file: str, reason: str) -> None:
        entry = PendingModel(name, file, ModelState.FAILED, reason)
        self._clear_pending(name)
        self.pending[name] = entry
        self._publish(entry)
        self.metrics.model_loads.labels(name, "failed").inc()
        log.error("model %s failed: %s", name, reason)

    # --- metrics ----------------------------------------------------------------------------

    def _publish(self, entry: ServedModel | PendingModel) -> None:
        self._gauges.publish(entry, serving=self.models.get(entry.name))

    def _unpublish(self, entry: ServedModel | PendingModel) -> None:
        self._gauges.unpublish(entry)
