"""The baseline rdad is measured against: a plain FastAPI wrapper around one ONNX Runtime session.

What it is: what a user writes in twenty lines when they wrap an RD graph themselves — one
``session.run`` per request, no batching, no queue, no warm-up policy, no heatmap PNG (it returns
the score only, which flatters it), ONNX Runtime's default CPU settings. Decoding uses the same
``rdad.imaging`` functions as rdad so that both sides see the same pixels. It exists only for the
benchmark in README ("Speed on CPU"); it is not part of the product.

    python benchmarks/plain_wrapper.py --model bench-models/resnet18/model.onnx --port 8766
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort
import uvicorn
from fastapi import FastAPI, UploadFile
from fastapi.responses import PlainTextResponse
from starlette.concurrency import run_in_threadpool

from rdad.imaging import decode_image, resize_rgb
from rdad.metadata import ModelMetadata


def create_app(model: Path) -> FastAPI:
    session = ort.InferenceSession(str(model), providers=["CPUExecutionProvider"])
    meta = ModelMetadata.from_props(dict(session.get_modelmeta().custom_metadata_map))
    size = meta.image_size
    app = FastAPI()

    def score(data: bytes) -> dict[str, object]:
        start = time.perf_counter()
        pixels = resize_rgb(decode_image(data, min_side=size), size)
        decoded = time.perf_counter()
        _, scores = session.run(None, {meta.input_name: pixels[None]})
        done = time.perf_counter()
        return {
            "score": float(np.asarray(scores)[0]),
            # Same field names as rdad's answer so that benchmarks/load.py reads both.
            "timings_ms": {
                "decode": 1000 * (decoded - start),
                "queue": 0.0,
                "inference": 1000 * (done - decoded),
                "encode": 0.0,
            },
        }

    @app.post("/predict")
    async def predict(file: UploadFile) -> dict[str, object]:
        return await run_in_threadpool(score, await file.read())

    @app.get("/readyz")
    async def readyz() -> dict[str, str]:
        return {"status": "ready"}

    @app.get("/metrics", response_class=PlainTextResponse)
    async def metrics() -> str:
        return ""  # load.py reads rdad_batch_size from here; a plain wrapper has no batches

    return app


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", type=Path, required=True)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8766)
    args = parser.parse_args()
    uvicorn.run(create_app(args.model), host=args.host, port=args.port, log_level="warning")


if __name__ == "__main__":
    main()
