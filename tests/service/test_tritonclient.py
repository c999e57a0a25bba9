"""NVIDIA's own Open Inference Protocol client (``tritonclient[http]``) against a real
``rdad serve``: health, metadata, ``infer`` with BYTES and UINT8 inputs, binary and JSON outputs,
a bad input as the client's clean error; and ``rdad predict --protocol v2`` against it. Scores
equal ``/predict``'s to 1e-5."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
import tritonclient.http as triton
from PIL import Image
from tritonclient.utils import InferenceServerException

from tests.processes import free_port, stop, wait_until_ready
from tests.service.conftest import IMAGE_SIZE, MODEL_NAME


@pytest.fixture(scope="module")
def server(model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """``host:port`` of a running ``rdad serve`` on the tiny model."""
    port = free_port()
    log_path = tmp_path_factory.mktemp("serve") / "serve.log"
    command = [
        sys.executable, "-m", "rdad", "serve", "--model-dir", str(model_dir),
        "--host", "127.0.0.1", "--port", str(port), "--max-batch-size", "4",
        "--max-delay-ms", "5", "--runtime", "onnxruntime",
    ]  # fmt: skip
    env = {k: v for k, v in os.environ.items() if k != "RDAD_API_KEY"}
    with log_path.open("wb") as log:
        proc = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env)
        try:
            wait_until_ready(f"http://127.0.0.1:{port}", proc, log_path.read_text)
            yield f"127.0.0.1:{port}"
        finally:
            stop(proc, timeout_s=20)


@pytest.fixture
def client(server: str) -> Iterator[triton.InferenceServerClient]:
    with triton.InferenceServerClient(url=server) as client:
        yield client


def _predicted(server: str, data: bytes) -> dict[str, Any]:
    answer = httpx.post(f"http://{server}/predict", files={"file": ("p.png", data, "image/png")})
    assert answer.status_code == 200, answer.text
    return dict(answer.json())


def test_health_and_metadata(client: triton.InferenceServerClient) -> None:
    assert client.is_server_live() and client.is_server_ready()
    assert client.get_server_metadata()["name"] == "rdad"
    meta = client.get_model_metadata(MODEL_NAME)
    assert {t["name"]: t["datatype"] for t in meta["inputs"]} == {
        "images": "UINT8",
        "files": "BYTES",
    }
    assert client.is_model_ready(MODEL_NAME)
    assert client.is_model_ready(MODEL_NAME, model_version=meta["versions"][0])
    assert not client.is_model_ready(MODEL_NAME, model_version="no-such-version")
    with pytest.raises(InferenceServerException) as missing:
        client.get_model_metadata("no-such-model")
    assert missing.value.status() == "404" and "no-such-model" in missing.value.message()


def test_infer_files_as_bytes_with_binary_and_json_outputs(
    client: triton.InferenceServerClient, server: str, images: Any
) -> None:
    pngs = [images.png(96, 80, seed=1), images.png(300, 200, seed=2)]
    tensor = triton.InferInput("files", [2], "BYTES")
    tensor.set_data_from_numpy(np.array(pngs, dtype=np.object_), binary_data=True)
    outputs = [
        triton.InferRequestedOutput("score", binary_data=True),
        triton.InferRequestedOutput("normalized_score", binary_data=False),
        triton.InferRequestedOutput("verdict", binary_data=False),
        triton.InferRequestedOutput("heatmap_png", binary_data=True),
    ]
    result = client.infer(MODEL_NAME, [tensor], outputs=outputs, request_id="r-1")
    assert result.get_response()["id"] == "r-1"
    scores = result.as_numpy("score")
    assert scores.dtype == np.float32 and scores.shape == (2,)
    for i, data in enumerate(pngs):
        predicted = _predicted(server, data)
        assert abs(float(scores[i]) - predicted["score"]) < 1e-5
        assert (
            abs(float(result.as_numpy("normalized_score")[i]) - predicted["normalized_score"])
            < 1e-5
        )
        assert bool(result.as_numpy("verdict")[i]) == predicted["is_anomalous"]
        heatmap = images.decode_png(result.as_numpy("heatmap_png")[i])
        assert heatmap.shape[:2] == (IMAGE_SIZE, IMAGE_SIZE)


def test_infer_pixels_as_uint8_and_the_threshold_parameter(
    client: triton.InferenceServerClient, server: str, images: Any, synthetic_dir: Path
) -> None:
    good = sorted((synthetic_dir / "test" / "good").glob("*.png"))[0]
    pixels = np.asarray(Image.open(good).convert("RGB").resize((IMAGE_SIZE, IMAGE_SIZE)))
    tensor = triton.InferInput("images", [1, IMAGE_SIZE, IMAGE_SIZE, 3], "UINT8")
    tensor.set_data_from_numpy(pixels[None], binary_data=True)
    wanted = [triton.InferRequestedOutput(n) for n in ("score", "anomaly_map", "verdict")]
    result = client.infer(MODEL_NAME, [tensor], outputs=wanted)
    predicted = _predicted(server, images.encode(Image.fromarray(pixels)))
    assert abs(float(result.as_numpy("score")[0]) - predicted["score"]) < 1e-5
    assert result.as_numpy("anomaly_map").shape == (1, IMAGE_SIZE, IMAGE_SIZE)
    normalized = predicted["normalized_score"]
    assert 0 < normalized < 1  # thresholds on both sides of it flip the verdict
    verdicts = [
        client.infer(MODEL_NAME, [tensor], outputs=wanted[2:], parameters={"threshold": t})
        .as_numpy("verdict")
        .tolist()
        for t in ((normalized + 1) / 2, normalized / 2)
    ]
    assert verdicts == [[False], [True]]


def test_a_bad_input_is_a_clean_client_error(client: triton.InferenceServerClient) -> None:
    tensor = triton.InferInput("files", [1], "BYTES")
    tensor.set_data_from_numpy(np.array([b"not an image"], dtype=np.object_))
    with pytest.raises(InferenceServerException) as bad:
        client.infer(MODEL_NAME, [tensor])
    assert bad.value.status() == "400" and "files[0]" in bad.value.message()
    wrong = triton.InferInput("logits", [1, 4], "FP32")
    wrong.set_data_from_numpy(np.zeros((1, 4), np.float32))
    with pytest.raises(InferenceServerException) as unknown:
        client.infer(MODEL_NAME, [wrong])
    assert unknown.value.status() == "400" and "'images' or 'files'" in unknown.value.message()


def test_rdad_predict_speaks_v2(server: str, synthetic_dir: Path, tmp_path: Path) -> None:
    files = sorted((synthetic_dir / "test").rglob("*.png"))[:5]
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"\x89PNG not really")
    command = [
        sys.executable, "-m", "rdad", "predict", "--url", f"http://{server}",
        "--protocol", "v2", "--name", MODEL_NAME, "--json", "--batch", "3",
        *map(str, files), str(broken),
    ]  # fmt: skip
    run = subprocess.run(command, capture_output=True, text=True, timeout=120)
    assert run.returncode in (3, 4), run.stderr  # 3: some anomalous; 4: none, one unreadable
    records = {r["path"]: r for r in json.loads(run.stdout)}
    assert "error" in records[str(broken)]
    for path in files:
        predicted = _predicted(server, path.read_bytes())
        record = records[str(path)]
        assert abs(record["score"] - predicted["score"]) < 1e-5
        assert record["is_anomalous"] == predicted["is_anomalous"]
