"""Helpers for the browser tests: a real ``rdad serve`` process and Debian's chromium driven by
Playwright (through its executable path: no browser download), artifacts under test-artifacts/."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from tests.processes import free_port, stop, wait_until_ready

REPO = Path(__file__).resolve().parents[1]
CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


def artifact_dir() -> Path:
    """Screenshots land here (``RDAD_TEST_ARTIFACTS``, default ``test-artifacts/``)."""
    path = Path(os.environ.get("RDAD_TEST_ARTIFACTS", REPO / "test-artifacts"))
    path.mkdir(parents=True, exist_ok=True)
    return path


def chromium_path() -> str:
    path = os.environ.get("RDAD_CHROMIUM", "/usr/bin/chromium")
    if not Path(path).is_file():
        pytest.fail(f"no chromium at {path}: apt-get install chromium (.ci/run does)")
    return path


@contextmanager
def serve(model_dir: Path, **env: str) -> Iterator[str]:
    """``rdad serve`` on a free loopback port until the block ends; yields its base URL."""
    port = free_port()
    environ = {**os.environ, "RDAD_PROVIDERS": "cpu", "RDAD_ACCESS_LOG": "false", **env}
    process = subprocess.Popen(
        [sys.executable, "-m", "rdad", "serve", "--model-dir", str(model_dir), "--port", str(port)],
        env=environ,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        wait_until_ready(url, process, lambda: process.stdout.read())  # type: ignore[union-attr]
        yield url
    finally:
        stop(process, timeout_s=30)


@contextmanager
def browser(tmp_path: Path) -> Iterator[Any]:
    """A fresh headless chromium profile; yields a page. Requests leaving 127.0.0.1 are aborted
    and recorded in ``page.external_requests`` (the pages must work offline)."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        context = pw.chromium.launch_persistent_context(
            str(tmp_path / "chromium-profile"),
            executable_path=chromium_path(),
            headless=True,
            args=CHROMIUM_FLAGS,
            viewport={"width": 1280, "height": 900},
        )
        try:
            page = context.new_page()
            external: list[str] = []

            def gate(route: Any) -> None:
                if route.request.url.startswith(("http://127.0.0.1", "data:", "blob:", "file://")):
                    route.continue_()
                else:
                    external.append(f"{route.request.resource_type} {route.request.url}")
                    route.abort()

            context.route("**/*", gate)
            page.external_requests = external
            yield page
        finally:
            context.close()
