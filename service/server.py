"""uvicorn with the shutdown sequence orchestrators expect.

On SIGTERM: (1) ``/readyz`` answers 503 at once; (2) the server keeps accepting and serving for
``drain_delay_s`` so that load balancers, which poll readiness, stop routing here before the port
closes; (3) uvicorn stops accepting, lets queued and in-flight requests finish for at most the rest
of ``grace_period_s``, then runs the lifespan shutdown; (4) the process exits 0. SIGINT (Ctrl-C)
skips the delay; a second signal skips the waiting.

One process by default: concurrency comes from the batcher. Where one event loop is the limit
(small models on a fast GPU), ``rdad serve --workers N`` runs N of these servers on one port
(:mod:`service.workers`), each holding its own copy of the models (and a CUDA context).

Connection limits, set deliberately (:func:`uvicorn_config`): uvicorn itself bounds neither how
long a client may take to send its headers nor how large they grow (httptools buffers them all).
:class:`HeaderDeadline` does both at the protocol level — a connection whose request headers are
not complete ``RDAD_READ_TIMEOUT_S`` after it opened (or after its previous answer) gets 408 and
is closed; headers over :data:`MAX_HEADER_BYTES` get 431 — so an idle or slow-header connection
never reaches the app and holds nothing but a socket. The body's own deadline is
:class:`service.middleware.BodyLimitMiddleware`'s. Open connections are capped
(``RDAD_MAX_CONNECTIONS``: 503 beyond), and idle keep-alive connections close after
``RDAD_KEEP_ALIVE_S``.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import os
import signal
import time
from collections.abc import Callable
from types import FrameType
from typing import Any

import uvicorn
from uvicorn.protocols.http.auto import AutoHTTPProtocol

from .middleware import MAX_HEADER_BYTES
from .settings import Settings

log = logging.getLogger("rdad.service")


def _raw_error(status: int, reason: str, error: str, detail: str) -> bytes:
    body = json.dumps({"error": error, "detail": detail}).encode()
    head = (
        f"HTTP/1.1 {status} {reason}\r\ncontent-type: application/json\r\n"
        f"content-length: {len(body)}\r\nconnection: close\r\n\r\n"
    )
    return head.encode() + body


LINGER_S = 2.0
"""How long a refused connection's late bytes are still read (and dropped) before it closes."""


class HeaderDeadline:
    """Mixed into uvicorn's HTTP protocol class: a deadline and a size limit for request
    headers (see the module docstring). A request's headers are complete when the protocol has
    started its request cycle (``self.cycle`` changes)."""

    read_timeout_s = 10.0
    max_header_bytes = MAX_HEADER_BYTES
    cycle: Any
    transport: asyncio.Transport

    def connection_made(self, transport: asyncio.Transport) -> None:
        super().connection_made(transport)  # type: ignore[misc]
        self._header_bytes = 0
        self._header_timer: asyncio.TimerHandle | None = None
        self._lingering = False
        self._arm()

    def _awaiting_headers(self) -> bool:
        # Between requests: the last one answered and its body read to the end. (A request
        # answered early — a 503 before its upload — still has body bytes arriving, which the
        # protocol drains; they are not the headers of a next request.)
        cycle = self.cycle
        return cycle is None or (cycle.response_complete and not cycle.more_body)

    def _arm(self) -> None:
        if self._header_timer is None:
            loop = asyncio.get_running_loop()
            self._header_timer = loop.call_later(self.read_timeout_s, self._expired)

    def _disarm(self) -> None:
        if self._header_timer is not None:
            self._header_timer.cancel()
            self._header_timer = None

    def data_received(self, data: bytes) -> None:
        if self._lingering:  # refused: what still arrives is read only to be dropped
            return
        waiting, before = self._awaiting_headers(), self.cycle
        if waiting:
            self._arm()
        super().data_received(data)  # type: ignore[misc]
        if not waiting or self.transport.is_closing():
            return
        if self.cycle is not before:  # headers complete: a request is on its way to the app
            self._disarm()
            self._header_bytes = 0
            return
        self._header_bytes += len(data)
        if self._header_bytes > self.max_header_bytes:
            detail = f"request headers over {self.max_header_bytes:,} bytes"
            self._refuse(_raw_error(431, "Request Header Fields Too Large",
                                    "headers_too_large", detail))  # fmt: skip

    def _refuse(self, answer: bytes) -> None:
        """Send ``answer`` and close the way Apache's lingering close does: the write side first
        (the client reads the answer, then end of stream), then, after :data:`LINGER_S`, the
        socket. Closed at once, a socket with the client's bytes still unread sends a reset,
        and a reset makes the client's kernel drop the answer before the client reads it."""
        self._disarm()
        self.transport.write(answer)
        if not self.transport.can_write_eof():
            self.transport.close()
            return
        self.transport.write_eof()
        self._lingering = True
        asyncio.get_running_loop().call_later(LINGER_S, self.transport.close)

    def on_response_complete(self) -> None:
        super().on_response_complete()  # type: ignore[misc]
        # uvicorn's keep-alive timer covers the idle wait for the next request; ours starts
        # with its first byte (data_received).
        self._disarm()

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        super().connection_lost(exc)  # type: ignore[misc]

    def _expired(self) -> None:
        self._header_timer = None
        if self._awaiting_headers() and not self.transport.is_closing():
            detail = f"the request headers did not arrive within {self.read_timeout_s:g} s"
            self._refuse(_raw_error(408, "Request Timeout", "upload_timeout", detail))


def protocol_class(read_timeout_s: float) -> type[asyncio.Protocol]:
    """uvicorn's HTTP protocol (httptools where installed, else h11) with the header deadline."""
    return type(
        "RdadHTTPProtocol",
        (HeaderDeadline, AutoHTTPProtocol),
        {"read_timeout_s": read_timeout_s},
    )


WORKER_HEADER = "x-rdad-worker"
"""Names the worker process (0..N-1) that answered, under ``rdad serve --workers N``."""


def uvicorn_config(app: Any, settings: Settings, *, worker: int | None = None) -> uvicorn.Config:
    """The server's configuration: every limit chosen here, none left to uvicorn's defaults.
    ``worker``: this process's index under ``--workers N``, sent with every answer."""
    return uvicorn.Config(
        app,
        host=settings.host,
        port=settings.port,
        log_level=settings.log_level,
        access_log=settings.access_log,
        http=protocol_class(settings.read_timeout_s),
        limit_concurrency=settings.max_connections,
        timeout_keep_alive=math.ceil(settings.keep_alive_s),
        h11_max_incomplete_event_size=MAX_HEADER_BYTES,
        timeout_graceful_shutdown=graceful_timeout(settings.grace_period_s, settings.drain_delay_s),
        lifespan="on",
        root_path=settings.root_path,  # behind a proxy prefix; the API-key gate strips it too
        headers=[] if worker is None else [(WORKER_HEADER, str(worker))],
    )


class GracefulServer(uvicorn.Server):
    """uvicorn's server with the SIGTERM sequence of the module docstring. ``parent_pid``: a
    worker's supervisor; should it vanish (killed), the worker shuts down as on SIGTERM instead
    of serving on, orphaned, on the port."""

    def __init__(
        self,
        config: uvicorn.Config,
        *,
        on_drain: Callable[[], None],
        drain_delay_s: float,
        parent_pid: int | None = None,
    ) -> None:
        super().__init__(config)
        self._on_drain = on_drain
        self._drain_delay_s = drain_delay_s
        self._parent_pid = parent_pid
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
        orphaned = self._parent_pid is not None and os.getppid() != self._parent_pid
        if orphaned and self._stop_at is None and not self.should_exit:
            log.warning("the supervisor (pid %s) is gone: shutting down", self._parent_pid)
            self.handle_exit(signal.SIGTERM, None)
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
