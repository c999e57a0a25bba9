"""POST /predict: every response field, optional outputs, multi-file order, PNG answers, models."""

from __future__ import annotations

import base64
import json
import shutil
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest

SIZE = 64  # the fixture model's resolution


def b64_png(images: Any, value: str) -> np.ndarray:
    return images.decode_png(base64.b64decode(value))


async def test_single_image_has_every_field(make_client, images, metadata, reference) -> None:
    data = images.png(150, 100)
    async with make_client() as client:
        response = await client.post("/predict", files=images.upload(data))
    assert response.status_code == 200, response.text
    body = response.json()
    cal = metadata.calibration
    _, ref_score = reference(data)
    # Served pixels are evaluated pixels: same score as rdad.imaging + a bare ORT session.
    assert body["score"] == pytest.approx(ref_score, abs=1e-5)
    assert body["normalized_score"] == pytest.approx(cal.normalize(body["score"]), abs=1e-9)
    assert 0.0 <= body["normalized_score"] <= 1.0
    assert body["is_anomalous"] is (body["score"] > cal.image_threshold)
    assert body["threshold"] == pytest.approx(cal.image_threshold)
    assert (body["width"], body["height"]) == (150, 100)
    assert body["model"] == {"name": "tiny", "version": metadata.model_version}
    assert body["filename"] == "part.png"
    assert set(body["timings_ms"]) == {"decode", "queue", "inference", "encode"}
    assert all(v >= 0 for v in body["timings_ms"].values())
    assert body["timings_ms"]["inference"] > 0
    heatmap = b64_png(images, body["heatmap_png"])
    assert heatmap.shape == (SIZE, SIZE, 3) and heatmap.dtype == np.uint8
    # Not asked for, not computed, not sent.
    assert not {"overlay_png", "mask_png", "regions"} & set(body)


async def test_optional_outputs_at_original_size(make_client, images, metadata) -> None:
    width, height = 200, 120
    async with make_client(overlay_max_side=150) as client:
        response = await client.post(
            "/predict",
            params={
                "overlay": "true",
                "mask": "true",
                "regions": "true",
                "heatmap_size": "original",
            },
            files=images.upload(images.png(width, height)),
        )
    assert response.status_code == 200, response.text
    body = response.json()
    assert b64_png(images, body["heatmap_png"]).shape == (height, width, 3)
    mask = b64_png(images, body["mask_png"])
    assert mask.shape == (height, width) and set(np.unique(mask)) <= {0, 255}
    # Overlay: the image's own aspect, longest side capped by the setting.
    assert b64_png(images, body["overlay_png"]).shape == (90, 150, 3)
    for region in body["regions"]:
        assert set(region) == {"x", "y", "width", "height", "area", "max_score"}
        assert region["x"] >= 0 and region["x"] + region["width"] <= width
        assert region["y"] >= 0 and region["y"] + region["height"] <= height
        assert region["max_score"] > metadata.calibration.pixel_threshold


def _with_pixel_threshold(model_dir: Path, out_dir: Path, threshold: float) -> Path:
    """A copy of the fixture model whose metadata carries another pixel threshold."""
    import dataclasses

    import onnx

    from rdad.metadata import METADATA_KEY, ModelMetadata

    proto = onnx.load(str(model_dir / "tiny.onnx"))
    entry = next(p for p in proto.metadata_props if p.key == METADATA_KEY)
    meta = ModelMetadata.from_json(entry.value)
    assert meta.calibration is not None
    calibration = dataclasses.replace(meta.calibration, pixel_threshold=threshold)
    entry.value = dataclasses.replace(meta, calibration=calibration).to_json()
    out_dir.mkdir()
    onnx.save(proto, str(out_dir / "tiny.onnx"))
    return out_dir


async def test_regions_match_the_mask(
    make_client, images, synthetic_dir, model_dir, reference, tmp_path
) -> None:
    # A defective synthetic part, upscaled 4x / 3x so that coordinates must be scaled back.
    defect = sorted((synthetic_dir / "test").glob("[!g]*/*.png"))[0]
    big = cv2.resize(cv2.imread(str(defect)), (256, 192), interpolation=cv2.INTER_NEAREST)
    data = cv2.imencode(".png", big)[1].tobytes()
    ref_map, _ = reference(data)
    # Threshold at the map's 85th percentile: regions are guaranteed to exist.
    repo = _with_pixel_threshold(model_dir, tmp_path / "repo", float(np.quantile(ref_map, 0.85)))
    async with make_client(model_dir=repo) as client:
        response = await client.post(
            "/predict", params={"mask": "true", "regions": "true"}, files=images.upload(data)
        )
    body = response.json()
    mask = b64_png(images, body["mask_png"])
    assert mask.shape == (SIZE, SIZE)
    assert 0.1 < (mask > 0).mean() < 0.2
    count, labels, stats, _ = cv2.connectedComponentsWithStats(mask, connectivity=8)
    assert count > 1 and len(body["regions"]) == count - 1
    expected = {
        (int(s[0] * 4), int(s[1] * 3), int(s[2] * 4), int(s[3] * 3), int(s[4] * 12))
        for s in stats[1:]
    }
    got = {(r["x"], r["y"], r["width"], r["height"], r["area"]) for r in body["regions"]}
    assert got == expected
    peaks = sorted((float(ref_map[labels == k].max()) for k in range(1, count)), reverse=True)
    assert [r["max_score"] for r in body["regions"]] == pytest.approx(peaks, abs=1e-5)


async def test_multi_file_results_keep_request_order(make_client, images, reference) -> None:
    sizes = [(70, 50), (64, 64), (33, 90), (128, 77), (100, 100)]
    blobs = [images.png(w, h, seed=i) for i, (w, h) in enumerate(sizes)]
    files = [("files", (f"img{i}.png", b, "image/png")) for i, b in enumerate(blobs)]
    async with make_client(max_delay_ms=50) as client:
        response = await client.post("/predict", files=files, params={"heatmap": "false"})
    assert response.status_code == 200, response.text
    results = response.json()["results"]
    assert [r["filename"] for r in results] == [f"img{i}.png" for i in range(5)]
    assert [(r["width"], r["height"]) for r in results] == sizes
    for result, blob in zip(results, blobs, strict=True):
        assert result["score"] == pytest.approx(reference(blob)[1], abs=1e-5)
        assert "heatmap_png" not in result


async def test_accept_png_returns_the_heatmap_itself(make_client, images) -> None:
    data = images.png(120, 90)
    async with make_client() as client:
        as_json = (await client.post("/predict", files=images.upload(data))).json()
        response = await client.post(
            "/predict", files=images.upload(data), headers={"Accept": "image/png"}
        )
        original = await client.post(
            "/predict",
            files=images.upload(data),
            params={"heatmap_size": "original"},
            headers={"Accept": "image/png, application/json;q=0.5"},
        )
    assert response.status_code == 200
    assert response.headers["content-type"] == "image/png"
    assert images.decode_png(response.content).shape == (SIZE, SIZE, 3)
    assert float(response.headers["X-Anomaly-Score"]) == pytest.approx(as_json["score"], rel=1e-5)
    verdict = "anomalous" if as_json["is_anomalous"] else "normal"
    assert response.headers["X-Anomaly-Verdict"] == verdict
    assert images.decode_png(original.content).shape == (90, 120, 3)


async def test_models_listing_named_routes_and_default(
    make_client, images, model_dir: Path, tmp_path: Path
) -> None:
    repo = tmp_path / "repo"
    (repo / "beta").mkdir(parents=True)
    shutil.copy(model_dir / "tiny.onnx", repo / "alpha.onnx")
    shutil.copy(model_dir / "tiny.onnx", repo / "beta" / "model.onnx")
    (repo / "not a model!.onnx").write_bytes(b"ignored: invalid name")
    async with make_client(model_dir=repo) as client:
        listing = (await client.get("/models")).json()
        one = await client.get("/models/beta")
        no_default = await client.post("/predict", files=images.upload(images.png()))
        named = await client.post("/models/beta/predict", files=images.upload(images.png()))
        unknown = await client.get("/models/..%2Falpha")
    assert listing["default"] is None
    assert [m["name"] for m in listing["models"]] == ["alpha", "beta"]
    info = one.json()
    assert info["state"] == "ready" and info["provider"] == "CPUExecutionProvider"
    assert info["image_size"] == SIZE and info["metadata"]["calibration"]["image_threshold"] > 0
    assert "/" not in json.dumps(info["metadata"])  # no paths of the training machine
    assert no_default.status_code == 404 and no_default.json()["error"] == "model_not_found"
    assert named.status_code == 200 and named.json()["model"]["name"] == "beta"
    assert unknown.status_code == 404
    async with make_client(model_dir=repo, default_model="beta") as client:
        response = await client.post("/predict", files=images.upload(images.png()))
    assert response.json()["model"]["name"] == "beta"


async def test_openapi_documents_the_contract(make_client) -> None:
    async with make_client() as client:
        docs = await client.get("/docs")
        schema = (await client.get("/openapi.json")).json()
    assert docs.status_code == 200
    components = schema["components"]["schemas"]
    assert {"PredictionResult", "PredictBatchResponse", "ModelInfo", "ErrorBody"} <= set(components)
    assert {"score", "normalized_score", "heatmap_png", "timings_ms"} <= set(
        components["PredictionResult"]["properties"]
    )
    predict = schema["paths"]["/predict"]["post"]
    body = predict["requestBody"]["content"]["multipart/form-data"]["schema"]
    assert {"file", "files"} <= set(body["properties"])
    assert "FileError" in components  # per-file error objects of multi-file answers
    flags = {p["name"] for p in predict["parameters"]}
    assert flags == {"heatmap", "overlay", "mask", "regions", "heatmap_size", "threshold"}
    assert {"413", "415", "503", "504"} <= set(predict["responses"])
