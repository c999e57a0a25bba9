"""Helpers for tests that run ``rdad serve`` (or another server) as a real process on loopback."""

from __future__ import annotations

import socket
import subprocess
import time
from collections.abc import Callable

import httpx


def free_port() -> int:
    """A loopback port nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_until_ready(
    url: str, proc: subprocess.Popen, output: Callable[[], str], *, timeout_s: float = 120
) -> None:
    """Poll ``url``/readyz until 200; fail with ``output()`` if the process exits first."""
    end = time.monotonic() + timeout_s
    while True:
        if proc.poll() is not None:
            raise AssertionError(f"rdad serve exited: {output()}")
        try:
            if httpx.get(f"{url}/readyz", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        if time.monotonic() > end:
            raise AssertionError("rdad serve never became ready")
        time.sleep(0.1)


def stop(proc: subprocess.Popen, *, timeout_s: float) -> None:
    """SIGTERM, then SIGKILL if it has not exited within ``timeout_s``."""
    proc.terminate()
    try:
        proc.wait(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
