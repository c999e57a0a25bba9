"""uvicorn with the shutdown sequence orchestrators expect.

On SIGTERM: (1) ``/readyz`` answers 503 at once; (2) the server keeps accepting and serving for
``drain_delay_s`` so that load balancers, which poll readiness, stop routing here before the port
closes; (3) uvicorn stops accepting, lets queued and in-flight requests finish for at most the rest
of ``grace_period_s``, then runs the lifespan shutdown; (4) the process exits 0. SIGINT (Ctrl-C)
skips the delay; a second signal skips the waiting.

One worker per GPU: this runs a single process. Concurrency comes from the batcher: worker
processes would each hold a copy of the model and a CUDA context and time-slice the device.
"""

from __future__ import annotations

import logging
import math
import signal
import time
from collections.abc import Callable
from types import FrameType

import uvicorn

log = logging.getLogger("rdad.service")


class GracefulServer(uvicorn.Server):
    def __init__(
        self, config: uvicorn.Config, *, on_drain: Callable[[], None], drain_delay_s: float
    ) -> None:
        super().__init__(config)
        self._on_drain = on_drain
        self._drain_delay_s = drain_delay_s
        self._stop_at: float | None = None
        self._announced = False

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        # Runs in the signal handler: only flags are set here; the main loop acts on them.
        self._on_drain()
        if sig == signal.SIGTERM and self._stop_at is None and not self.should_exit:
            self._stop_at = time.monotonic() + self._drain_delay_s
            return  # not recorded as captured: uvicorn would re-raise it and exit with -15
        if sig == signal.SIGTERM:
            if self.should_exit:
                self.force_exit = True
            self.should_exit = True
            return
        super().handle_exit(sig, frame)

    async def on_tick(self, counter: int) -> bool:
        if self._stop_at is not None and not self._announced:
            self._announced = True  # logged here, not in the signal handler (logging takes locks)
            log.info(
                "SIGTERM: /readyz answers 503; still serving for %.1f s, then draining",
                self._drain_delay_s,
            )
        if self._stop_at is not None and time.monotonic() >= self._stop_at:
            self.should_exit = True
        return await super().on_tick(counter)


def graceful_timeout(grace_period_s: float, drain_delay_s: float) -> int:
    """Seconds uvicorn may wait for requests after it stops accepting (at least 1)."""
    return max(1, math.floor(grace_period_s - drain_delay_s))
