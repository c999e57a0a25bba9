"""``rdad predict --protocol v2`` against a model that takes only the graph's pixels: the Triton
handover path. No Triton server runs on these machines, so a stand-in plays its part from the
very repository ``rdad export --triton`` wrote: Triton's model metadata and configuration
endpoints (the configuration as Triton prints it, protobuf JSON of ``config.pbtxt``) and ``infer``
running ``DIR/NAME/1/model.onnx`` in ONNX Runtime, answering ``score`` as ``[N, 1]`` as Triton
does. Verdicts must equal ``rdad serve``'s, scores ``rdad eval``'s (1e-5)."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import onnxruntime as ort
import pytest
from google.protobuf import json_format, text_format
from tritonclient.grpc import model_config_pb2

from rdad.model.triton import write_triton_repository
from rdad.model.triton_config import TritonOptions
from rdad.service.open_inference import Tensor, encode_message, parse_message
from tests.service.conftest import MODEL_NAME

HEADER = "Inference-Header-Content-Length"


def _stand_in(repository: Path) -> type[BaseHTTPRequestHandler]:
    folder = repository / MODEL_NAME
    config = text_format.Parse(
        (folder / "config.pbtxt").read_text(), model_config_pb2.ModelConfig()
    )
    config_json = json_format.MessageToDict(config, preserving_proto_field_name=True)
    session = ort.InferenceSession(str(folder / "1" / "model.onnx"))
    image = config.input[0]

    def described(name: str, datatype: str, dims: Any) -> dict[str, Any]:
        return {"name": name, "datatype": datatype, "shape": [-1, *dims]}

    metadata = {
        "name": MODEL_NAME,
        "versions": ["1"],
        "platform": config.platform,
        "inputs": [described(image.name, "UINT8", image.dims)],
        "outputs": [described(o.name, "FP32", o.dims) for o in config.output],
    }

    class Handler(BaseHTTPRequestHandler):
        def _answer(self, body: bytes, headers: dict[str, str] | None = None) -> None:
            self.send_response(200)
            for key, value in (headers or {}).items():
                self.send_header(key, value)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def do_GET(self) -> None:
            answers = {
                f"/v2/models/{MODEL_NAME}": metadata,
                f"/v2/models/{MODEL_NAME}/config": config_json,
            }
            if self.path not in answers:
                self.send_error(404)
                return
            self._answer(json.dumps(answers[self.path]).encode())

        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers["Content-Length"]))
            length = self.headers.get(HEADER)
            _, inputs = parse_message(
                memoryview(body),
                int(length) if length else None,
                key="inputs",
                max_json_bytes=1 << 20,
            )
            _, scores = session.run(None, {image.name: inputs[0].array})
            out = Tensor("score", "FP32", (len(scores), 1), array=scores.reshape(-1, 1))
            content, size = encode_message({"model_name": MODEL_NAME}, "outputs", [(out, True)])
            self._answer(content, {HEADER: str(size)})

        def log_message(self, *args: Any) -> None:
            pass

    return Handler


@pytest.fixture
def triton_url(model_dir: Path, tmp_path: Path) -> Iterator[str]:
    repository = tmp_path / "triton"
    write_triton_repository(
        model_dir / f"{MODEL_NAME}.onnx", repository, TritonOptions(name=MODEL_NAME)
    )
    server = ThreadingHTTPServer(("127.0.0.1", 0), _stand_in(repository))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()


async def test_predict_judges_a_triton_score_by_the_exported_calibration(
    triton_url: str, synthetic_dir: Path, make_client: Any, reference: Any
) -> None:
    files = sorted((synthetic_dir / "test").rglob("*.png"))
    command = [
        sys.executable, "-m", "rdad", "predict", "--url", triton_url, "--protocol", "v2",
        "--name", MODEL_NAME, "--json", "--batch", "4", *map(str, files),
    ]  # fmt: skip
    run = subprocess.run(command, capture_output=True, text=True, timeout=120)
    assert run.returncode in (0, 3), run.stderr
    records = {r["path"]: r for r in json.loads(run.stdout)}
    verdicts = {bool(r["is_anomalous"]) for r in records.values()}
    assert verdicts == {True, False}, "every verdict alike: the comparison below proves little"
    async with make_client() as client:
        for path in files:
            answer = await client.post("/predict", files={"file": ("p.png", path.read_bytes())})
            served = answer.json()
            record = records[str(path)]
            assert abs(record["score"] - reference(path.read_bytes())[1]) < 1e-5
            assert record["is_anomalous"] == served["is_anomalous"]
            # Batches of 4 here, of 1 there: float32 differences of the score, amplified by the
            # logistic's slope (1 / score_scale), show in the normalised score's 5th decimal.
            assert abs(record["normalized_score"] - served["normalized_score"]) < 1e-4
