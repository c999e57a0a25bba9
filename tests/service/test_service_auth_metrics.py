"""API key on/off, and the Prometheus metrics: names present, values moving."""

from __future__ import annotations

import hmac
from typing import Any

import pytest

import rdad.service.deps

KEY = "s3cret-key"


async def test_without_api_key_everything_is_open(make_client, images) -> None:
    async with make_client() as client:
        assert (await client.post("/predict", files=images.upload(images.png()))).status_code == 200
        assert (await client.get("/models")).status_code == 200


async def test_api_key_guards_predict_and_models(make_client, images, monkeypatch) -> None:
    compared: list[tuple[bytes, bytes]] = []
    real = hmac.compare_digest

    def spy(a: Any, b: Any) -> bool:
        compared.append((a, b))
        return real(a, b)

    monkeypatch.setattr(rdad.service.deps.hmac, "compare_digest", spy)
    good = {"Authorization": f"Bearer {KEY}"}
    async with make_client(api_key=KEY) as client:
        data = images.png()
        missing = await client.post("/predict", files=images.upload(data))
        wrong = await client.post(
            "/predict", files=images.upload(data), headers={"Authorization": "Bearer nope"}
        )
        basic = await client.get("/models", headers={"Authorization": f"Basic {KEY}"})
        models_missing = await client.get("/models/tiny")
        ok = await client.post("/predict", files=images.upload(data), headers=good)
        models_ok = await client.get("/models", headers=good)
        open_routes = [await client.get(p) for p in ("/healthz", "/readyz", "/metrics")]
    for response in (missing, wrong, basic, models_missing):
        assert response.status_code == 401
        assert response.json()["error"] == "unauthorized"
        assert response.headers["WWW-Authenticate"] == "Bearer"
        assert KEY not in response.text
    assert ok.status_code == 200 and models_ok.status_code == 200
    assert [r.status_code for r in open_routes] == [200, 200, 200]
    assert (b"nope", KEY.encode()) in compared  # the constant-time comparison did the check


async def test_health_and_metrics_can_require_the_key(make_client) -> None:
    good = {"Authorization": f"Bearer {KEY}"}
    async with make_client(api_key=KEY, auth_health=True, auth_metrics=True, ready=False) as client:
        refused = [await client.get(p) for p in ("/healthz", "/v2/health/live", "/metrics")]
        allowed = [await client.get(p, headers=good) for p in ("/healthz", "/metrics")]
    assert [r.status_code for r in refused] == [401, 401, 401]
    assert [r.status_code for r in allowed] == [200, 200]


EXPECTED = [
    "rdad_requests_total",
    "rdad_request_duration_seconds_bucket",
    "rdad_queue_wait_seconds_bucket",
    "rdad_inference_duration_seconds_bucket",
    "rdad_batch_size_bucket",
    "rdad_queue_depth",
    "rdad_images_total",
    "rdad_normalized_score_bucket",
    "rdad_model_info",
    "rdad_model_ready",
    "rdad_inference_failures_total",
    "process_cpu_seconds_total",
    "process_resident_memory_bytes",
    "python_gc_collections_total",
]


async def test_metrics_are_named_and_move(make_client, images) -> None:
    async with make_client() as client:
        before = (await client.get("/metrics")).text
        predict = await client.post("/predict", files=images.upload(images.png()))
        await client.post("/predict", files=images.upload(b"junk"))
        after = await client.get("/metrics")
    assert after.headers["content-type"].startswith("text/plain")
    text = after.text
    for name in EXPECTED:
        assert f"\n{name}" in text, name
    m = images.metric
    verdict = "anomalous" if predict.json()["is_anomalous"] else "normal"
    moved = {  # what: (labels, metric, increase) after one good and one bad request
        "ok": (dict(model="tiny", endpoint="/predict", status="200"), "rdad_requests_total", 1),
        "bad": (dict(model="tiny", endpoint="/predict", status="400"), "rdad_requests_total", 1),
        "latency": (
            dict(model="tiny", endpoint="/predict"),
            "rdad_request_duration_seconds_count",
            2,
        ),
        "queue": (dict(model="tiny"), "rdad_queue_wait_seconds_count", 1),
        "inference": (dict(model="tiny"), "rdad_inference_duration_seconds_count", 1),
        "verdict": (dict(model="tiny", verdict=verdict), "rdad_images_total", 1),
        "drift": (dict(model="tiny"), "rdad_normalized_score_count", 1),
    }
    for what, (labels, name, increase) in moved.items():
        assert m(text, name, **labels) == m(before, name, **labels) + increase, what
    assert m(text, "rdad_model_info", model="tiny", provider="CPUExecutionProvider") == 1
    assert m(text, "rdad_model_info", image_size="64", backbone="resnet18") == 1
    assert m(text, "rdad_queue_depth", model="tiny") == 0


@pytest.mark.parametrize("path", ["/nope", "/models/../../etc/passwd"])
async def test_unknown_paths_share_one_metric_label(make_client, path) -> None:
    async with make_client() as client:
        response = await client.get(path)
        text = (await client.get("/metrics")).text
    assert response.status_code == 404 and response.json()["error"] == "not_found"
    assert 'endpoint="other"' in text and path not in text
