"""``rdad serve --workers N``: N server processes on one port.

The supervisor (the process ``rdad serve`` started) prepares the folder the workers share
(:mod:`service.run_dir`: prometheus-client's multiprocess files, reload requests) and starts N
workers — spawned, not forked, so that none inherits a thread pool or a CUDA context. Each worker
runs the whole service: its own app, models, batchers and event loop, under
:class:`service.server.GracefulServer`.

*The port.* Each worker gets its own listening socket on the port (``SO_REUSEPORT``), bound by the
supervisor and listening once the worker's models are loaded; the kernel spreads new connections
over the listening sockets by a hash of their addresses. With one shared socket, the worker whose
event loop woke first accepted a whole burst of connections: 32 keep-alive connections opened at
once all went to one worker (benchmarks/workers.py), which left the other idle. Before binding,
the supervisor makes sure nothing listens on the port yet: ``SO_REUSEPORT`` would otherwise let a
second ``rdad serve`` of the same user share it silently.

Not uvicorn's own ``workers=N``: it shares one socket (above); its workers run a plain
``uvicorn.Server``, without this service's SIGTERM sequence (readiness off, drain delay, then
drain); and it neither prepares prometheus-client's folder nor tells it when a worker has ended.

*Signals.* SIGTERM or SIGINT to the supervisor is passed to every worker, which then shuts down
exactly as a single process does; the supervisor waits for all of them (SIGKILL for any still
running :data:`KILL_MARGIN_S` after the grace period) and exits 0 when every worker did. Workers
run in their own process group, so that Ctrl-C in a terminal reaches each of them once, through
the supervisor (a second signal would cut its drain short); a worker whose supervisor was killed
shuts itself down.

*Failures.* A worker that ends on its own is replaced, after its ``live*`` gauges are dropped
(``mark_process_dead``); one that fails to start (exit status 3: polling off and no model loads)
stops the service with that status, as a single process would.
"""

from __future__ import annotations

import contextlib
import logging
import multiprocessing
import os
import signal
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass
from multiprocessing.connection import wait
from multiprocessing.process import BaseProcess
from pathlib import Path
from types import FrameType

from prometheus_client.multiprocess import mark_process_dead
from uvicorn.config import STARTUP_FAILURE

from .resources import MIB, default_memory_budget, memory_limit_bytes
from .run_dir import METRICS_ENV, RunDir, prepare_run_dir
from .settings import Settings

log = logging.getLogger("rdad.service")

WorkerTarget = Callable[[Settings, list[socket.socket], int], None]
"""Runs one worker: ``(its settings, the listening sockets, its index)``. A module-level
function: it travels to the spawned process by name."""

KILL_MARGIN_S = 5.0
RESTART_PAUSE_S = 1.0
"""A worker that keeps dying is restarted at most this often."""


def worker_settings(settings: Settings, run_dir: Path) -> Settings:
    """Each worker's settings: the shared folder, and the thread counts and memory budget left
    at their defaults split between the workers (each default is sized for one process owning
    the machine; N of them would oversubscribe it N times)."""
    count = settings.workers
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    share = max(1, (cpus or 1) // count)
    update: dict[str, object] = {"run_dir": run_dir}
    if not settings.intra_op_threads:
        update["intra_op_threads"] = share
    if not settings.cpu_workers:
        update["cpu_workers"] = share
    if settings.memory_budget_mb is None:
        limit = memory_limit_bytes()
        share_bytes = None if limit is None else limit // count
        budget = default_memory_budget(settings.max_pixels, settings.max_upload_bytes, share_bytes)
        update["memory_budget_mb"] = budget / MIB
    return settings.model_copy(update=update)


def _family(host: str) -> socket.AddressFamily:
    return socket.AF_INET6 if ":" in host else socket.AF_INET


def port_in_use(host: str, port: int) -> OSError | None:
    """Why ``port`` cannot be ours (something listens on it), or ``None``. Bound as uvicorn binds
    (``SO_REUSEADDR``: connections of a previous run in TIME_WAIT do not count)."""
    with socket.socket(_family(host)) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))
        except OSError as exc:
            return exc
    return None


def listener(host: str, port: int) -> socket.socket:
    """One worker's socket on the shared port (not listening yet: its server starts that)."""
    sock = socket.socket(_family(host))
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    try:
        sock.bind((host, port))
    except OSError:
        sock.close()
        raise
    return sock


def _worker_main(target: WorkerTarget, settings: Settings, sockets: list[socket.socket],
                 index: int) -> None:  # fmt: skip
    os.setpgid(0, 0)  # signals reach it through the supervisor only (module docstring)
    target(settings, sockets, index)


@dataclass
class _Worker:
    index: int
    process: BaseProcess
    started_at: float
    reaped: bool = False


class Supervisor:
    """Starts, watches and stops the workers of one ``rdad serve --workers N``."""

    def __init__(self, settings: Settings, target: WorkerTarget) -> None:
        self.settings = settings
        self._target = target
        self._context = multiprocessing.get_context("spawn")
        self._signals: list[int] = []
        # Wakes the loop the moment a signal is recorded: readiness turns off in every worker
        # as promptly as in a single process.
        self._wakeup_read, self._wakeup_write = os.pipe()
        for fd in (self._wakeup_read, self._wakeup_write):
            os.set_blocking(fd, False)
        self._workers: list[_Worker] = []
        self._stop_at: float | None = None  # time.monotonic() of the SIGKILL, once stopping
        self._status = 0
        self._port = settings.port  # the one chosen by the first bind, when 0 was asked for

    def run(self) -> int:
        """Serve until a signal (or a failed start); the exit status."""
        host = self.settings.host
        problem = port_in_use(host, self._port) if self._port else None
        if problem is not None:
            log.error("cannot listen on %s port %d: %s", host, self._port, problem)
            return STARTUP_FAILURE
        run_dir = prepare_run_dir(self.settings.run_dir)
        # Read by prometheus-client when a worker first imports it.
        os.environ[METRICS_ENV] = str(run_dir.metrics)
        settings = worker_settings(self.settings, run_dir.path)
        log.info(
            "%d workers sharing %s; each: %s inference thread(s), %s image thread(s), a %.0f MiB "
            "memory budget", settings.workers, run_dir.path, settings.intra_op_threads,
            settings.cpu_workers, settings.memory_budget_mb or 0,
        )  # fmt: skip
        handled = (signal.SIGTERM, signal.SIGINT)
        previous = {sig: signal.signal(sig, self._on_signal) for sig in handled}
        try:
            for index in range(settings.workers):
                self._start(index, settings)
            log.info("listening on http://%s:%d", host, self._port)
            self._supervise(settings, run_dir)
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)
            for worker in self._workers:  # only after an error in this loop itself
                if worker.process.is_alive():
                    worker.process.kill()
            run_dir.remove()
            os.close(self._wakeup_read)
            os.close(self._wakeup_write)
            os.environ.pop(METRICS_ENV, None)
        return self._status

    def _on_signal(self, sig: int, frame: FrameType | None) -> None:
        self._signals.append(sig)  # acted on in the loop: a signal handler only records
        with contextlib.suppress(BlockingIOError):  # full: the loop is awake already
            os.write(self._wakeup_write, b"!")

    def _start(self, index: int, settings: Settings) -> None:
        # A new socket per start: closed here once the worker has its copy, it leaves the port
        # with that worker (connections then go to the others, never to a socket nobody serves).
        with listener(settings.host, self._port) as sock:
            self._port = sock.getsockname()[1]
            process = self._context.Process(
                target=_worker_main,
                args=(self._target, settings, [sock], index),
                name=f"rdad-worker-{index}",
            )
            process.start()
        worker = _Worker(index, process, time.monotonic())
        if index < len(self._workers):
            self._workers[index] = worker
        else:
            self._workers.append(worker)
        log.info("worker %d started (pid %s)", index, process.pid)

    def _stop(self, sig: int) -> None:
        if self._stop_at is None:
            self._stop_at = time.monotonic() + self.settings.grace_period_s + KILL_MARGIN_S
        for worker in self._workers:
            if worker.process.is_alive() and worker.process.pid is not None:
                os.kill(worker.process.pid, sig)

    def _supervise(self, settings: Settings, run_dir: RunDir) -> None:
        while True:
            running = [w.process.sentinel for w in self._workers if w.process.exitcode is None]
            wait([*running, self._wakeup_read], timeout=0.2)
            with contextlib.suppress(BlockingIOError):
                os.read(self._wakeup_read, 4096)
            while self._signals:
                sig = self._signals.pop(0)
                log.info("%s: passed on to every worker", signal.Signals(sig).name)
                self._stop(sig)
            for worker in self._workers:
                self._reap(worker, run_dir)
            if self._stop_at is None:
                self._replace_ended(settings)
                continue
            if all(w.reaped for w in self._workers):
                return
            if time.monotonic() > self._stop_at:
                for worker in self._workers:
                    if worker.process.is_alive():
                        log.error("worker %d did not stop in time: killed", worker.index)
                        worker.process.kill()
                        self._status = self._status or 1
                self._stop_at = float("inf")  # their ends are reaped in the next rounds

    def _reap(self, worker: _Worker, run_dir: RunDir) -> None:
        code = worker.process.exitcode
        if code is None or worker.reaped:
            return
        worker.reaped = True
        if worker.process.pid is not None:
            mark_process_dead(worker.process.pid, str(run_dir.metrics))
        if self._stop_at is not None:
            if code != 0:
                self._status = self._status or 1
            return
        if code == STARTUP_FAILURE:
            log.error("worker %d could not start: stopping every worker", worker.index)
            self._status = STARTUP_FAILURE
            self._stop(signal.SIGTERM)

    def _replace_ended(self, settings: Settings) -> None:
        for worker in self._workers:
            if not worker.reaped or time.monotonic() < worker.started_at + RESTART_PAUSE_S:
                continue
            log.warning(
                "worker %d (pid %s) ended with status %s: starting a new one",
                worker.index, worker.process.pid, worker.process.exitcode,
            )  # fmt: skip
            self._start(worker.index, settings)
