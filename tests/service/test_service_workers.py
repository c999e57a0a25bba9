"""``rdad serve --workers 2`` as a real process tree: both workers serve one port, ``/metrics``
counts every request whichever worker answered (and nothing from an earlier run), readiness is
the answering worker's, a hot reload reaches both, a lost worker is replaced, SIGTERM drains
both, and a worker that cannot start (or a port already taken) stops the service."""

from __future__ import annotations

import asyncio
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
from prometheus_client.parser import text_string_to_metric_families

from tests.processes import free_port, wait_until_ready
from tests.service.test_service_repository import write_model

WORKER = "x-rdad-worker"
STARTED = re.compile(r"worker (\d+) started \(pid (\d+)\)")


class Served:
    """A running ``rdad serve --workers 2`` and its log."""

    def __init__(self, proc: subprocess.Popen[bytes], url: str, log: Path) -> None:
        self.proc, self.url, self.log = proc, url, log

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def worker_pids(self) -> dict[int, int]:
        """Index → pid of the latest process started for it."""
        return {int(i): int(pid) for i, pid in STARTED.findall(self.output())}

    def metrics(self) -> str:
        return httpx.get(f"{self.url}/metrics", timeout=10).text

    def stop(self) -> int:
        self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout=60)


@contextmanager
def serve(model_dir: Path, tmp_path: Path, *flags: str, **env: str) -> Iterator[Served]:
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    command = [
        sys.executable, "-m", "rdad", "serve", "--workers", "2", "--runtime", "onnxruntime",
        "--model-dir", str(model_dir), "--host", "127.0.0.1", "--port", str(port),
        "--no-access-log", *flags,
    ]  # fmt: skip
    scratch = tmp_path / "tmp"  # the supervisor's own folder, left behind if it is killed
    scratch.mkdir(exist_ok=True)
    full_env = {**os.environ, "PYTHONUNBUFFERED": "1", "TMPDIR": str(scratch), **env}
    full_env.pop("RDAD_API_KEY", None)
    log = tmp_path / "serve.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, env=full_env)
        served = Served(proc, url, log)
        try:
            wait_until_ready(url, proc, served.output)
            yield served
        finally:
            if proc.poll() is None:
                proc.kill()  # the workers notice their supervisor is gone and stop
                proc.wait()


def ready_versions(metrics: str, model: str = "tiny") -> dict[str, str]:
    """pid → version of ``model`` each worker serves ready (``rdad_model_info`` per worker)."""
    out = {}
    for family in text_string_to_metric_families(metrics):
        for s in family.samples:
            labels = s.labels
            serving = labels.get("model") == model and labels.get("state") == "ready"
            if s.name == "rdad_model_info" and s.value == 1 and serving:
                out[labels["pid"]] = labels["version"]
    return out


def total(metrics: str, name: str, **labels: str) -> float:
    return sum(
        s.value
        for family in text_string_to_metric_families(metrics)
        for s in family.samples
        if s.name == name and all(s.labels.get(k) == v for k, v in labels.items())
    )


def until(check: Callable[[], Any], what: str, timeout_s: float = 90.0) -> Any:
    end = time.monotonic() + timeout_s
    while time.monotonic() < end:
        value = check()
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError(f"never: {what}")


def both_ready(served: Served, version: str | None = None) -> dict[str, str]:
    def check() -> dict[str, str] | None:
        found = ready_versions(served.metrics())
        wanted = set(found.values()) == {version} if version else True
        return found if len(found) == 2 and wanted else None

    return until(check, f"both workers serve the model ready ({version or 'any version'})")


async def _predicts(url: str, image: bytes, count: int) -> list[tuple[int, str | None]]:
    """``count`` requests at once, each on its own connection: (status, worker)."""
    limits = httpx.Limits(max_connections=count, max_keepalive_connections=0)
    async with httpx.AsyncClient(base_url=url, timeout=60, limits=limits) as client:

        async def one() -> tuple[int, str | None]:
            files = {"file": ("part.png", image, "image/png")}
            response = await client.post("/predict", params={"heatmap": "false"}, files=files)
            return response.status_code, response.headers.get(WORKER)

        return await asyncio.gather(*(one() for _ in range(count)))


def test_metrics_count_every_workers_requests_and_nothing_from_before(
    model_dir: Path, tmp_path: Path, images: Any
) -> None:
    run_dir = tmp_path / "run"
    stale = (
        "from prometheus_client import Counter; "
        "Counter('rdad_requests', 'x', ['model', 'endpoint', 'status'])"
        ".labels('tiny', '/predict', '200').inc(1000)"
    )
    (run_dir / "metrics").mkdir(parents=True)
    env = {**os.environ, "PROMETHEUS_MULTIPROC_DIR": str(run_dir / "metrics")}
    subprocess.run([sys.executable, "-c", stale], env=env, check=True, timeout=60)
    assert list((run_dir / "metrics").glob("counter_*.db")), "no stale file: proves nothing"

    with serve(model_dir, tmp_path, "--run-dir", str(run_dir), "--max-batch-size", "4") as served:
        both_ready(served)
        answers: list[tuple[int, str | None]] = []
        for _ in range(20):  # rounds until both workers have answered (the kernel chooses)
            answers += asyncio.run(_predicts(served.url, images.png(64, 64), 8))
            if len({worker for _, worker in answers}) == 2:
                break
        metrics = served.metrics()
        status = served.stop()
    assert {worker for _, worker in answers} == {"0", "1"}, answers
    assert {code for code, _ in answers} == {200}
    sent = len(answers)
    assert total(metrics, "rdad_requests_total", endpoint="/predict", status="200") == sent
    assert total(metrics, "rdad_images_total", model="tiny") == sent
    assert total(metrics, "rdad_inference_duration_seconds_count") >= 1
    # --max-batch-size 4 reached both workers: it sets the batch-size histogram's buckets.
    edges = {
        s.labels["le"]
        for family in text_string_to_metric_families(metrics)
        for s in family.samples
        if s.name == "rdad_batch_size_bucket"
    }
    assert max(float(e) for e in edges - {"+Inf"}) == 4.0
    assert total(metrics, "rdad_live") == 1
    assert total(metrics, "process_resident_memory_bytes") > 0
    assert status == 0, served.output()
    assert not (run_dir / "metrics").exists(), "a configured folder is emptied at exit"


def test_reload_reaches_every_worker(model_dir: Path, tmp_path: Path) -> None:
    repo = tmp_path / "models"
    write_model(model_dir / "tiny.onnx", repo / "tiny.onnx", version="v1")
    with serve(repo, tmp_path, "--model-poll-s", "0", "--reload-without-key") as served:
        both_ready(served, "v1")
        write_model(model_dir / "tiny.onnx", repo / "tiny.onnx", version="v2")
        reload = httpx.post(f"{served.url}/models/tiny/reload", timeout=60)
        assert reload.status_code == 200, reload.text
        assert reload.json()["version"] == "v2"
        both_ready(served, "v2")

        def versions_by_worker() -> dict[str, str] | None:
            seen: dict[str, str] = {}
            for _ in range(40):  # a fresh connection each: either worker may take it
                answer = httpx.get(f"{served.url}/models/tiny", timeout=10)
                seen[answer.headers[WORKER]] = answer.json()["version"]
            return seen if len(seen) == 2 else None

        by_worker = until(versions_by_worker, "both workers answered GET /models/tiny")
        assert served.stop() == 0
    assert by_worker == {"0": "v2", "1": "v2"}
    assert served.output().count("reload requested through another worker") == 1


def test_readiness_is_the_answering_workers_and_a_lost_worker_is_replaced(
    model_dir: Path, tmp_path: Path
) -> None:
    flags = ("--drain-delay-s", "5", "--grace-period-s", "15")
    with serve(model_dir, tmp_path, *flags) as served:
        both_ready(served)
        first = served.worker_pids()
        lost = first[1]
        os.kill(lost, signal.SIGTERM)  # one worker drains; the other stays ready
        probes: list[tuple[str, int]] = []
        for _ in range(200):
            answer = httpx.get(f"{served.url}/readyz", timeout=10)
            if not Path(f"/proc/{lost}").exists():
                break  # its replacement may have answered: stop counting
            probes.append((answer.headers[WORKER], answer.status_code))
            if {worker for worker, _ in probes} == {"0", "1"} and len(probes) >= 10:
                break
        until(lambda: served.worker_pids()[1] != lost, "worker 1 replaced")
        pids = {str(pid) for pid in served.worker_pids().values()}
        after = until(
            lambda: (found := ready_versions(served.metrics())).keys() == pids and found,
            "the replacement serves and the lost worker's gauges are gone",
        )
        assert served.stop() == 0
    assert {worker for worker, _ in probes} == {"0", "1"}, probes
    assert {code for worker, code in probes if worker == "1"} == {503}, probes
    assert {code for worker, code in probes if worker == "0"} == {200}, probes
    assert str(lost) not in after and len(after) == 2
    assert f"worker 1 (pid {lost}) ended with status 0: starting a new one" in served.output()


async def _burst(url: str, pid: int, image: bytes, count: int) -> dict[str, Any]:
    params = {"overlay": "true", "mask": "true", "heatmap_size": "original"}
    limits = httpx.Limits(max_connections=count + 4)
    async with httpx.AsyncClient(base_url=url, timeout=60, limits=limits) as client:

        async def one() -> tuple[int, str | None]:
            files = {"file": ("part.png", image, "image/png")}
            response = await client.post("/predict", params=params, files=files)
            return response.status_code, response.headers.get(WORKER)

        tasks = [asyncio.create_task(one()) for _ in range(count)]
        await asyncio.sleep(0.5)  # every request is on the wire, both workers busy with them
        os.kill(pid, signal.SIGTERM)
        done_before_signal = sum(task.done() for task in tasks)
        async with httpx.AsyncClient(base_url=url, timeout=5) as fresh:
            readiness = (await fresh.get("/readyz")).status_code
        results = await asyncio.gather(*tasks, return_exceptions=True)
    return {"results": results, "done": done_before_signal, "readiness": readiness}


def test_sigterm_drains_every_worker(model_dir: Path, tmp_path: Path, images: Any) -> None:
    scratch = tmp_path / "tmp"
    flags = ("--drain-delay-s", "1", "--grace-period-s", "20", "--max-batch-size", "4")
    with serve(model_dir, tmp_path, *flags) as served:
        both_ready(served)
        assert len(list(scratch.glob("rdad-serve-*"))) == 1, "the supervisor's shared folder"
        burst = asyncio.run(_burst(served.url, served.proc.pid, images.png(900, 900), 24))
        status = served.proc.wait(timeout=60)
    assert burst["done"] < 24, "the burst ended before the signal: test proves nothing"
    results = burst["results"]
    assert [r[0] if isinstance(r, tuple) else repr(r) for r in results] == [200] * 24, results
    assert {r[1] for r in results} == {"0", "1"}, "both workers had requests in flight"
    assert burst["readiness"] == 503
    output = served.output()
    assert status == 0, output
    assert output.count("Application shutdown complete") == 2
    assert not list(scratch.glob("rdad-serve-*")), "the supervisor's own folder is removed at exit"


def test_a_worker_that_cannot_start_stops_the_service(tmp_path: Path) -> None:
    models = tmp_path / "models"
    models.mkdir()
    (models / "broken.onnx").write_bytes(b"not a model")
    port = str(free_port())
    done = subprocess.run(
        [sys.executable, "-m", "rdad", "serve", "--workers", "2", "--model-poll-s", "0",
         "--model-dir", str(models), "--port", port],
        capture_output=True, text=True, timeout=300, check=False,
    )  # fmt: skip
    assert done.returncode == 1, done.stdout + done.stderr
    assert "could not start: stopping every worker" in done.stderr
    assert done.stderr.strip().splitlines()[-1] == (
        "rdad serve: error: the service failed to start: see the error above"
    )


def test_a_port_another_server_listens_on_is_refused(model_dir: Path) -> None:
    """Each worker binds the port with SO_REUSEPORT, which would also let it join a socket some
    other server of this user listens on with that option: the supervisor refuses instead."""
    import socket

    with socket.socket() as taken:
        taken.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = str(taken.getsockname()[1])
        done = subprocess.run(
            [sys.executable, "-m", "rdad", "serve", "--workers", "2", "--port", port,
             "--model-dir", str(model_dir)],
            capture_output=True, text=True, timeout=120, check=False,
        )  # fmt: skip
    assert done.returncode == 1, done.stdout + done.stderr
    assert f"cannot listen on 127.0.0.1:{port}: Address already in use" in done.stderr
    assert "--port" in done.stderr and "RDAD_PORT" in done.stderr
    assert "worker 0 started" not in done.stderr


# --- the parts, without processes --------------------------------------------------------------


def test_defaults_sized_for_one_process_are_split_between_workers(tmp_path: Path) -> None:
    from rdad.service.settings import Settings
    from rdad.service.workers import worker_settings

    cpus = len(os.sched_getaffinity(0))
    alone = Settings(workers=1, memory_budget_mb=None)
    split = worker_settings(Settings(workers=2), tmp_path)
    assert split.run_dir == tmp_path and split.workers == 2
    assert split.intra_op_threads == split.cpu_workers == max(1, cpus // 2)
    assert split.memory_budget_mb is not None
    assert split.memory_budget_bytes <= alone.memory_budget_bytes
    given = Settings(workers=2, intra_op_threads=3, cpu_workers=5, memory_budget_mb=700)
    kept = worker_settings(given, tmp_path)
    assert (kept.intra_op_threads, kept.cpu_workers, kept.memory_budget_mb) == (3, 5, 700)


def test_a_reload_request_reaches_each_other_worker_once(tmp_path: Path) -> None:
    from rdad.service.reload_requests import ReloadRequests
    from rdad.service.run_dir import prepare_run_dir
    from rdad.service.settings import Settings

    run = prepare_run_dir(tmp_path / "run")
    settings = Settings(workers=2, run_dir=run.path)
    assert ReloadRequests.for_settings(Settings(workers=1, run_dir=run.path)) is None
    asked, other = ReloadRequests.for_settings(settings), ReloadRequests.for_settings(settings)
    assert asked is not None and other is not None
    asked.announce("tiny")
    late = ReloadRequests.for_settings(settings)  # started after the request: loaded the file
    assert late is not None
    assert asked.pending() == [] and late.pending() == []
    assert other.pending() == ["tiny"] and other.pending() == []
    asked.announce("tiny")  # a second request for the same model is a new one
    assert (other.pending(), late.pending()) == (["tiny"], ["tiny"])
