"""The liveness checks behind ``/healthz`` (:mod:`service.routes.monitoring`): a batch collector
task that died, or a batch running for longer than ``RDAD_STUCK_BATCH_S``; and the gauges that
show them (``rdad_live``, ``rdad_liveness_failure``, ``rdad_batch_running_seconds``).

A single process computes them when asked (``/healthz``, ``/metrics``), never in a background
task that could itself die unnoticed. Under ``rdad serve --workers N`` a scrape is answered by one
worker, which can only check itself; so each worker also refreshes its own gauges every
:data:`REFRESH_S` (:func:`keep_fresh`), and ``/metrics`` shows every worker's state, at most that
old.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .runtime import ServiceRuntime

REFRESH_S = 1.0

DEAD_COLLECTOR = "collector_dead"
STUCK_BATCH = "batch_stuck"


def liveness_failures(runtime: ServiceRuntime) -> list[str]:
    """Reasons the service is not alive (empty when it is); updates the liveness metrics."""
    now = asyncio.get_running_loop().time()
    limit = runtime.settings.stuck_batch_s
    metrics = runtime.metrics
    reasons: list[str] = []
    for name, model in runtime.models.items():
        dead = model.batcher.collector_failure()
        if dead is not None:
            reasons.append(dead)
        running = model.batcher.running()
        running_s = 0.0 if running.since is None else now - running.since
        stuck = running_s > limit
        if stuck:
            expected = model.batcher.latency.expected(running.images)
            hint = f", expected about {expected:.2f} s" if expected is not None else ""
            reasons.append(
                f"model '{name}': a batch of {running.images} has been running for "
                f"{running_s:.1f} s (limit {limit:g} s{hint})"
            )
        metrics.batch_running.labels(name).set(running_s)
        metrics.liveness_failure.labels(name, DEAD_COLLECTOR).set(int(dead is not None))
        metrics.liveness_failure.labels(name, STUCK_BATCH).set(int(stuck))
    metrics.live.set(int(not reasons))
    return reasons


async def keep_fresh(runtime: ServiceRuntime) -> None:
    """Refresh this worker's liveness gauges every :data:`REFRESH_S`, until cancelled."""
    while True:
        liveness_failures(runtime)
        await asyncio.sleep(REFRESH_S)
