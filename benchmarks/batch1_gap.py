"""Why a batch-1 inference takes longer inside ``rdad serve`` than in a bare session.

In one process, interleaved (so that foreign load on a shared machine hits every condition
alike), the median batch-1 inference time of one ONNX Runtime session:

* ``bare``: back to back, nothing else running (what ``benchmarks/load.py`` calls raw);
* ``after-decode``: each run right after decoding an upload the way the service does it
  (PNG decode + resize + the heatmap PNG of the previous answer), with OpenCV's default
  thread pool — the order of work at concurrency 1 in the service;
* ``after-decode cv2=1``: the same with OpenCV single-threaded, the service's thread budget.

    python benchmarks/batch1_gap.py --model bench-models/resnet18/model.onnx \\
        --image ../shared/datasets/mvtec_bottle/test/good/000.png --runs 15
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import cv2
import numpy as np
import onnxruntime as ort

from rdad import sysinfo
from rdad.imaging import decode_image, resize_rgb


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", type=Path, required=True)
    parser.add_argument("--image", type=Path, required=True)
    parser.add_argument("--runs", type=int, default=15)
    args = parser.parse_args()
    opts = ort.SessionOptions()
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    opts.inter_op_num_threads = 1
    session = ort.InferenceSession(str(args.model), opts, providers=["CPUExecutionProvider"])
    size = session.get_inputs()[0].shape[1]
    data = args.image.read_bytes()
    default_threads = cv2.getNumThreads()

    def decode() -> np.ndarray:
        pixels = resize_rgb(decode_image(data, min_side=size), size)
        heat = cv2.applyColorMap(np.full((900, 900), 128, np.uint8), cv2.COLORMAP_JET)
        cv2.imencode(".png", heat)
        return pixels[None]

    batch = decode()
    conditions = {
        "bare": (None, False),
        "after-decode": (default_threads, True),
        "after-decode cv2=1": (1, True),
    }
    times: dict[str, list[float]] = {name: [] for name in conditions}
    for _ in range(2):
        session.run(None, {"images": batch})
    for _ in range(args.runs):
        for name, (threads, with_decode) in conditions.items():
            if threads is not None:
                cv2.setNumThreads(threads)
            if with_decode:
                batch = decode()
            start = time.perf_counter()
            session.run(None, {"images": batch})
            times[name].append(1000 * (time.perf_counter() - start))
    print(sysinfo.headline())
    print(f"{args.model}: batch-1 inference, median of {args.runs} interleaved runs")
    base = statistics.median(times["bare"])
    for name, samples in times.items():
        med = statistics.median(samples)
        print(f"  {name:<20} {med:8.1f} ms  ({med - base:+.1f} ms vs bare)")


if __name__ == "__main__":
    main()
