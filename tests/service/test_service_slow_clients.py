"""Slow and stalled clients against a real ``rdad serve`` (uvicorn on loopback): no client can hold
the service by sending part of a request and stopping."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.processes import free_port, stop, wait_until_ready
from tests.service.conftest import multipart_file, png_bytes

READ_TIMEOUT_S = 1.0
MAX_QUEUE = 2


@pytest.fixture(scope="module")
def server(model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, int]]:
    port = free_port()
    log_path = tmp_path_factory.mktemp("slow") / "serve.log"
    command = [
        sys.executable, "-m", "rdad", "serve", "--model-dir", str(model_dir),
        "--host", "127.0.0.1", "--port", str(port), "--max-queue", str(MAX_QUEUE),
        "--max-files", "1", "--read-timeout-s", str(READ_TIMEOUT_S),
        "--min-upload-rate-kb-s", "16", "--drain-delay-s", "0", "--no-access-log",
    ]  # fmt: skip
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    env.pop("RDAD_API_KEY", None)
    url = f"http://127.0.0.1:{port}"
    with log_path.open("wb") as log:
        proc = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env)
        try:
            wait_until_ready(url, proc, lambda: log_path.read_text()[-2000:])
            yield url, port
        finally:
            stop(proc, timeout_s=20)


def _request(port: int, body: bytes) -> bytes:
    head = (
        f"POST /predict HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
        "Content-Type: multipart/form-data; boundary=b\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    )
    return head.encode() + body


async def _answer(reader: asyncio.StreamReader) -> tuple[int, bytes]:
    data = await reader.read()  # until the server closes the connection
    return int(data.split(b" ", 2)[1]), data


async def test_stalled_uploads_are_cut_off_and_give_their_slots_back(
    server: tuple[str, int],
) -> None:
    """Two uploads that stop half-way hold the whole queue (an honest client gets 503
    ``queue_full``) only until the read deadline: then both get 408, the connections close,
    and the honest client is served."""
    url, port = server
    body = multipart_file(png_bytes(), b"b") + b"--b--\r\n"
    request = _request(port, body)
    stalled = []
    for _ in range(MAX_QUEUE):
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(request[: len(request) - len(body) // 2])  # headers and half the body
        await writer.drain()
        stalled.append((reader, writer))
    await asyncio.sleep(0.3)
    loop = asyncio.get_running_loop()
    start = loop.time()
    async with httpx.AsyncClient(base_url=url, timeout=30) as client:
        files = {"file": ("part.png", png_bytes(), "image/png")}
        locked_out = await client.post("/predict", files=files)
        answers = await asyncio.wait_for(
            asyncio.gather(*(_answer(reader) for reader, _ in stalled)), 10
        )
        cut_after = loop.time() - start
        served = await client.post("/predict", files=files)
        ready = await client.get("/readyz")
    for _, writer in stalled:
        writer.close()
    assert locked_out.status_code == 503 and locked_out.json()["error"] == "queue_full"
    assert [status for status, _ in answers] == [408, 408]
    assert all(b'"upload_timeout"' in data for _, data in answers)
    assert cut_after < 5 * READ_TIMEOUT_S  # cut off near the deadline, not held for ever
    assert served.status_code == 200 and ready.status_code == 200


async def test_headers_that_never_complete_are_cut_off(server: tuple[str, int]) -> None:
    """A connection that sends nothing, or part of its headers, never reaches the app and is
    closed with 408 after the read timeout; one whose headers grow without end gets 431."""
    _, port = server
    silent = await asyncio.open_connection("127.0.0.1", port)
    partial = await asyncio.open_connection("127.0.0.1", port)
    partial[1].write(b"POST /predict HTTP/1.1\r\nHost: x\r\nX-Slow: ")
    huge = await asyncio.open_connection("127.0.0.1", port)
    huge[1].write(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")
    for _ in range(80):  # 80 KiB of headers, never finished
        huge[1].write(b"X-Pad: " + b"a" * 1017 + b"\r\n")
    start = time.monotonic()
    silent_status, _ = await asyncio.wait_for(_answer(silent[0]), 10)
    partial_status, _ = await asyncio.wait_for(_answer(partial[0]), 10)
    huge_status, huge_data = await asyncio.wait_for(_answer(huge[0]), 10)
    waited = time.monotonic() - start
    for _, writer in (silent, partial, huge):
        writer.close()
    assert (silent_status, partial_status) == (408, 408)
    assert huge_status == 431 and b"headers_too_large" in huge_data
    assert READ_TIMEOUT_S * 0.8 < waited < 5 * READ_TIMEOUT_S
