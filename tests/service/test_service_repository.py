"""The model repository: partial folders, empty or missing folders, polling, hot reload, draining.

Every model here is the session's real tiny model, copied or re-versioned (its metadata rewritten)
into a per-test folder; broken files are garbage bytes or the model without calibration.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import os
import re
import shutil
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from asgi_lifespan import LifespanManager

from rdad.service.app import create_app
from rdad.service.errors import ModelLoadError
from rdad.service.settings import Settings

POLL_S = 0.1


def write_model(
    source: Path, out: Path, *, version: str | None = None, calibrated: bool = True
) -> Path:
    """``source`` with its metadata rewritten, written atomically (temp file + rename) as a
    deployment tool would."""
    import onnx

    from rdad.metadata import METADATA_KEY, ModelMetadata

    proto = onnx.load(str(source))
    entry = next(p for p in proto.metadata_props if p.key == METADATA_KEY)
    meta = ModelMetadata.from_json(entry.value)
    if version is not None:
        meta = dataclasses.replace(meta, model_version=version)
    if not calibrated:
        meta = dataclasses.replace(meta, calibration=None)
    entry.value = meta.to_json()
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".part")
    onnx.save(proto, str(tmp))
    os.replace(tmp, out)
    return out


def copy_in(source: Path, out: Path) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".part")
    shutil.copy(source, tmp)
    os.replace(tmp, out)


async def wait_for(check: Callable[[], Awaitable[bool]], timeout_s: float = 30.0) -> None:
    end = time.monotonic() + timeout_s
    while time.monotonic() < end:
        if await check():
            return
        await asyncio.sleep(0.05)
    raise AssertionError("condition never became true")


def by_name(listing: dict[str, Any]) -> dict[str, list[dict[str, Any]]]:
    out: dict[str, list[dict[str, Any]]] = {}
    for info in listing["models"]:
        out.setdefault(info["name"], []).append(info)
    return out


@pytest.mark.parametrize("poll_s", [0.0, POLL_S])
async def test_broken_files_are_listed_as_failed_and_the_rest_serve(
    make_client, images, model_dir: Path, tmp_path: Path, poll_s: float
) -> None:
    repo = tmp_path / "repo"
    write_model(model_dir / "tiny.onnx", repo / "good.onnx", version="g1")
    (repo / "garbage.onnx").write_bytes(b"not an onnx file")
    write_model(model_dir / "tiny.onnx", repo / "nocal" / "model.onnx", calibrated=False)
    async with make_client(model_dir=repo, model_poll_s=poll_s) as client:
        ready = await client.get("/readyz")
        listing = (await client.get("/models")).json()
        one_failed = await client.get("/models/garbage")
        on_failed = await client.post("/models/garbage/predict", files=images.upload(images.png()))
        on_good = await client.post("/models/good/predict", files=images.upload(images.png()))
        no_default = await client.post("/predict", files=images.upload(images.png()))
        metrics = (await client.get("/metrics")).text
    assert ready.status_code == 200
    assert ready.json()["models"] == {"garbage": "failed", "good": "ready", "nocal": "failed"}
    models = by_name(listing)
    assert [m["state"] for m in models["good"]] == ["ready"] and listing["problem"] is None
    (garbage,) = models["garbage"]
    assert garbage["state"] == "failed" and "cannot be loaded" in garbage["error"]
    assert garbage["file"] == "garbage.onnx" and garbage["version"] is None
    (nocal,) = models["nocal"]
    assert nocal["file"] == "nocal/model.onnx" and "calibration" in nocal["error"]
    assert str(tmp_path) not in str(listing)  # no host paths in answers
    assert one_failed.status_code == 200 and one_failed.json()["state"] == "failed"
    assert on_failed.status_code == 503 and on_failed.json()["error"] == "not_ready"
    assert "'garbage' is failed" in on_failed.json()["detail"]
    assert "Retry-After" in on_failed.headers
    assert on_good.status_code == 200 and on_good.json()["model"] == {
        "name": "good",
        "version": "g1",
    }
    assert no_default.status_code == 404  # three names, no RDAD_DEFAULT_MODEL
    assert images.metric(metrics, "rdad_model_info", model="garbage", state="failed") == 1
    assert images.metric(metrics, "rdad_model_info", model="good", state="ready", version="g1") == 1
    assert images.metric(metrics, "rdad_model_loads_total", model="nocal", result="failed") == 1
    assert images.metric(metrics, "rdad_model_loads_total", model="good", result="ok") == 1
    assert images.metric(metrics, "rdad_model_ready", model="good") == 1
    assert images.metric(metrics, "rdad_model_ready", model="garbage") == 0


@pytest.mark.parametrize("case", ["empty", "missing", "all broken"])
async def test_nothing_loadable_fails_the_start_only_without_polling(
    model_dir: Path, tmp_path: Path, case: str
) -> None:
    repo = tmp_path / "repo"
    if case != "missing":
        repo.mkdir()
    if case == "all broken":
        (repo / "a.onnx").write_bytes(b"junk")
        write_model(model_dir / "tiny.onnx", repo / "b.onnx", calibrated=False)
    expected = {
        "empty": "no models in the model folder",
        "missing": "the model folder does not exist",
        "all broken": "'a' is failed: .*cannot be loaded.*'b' is failed: .*calibration",
    }[case]
    app = create_app(Settings(model_dir=repo, model_poll_s=0))
    with pytest.raises(ModelLoadError, match=expected):
        async with LifespanManager(app, startup_timeout=60):
            pass
    # With polling on, the same folder starts: alive, not ready, and saying why.
    app = create_app(Settings(model_dir=repo, model_poll_s=30))
    async with LifespanManager(app, startup_timeout=60) as manager:
        transport = httpx.ASGITransport(app=manager.app)
        async with httpx.AsyncClient(transport=transport, base_url="http://rdad") as client:
            await wait_for(lambda: _started(app))
            alive = await client.get("/healthz")
            ready = await client.get("/readyz")
    assert alive.status_code == 200
    assert ready.status_code == 503 and ready.json()["status"] == "not ready"
    detail = ready.json()["detail"]
    assert "every 30 s (RDAD_MODEL_POLL_S)" in detail
    assert re.search(expected, detail), detail
    assert str(tmp_path) not in detail  # the open /readyz never shows the host's paths


async def _started(app: Any) -> bool:
    return bool(app.state.runtime.repository.started)


@pytest.mark.parametrize("case", ["empty", "missing"])
async def test_empty_or_missing_folder_waits_and_picks_models_up(
    make_client, images, model_dir: Path, tmp_path: Path, case: str
) -> None:
    repo = tmp_path / "models"
    if case == "empty":
        repo.mkdir()
    async with make_client(model_dir=repo, model_poll_s=POLL_S, ready=False) as client:
        alive = await client.get("/healthz")
        waiting = await client.get("/readyz")
        listing = (await client.get("/models")).json()
        early = await client.post("/predict", files=images.upload(images.png()))
        copy_in(model_dir / "tiny.onnx", repo / "tiny.onnx")

        async def ready() -> bool:
            return (await client.get("/readyz")).status_code == 200

        await wait_for(ready)
        answer = await client.post("/predict", files=images.upload(images.png()))
    assert alive.status_code == 200
    assert waiting.status_code == 503
    problem = {"empty": "no models in", "missing": "does not exist"}[case]
    assert problem in waiting.json()["detail"] and waiting.json()["models"] == {}
    assert listing["models"] == [] and problem in listing["problem"]
    assert early.status_code == 503 and problem in early.json()["detail"]
    # Answers never show the host's paths (/readyz is open to anyone who can reach the port).
    for text in (waiting.text, early.text, json.dumps(listing)):
        assert str(tmp_path) not in text
    assert answer.status_code == 200 and answer.json()["model"]["name"] == "tiny"


async def test_poll_loads_new_replaces_changed_and_drops_removed_models(
    make_client, images, model_dir: Path, tmp_path: Path
) -> None:
    repo = tmp_path / "repo"
    write_model(model_dir / "tiny.onnx", repo / "alpha.onnx", version="a1")
    write_model(model_dir / "tiny.onnx", repo / "beta.onnx", version="b1")
    async with make_client(model_dir=repo, model_poll_s=POLL_S) as client:

        async def versions() -> dict[str, list[tuple[str, str]]]:
            listing = (await client.get("/models")).json()
            return {k: [(m["version"], m["state"]) for m in v] for k, v in by_name(listing).items()}

        write_model(model_dir / "tiny.onnx", repo / "alpha.onnx", version="a2")
        write_model(model_dir / "tiny.onnx", repo / "gamma" / "model.onnx", version="c1")
        (repo / "beta.onnx").unlink()

        async def settled() -> bool:
            return await versions() == {"alpha": [("a2", "ready")], "gamma": [("c1", "ready")]}

        await wait_for(settled)
        alpha = await client.post("/models/alpha/predict", files=images.upload(images.png()))
        gamma = await client.post("/models/gamma/predict", files=images.upload(images.png()))
        beta = await client.post("/models/beta/predict", files=images.upload(images.png()))
        metrics = (await client.get("/metrics")).text
    assert alpha.status_code == 200 and alpha.json()["model"]["version"] == "a2"
    assert gamma.status_code == 200 and gamma.json()["model"]["version"] == "c1"
    assert beta.status_code == 404
    assert images.metric(metrics, "rdad_model_info", model="beta") == 0
    assert images.metric(metrics, "rdad_model_info", model="alpha", version="a1") == 0
    assert images.metric(metrics, "rdad_model_info", model="alpha", version="a2") == 1


async def test_a_file_still_changing_is_not_loaded(
    make_client, model_dir: Path, tmp_path: Path
) -> None:
    """A file being written (changing at every poll) is left alone until it settles."""
    repo = tmp_path / "repo"
    write_model(model_dir / "tiny.onnx", repo / "tiny.onnx", version="t1")
    async with make_client(model_dir=repo, model_poll_s=0.3) as client:
        runtime = client.app.state.runtime
        growing = repo / "late.onnx"
        end = time.monotonic() + 1.5
        while time.monotonic() < end:
            with growing.open("ab") as out:
                out.write(b"x" * 1000)
            await asyncio.sleep(0.1)
            assert "late" not in runtime.repository.names()
        await wait_for(lambda: _failed(runtime, "late"), timeout_s=10)  # garbage, once settled


async def _failed(runtime: Any, name: str) -> bool:
    pending = runtime.repository.pending.get(name)
    return pending is not None and pending.state == "failed"


async def test_reload_swaps_versions_without_failing_requests_in_flight(
    make_client, images, control, model_dir: Path, tmp_path: Path
) -> None:
    repo = tmp_path / "repo"
    write_model(model_dir / "tiny.onnx", repo / "tiny.onnx", version="v1")
    control.delay_s = 0.03  # batches take a while: requests are always in flight
    async with make_client(
        model_dir=repo, model_poll_s=0, control=control, reload_without_key=True
    ) as client:
        data = images.png()
        stop = asyncio.Event()
        phase = "before"  # of the reload, when a request was sent
        answers: list[tuple[str, int, str]] = []

        async def worker() -> None:
            while not stop.is_set():
                sent = phase
                r = await client.post("/predict", files=images.upload(data))
                version = r.json()["model"]["version"] if r.is_success else r.text
                answers.append((sent, r.status_code, version))

        workers = [asyncio.create_task(worker()) for _ in range(6)]
        await wait_for(_count(answers, 12))
        phase = "during"
        write_model(model_dir / "tiny.onnx", repo / "tiny.onnx", version="v2")
        reload = await client.post("/models/tiny/reload")
        phase = "after"
        at_reload = len(answers)
        await wait_for(_count(answers, at_reload + 24))
        stop.set()
        await asyncio.gather(*workers)

        async def drained() -> bool:
            return not client.app.state.runtime.repository.draining

        await wait_for(drained)
        listing = (await client.get("/models")).json()
    assert reload.status_code == 200, reload.text
    assert reload.json()["version"] == "v2" and reload.json()["state"] == "ready"
    assert [code for _, code, _ in answers] == [200] * len(answers), answers
    by_phase: dict[str, list[str]] = {}
    for sent, _, version in answers:
        by_phase.setdefault(sent, []).append(version)
    assert set(by_phase["before"]) == {"v1"}  # routed before the swap, answered by v1
    assert by_phase["during"], "no request was in flight during the reload"
    assert set(by_phase["after"]) == {"v2"}
    assert [(m["version"], m["state"]) for m in listing["models"]] == [("v2", "ready")]


def _count(answers: list[Any], n: int) -> Callable[[], Awaitable[bool]]:
    async def check() -> bool:
        return len(answers) >= n

    return check


async def test_replaced_version_drains_until_its_last_request_is_answered(
    make_client, images, model_dir: Path, tmp_path: Path
) -> None:
    repo = tmp_path / "repo"
    write_model(model_dir / "tiny.onnx", repo / "tiny.onnx", version="v1")
    async with make_client(model_dir=repo, model_poll_s=0, reload_without_key=True) as client:
        runtime = client.app.state.runtime
        with runtime.lease("tiny") as old:  # a request routed to v1, not yet answered
            write_model(model_dir / "tiny.onnx", repo / "tiny.onnx", version="v2")
            reload = await client.post("/models/tiny/reload")
            during = by_name((await client.get("/models")).json())["tiny"]
            metrics = (await client.get("/metrics")).text
            new = await client.post("/predict", files=images.upload(images.png()))
            loop = asyncio.get_running_loop()
            (item,) = await old.batcher.infer(
                [np.full((64, 64, 3), 128, np.uint8)], deadline=loop.time() + 10
            )
        await wait_for(lambda: _no_draining(runtime))
        after = (await client.get("/metrics")).text
    assert reload.status_code == 200
    assert [(m["version"], m["state"]) for m in during] == [("v2", "ready"), ("v1", "draining")]
    assert images.metric(metrics, "rdad_model_info", version="v1", state="draining") == 1
    assert new.json()["model"]["version"] == "v2"
    assert np.isfinite(item.score)  # the old version still answered its request
    assert images.metric(after, "rdad_model_info", version="v1") == 0
    assert images.metric(after, "rdad_model_info", version="v2", state="ready") == 1


async def _no_draining(runtime: Any) -> bool:
    return not runtime.repository.draining


async def test_reload_errors_keep_the_serving_version(
    make_client, images, model_dir: Path, tmp_path: Path
) -> None:
    repo = tmp_path / "repo"
    write_model(model_dir / "tiny.onnx", repo / "tiny.onnx", version="v1")
    key = {"Authorization": "Bearer s3cret"}
    async with make_client(model_dir=repo, model_poll_s=0, api_key="s3cret") as client:
        no_key = await client.post("/models/tiny/reload")
        unknown = await client.post("/models/nope/reload", headers=key)
        path_like = await client.post("/models/..%2Ftiny/reload", headers=key)
        (repo / "tiny.onnx").write_bytes(b"half-written garbage")
        broken = await client.post("/models/tiny/reload", headers=key)
        still = await client.post("/predict", files=images.upload(images.png()), headers=key)
        ready = await client.get("/readyz")
        during = by_name((await client.get("/models", headers=key)).json())["tiny"]
        write_model(model_dir / "tiny.onnx", repo / "tiny.onnx", version="v2")
        fixed = await client.post("/models/tiny/reload", headers=key)
        await wait_for(lambda: _no_draining(client.app.state.runtime))
        after = by_name((await client.get("/models", headers=key)).json())["tiny"]
    assert no_key.status_code == 401
    assert unknown.status_code == 404 and path_like.status_code == 404
    assert broken.status_code == 422 and broken.json()["error"] == "model_load_failed"
    assert "version v1 keeps serving" in broken.json()["detail"]
    assert still.status_code == 200 and still.json()["model"]["version"] == "v1"
    assert ready.status_code == 200
    assert [(m["version"], m["state"]) for m in during] == [("v1", "ready"), (None, "failed")]
    assert fixed.status_code == 200 and fixed.json()["version"] == "v2"
    assert [(m["version"], m["state"]) for m in after] == [("v2", "ready")]


async def test_reload_is_off_without_a_key_and_never_cross_site(
    make_client, model_dir: Path, tmp_path: Path
) -> None:
    """A page on another site, opened by a browser on the factory network, must not be able to
    make the service reload (and warm up) its models: without an API key the route is off unless
    explicitly allowed, and a cross-site request is refused even then."""
    repo = tmp_path / "repo"
    write_model(model_dir / "tiny.onnx", repo / "tiny.onnx", version="v1")
    page = {"Origin": "http://evil.example", "Sec-Fetch-Site": "cross-site"}
    async with make_client(model_dir=repo, model_poll_s=0) as client:
        off = await client.post("/models/tiny/reload")
    async with make_client(model_dir=repo, model_poll_s=0, reload_without_key=True) as client:
        cross_site = await client.post("/models/tiny/reload", headers=page)
        other_origin = await client.post("/models/tiny/reload", headers={"Origin": "http://x"})
        same_origin = await client.post("/models/tiny/reload", headers={"Origin": "http://rdad"})
    key = {"Authorization": "Bearer s3cret"}
    async with make_client(model_dir=repo, model_poll_s=0, api_key="s3cret") as client:
        keyed_cross_site = await client.post("/models/tiny/reload", headers={**key, **page})
        keyed = await client.post("/models/tiny/reload", headers=key)
    assert off.status_code == 403 and "RDAD_API_KEY" in off.json()["detail"]
    assert cross_site.status_code == 403 and other_origin.status_code == 403
    assert same_origin.status_code == 200
    assert keyed_cross_site.status_code == 403 and keyed.status_code == 200


async def test_a_model_failing_warm_up_is_failed_and_the_others_serve(
    make_client, control, model_dir: Path, tmp_path: Path
) -> None:
    repo = tmp_path / "repo"
    write_model(model_dir / "tiny.onnx", repo / "alpha.onnx")
    write_model(model_dir / "tiny.onnx", repo / "beta.onnx")
    control.fail_next = True  # the first warm-up batch (alpha's) raises
    async with make_client(model_dir=repo, control=control) as client:
        ready = await client.get("/readyz")
        alpha = (await client.get("/models/alpha")).json()
    assert ready.status_code == 200
    assert ready.json()["models"] == {"alpha": "failed", "beta": "ready"}
    assert alpha["state"] == "failed" and "warm-up failed" in alpha["error"]


async def test_default_model_that_failed_keeps_the_service_not_ready(
    make_client, images, model_dir: Path, tmp_path: Path
) -> None:
    repo = tmp_path / "repo"
    write_model(model_dir / "tiny.onnx", repo / "good.onnx")
    (repo / "main.onnx").write_bytes(b"junk")
    async with make_client(model_dir=repo, default_model="main", ready=False) as client:
        runtime = client.app.state.runtime
        await wait_for(lambda: _started(client.app))
        ready = await client.get("/readyz")
        default = await client.post("/predict", files=images.upload(images.png()))
        good = await client.post("/models/good/predict", files=images.upload(images.png()))
    assert runtime.default_model == "main"
    assert ready.status_code == 503 and "default model 'main' is failed" in ready.json()["detail"]
    assert default.status_code == 503 and good.status_code == 200


async def test_loading_and_warming_states_are_visible(
    make_client, images, control, model_dir: Path, tmp_path: Path, monkeypatch
) -> None:
    """A model appearing while the service runs: ``loading`` (file being read), ``warming``
    (warm-up batches), then ``ready``, in /models, /readyz and rdad_model_info; the instance stays
    ready meanwhile."""
    import threading

    from rdad.service.engine_onnxruntime import OnnxRuntimeEngine

    loading = threading.Event()
    release = threading.Event()
    real_load = OnnxRuntimeEngine.load

    def slow_load(name: str, source: Any, meta: Any, settings: Settings) -> Any:
        if name == "late":
            loading.set()
            assert release.wait(30), "test never released the load"
        return real_load(name, source, meta, settings)

    # The ONNX Runtime engine make_client pins.
    monkeypatch.setattr(OnnxRuntimeEngine, "load", slow_load)
    repo = tmp_path / "repo"
    write_model(model_dir / "tiny.onnx", repo / "tiny.onnx")
    async with make_client(model_dir=repo, model_poll_s=POLL_S, control=control) as client:

        async def state_of(name: str) -> str | None:
            return (await client.get("/readyz")).json()["models"].get(name)

        write_model(model_dir / "tiny.onnx", repo / "late.onnx", version="l1")
        await wait_for(lambda: asyncio.to_thread(loading.wait, 0))
        assert await state_of("late") == "loading"
        during_load = (await client.get("/readyz")).status_code
        metrics = (await client.get("/metrics")).text
        control.gate.clear()  # hold the warm-up batches
        release.set()
        await wait_for(lambda: _state_is(client, "late", "warming"))
        control.gate.set()
        await wait_for(lambda: _state_is(client, "late", "ready"))
        answer = await client.post("/models/late/predict", files=images.upload(images.png()))
    assert during_load == 200  # a model coming in does not take the instance out of rotation
    assert images.metric(metrics, "rdad_model_info", model="late", state="loading") == 1
    assert images.metric(metrics, "rdad_model_ready", model="late") == 0
    assert answer.status_code == 200 and answer.json()["model"]["version"] == "l1"


async def _state_is(client: Any, name: str, state: str) -> bool:
    return (await client.get("/readyz")).json()["models"].get(name) == state
