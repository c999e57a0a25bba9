"""The real ``rdad serve`` process: ``rdad predict`` against it, then SIGTERM amid a burst."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx

from tests.processes import free_port

GRACE_S = 20.0
# Requests "sent" before the signal may reach the server later than that on a loaded machine (the
# client's tasks and the server share two cores); the drain delay is what admits them, as a load
# balancer's stragglers, so it is long enough for a busy CI machine.
DRAIN_DELAY_S = 5.0


def _start(model_dir: Path, port: int, log: Any) -> subprocess.Popen[bytes]:
    command = [
        sys.executable, "-m", "rdad", "serve",
        "--model-dir", str(model_dir), "--host", "127.0.0.1", "--port", str(port),
        "--max-batch-size", "4", "--max-delay-ms", "10",
        "--drain-delay-s", str(DRAIN_DELAY_S), "--grace-period-s", str(GRACE_S),
    ]  # fmt: skip
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    env.pop("RDAD_API_KEY", None)
    return subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env)


def _wait_ready(url: str, proc: subprocess.Popen[bytes], timeout_s: float = 90.0) -> None:
    end = time.monotonic() + timeout_s
    while time.monotonic() < end:
        assert proc.poll() is None, "rdad serve exited during start"
        try:
            if httpx.get(f"{url}/readyz", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    raise AssertionError("rdad serve never became ready")


async def _burst(url: str, pid: int, image: bytes, count: int) -> dict[str, Any]:
    """Send ``count`` requests at once, SIGTERM the server while they are in flight."""
    params = {"overlay": "true", "mask": "true", "heatmap_size": "original"}
    limits = httpx.Limits(max_connections=count + 4)
    async with httpx.AsyncClient(base_url=url, timeout=60, limits=limits) as client:
        sent_at: list[float] = []

        async def one() -> tuple[float, int | str]:
            sent_at.append(time.monotonic())
            files = {"file": ("part.png", image, "image/png")}
            response = await client.post("/predict", params=params, files=files)
            if response.status_code != 200:  # the refusal's reason, for the assertion message
                return time.monotonic(), f"{response.status_code} {response.text[:200]}"
            return time.monotonic(), response.status_code

        tasks = [asyncio.create_task(one()) for _ in range(count)]
        await asyncio.sleep(0.3)  # every request is on the wire, the server is busy with them
        signalled_at = time.monotonic()
        os.kill(pid, signal.SIGTERM)
        done_before_signal = sum(task.done() for task in tasks)
        async with httpx.AsyncClient(base_url=url, timeout=5) as fresh:
            readiness = (await fresh.get("/readyz")).status_code
        results = await asyncio.gather(*tasks, return_exceptions=True)
    return {
        "signalled_at": signalled_at,
        "sent_at": sent_at,
        "results": results,
        "done_before_signal": done_before_signal,
        "readiness_after_signal": readiness,
    }


def test_predict_cli_then_sigterm_drains_in_flight_requests(
    model_dir: Path, tmp_path: Path, images: Any
) -> None:
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    log_path = tmp_path / "serve.log"
    image = images.png(900, 900)
    (tmp_path / "part.png").write_bytes(image)
    with log_path.open("wb") as log:
        proc = _start(model_dir, port, log)
        try:
            _wait_ready(url, proc)
            predict = [sys.executable, "-m", "rdad", "predict", "--url", url]
            cli = subprocess.run(
                [*predict, str(tmp_path / "part.png")], capture_output=True, text=True, timeout=60
            )
            # Exit status 3 says an anomaly was found, 0 that none was (see rdad predict --help).
            assert cli.returncode == (3 if "ANOMALOUS" in cli.stdout else 0), cli.stderr
            assert "score" in cli.stdout and "part.png" in cli.stdout
            burst = asyncio.run(_burst(url, proc.pid, image, count=24))
            proc.wait(timeout=GRACE_S + 10)
            exited_after = time.monotonic() - burst["signalled_at"]
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    output = log_path.read_text()
    assert burst["done_before_signal"] < 24, (
        "the burst ended before the signal: test proves nothing"
    )
    assert all(t < burst["signalled_at"] for t in burst["sent_at"])
    statuses = [r[1] if isinstance(r, tuple) else repr(r) for r in burst["results"]]
    assert statuses == [200] * 24, statuses
    assert burst["readiness_after_signal"] == 503
    assert proc.returncode == 0, output
    assert exited_after < GRACE_S, exited_after
    assert "SIGTERM" in output and "Application shutdown complete" in output
