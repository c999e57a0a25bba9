"""Dynamic batching and its failure modes, on the real engine (wrapped only to block or fail)."""

from __future__ import annotations

import asyncio
import threading
from typing import Any

import numpy as np
import pytest

from rdad.service.batcher import Batcher
from rdad.service.engine import BatchOutput
from tests.service.conftest import multipart_file, post_scope, until


def _batcher(client: Any) -> Any:
    return client.app.state.runtime.models["tiny"].batcher


async def test_concurrent_requests_share_batches(make_client, images, control, reference) -> None:
    blobs = [images.png(64 + i, 64, seed=i) for i in range(8)]
    # 8 staggered arrivals must end up in one batch. Early close is off and the window is far
    # longer than the arrivals take on any machine, so only the size (8) can close the batch:
    # a loaded CI host that stretches the 210 ms of arrivals cannot split it.
    async with make_client(
        control=control,
        max_batch_size=8,
        max_delay_ms=20_000,
        batch_early_close=False,
        request_timeout_s=60,
    ) as client:
        control.batch_sizes.clear()  # forget the warm-up runs

        async def staggered(i: int) -> Any:
            await asyncio.sleep(0.03 * i)  # arrivals spread over 210 ms
            return await client.post("/predict", files=images.upload(blobs[i]))

        responses = await asyncio.gather(*(staggered(i) for i in range(8)))
        metrics = (await client.get("/metrics")).text
    assert [r.status_code for r in responses] == [200] * 8
    batches = images.metric(metrics, "rdad_batch_size_count", model="tiny")
    assert images.metric(metrics, "rdad_batch_size_sum", model="tiny") == 8
    assert batches == 1 and control.batch_sizes == [8]
    # Batching changes nothing in the results.
    for response, blob in zip(responses, blobs, strict=True):
        assert response.json()["score"] == pytest.approx(reference(blob)[1], abs=1e-5)
        assert response.json()["timings_ms"]["queue"] > 0


async def test_simultaneous_requests_share_a_batch_with_early_close(
    make_client, images, control
) -> None:
    blobs = [images.png(64 + i, 64, seed=i) for i in range(6)]
    async with make_client(control=control, max_batch_size=8, max_delay_ms=2000) as client:
        control.batch_sizes.clear()
        responses = await asyncio.gather(
            *(client.post("/predict", files=images.upload(b)) for b in blobs)
        )
    assert [r.status_code for r in responses] == [200] * 6
    # Images still decoding keep the batch open, and the last one closes it at once (no 2 s
    # wait). Normally one batch of 6; a first image that finished decoding before the others
    # were even parsed may leave alone, and the rest then queue behind it into one batch.
    assert sum(control.batch_sizes) == 6 and len(control.batch_sizes) <= 2
    assert max(r.json()["timings_ms"]["queue"] for r in responses) < 1500


async def test_lone_request_does_not_wait_for_the_batch_window(make_client, images) -> None:
    async with make_client(max_delay_ms=3000) as client:
        lone = await client.post("/predict", files=images.upload(images.png()))
    assert lone.status_code == 200
    assert lone.json()["timings_ms"]["queue"] < 1000  # closed early: nothing else was coming
    async with make_client(max_delay_ms=300, batch_early_close=False) as client:
        waited = await client.post("/predict", files=images.upload(images.png()))
    assert waited.json()["timings_ms"]["queue"] >= 250  # the plain window, when asked for


async def test_full_queue_answers_503_at_once(make_client, images, control) -> None:
    data = images.png()
    # max_queue counts every image in flight: the running one and two queued.
    async with make_client(control=control, max_batch_size=1, max_queue=3, max_files=1) as client:
        control.gate.clear()
        control.entered.clear()
        running = asyncio.create_task(client.post("/predict", files=images.upload(data)))
        await until(control.entered.is_set)  # first image is inside the engine
        queued = [
            asyncio.create_task(client.post("/predict", files=images.upload(data)))
            for _ in range(2)
        ]
        await until(lambda: _batcher(client).depth == 2)
        refused = await client.post("/predict", files=images.upload(data))
        assert refused.status_code == 503
        # Retry-After: the estimated drain time of the work ahead, at least RDAD_RETRY_AFTER_S.
        assert int(refused.headers["Retry-After"]) >= 1
        assert refused.json()["error"] == "queue_full"
        control.gate.set()
        served = await asyncio.gather(running, *queued)
    assert [r.status_code for r in served] == [200, 200, 200]


async def test_timeout_answers_504_and_drops_unstarted_work(make_client, images, control) -> None:
    data = images.png()
    # The timeout leaves room for a slow warm-up on a loaded host: admission refuses (503) a
    # request whose estimated wait — from the warm-up batch's time — exceeds its deadline.
    async with make_client(control=control, max_batch_size=1, request_timeout_s=1.5) as client:
        control.batch_sizes.clear()
        control.gate.clear()
        control.entered.clear()
        started = asyncio.create_task(client.post("/predict", files=images.upload(data)))
        await until(control.entered.is_set)
        waiting = asyncio.create_task(client.post("/predict", files=images.upload(data)))
        await until(lambda: _batcher(client).depth == 1 or waiting.done())
        assert not waiting.done(), f"never queued: {waiting.result().text}"
        timed_out = await asyncio.gather(started, waiting)
        assert [r.status_code for r in timed_out] == [504, 504]
        assert timed_out[1].json()["error"] == "timeout"
        assert _batcher(client).depth == 0  # the queued image was taken out, not run later
        control.gate.set()
        after = await client.post("/predict", files=images.upload(data))
    assert after.status_code == 200
    # The engine saw the first (already started) image and the last one, never the dropped one.
    assert control.batch_sizes == [1, 1]


async def test_image_that_cannot_finish_in_time_is_not_run(make_client, images, control) -> None:
    data = images.png()
    async with make_client(control=control, max_batch_size=1, request_timeout_s=2.0) as client:
        control.delay_s = 1.2  # every batch takes ≥ 1.2 s
        assert (await client.post("/predict", files=images.upload(data))).status_code == 200
        control.batch_sizes.clear()
        pair = await asyncio.gather(
            *(client.post("/predict", files=images.upload(data)) for _ in range(2))
        )
        control.delay_s = 0.0
    # The second image would start at ~1.2 s and end at ~2.4 s, past its 2 s deadline: it is
    # refused at admission (503, never tried) without reaching the engine.
    assert sorted(r.status_code for r in pair) == [200, 503]
    refused = next(r for r in pair if r.status_code == 503)
    assert refused.json()["error"] == "overloaded" and int(refused.headers["Retry-After"]) >= 1
    assert control.batch_sizes == [1]


async def test_inference_failure_fails_only_its_batch(make_client, images, control) -> None:
    data = images.png()
    async with make_client(control=control, max_batch_size=2, max_delay_ms=200) as client:
        control.fail_next = True
        burst = await asyncio.gather(
            *(client.post("/predict", files=images.upload(data)) for _ in range(3))
        )
        after = await client.post("/predict", files=images.upload(data))
        metrics = (await client.get("/metrics")).text
    assert sorted(r.status_code for r in burst) == [200, 500, 500]
    failed = next(r for r in burst if r.status_code == 500)
    assert failed.json()["error"] == "inference_failed"
    assert "Traceback" not in failed.text and "injected" not in failed.text
    assert after.status_code == 200
    assert images.metric(metrics, "rdad_inference_failures_total", model="tiny") == 1


async def test_readiness_waits_for_warm_up(make_client, images, control, ready) -> None:
    control.gate.clear()  # warm-up goes through the same runner: hold it
    async with make_client(control=control, ready=False) as client:
        not_ready = await client.get("/readyz")
        oip_not_ready = await client.get("/v2/health/ready")
        early = await client.post("/predict", files=images.upload(images.png()))
        alive = await client.get("/healthz")
        oip_live = await client.get("/v2/health/live")
        gauge_before = images.metric((await client.get("/metrics")).text, "rdad_model_ready")
        control.gate.set()
        await ready(client)
        ready_now = await client.get("/readyz")
        oip_ready = await client.get("/v2/health/ready")
        gauge_after = images.metric((await client.get("/metrics")).text, "rdad_model_ready")
    assert not_ready.status_code == 503
    not_ready_body = not_ready.json()
    # The provider shows as soon as the model is loaded (it may still be warming).
    assert not_ready_body.pop("providers") in ({}, {"tiny": "CPUExecutionProvider"})
    assert not_ready_body == {
        "status": "not ready",
        "models": {"tiny": "warming"},
        "detail": "loading and warming up models",
    }
    assert oip_not_ready.status_code == 503 and oip_not_ready.json() == {"ready": False}
    assert early.status_code == 503 and early.json()["error"] == "not_ready"
    assert "Retry-After" in early.headers
    assert alive.status_code == 200 and oip_live.json() == {"live": True}
    assert ready_now.status_code == 200 and ready_now.json()["models"] == {"tiny": "ready"}
    assert oip_ready.status_code == 200 and oip_ready.json() == {"ready": True}
    assert (gauge_before, gauge_after) == (0, 1)


async def test_a_full_batch_is_submitted_before_the_event_loop_turns() -> None:
    # Under a burst the event loop has hundreds of requests' steps queued, so each extra turn
    # between "the batch is full" and "the batch runs" costs the model idle time. The request
    # that fills the batch submits it itself; here the loop is blocked right after that step.
    submitted = threading.Event()

    def runner(batch: np.ndarray) -> BatchOutput:
        submitted.set()
        n = len(batch)
        return BatchOutput(np.zeros((n, 4, 4), np.float32), np.arange(n, dtype=np.float32))

    batcher = Batcher("m", runner, max_batch_size=2, max_delay_s=60.0)
    batcher.start()
    loop = asyncio.get_running_loop()
    images = [np.zeros((4, 4, 3), np.uint8)] * 2
    request = asyncio.ensure_future(batcher.infer(images, deadline=loop.time() + 30))
    await asyncio.sleep(0)  # exactly one step of the request
    ran = submitted.wait(5)  # blocks the loop: nothing else gets a turn
    results = await request
    await batcher.close(1.0)
    assert ran, "the full batch waited for another turn of the event loop"
    assert [r.score for r in results] == [0.0, 1.0] and results[0].batch_size == 2


async def test_announced_images_hold_a_batch_open_until_they_are_queued() -> None:
    """Images being decoded are announced; while any is, a batch waits its window for them
    instead of closing early. Queuing them takes them off the announcement in the same step, and
    leaving the announcement withdraws what never came (a failed decode), so a lone request is
    never left waiting for images that are not coming."""
    sizes: list[int] = []

    def runner(batch: np.ndarray) -> BatchOutput:
        sizes.append(len(batch))
        n = len(batch)
        return BatchOutput(np.zeros((n, 4, 4), np.float32), np.zeros(n, np.float32))

    batcher = Batcher("m", runner, max_batch_size=4, max_delay_s=60.0, early_close=True)
    batcher.start()
    loop = asyncio.get_running_loop()
    image = [np.zeros((4, 4, 3), np.uint8)]
    deadline = loop.time() + 30
    with batcher.expecting(2) as arrival:
        first = asyncio.ensure_future(batcher.infer(image, deadline=deadline, arrival=arrival))
        await asyncio.sleep(0.05)
        assert sizes == [] and not first.done()  # one more is announced: the batch waits
        second = asyncio.ensure_future(batcher.infer(image, deadline=deadline, arrival=arrival))
        await asyncio.wait_for(asyncio.gather(first, second), 5)
    assert sizes == [2]  # both in one batch, closed as soon as nothing more was announced
    with batcher.expecting(3):
        pass  # three decodes announced, none came (they failed)
    start = loop.time()
    await asyncio.wait_for(batcher.infer(image, deadline=loop.time() + 30), 5)
    assert loop.time() - start < 1.0 and sizes == [2, 1]  # not held for the 60 s window
    await batcher.close(1.0)


async def test_client_that_hangs_up_while_queued_leaves_no_work(
    make_client, images, control
) -> None:
    data = images.png()
    boundary = b"rdadq"
    body = multipart_file(data, boundary) + b"--" + boundary + b"--\r\n"
    scope = post_scope(headers=[(b"content-type", b"multipart/form-data; boundary=" + boundary)])
    hang_up = asyncio.Event()
    sent: list[dict[str, Any]] = []
    reads = 0

    async def receive() -> dict[str, Any]:
        nonlocal reads
        reads += 1
        if reads == 1:
            return {"type": "http.request", "body": body, "more_body": False}
        await hang_up.wait()
        return {"type": "http.disconnect"}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    async with make_client(control=control, max_batch_size=1) as client:
        control.batch_sizes.clear()
        control.gate.clear()
        control.entered.clear()
        running = asyncio.create_task(client.post("/predict", files=images.upload(data)))
        await until(control.entered.is_set)
        leaving = asyncio.create_task(client.app(scope, receive, send))  # type: ignore[attr-defined]
        await until(lambda: _batcher(client).depth == 1)
        hang_up.set()
        done, _ = await asyncio.wait({leaving}, timeout=5)  # no cancel from here: it must end
        assert leaving in done and leaving.exception() is None
        assert _batcher(client).depth == 0  # the queued image left the queue at once
        assert not any(m.get("status") == 200 for m in sent)
        control.gate.set()
        first = await running
        after = await client.post("/predict", files=images.upload(data))
    assert (first.status_code, after.status_code) == (200, 200)
    assert control.batch_sizes == [1, 1]  # the abandoned image never reached the engine
