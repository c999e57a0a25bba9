"""A tiled model behind the service: its tiles go through the batcher as one request's images,
its maps are stitched, and what it answers equals what ``rdad eval`` scores."""

from __future__ import annotations

import asyncio
import base64
import shutil
from pathlib import Path, PurePosixPath
from typing import Any

import numpy as np
import pytest

from rdad.imaging import decode_image
from rdad.metadata import read_onnx_metadata
from rdad.model.evaluate import load_for_eval
from rdad.model.scoring import score_images
from rdad.service.render import colorize
from rdad.tiling import run_tiled, tile_image

from ..conftest import TILED_IMAGE


@pytest.fixture(scope="module")
def tiled_dir(tiny_tiled_onnx: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("tiled-models")
    shutil.copy(tiny_tiled_onnx, folder / "tiled.onnx")
    return folder


def _files(paths: list[Path]) -> list[tuple[str, tuple[str, bytes, str]]]:
    return [("files", (p.name, p.read_bytes(), "image/png")) for p in paths]


async def test_served_scores_equal_eval_scores(
    make_client: Any, control: Any, tiled_dir: Path, tiled_data: Path
) -> None:
    paths = sorted((tiled_data / "test").rglob("*.png"))[:8]
    model = load_for_eval(tiled_dir / "tiled.onnx")
    assert model.tiling is not None
    evaluated = score_images(
        model.predict, paths, image_size=model.image_size, tiling=model.tiling, grid=TILED_IMAGE
    )
    # Small batches: one request's tiles are spread over several batches and still stitch right.
    async with make_client(model_dir=tiled_dir, max_batch_size=4, control=control) as client:
        control.batch_sizes.clear()
        response = await client.post("/predict", files=_files(paths))
    assert response.status_code == 200, response.text
    served = np.array([r["score"] for r in response.json()["results"]])
    np.testing.assert_allclose(served, evaluated.scores, rtol=0, atol=1e-5)
    tiles_per_image = len(tile_image(decode_image(paths[0].read_bytes()), model.tiling)[0])
    assert sum(control.batch_sizes) == len(paths) * tiles_per_image
    assert max(control.batch_sizes) <= 4


async def test_heatmap_mask_and_regions_are_in_original_image_coordinates(
    make_client: Any, images: Any, tiled_dir: Path
) -> None:
    width, height = 200, 150  # not a tile multiple: edge tiles overlap more
    data = images.png(width, height, seed=3)
    meta = read_onnx_metadata(tiled_dir / "tiled.onnx")
    assert meta.tiling is not None and meta.calibration is not None
    session_model = load_for_eval(tiled_dir / "tiled.onnx")
    stitched, score = run_tiled(decode_image(data), meta.tiling, session_model.predict)
    assert stitched.shape == (height, width)
    async with make_client(model_dir=tiled_dir) as client:
        response = await client.post(
            "/predict",
            params={"mask": "true", "regions": "true", "heatmap_size": "original"},
            files=images.upload(data),
        )
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["score"] == pytest.approx(score, abs=1e-5)
    heatmap = images.decode_png(base64.b64decode(body["heatmap_png"]))
    expected = colorize(stitched, meta.calibration.pixel_threshold)[..., ::-1]  # BGR → RGB
    assert heatmap.shape == (height, width, 3)
    assert np.abs(heatmap.astype(int) - expected.astype(int)).max() <= 1
    mask = images.decode_png(base64.b64decode(body["mask_png"]))
    np.testing.assert_array_equal(mask > 0, stitched > meta.calibration.pixel_threshold)
    for region in body["regions"]:
        assert 0 <= region["x"] < width and 0 <= region["y"] < height
        assert region["x"] + region["width"] <= width and region["y"] + region["height"] <= height
        x, y = region["x"], region["y"]
        box = stitched[y : y + region["height"], x : x + region["width"]]
        assert box.max() == pytest.approx(region["max_score"], rel=1e-5)


async def test_more_tiles_than_the_queue_holds_run_in_waves(
    make_client: Any, control: Any, images: Any, tiled_dir: Path
) -> None:
    """A request whose tiles outnumber the queue — one large image, or several files together —
    is admitted for the whole queue and runs in waves of that size, on an idle service and
    again on every try: never a retryable 503 that can never succeed, never more images in
    flight than the queue holds."""
    big = images.png(256, 256)  # 5 × 5 tiles of 64 px: 25 > 8
    small = images.png(200, 150)  # 3 × 4 = 12 tiles each: 3 files = 36 > 8
    many = [("files", (f"{i}.png", small, "image/png")) for i in range(3)]
    settings = {"max_queue": 8, "max_batch_size": 4, "max_files": 4}
    async with make_client(model_dir=tiled_dir, control=control, **settings) as client:
        model = client.app.state.runtime.get(None)
        peak = 0
        stop = False

        async def sample() -> None:
            nonlocal peak
            while not stop:
                peak = max(peak, model.admission.admitted, model.batcher.depth)
                await asyncio.sleep(0)

        sampler = asyncio.create_task(sample())
        one = await client.post("/predict", files=images.upload(big))
        again = await client.post("/predict", files=images.upload(big))
        several = await client.post("/predict", files=many)
        stop = True
        await sampler
        after = model.admission.admitted
    assert (one.status_code, again.status_code, several.status_code) == (200, 200, 200), one.text
    assert one.json()["score"] == again.json()["score"]
    assert [r["score"] for r in several.json()["results"]] == [
        several.json()["results"][0]["score"]
    ] * 3
    assert 0 < peak <= 8 and after == 0
    assert sum(control.batch_sizes) >= 25 + 25 + 36


async def test_tiled_overlays_keep_to_the_overlay_max_side(
    make_client: Any, images: Any, tiled_dir: Path
) -> None:
    async with make_client(model_dir=tiled_dir, overlay_max_side=100) as client:
        answer = await client.post(
            "/predict", params={"overlay": "true"}, files=images.upload(images.png(640, 512))
        )
    assert answer.status_code == 200, answer.text
    overlay = images.decode_png(base64.b64decode(answer.json()["overlay_png"]))
    assert overlay.shape[:2] == (80, 100)  # 640×512 scaled to fit 100 px, aspect kept


async def test_tiled_verdict_metrics_follow_the_request_threshold(
    make_client: Any, images: Any, tiled_dir: Path, tiled_data: Path
) -> None:
    """``threshold=`` judges the verdict in the answer and in rdad_images_total alike."""
    data = sorted((tiled_data / "test" / "good").glob("*.png"))[0].read_bytes()
    async with make_client(model_dir=tiled_dir) as client:
        plain = await client.post("/predict", files=images.upload(data))
        score = plain.json()["normalized_score"]
        assert 0.0 < score < 1.0, score
        strict, lenient = score / 2, (1 + score) / 2
        answers = [
            await client.post("/predict", params={"threshold": t}, files=images.upload(data))
            for t in (strict, lenient)
        ]
        metrics = (await client.get("/metrics")).text
    assert [a.json()["is_anomalous"] for a in answers] == [True, False]
    base = {"anomalous": 0.0, "normal": 0.0}
    base["anomalous" if plain.json()["is_anomalous"] else "normal"] += 1
    assert images.metric(metrics, "rdad_images_total", verdict="anomalous") == base["anomalous"] + 1
    assert images.metric(metrics, "rdad_images_total", verdict="normal") == base["normal"] + 1


async def test_admission_counts_every_tile_and_a_lone_request_always_tries(
    make_client: Any, control: Any, images: Any, tiled_dir: Path
) -> None:
    data = images.png(200, 150)  # 3 × 4 tiles of 64 px with ≥16 px overlap
    async with make_client(model_dir=tiled_dir, control=control, max_batch_size=4) as client:
        model = client.app.state.runtime.get(None)
        # A pessimistic estimate (10 s per batch) must not refuse a request alone on the model.
        model.batcher.latency.record(4, 10.0)
        control.gate.clear()
        control.entered.clear()
        running = asyncio.create_task(client.post("/predict", files=images.upload(data)))
        for _ in range(3000):  # ≤ 30 s; a refused request never reaches the engine
            if control.entered.is_set() or running.done():
                break
            await asyncio.sleep(0.01)
        assert control.entered.is_set(), (await running).text
        in_flight = model.admission.admitted
        control.gate.set()
        response = await running
        after = model.admission.admitted
    assert response.status_code == 200, response.text
    assert in_flight == 12 and after == 0


def test_local_predict_scores_tiled_models_like_eval(tiled_dir: Path, tiled_data: Path) -> None:
    from rdad.commands.predict_io import Input
    from rdad.commands.predict_sources import LocalSource

    paths = sorted((tiled_data / "test").rglob("*.png"))[:4]
    model = load_for_eval(tiled_dir / "tiled.onnx")
    evaluated = score_images(
        model.predict, paths, image_size=model.image_size, tiling=model.tiling, grid=TILED_IMAGE
    )
    inputs = [Input(p, PurePosixPath(p.name)) for p in paths]
    results = LocalSource(tiled_dir / "tiled.onnx", batch_size=8).score(
        inputs, images=True, threshold=None
    )
    local = np.array([r["score"] for r in results])  # type: ignore[index]
    np.testing.assert_allclose(local, evaluated.scores, rtol=0, atol=1e-5)
    heatmap = base64.b64decode(results[0]["heatmap_png"])  # type: ignore[index]
    assert heatmap[:8] == b"\x89PNG\r\n\x1a\n"
