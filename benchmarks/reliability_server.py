"""What the reliability benchmarks share: ``rdad serve`` as a process with its RSS sampled, and
load clients (httpx, and a raw-socket one that only moves bytes)."""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Coroutine
from pathlib import Path
from typing import Any, TypeVar

import httpx
import numpy as np
from PIL import Image

T = TypeVar("T")


def pct(values: list[float], q: float) -> float:
    return round(float(np.percentile(values, q)), 4) if values else float("nan")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def proc_kb(pid: int, field: str) -> int:
    text = Path(f"/proc/{pid}/status").read_text()
    match = re.search(rf"^{field}:\s+(\d+) kB", text, re.MULTILINE)
    return int(match.group(1)) if match else 0


class Server:
    """``rdad serve`` in a subprocess with ``env`` overrides; RSS sampled every 50 ms."""

    def __init__(self, model_dir: Path, env: dict[str, str], log: Path) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        command = [
            sys.executable, "-m", "rdad", "serve", "--model-dir", str(model_dir),
            "--host", "127.0.0.1", "--port", str(self.port), "--no-access-log",
        ]  # fmt: skip
        full_env = {**os.environ, "PYTHONUNBUFFERED": "1", **env}
        full_env.pop("RDAD_API_KEY", None)
        self.log = log.open("wb")
        self.proc = subprocess.Popen(
            command, stdout=self.log, stderr=subprocess.STDOUT, env=full_env
        )
        self.rss_samples: list[tuple[float, int]] = []
        self._stop = threading.Event()
        end = time.monotonic() + 300
        while True:
            if self.proc.poll() is not None:
                raise SystemExit(f"rdad serve exited; see {log}")
            if time.monotonic() > end:
                raise SystemExit("rdad serve never became ready")
            try:
                if httpx.get(f"{self.url}/readyz", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        self._sampler = threading.Thread(target=self._sample, daemon=True)
        self._sampler.start()

    def _sample(self) -> None:
        while not self._stop.is_set() and self.proc.poll() is None:
            try:
                self.rss_samples.append((time.monotonic(), proc_kb(self.proc.pid, "VmRSS")))
            except OSError:
                return
            time.sleep(0.05)

    def rss_mb(self) -> float:
        return proc_kb(self.proc.pid, "VmRSS") / 1024

    def peak_mb(self) -> float:
        return proc_kb(self.proc.pid, "VmHWM") / 1024

    def metrics(self) -> str:
        return httpx.get(f"{self.url}/metrics", timeout=10).text

    def stop(self) -> int:
        self._stop.set()
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.log.close()
        return int(self.proc.returncode)


def metric(text: str, name: str) -> float:
    from prometheus_client.parser import text_string_to_metric_families

    return sum(
        s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
        if s.name == name
    )


def bucket(text: str, name: str, le: str) -> float:
    from prometheus_client.parser import text_string_to_metric_families

    return sum(
        s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
        if s.name == name and s.labels.get("le") == le
    )


async def post(
    client: httpx.AsyncClient, files: list[tuple[str, bytes]], params: dict[str, str] | None = None
) -> tuple[int, float]:
    field = "file" if len(files) == 1 else "files"
    parts = [(field, (name, data, "image/png")) for name, data in files]
    start = time.monotonic()
    try:
        response = await client.post("/predict", files=parts, params=params)
        status = response.status_code
        if status == 503:  # which refusal: queue_full, overloaded, not_ready (shutting down)
            REFUSALS[response.json().get("error", "?")] += 1
    except httpx.HTTPError:
        status = -1  # connection error / client timeout
    return status, time.monotonic() - start


REFUSALS: Counter[str] = Counter()


def raw_request(port: int, files: list[tuple[str, bytes]], query: str = "") -> bytes:
    """One complete ``POST /predict`` (HTTP/1.1, multipart: ``file`` for one upload, ``files``
    for several) as bytes, built once."""
    boundary = b"rdad-bench-boundary"
    field = b"file" if len(files) == 1 else b"files"
    parts = [
        b"--" + boundary + b"\r\n"
        b'Content-Disposition: form-data; name="' + field + b'"; filename="' + name.encode()
        + b'"\r\nContent-Type: ' + (b"image/jpeg" if name.endswith(".jpg") else b"image/png")
        + b"\r\n\r\n" + data + b"\r\n"
        for name, data in files
    ]  # fmt: skip
    body = b"".join(parts) + b"--" + boundary + b"--\r\n"
    head = (
        f"POST /predict{query} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
        f"Content-Type: multipart/form-data; boundary={boundary.decode()}\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    ).encode()
    return head + body


async def read_response(reader: asyncio.StreamReader) -> tuple[int, bytes]:
    """Status and body of one HTTP/1.1 response with a Content-Length."""
    status = int((await reader.readline()).split()[1])
    length = 0
    while (line := await reader.readline()) not in (b"\r\n", b""):
        key, _, value = line.partition(b":")
        if key.strip().lower() == b"content-length":
            length = int(value)
    return status, await reader.readexactly(length)


async def raw_post(port: int, request: bytes) -> tuple[int, float]:
    """Send a pre-built request on a fresh connection and read the status and body.

    The burst client: an HTTP library spends milliseconds of CPU per request (multipart
    encoding, response parsing), which on a machine where client and server share the cores
    is taken from the model being measured; this one only moves bytes.
    """
    start = time.monotonic()
    writer = None
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        # Latency counts from the moment the request is handed to the kernel: with 300
        # coroutines on one client loop, the time spent waiting for the client's own turn to
        # connect is not the server's.
        start = time.monotonic()
        writer.write(request)
        with contextlib.suppress(ConnectionError):  # a refusal may come before the body is sent
            await writer.drain()
        status, body = await read_response(reader)
        if status == 503:
            REFUSALS[json.loads(body).get("error", "?")] += 1
    except (OSError, asyncio.IncompleteReadError, IndexError, ValueError):
        status = -1
    finally:
        if writer is not None:
            writer.close()
    return status, time.monotonic() - start


def flat_png(width: int, height: int) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (width, height), (120, 130, 140)).save(buf, "PNG", compress_level=9)
    return buf.getvalue()


def bottle_images(folder: Path, limit: int, side: int = 0) -> list[tuple[str, bytes]]:
    """The first ``limit`` test PNGs; with ``side`` > 0 area-resized to side×side PNGs."""
    paths = sorted(p for p in folder.rglob("*.png") if "ground_truth" not in p.parts)[:limit]
    if not paths:
        raise SystemExit(f"no PNGs under {folder}")
    if not side:
        return [(p.name, p.read_bytes()) for p in paths]
    out = []
    for p in paths:
        buf = io.BytesIO()
        Image.open(p).convert("RGB").resize((side, side), Image.Resampling.BOX).save(buf, "PNG")
        out.append((p.name, buf.getvalue()))
    return out


def summarize(results: list[tuple[int, float]]) -> dict[str, Any]:
    by_status: dict[int, list[float]] = {}
    for status, seconds in results:
        by_status.setdefault(status, []).append(seconds)
    return {
        str(status): {
            "count": len(times),
            "p50_s": pct(times, 50),
            "p95_s": pct(times, 95),
            "max_s": round(max(times), 4),
        }
        for status, times in sorted(by_status.items())
    }


def run_client(main: Coroutine[Any, Any, T]) -> T:
    """Run the load client on uvloop when it is installed: the client shares the cores with
    the server, and uvloop spends less of them per connection than asyncio's own loop."""
    try:
        import uvloop
    except ImportError:
        return asyncio.run(main)
    return uvloop.run(main)


def steal_seconds() -> float:
    """CPU time the hypervisor gave to other guests (all CPUs, /proc/stat); NaN off Linux.
    On a virtual machine this is the noise a run cannot see otherwise."""
    try:
        fields = Path("/proc/stat").read_text().split("\n", 1)[0].split()
        return int(fields[8]) / os.sysconf("SC_CLK_TCK")
    except (OSError, IndexError, ValueError):
        return float("nan")


def raw_throughput(model_file: Path, batch: int, seconds: float = 8.0) -> float:
    """Images/s of a bare ONNX Runtime session at ``batch`` (same thread defaults as serving)."""
    import onnxruntime as ort

    session = ort.InferenceSession(str(model_file), providers=["CPUExecutionProvider"])
    shape = session.get_inputs()[0].shape
    size = int(shape[1]) if isinstance(shape[1], int) else 256
    images = np.random.default_rng(0).integers(0, 255, (batch, size, size, 3), dtype=np.uint8)
    name = session.get_inputs()[0].name
    session.run(None, {name: images})
    done, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        session.run(None, {name: images})
        done += batch
    return done / (time.perf_counter() - start)
