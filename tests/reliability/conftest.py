"""One real ``rdad serve`` process (uvicorn on loopback, the tiny test model, an API key) shared by
the hostile-corpus and schemathesis tests: what a client on the network would meet, including the
HTTP layer that an in-process ASGI client skips."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.processes import free_port, stop, wait_until_ready
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


@pytest.fixture(scope="session")
def served(model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:  # noqa: F811
    port = free_port()
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
            wait_until_ready(url, proc, lambda: log_path.read_text()[-2000:])
            yield Served(url, API_KEY, log_path)
        finally:
            stop(proc, timeout_s=20)
