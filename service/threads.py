"""CPU thread budget of the service: inference threads and image threads must not oversubscribe.

Rule, for C usable cores:

* the inference runtime (ONNX Runtime intra-op pool or OpenVINO) gets C threads
  (``RDAD_INTRA_OP_THREADS`` = 0 keeps the runtime's own default, one per physical core): on a
  CPU host inference is the bottleneck and one batch runs at a time;
* decoding and PNG encoding run in the CPU pool, ``RDAD_CPU_WORKERS`` threads (default C), each
  **single-threaded inside OpenCV**. Parallelism across uploads comes from the pool; OpenCV's own
  pool would add up to C more threads per resize on top of it, which then compete with the
  runtime's threads for the same cores — and a runtime thread that loses its core stalls every
  other one at the next layer's barrier.

So at most C inference threads plus C image threads exist, and image work at full load
interleaves with inference through the OS scheduler instead of multiplying threads.
"""

from __future__ import annotations

import cv2

from .settings import Settings


def budget_cpu_threads(settings: Settings) -> str:
    """Apply the rule above (process-wide) and describe it for the log."""
    cv2.setNumThreads(1)
    runtime = settings.intra_op_threads or "runtime default (one per physical core)"
    return (
        f"thread budget: inference {runtime}; image pool {settings.cpu_worker_count} worker(s), "
        "OpenCV single-threaded in each"
    )
