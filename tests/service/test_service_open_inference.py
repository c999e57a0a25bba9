"""The Open Inference Protocol v2 routes in process: metadata, readiness, ``infer`` with JSON and
binary tensors, the protocol's errors, and the same admission, batches and memory as /predict."""

from __future__ import annotations

import asyncio
import base64
import json
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from tests.service.conftest import IMAGE_SIZE, MODEL_NAME

INFER = f"/v2/models/{MODEL_NAME}/infer"
HEADER = "Inference-Header-Content-Length"


def _binary_request(
    inputs: list[tuple[dict[str, Any], bytes]], outputs: list[dict[str, Any]] | None = None
) -> tuple[bytes, dict[str, str]]:
    """A request body with every input in binary (the extension), as tritonclient sends it."""
    described = [{**head, "parameters": {"binary_data_size": len(data)}} for head, data in inputs]
    header: dict[str, Any] = {"inputs": described}
    if outputs is not None:
        header["outputs"] = outputs
    text = json.dumps(header).encode()
    return text + b"".join(data for _, data in inputs), {HEADER: str(len(text))}


def _bytes_tensor(items: list[bytes]) -> bytes:
    return b"".join(len(item).to_bytes(4, "little") + item for item in items)


def _outputs(response: Any) -> dict[str, np.ndarray | list[bytes]]:
    """Output name → array (numeric) or list of bytes (BYTES), from JSON or binary parts."""
    length = response.headers.get(HEADER)
    content = response.content
    head = json.loads(content if length is None else content[: int(length)])
    binary = b"" if length is None else content[int(length) :]
    out: dict[str, np.ndarray | list[bytes]] = {}
    offset = 0
    types = {"FP32": np.float32, "BOOL": np.bool_}
    for output in head["outputs"]:
        size = output.get("parameters", {}).get("binary_data_size")
        if output["datatype"] == "BYTES":
            if size is None:
                out[output["name"]] = [base64.b64decode(v) for v in output["data"]]
            else:
                data, items, at = binary[offset : offset + size], [], 0
                while at < len(data):
                    n = int.from_bytes(data[at : at + 4], "little")
                    items.append(data[at + 4 : at + 4 + n])
                    at += 4 + n
                out[output["name"]] = items
        elif size is None:
            out[output["name"]] = np.array(output["data"], types[output["datatype"]]).reshape(
                output["shape"]
            )
        else:
            raw = np.frombuffer(binary[offset : offset + size], types[output["datatype"]])
            out[output["name"]] = raw.reshape(output["shape"])
        offset += size or 0
    return out


async def test_server_and_model_metadata_describe_the_tensors(make_client: Any) -> None:
    async with make_client() as client:
        server = (await client.get("/v2")).json()
        meta = (await client.get(f"/v2/models/{MODEL_NAME}")).json()
        version = meta["versions"][0]
        same = (await client.get(f"/v2/models/{MODEL_NAME}/versions/{version}")).json()
        ready = await client.get(f"/v2/models/{MODEL_NAME}/ready")
        other = await client.get(f"/v2/models/{MODEL_NAME}/versions/not-{version}/ready")
        unknown = await client.get("/v2/models/nope")
    assert server["name"] == "rdad" and "binary_tensor_data" in server["extensions"]
    assert meta == same and meta["name"] == MODEL_NAME
    inputs = {t["name"]: (t["datatype"], t["shape"]) for t in meta["inputs"]}
    assert inputs == {
        "images": ("UINT8", [-1, IMAGE_SIZE, IMAGE_SIZE, 3]),
        "files": ("BYTES", [-1]),
    }
    outputs = {t["name"]: (t["datatype"], t["shape"]) for t in meta["outputs"]}
    assert outputs["anomaly_map"] == ("FP32", [-1, IMAGE_SIZE, IMAGE_SIZE])
    assert outputs["verdict"] == ("BOOL", [-1]) and outputs["heatmap_png"] == ("BYTES", [-1])
    assert ready.status_code == 200 and ready.json()["ready"] is True
    assert other.status_code == 404 and set(other.json()) == {"error"}
    assert unknown.status_code == 404 and "nope" in unknown.json()["error"]


async def test_pixels_and_files_score_as_predict_and_eval_do(
    make_client: Any, images: Any, reference: Any
) -> None:
    """UINT8 pixels at the model's size, and the same picture as a PNG file: the scores equal
    /predict's and rdad eval's to 1e-5, the map equals the graph's own output."""
    pixels = images.rgb(IMAGE_SIZE, IMAGE_SIZE, seed=3)
    png = images.encode(Image.fromarray(pixels))
    other = images.png(120, 90, seed=4)
    expected_map, expected = reference(png)
    async with make_client() as client:
        body, headers = _binary_request(
            [({"name": "images", "datatype": "UINT8", "shape": [1, 64, 64, 3]}, pixels.tobytes())],
            outputs=[
                {"name": "score", "parameters": {"binary_data": True}},
                {"name": "anomaly_map", "parameters": {"binary_data": True}},
                {"name": "verdict"},
            ],
        )
        by_pixels = await client.post(INFER, content=body, headers=headers)
        body, headers = _binary_request(
            [({"name": "files", "datatype": "BYTES", "shape": [2]}, _bytes_tensor([png, other]))]
        )
        by_files = await client.post(INFER, content=body, headers=headers)
        predicted = (await client.post("/predict", files=images.upload(png))).json()
    assert by_pixels.status_code == 200, by_pixels.text
    pixel_out = _outputs(by_pixels)
    assert abs(float(pixel_out["score"][0]) - expected) < 1e-5
    assert abs(float(pixel_out["score"][0]) - predicted["score"]) < 1e-5
    np.testing.assert_allclose(pixel_out["anomaly_map"][0], expected_map, atol=1e-5)
    assert pixel_out["verdict"].tolist() == [predicted["is_anomalous"]]
    assert by_files.status_code == 200, by_files.text
    file_out = _outputs(by_files)
    assert set(file_out) == {"score", "normalized_score", "verdict"}  # the default outputs
    assert abs(float(file_out["score"][0]) - expected) < 1e-5
    assert abs(float(file_out["score"][1]) - reference(other)[1]) < 1e-5
    assert abs(float(file_out["normalized_score"][0]) - predicted["normalized_score"]) < 1e-5


async def test_json_tensors_threshold_and_png_outputs(
    make_client: Any, images: Any, synthetic_dir: Path
) -> None:
    """All-JSON request (pixels as numbers), a per-request threshold, PNG renders as base64."""
    good = sorted((synthetic_dir / "test" / "good").glob("*.png"))[0]
    pixels = np.asarray(Image.open(good).convert("RGB").resize((40, 30)))  # resized like an upload
    shape = [1, 30, 40, 3]
    wanted = ("normalized_score", "verdict", "heatmap_png", "mask_png")
    request = {
        "id": "line-3/part-17",
        "inputs": [
            {"name": "images", "datatype": "UINT8", "shape": shape, "data": pixels.ravel().tolist()}
        ],
        "outputs": [{"name": n} for n in wanted],
    }
    async with make_client() as client:
        plain = await client.post(INFER, json=request)
        assert plain.status_code == 200 and "json" in plain.headers["content-type"], plain.text
        normalized = float(_outputs(plain)["normalized_score"][0])
        above, below = (normalized + 1) / 2, normalized / 2
        lenient = await client.post(INFER, json={**request, "parameters": {"threshold": above}})
        strict = await client.post(INFER, json={**request, "parameters": {"threshold": below}})
    assert 0 < normalized < 1 and lenient.json()["id"] == "line-3/part-17"
    loose, tight = _outputs(lenient), _outputs(strict)
    assert loose["verdict"].tolist() == [False] and tight["verdict"].tolist() == [True]
    assert loose["normalized_score"][0] == tight["normalized_score"][0] == normalized
    heatmap = images.decode_png(loose["heatmap_png"][0])
    assert heatmap.shape[:2] == (IMAGE_SIZE, IMAGE_SIZE)
    assert images.decode_png(loose["mask_png"][0]).shape[:2] == (IMAGE_SIZE, IMAGE_SIZE)


async def test_errors_have_the_protocol_shape_and_status(make_client: Any, images: Any) -> None:
    def pixels(data: list[int], shape: list[int] | None = None) -> dict[str, Any]:
        return {"name": "images", "datatype": "UINT8", "shape": shape or [1, 2, 2, 3], "data": data}

    def files(data: list[str]) -> dict[str, Any]:
        return {"name": "files", "datatype": "BYTES", "shape": [len(data)], "data": data}

    ok = [pixels([1] * 12)]
    cases: list[tuple[dict[str, Any], int, str]] = [
        ({"inputs": "x"}, 400, "inputs"),
        ({"inputs": [{**pixels([1], [1]), "name": "pixels"}]}, 400, "unknown input"),
        ({"inputs": [pixels([300] * 12)]}, 400, "range"),
        ({"inputs": [pixels([1] * 5)]}, 400, "5 values"),
        ({"inputs": [files([base64.b64encode(b"not an image").decode()])]}, 400, "files[0]"),
        ({"inputs": [files(["%%"])]}, 400, "base64"),
        ({"inputs": ok, "outputs": [{"name": "logits"}]}, 400, "unknown output"),
        ({"inputs": ok, "parameters": {"threshold": 2}}, 400, "threshold"),
    ]
    async with make_client(max_files=2) as client:
        answers = [await client.post(INFER, json=body) for body, _, _ in cases]
        body, headers = _binary_request(
            [({"name": "files", "datatype": "BYTES", "shape": [3]}, _bytes_tensor([b"x"] * 3))]
        )
        too_many = await client.post(INFER, content=body, headers=headers)
        cut, headers = _binary_request(
            [({"name": "images", "datatype": "UINT8", "shape": [1, 4, 4, 3]}, bytes(48))]
        )
        truncated = await client.post(INFER, content=cut[:-5], headers=headers)
        not_json = await client.post(
            INFER, content=b"{", headers={"content-type": "application/json"}
        )
    for (_, status, words), answer in zip(cases, answers, strict=True):
        assert answer.status_code == status, (words, answer.text)
        assert set(answer.json()) == {"error"} and words in answer.json()["error"], answer.text
    assert too_many.status_code == 400 and "more than 2" in too_many.json()["error"]
    assert truncated.status_code == 400 and "binary" in truncated.json()["error"]
    assert not_json.status_code == 400 and "JSON" in not_json.json()["error"]


async def test_api_key_and_body_limit_answer_in_the_protocol_shape(make_client: Any) -> None:
    async with make_client(api_key="sesame", max_upload_mb=0.001) as client:
        denied = await client.post(INFER, json={"inputs": []})
        allowed_meta = await client.get(
            f"/v2/models/{MODEL_NAME}", headers={"Authorization": "Bearer sesame"}
        )
        too_big = await client.post(
            INFER, content=b"x" * 2048, headers={"Authorization": "Bearer sesame"}
        )
    assert denied.status_code == 401 and set(denied.json()) == {"error"}
    assert allowed_meta.status_code == 200
    assert too_big.status_code == 413 and set(too_big.json()) == {"error"}


async def test_oversized_json_header_is_refused_before_it_is_parsed(make_client: Any) -> None:
    numbers = {"name": "images", "datatype": "UINT8", "shape": [1, 512, 512, 3]}
    body = json.dumps({"inputs": [{**numbers, "data": [7] * (512 * 512 * 3)}]}).encode()
    async with make_client(v2_max_json_mb=0.5) as client:
        answer = await client.post(INFER, content=body)
    assert answer.status_code == 413 and "binary tensor extension" in answer.json()["error"]


async def test_v2_and_predict_requests_share_batches(
    make_client: Any, images: Any, control: Any
) -> None:
    png = images.png(64, 64, seed=8)
    body, headers = _binary_request(
        [({"name": "files", "datatype": "BYTES", "shape": [1]}, _bytes_tensor([png]))]
    )
    async with make_client(max_batch_size=8, max_delay_ms=200, control=control) as client:
        control.batch_sizes.clear()
        answers = await asyncio.gather(
            client.post(INFER, content=body, headers=headers),
            client.post("/predict", files=images.upload(png)),
            client.post(INFER, content=body, headers=headers),
        )
    assert [a.status_code for a in answers] == [200, 200, 200]
    assert control.batch_sizes == [3]


async def test_a_request_over_the_memory_budget_is_refused_and_holds_nothing(
    make_client: Any, images: Any
) -> None:
    """The body, its JSON parse and the uploads' copies are charged to the memory budget: a
    request that cannot fit is 503 at once, and the budget is back to zero after it."""
    pixels = images.rgb(IMAGE_SIZE, IMAGE_SIZE)
    big = {
        "name": "images",
        "datatype": "UINT8",
        "shape": [1, 64, 64, 3],
        "data": pixels.ravel().tolist(),
    }
    limits = {"memory_budget_mb": 0.5, "max_upload_mb": 0.1, "max_pixels": 64 * 64}
    async with make_client(**limits) as client:
        refused = await client.post(INFER, json={"inputs": [big]})
        runtime = client.app.state.runtime  # type: ignore[attr-defined]
        in_use = runtime.memory.body_in_use
        small, headers = _binary_request(
            [({"name": "images", "datatype": "UINT8", "shape": [1, 64, 64, 3]}, pixels.tobytes())]
        )
        served = await client.post(INFER, content=small, headers=headers)
    assert refused.status_code == 503 and "error" in refused.json()
    assert in_use == 0
    assert served.status_code == 200, served.text
