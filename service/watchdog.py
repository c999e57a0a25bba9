"""Liveness that notices a stuck model: the batch collector task's death, or a batch that has run
for longer than ``RDAD_STUCK_BATCH_S`` (a hung CUDA call, a deadlocked provider).

Either way every request would end in 503/504 while the process itself looks fine, so
``/healthz`` answers 503 with the reasons and Kubernetes restarts the pod. The check is computed
when asked (``/healthz``, ``/v2/health/live``, ``/metrics``), not by another background task that
could itself die unnoticed.
"""

from __future__ import annotations

import asyncio

from .runtime import ServiceRuntime

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
