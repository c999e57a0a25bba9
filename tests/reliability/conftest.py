"""One real ``rdad serve`` process (uvicorn on loopback, the tiny test model, an API key) shared by
the hostile-corpus and schemathesis tests: what a client on the network would meet, including the
HTTP layer that an in-process ASGI client skips."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from tests.service.conftest import model_dir  # noqa: F401  (the session's tiny model fixture)

API_KEY = "corpus-key"
MAX_FILES = 4
MAX_UPLOAD_MB = 2


@dataclass(frozen=True)
class Served:
    url: str
    key: str
    log: Path

    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.key}"}


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture(scope="session")
def served(model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:  # noqa: F811
    port = _free_port()
    log_path = tmp_path_factory.mktemp("served") / "serve.log"
    command = [
        sys.executable, "-m", "rdad", "serve", "--model-dir", str(model_dir),
        "--host", "127.0.0.1", "--port", str(port), "--max-files", str(MAX_FILES),
        "--max-upload-mb", str(MAX_UPLOAD_MB), "--max-batch-size", "4",
        "--drain-delay-s", "0", "--grace-period-s", "5", "--no-access-log",
    ]  # fmt: skip
    env = {**os.environ, "RDAD_API_KEY": API_KEY, "PYTHONUNBUFFERED": "1"}
    url = f"http://127.0.0.1:{port}"
    with log_path.open("wb") as log:
        proc = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env)
        try:
            end = time.monotonic() + 120
            while True:
                assert proc.poll() is None, log_path.read_text()[-2000:]
                assert time.monotonic() < end, "rdad serve never became ready"
                try:
                    if httpx.get(f"{url}/readyz", timeout=2).status_code == 200:
                        break
                except httpx.HTTPError:
                    pass
                time.sleep(0.1)
            yield Served(url, API_KEY, log_path)
        finally:
            proc.terminate()
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
