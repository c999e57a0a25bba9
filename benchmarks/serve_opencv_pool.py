"""``rdad serve`` with OpenCV's default thread pool restored: the "before" side of the A/B of the
service's CPU thread budget (``service/runtime.py``), for the batch-1 gap figures in README.

    python benchmarks/serve_opencv_pool.py serve --model-dir DIR --port 8766

Same arguments as ``rdad``; only the thread budget's ``cv2.setNumThreads(1)`` is undone.
"""

from __future__ import annotations

import sys

import cv2

import rdad.service.runtime as threads
from rdad.service.settings import Settings

_budget = threads.budget_cpu_threads


def _with_opencv_pool(settings: Settings) -> str:
    text = _budget(settings)
    cv2.setNumThreads(-1)  # OpenCV's default pool again
    return f"{text} [A/B: OpenCV pool restored, {cv2.getNumThreads()} threads]"


if __name__ == "__main__":
    # Patched before the app module imports the function by name.
    threads.budget_cpu_threads = _with_opencv_pool
    from rdad.cli import main

    sys.exit(main())
