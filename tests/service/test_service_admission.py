"""Admission before work, the memory budget, load shedding, per-file results, liveness, the API
key behind a root_path, and settings refused at start."""

from __future__ import annotations

import asyncio
import base64
import functools
import json
from types import SimpleNamespace
from typing import Any

import pytest
from pydantic import ValidationError

from rdad.service.admission import LatencyModel, ModelAdmission
from rdad.service.batcher import RunningWork
from rdad.service.errors import BadImageError, OverloadedError, QueueFullError, RequestTimeoutError
from rdad.service.memory import MemoryBudget
from rdad.service.resources import MIB, default_memory_budget, memory_limit_bytes
from rdad.service.scoring import decode_all
from rdad.service.settings import Settings
from tests.service.conftest import multipart_file, post_scope, until

BOUNDARY = b"rdadb"


def _model(client: Any) -> Any:
    return client.app.state.runtime.models["tiny"]


# --- units ----------------------------------------------------------------------------------


def test_latency_model_interpolates_per_batch_size() -> None:
    latency = LatencyModel()
    assert latency.expected(4) is None
    latency.record(1, 0.9, provisional=True)  # warm-up guess...
    latency.record(1, 0.1)  # ...replaced by the first real batch, not averaged with it
    latency.record(8, 0.8)
    assert latency.expected(1) == pytest.approx(0.1)
    assert latency.expected(4) == pytest.approx(0.1 + 3 / 7 * 0.7)
    assert latency.expected(16) == pytest.approx(1.6)  # beyond the largest: linear, pessimistic
    latency.record(8, 1.8)
    assert 0.8 < latency.expected(8) < 1.8  # smoothed, not the last batch's wall time
    # 20 images at batch 8: two full batches and one of 4.
    assert latency.drain_s(20, 8) == pytest.approx(2 * latency.expected(8) + latency.expected(4))


def _batches(max_batch_size: int = 4) -> SimpleNamespace:
    """What admission reads of a batcher: nothing running, a latency model to fill."""
    return SimpleNamespace(
        max_batch_size=max_batch_size, latency=LatencyModel(), running=lambda: RunningWork(None, 0)
    )


def test_admission_refuses_what_cannot_finish_and_always_admits_an_idle_model() -> None:
    batches = _batches()
    admission = ModelAdmission("m", batches, max_queue=10, retry_after_s=1)
    batches.latency.record(4, 1.0)
    batches.latency.record(1, 1.0)
    first = admission.reserve(1, now=0.0, deadline=0.5)  # idle: tried even though 1 s > 0.5 s
    with pytest.raises(OverloadedError) as refused:
        admission.reserve(4, now=0.0, deadline=1.5)  # 5 images ahead → 2 batches = 2 s
    assert refused.value.retry_after_s == 1 and admission.admitted == 1
    second = admission.reserve(3, now=0.0, deadline=3.0)
    with pytest.raises(QueueFullError):
        admission.reserve(7, now=0.0, deadline=100.0)  # 4 + 7 > 10
    with first, second:
        assert admission.admitted == 4
    assert admission.admitted == 0
    first.release()  # given back once only
    assert admission.admitted == 0


def test_a_request_with_more_images_than_the_queue_runs_in_waves_when_alone() -> None:
    batches = _batches()
    admission = ModelAdmission("m", batches, max_queue=8, retry_after_s=1)
    batches.latency.record(4, 10.0)  # pessimistic: 30 images would take far past the deadline
    with admission.reserve(1, now=0.0, deadline=1.0) as alone:
        # Alone on the model: admitted for the whole queue, to run in waves of 8.
        assert alone.cover(30, now=0.0, deadline=1.0) == 8 and admission.admitted == 8
        with pytest.raises(QueueFullError):  # the queue is its own now: others are refused
            admission.reserve(1, now=0.0, deadline=100.0)
        assert alone.cover(3, now=0.0, deadline=1.0) == 3 and admission.admitted == 3
    with admission.reserve(2, now=0.0, deadline=100.0) as other:
        with admission.reserve(1, now=0.0, deadline=100.0) as late:
            with pytest.raises(OverloadedError):  # not alone: its wait is judged
                late.cover(5, now=0.0, deadline=15.0)
            with pytest.raises(QueueFullError):  # a full wave does not fit beside the others
                late.cover(30, now=0.0, deadline=1000.0)
            assert late.images == 1  # a refused growth keeps what was held
        assert other.images == 2
    assert admission.admitted == 0


async def test_memory_budget_waits_in_order_and_times_out() -> None:
    budget = MemoryBudget(100, pixel_reserve=100)
    loop = asyncio.get_running_loop()
    first = await budget.acquire(60, deadline=loop.time() + 1)
    assert first.nbytes == 60
    second = asyncio.ensure_future(budget.acquire(60, deadline=loop.time() + 5))
    await asyncio.sleep(0.01)
    assert not second.done() and budget.in_use == 60  # never over the budget
    with pytest.raises(RequestTimeoutError):
        await budget.acquire(10, deadline=loop.time() + 0.05)  # behind the waiter: FIFO
    first.release()
    granted = await second
    assert granted.nbytes == 60 and budget.in_use == 60
    granted.shrink(20)  # the decode is done: only what is kept stays held
    assert budget.in_use == 20
    granted.release()
    granted.release()  # idempotent
    assert budget.in_use == 0


async def test_memory_budget_refuses_at_once_a_decode_that_cannot_start_in_time() -> None:
    budget = MemoryBudget(100, pixel_reserve=100, workers=2)
    loop = asyncio.get_running_loop()
    async with budget.hold(50, deadline=loop.time() + 1) as grant:
        assert grant.nbytes == 50 and budget.in_use == 50
    assert budget.in_use == 0 and budget.seconds_per_byte is None
    budget.record(50, 0.05)  # a 50-byte decode ran 0.05 s in its worker
    assert budget.seconds_per_byte == pytest.approx(0.001)
    full = await budget.acquire(100, deadline=loop.time() + 1)  # the budget is now full
    # 100 bytes ahead + 100 of its own at ~1 ms/byte, one decode at a time (100-byte images):
    # about 0.2 s — refused at once against 0.05 s left (503, not a 504 after the deadline) …
    start = loop.time()
    with pytest.raises(OverloadedError) as refused:
        await budget.acquire(100, deadline=loop.time() + 0.05)
    assert loop.time() - start < 0.02 and refused.value.retry_after_s >= 1
    # … while one that can make it waits its turn and gets the bytes.
    waiting = asyncio.ensure_future(budget.acquire(100, deadline=loop.time() + 5))
    await asyncio.sleep(0.01)
    assert not waiting.done()
    full.release()
    (await waiting).release()
    assert budget.in_use == 0


async def test_memory_budget_refuses_queued_decodes_once_a_measurement_shows_they_are_late() -> (
    None
):
    """Uploads that queued before any decode was timed are refused (503) as soon as the first
    decode gives the rate, not left to wait for their deadline (504)."""
    budget = MemoryBudget(100, pixel_reserve=100)
    loop = asyncio.get_running_loop()
    first = await budget.acquire(100, deadline=loop.time() + 10)
    near = asyncio.ensure_future(budget.acquire(100, deadline=loop.time() + 10))
    late = asyncio.ensure_future(budget.acquire(100, deadline=loop.time() + 0.5))
    await asyncio.sleep(0.05)
    assert not near.done() and not late.done()  # no rate yet: nobody is refused on a guess
    first.release()  # `near` gets the bytes …
    budget.record(100, 0.4)  # … and the measured rate puts `late` 0.8 s out, past its 0.45 s
    with pytest.raises(OverloadedError):
        await late
    granted = await near
    assert granted.nbytes == 100 and budget.in_use == 100
    granted.release()
    assert budget.in_use == 0


async def test_memory_budget_hold_releases_on_error() -> None:
    budget = MemoryBudget(100, pixel_reserve=100)
    loop = asyncio.get_running_loop()
    with pytest.raises(ValueError, match="bad image"):
        async with budget.hold(40, deadline=loop.time() + 1):
            assert budget.in_use == 40
            raise ValueError("bad image")
    assert budget.in_use == 0 and budget.seconds_per_byte is None
    assert budget.estimated_wait(10) is None  # nothing measured: never refuses on a guess


async def test_a_started_request_finishes_before_later_ones_take_its_memory() -> None:
    """Each request registers all its waves; a later one may use what is free beside a started
    one, never what the started one needs for its next wave — and one that cannot finish in
    time behind the work registered before it is refused at once."""
    budget = MemoryBudget(100, pixel_reserve=100)
    loop = asyncio.get_running_loop()
    first = budget.pixel_request(160, deadline=loop.time() + 10)  # two waves of 80
    wave = await first.acquire(80)
    wave.shrink(10)  # decoded: only its model inputs stay
    later = budget.pixel_request(20, deadline=loop.time() + 10)
    small = await later.acquire(10)  # fits beside the next wave of the first (10 + 80 + 10)
    small.release()
    waiting = asyncio.ensure_future(later.acquire(20))  # would leave no room for it: waits
    await asyncio.sleep(0.01)
    assert not waiting.done()
    wave.release()
    second = await first.acquire(80)  # the started request goes on first
    assert not waiting.done()
    first.close()
    second.release()
    (await waiting).release()
    later.close()
    assert budget.in_use == 0
    budget.record(100, 1.0)  # 10 ms per byte
    busy = budget.pixel_request(300, deadline=loop.time() + 100)
    with pytest.raises(OverloadedError):  # 300 bytes ahead + its own 100: ~4 s > 1 s left
        budget.pixel_request(100, deadline=loop.time() + 1)
    busy.close()


async def test_uploads_never_wait_and_never_crowd_out_a_decode() -> None:
    """Bodies only use the budget beyond the pixel reserve, and are refused (503) at once
    rather than waiting, so a request holding upload bytes while it waits for pixel memory can
    never deadlock with the others: the reserve always frees up for it."""
    budget = MemoryBudget(100, pixel_reserve=60)
    loop = asyncio.get_running_loop()
    assert budget.body_limit == 40
    with budget.body(30) as body:
        body.grow_now(30)
        with pytest.raises(OverloadedError):
            budget.body(20)  # declared: does not fit in what bodies have left
        other = budget.body(None)  # chunked: no declared size, counted as it streams
        with pytest.raises(OverloadedError):
            other.grow_now(20)
        other.grow_now(10)
        assert budget.body_in_use == 40 and budget.in_use == 40
        # Uploads fill their share: a decode still gets the whole reserve at once.
        decode = await budget.acquire(60, deadline=loop.time() + 1)
        assert budget.in_use == 100
        body.shrink(0)  # its file is decoded: its bytes are gone
        decode.release()
        other.release()
    assert budget.in_use == 0 and budget.body_in_use == 0


async def test_decode_all_keeps_file_errors_and_cancels_the_rest_on_a_request_error() -> None:
    cancelled: list[str] = []

    async def decode(name: str) -> str:
        try:
            if name == "bad":
                raise BadImageError("bad: not an image")
            if name == "slow":
                await asyncio.sleep(30)
            if name == "late":
                await asyncio.sleep(0.02)
                raise OverloadedError("decoding backlog")
            return name.upper()
        except asyncio.CancelledError:
            cancelled.append(name)
            raise

    def decodes(names: list[str]) -> list[Any]:
        return [functools.partial(decode, name) for name in names]

    outcomes = await decode_all(decodes(["a", "bad", "b"]))
    assert outcomes[0] == "A" and outcomes[2] == "B" and isinstance(outcomes[1], BadImageError)
    loop = asyncio.get_running_loop()
    start = loop.time()
    with pytest.raises(OverloadedError):
        await decode_all(decodes(["a", "bad", "slow", "late"]))
    assert loop.time() - start < 5 and cancelled == ["slow"]  # not awaited for its 30 s


async def test_memory_budget_caps_one_request_at_the_pixel_reserve() -> None:
    budget = MemoryBudget(100, pixel_reserve=80)
    loop = asyncio.get_running_loop()
    grant = await budget.acquire(500, deadline=loop.time() + 1)
    assert grant.nbytes == 80
    grant.release()
    assert budget.in_use == 0


def test_default_memory_budget_follows_the_memory_limit(tmp_path) -> None:
    limit = tmp_path / "memory.max"
    limit.write_text("2147483648\n")  # a 2 GiB pod
    assert memory_limit_bytes((limit,)) == min(2 * 1024 * MIB, memory_limit_bytes(()) or 2**62)
    assert default_memory_budget(1_000_000, MIB, 2 * 1024 * MIB) == 128 * MIB
    assert default_memory_budget(1_000_000, MIB, 64 * 1024 * MIB) == 256 * MIB  # capped
    # One image at the pixel limit being decoded beside one upload at the size limit always fits.
    assert default_memory_budget(40_000_000, 50 * MIB, 1024 * MIB) == 200_000_000 + 50 * MIB
    limit.write_text("max\n")  # cgroup v2 without a limit: physical RAM
    assert memory_limit_bytes((limit,)) == memory_limit_bytes(())


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"max_queue": 4, "max_files": 8}, "max_queue"),
        ({"drain_delay_s": 30, "grace_period_s": 25}, "drain_delay_s"),
        ({"memory_budget_mb": 200, "max_pixels": 40_000_000}, "memory_budget_mb"),
        ({"max_pixels": 400_000_000}, "Pillow"),
    ],
)
def test_incompatible_settings_are_refused(settings: dict[str, Any], message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        Settings(**settings)


def test_pillow_keeps_its_bomb_limit() -> None:
    from PIL import Image

    import rdad.imaging  # noqa: F401  (importing it must not switch Pillow's check off)

    assert Image.MAX_IMAGE_PIXELS is not None and Image.MAX_IMAGE_PIXELS > 0


# --- admission before the body ----------------------------------------------------------------


async def _stream_post(app: Any, path: str, chunks: list[bytes]) -> tuple[int, int, dict]:
    """POST ``chunks`` as a multipart body; return status, chunks read and the JSON answer."""
    reads = 0
    sent: list[dict[str, Any]] = []
    scope = post_scope(path, [(b"content-type", b"multipart/form-data; boundary=" + BOUNDARY)])

    async def receive() -> dict[str, Any]:
        nonlocal reads
        if reads >= len(chunks):
            await asyncio.sleep(3600)  # the client would wait forever: the server must not
        reads += 1
        return {"type": "http.request", "body": chunks[reads - 1], "more_body": True}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    await asyncio.wait_for(app(scope, receive, send), 10)
    body = b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body")
    return sent[0]["status"], reads, json.loads(body)


def _part(data: bytes, field: str = "files", name: str = "a.png") -> bytes:
    return multipart_file(data, BOUNDARY, field=field, name=name)


async def test_full_model_is_refused_before_the_body_is_read(make_client, images) -> None:
    async with make_client(max_queue=2, max_files=2) as client:
        # Two images in flight elsewhere.
        with _model(client).admission.reserve(2, now=0.0, deadline=float("inf")):
            status, reads, body = await _stream_post(client.app, "/predict", [_part(images.png())])
    assert (status, reads, body["error"]) == (503, 0, "queue_full")


async def test_too_many_files_are_refused_as_the_part_begins(make_client, images) -> None:
    png = images.png()
    async with make_client(max_files=2) as client:
        chunks = [_part(png, name=f"{i}.png") for i in range(3)] + [b"\x00" * 65536] * 50
        status, reads, body = await _stream_post(client.app, "/predict", chunks)
        assert _model(client).admission.admitted == 0  # every reservation given back
    assert status == 422 and body["error"] == "invalid_request"
    assert reads == 3  # stopped at the third file's headers, not at the end of the body


async def test_overloaded_model_answers_503_at_once(make_client, images, control) -> None:
    data = images.png()
    async with make_client(control=control, max_batch_size=1, request_timeout_s=2) as client:
        _model(client).batcher.latency.record(1, 1.5)  # one batch takes 1.5 s
        control.gate.clear()
        control.entered.clear()
        running = asyncio.create_task(client.post("/predict", files=images.upload(data)))
        await until(control.entered.is_set)
        loop = asyncio.get_running_loop()
        start = loop.time()
        refused = await client.post("/predict", files=images.upload(data))
        refused_s = loop.time() - start
        control.gate.set()
        first = await running
        metrics = (await client.get("/metrics")).text
    assert first.status_code == 200
    assert refused.status_code == 503 and refused.json()["error"] == "overloaded"
    assert int(refused.headers["Retry-After"]) >= 1
    assert refused_s < 1.0  # at once, not after waiting for its timeout
    assert images.metric(metrics, "rdad_admission_refused_total", reason="overloaded") == 1
    assert images.metric(metrics, "rdad_shed_latency_seconds_count", model="tiny") == 1


async def _trickle(app: Any, pieces: list[bytes], pause_s: float) -> tuple[int, dict, float]:
    """POST ``pieces`` of a multipart body with ``pause_s`` before each; status, JSON, seconds."""
    sent: list[dict[str, Any]] = []
    pieces = list(pieces)

    async def receive() -> dict[str, Any]:
        await asyncio.sleep(pause_s)
        body = pieces.pop(0) if pieces else b""
        return {"type": "http.request", "body": body, "more_body": bool(pieces)}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    scope = post_scope(headers=[(b"content-type", b"multipart/form-data; boundary=rdadb")])
    loop = asyncio.get_running_loop()
    start = loop.time()
    await asyncio.wait_for(app(scope, receive, send), 30)
    body = b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body")
    return sent[0]["status"], json.loads(body), loop.time() - start


async def test_a_stalled_upload_is_cut_off_and_gives_its_slot_back(make_client, images) -> None:
    whole = _part(images.png(), field="file") + b"--rdadb--\r\n"
    async with make_client(read_timeout_s=0.3, min_upload_rate_kb_s=1) as client:
        model = _model(client)

        async def stalled_receive() -> dict[str, Any]:
            if not stalled_receive.sent:  # type: ignore[attr-defined]
                stalled_receive.sent = True  # type: ignore[attr-defined]
                return {"type": "http.request", "body": whole[:60], "more_body": True}
            await asyncio.sleep(3600)  # the client stops sending: the server must not wait
            raise AssertionError("unreachable")

        stalled_receive.sent = False  # type: ignore[attr-defined]
        sent: list[dict[str, Any]] = []

        async def send(message: dict[str, Any]) -> None:
            sent.append(message)

        scope = post_scope(headers=[(b"content-type", b"multipart/form-data; boundary=rdadb")])
        upload = asyncio.ensure_future(client.app(scope, stalled_receive, send))
        await until(lambda: model.admission.admitted == 1)  # it holds its slot while stalled
        await asyncio.wait_for(upload, 5)
        held_after = model.admission.admitted, client.app.state.runtime.memory.in_use
        after = await client.post("/predict", files=images.upload(images.png()))
    assert sent[0]["status"] == 408
    assert (b"connection", b"close") in sent[0]["headers"]
    assert json.loads(sent[1]["body"])["error"] == "upload_timeout"
    assert held_after == (0, 0)  # its queue slot and its upload bytes are back at once
    assert after.status_code == 200


async def test_a_trickling_upload_is_cut_off_at_the_minimum_rate(make_client, images) -> None:
    # 20-byte pieces every 0.15 s (133 B/s) against a 1 KiB/s minimum after the first 0.3 s.
    whole = _part(images.png(), field="file") + b"--rdadb--\r\n"
    pieces = [whole[i : i + 20] for i in range(0, len(whole), 20)]
    async with make_client(read_timeout_s=0.3, min_upload_rate_kb_s=1) as client:
        status, body, seconds = await _trickle(client.app, pieces, 0.15)
        assert _model(client).admission.admitted == 0
    assert status == 408 and body["error"] == "upload_timeout"
    assert seconds < 2.0  # cut off near 0.3 s + its bytes at 1 KiB/s, not after the whole body


async def test_the_request_timeout_counts_from_the_end_of_the_upload(make_client, images) -> None:
    """A slow upload that keeps to the minimum rate is scored with its full request timeout:
    a 50 MB upload over a slow link is not a 504 for having taken longer than the timeout."""
    whole = _part(images.png(), field="file") + b"--rdadb--\r\n"
    pieces = [whole[: len(whole) // 2], whole[len(whole) // 2 :]]
    async with make_client(request_timeout_s=0.4, read_timeout_s=5) as client:
        status, body, seconds = await _trickle(client.app, pieces, 0.3)
    assert seconds > 0.6  # the upload alone took longer than the request timeout …
    assert status == 200, body  # … and the answer came within the timeout after it


async def test_memory_budget_bounds_what_requests_hold(make_client, images) -> None:
    big = images.png(900, 900)  # 900×900×5 bytes ≈ 4 MB each at decode
    settings = {"memory_budget_mb": 16, "max_pixels": 1_000_000, "max_upload_mb": 8}
    async with make_client(**settings) as client:
        budget = client.app.state.runtime.memory
        peak = body_peak = 0
        stop = False

        async def sample() -> None:
            nonlocal peak, body_peak
            while not stop:
                peak = max(peak, budget.in_use)
                body_peak = max(body_peak, budget.body_in_use)
                await asyncio.sleep(0)

        sampler = asyncio.create_task(sample())
        files = [("files", (f"{i}.png", big, "image/png")) for i in range(2)]
        answers = await asyncio.gather(*(client.post("/predict", files=files) for _ in range(3)))
        stop = True
        await sampler
        in_use_after = budget.in_use
    assert [a.status_code for a in answers] == [200, 200, 200]
    assert 4_000_000 < peak <= 16 * MIB and body_peak > len(big)  # uploads are counted too
    assert in_use_after == 0


async def test_overlay_keeps_only_an_overlay_sized_view(make_client, images) -> None:
    from rdad.service.decode import decode_whole, read_header

    data = images.png(1200, 900)
    header = read_header(data, max_pixels=10**7)
    plain = decode_whole(data, header, model_size=64, overlay_max_side=None)
    overlay = decode_whole(data, header, model_size=64, overlay_max_side=256)
    assert plain.view is None and plain.retained_bytes == 64 * 64 * 3
    assert overlay.view is not None and overlay.view.shape == (192, 256, 3)
    async with make_client(overlay_max_side=256) as client:
        answer = await client.post("/predict", params={"overlay": True}, files=images.upload(data))
    assert answer.status_code == 200
    overlay_png = base64.b64decode(answer.json()["overlay_png"])
    assert images.decode_png(overlay_png).shape[:2] == (192, 256)


# --- per-file results -------------------------------------------------------------------------


async def test_multi_file_request_answers_each_file(make_client, images, reference) -> None:
    good = images.png(80, 70)
    files = [
        ("files", ("good.png", good, "image/png")),
        ("files", ("broken.png", b"not an image", "image/png")),
        ("files", ("notes.txt", b"hello", "text/plain")),
        ("files", ("good2.png", good, "image/png")),
    ]
    async with make_client() as client:
        mixed = await client.post("/predict", files=files)
        all_bad = await client.post("/predict", files=files[1:3])
        single_bad = await client.post("/predict", files=images.upload(b"not an image"))
    assert mixed.status_code == 200
    results = mixed.json()["results"]
    assert [r.get("status") for r in results] == [None, 400, 415, None]
    assert results[0]["score"] == pytest.approx(reference(good)[1], abs=1e-5)
    assert results[1]["error"] == "bad_image" and results[1]["filename"] == "broken.png"
    assert results[2]["error"] == "unsupported_media_type"
    assert results[3]["score"] == results[0]["score"]
    # Nothing scored: the first file's status, every file's error listed.
    assert all_bad.status_code == 400
    assert [r["status"] for r in all_bad.json()["results"]] == [400, 415]
    # Single-file behaviour is unchanged: the error itself.
    assert single_bad.status_code == 400 and single_bad.json()["error"] == "bad_image"


# --- liveness ---------------------------------------------------------------------------------


async def test_a_hung_runner_turns_liveness_to_503(make_client, images, control) -> None:
    async with make_client(control=control, stuck_batch_s=0.3, request_timeout_s=2) as client:
        healthy = await client.get("/healthz")
        control.gate.clear()  # the next batch hangs inside the engine
        control.entered.clear()
        hung = asyncio.create_task(client.post("/predict", files=images.upload(images.png())))
        await until(control.entered.is_set)
        await asyncio.sleep(0.4)
        stuck = await client.get("/healthz")
        oip = await client.get("/v2/health/live")
        metrics = (await client.get("/metrics")).text
        control.gate.set()
        assert (await hung).status_code in (200, 504)
        recovered = await client.get("/healthz")
    assert healthy.status_code == 200 and healthy.json()["status"] == "alive"
    assert stuck.status_code == 503 and stuck.json()["status"] == "not alive"
    assert "running for" in stuck.json()["reasons"][0]
    assert oip.status_code == 503 and oip.json() == {"live": False}
    assert images.metric(metrics, "rdad_live") == 0
    assert images.metric(metrics, "rdad_liveness_failure", model="tiny", reason="batch_stuck") == 1
    assert images.metric(metrics, "rdad_batch_running_seconds", model="tiny") > 0.3
    assert recovered.status_code == 200


async def test_a_dead_collector_turns_liveness_to_503(make_client) -> None:
    async with make_client() as client:
        batcher = _model(client).batcher
        task = batcher._loop_task
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        dead = await client.get("/healthz")
        metrics = (await client.get("/metrics")).text
    assert dead.status_code == 503
    assert "collector" in dead.json()["reasons"][0]
    assert 'rdad_liveness_failure{model="tiny",reason="collector_dead"} 1.0' in metrics


# --- API key behind a prefix --------------------------------------------------------------------


async def test_api_key_gate_works_behind_a_root_path(make_client, images) -> None:
    async with make_client(api_key="s3cret") as client:
        status, reads, body = await _stream_post_prefixed(client.app, images.png())
        keyed = await _stream_post_prefixed(client.app, images.png(), key=b"Bearer s3cret")
    assert (status, reads, body["error"]) == (401, 0, "unauthorized")
    assert keyed[0] == 200 and "score" in keyed[2]


async def _stream_post_prefixed(
    app: Any, png: bytes, key: bytes | None = None
) -> tuple[int, int, dict]:
    """What uvicorn passes behind ``--root-path /rdad``: the full path plus the root_path."""
    reads = 0
    sent: list[dict[str, Any]] = []
    headers = [(b"content-type", b"multipart/form-data; boundary=" + BOUNDARY)]
    scope = post_scope(
        "/rdad/predict", headers + ([(b"authorization", key)] if key else []), root_path="/rdad"
    )

    async def receive() -> dict[str, Any]:
        nonlocal reads
        reads += 1
        if reads > 1:
            await asyncio.sleep(3600)  # no disconnect until the answer is out
        body = _part(png, field="file") + b"--" + BOUNDARY + b"--\r\n"
        return {"type": "http.request", "body": body, "more_body": False}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    await app(scope, receive, send)
    body = b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body")
    return sent[0]["status"], reads, json.loads(body)
