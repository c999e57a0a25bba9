"""Decode rates for ``benchmarks/gpu_check.sh``: the service's own upload decoder
(:func:`rdad.service.decode.decode_whole`) on one core, on a thread pool of every core (the
service's CPU pool), on a process pool (does the GIL show up?), with and without the reduced-size
JPEG decode, and through nvImageCodec on the GPU when it is installed.

Also writes the load-test image folders (256×256 JPEGs, 900×900 PNGs: the MVTec bottle images when
``RDAD_MVTEC_BOTTLE`` points at them, synthetic parts otherwise).

    python benchmarks/gpu_decode.py --images-out /tmp/imgs --json decode.json
"""

from __future__ import annotations

import argparse
import json
import os
import time
from concurrent.futures import Executor, ProcessPoolExecutor, ThreadPoolExecutor
from pathlib import Path

import cv2
import numpy as np

MODEL_SIZE = 256


def make_images(out: Path, count: int) -> dict[str, list[bytes]]:
    """``{"jpeg256": [...], "jpeg900": [...], "png900": [...]}``, also written under ``out``."""
    from rdad.model.synthetic import good_part

    bottle = os.environ.get("RDAD_MVTEC_BOTTLE")
    sources: list[np.ndarray] = []
    if bottle and Path(bottle, "test").is_dir():
        paths = sorted(Path(bottle, "test").rglob("*.png"))[:count]
        sources = [cv2.cvtColor(cv2.imread(str(p)), cv2.COLOR_BGR2RGB) for p in paths]
    rng = np.random.default_rng(0)
    while len(sources) < count:
        sources.append(good_part(rng, 900))
    sets: dict[str, list[bytes]] = {"jpeg256": [], "jpeg900": [], "png900": []}
    for k, rgb in enumerate(sources):
        bgr = cv2.cvtColor(cv2.resize(rgb, (900, 900)), cv2.COLOR_RGB2BGR)
        small = cv2.resize(bgr, (MODEL_SIZE, MODEL_SIZE), interpolation=cv2.INTER_AREA)
        encoded = {
            "jpeg256": cv2.imencode(".jpg", small, [cv2.IMWRITE_JPEG_QUALITY, 90])[1],
            "jpeg900": cv2.imencode(".jpg", bgr, [cv2.IMWRITE_JPEG_QUALITY, 90])[1],
            "png900": cv2.imencode(".png", bgr)[1],
        }
        for name, buf in encoded.items():
            data = buf.tobytes()
            sets[name].append(data)
            folder = out / name
            folder.mkdir(parents=True, exist_ok=True)
            (folder / f"{k:03d}.{'png' if name.startswith('png') else 'jpg'}").write_bytes(data)
    return sets


def _decode(data: bytes) -> int:
    from rdad.service.decode import decode_whole, read_header

    header = read_header(data, max_pixels=40_000_000)
    return decode_whole(data, header, model_size=MODEL_SIZE, overlay_max_side=None).inputs.shape[1]


def _decode_full(data: bytes) -> int:
    """The same without the reduced-size JPEG decode (full decode, then resize)."""
    from rdad.imaging import decode_image, resize_rgb

    return resize_rgb(decode_image(data), MODEL_SIZE).shape[0]


def rate(pool: Executor | None, fn: object, images: list[bytes], seconds: float) -> float:
    done = 0
    start = time.perf_counter()
    while time.perf_counter() - start < seconds:
        if pool is None:
            for data in images:
                fn(data)  # type: ignore[operator]
        else:
            list(pool.map(fn, images, chunksize=max(1, len(images) // 64)))  # type: ignore[arg-type]
        done += len(images)
    return done / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images-out", type=Path, required=True)
    parser.add_argument("--count", type=int, default=32)
    parser.add_argument("--seconds", type=float, default=1.5)
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--gpu", action="store_true", help="also try nvImageCodec")
    parser.add_argument("--json", type=Path, required=True)
    args = parser.parse_args()
    sets = make_images(args.images_out, args.count)
    rows = []
    workers = args.workers
    with ThreadPoolExecutor(workers) as threads, ProcessPoolExecutor(workers) as procs:
        list(procs.map(_decode, sets["jpeg256"][:workers]))  # start the workers
        for name, images in sets.items():
            batch = images * max(1, 256 // len(images))
            for label, pool, fn in (
                ("1 core", None, _decode),
                (f"{workers} threads", threads, _decode),
                (f"{workers} processes", procs, _decode),
            ):
                rows.append(
                    {"set": name, "how": label, "img_s": rate(pool, fn, batch, args.seconds)}
                )
            if name == "jpeg900":
                rows.append(
                    {
                        "set": name,
                        "how": "1 core, full-size decode",
                        "img_s": rate(None, _decode_full, batch, args.seconds),
                    }
                )
    if args.gpu:
        from rdad.service.gpu_decode import gpu_jpeg_decoder

        decoder = gpu_jpeg_decoder(0)
        for name in ("jpeg256", "jpeg900"):
            if decoder is None:
                rows.append({"set": name, "how": "nvImageCodec", "skipped": "not available"})
                continue
            images = sets[name] * 4
            with ThreadPoolExecutor(workers) as pool:
                r = rate(pool, decoder, images, args.seconds)
            a = decoder(sets[name][0])
            b = cv2.cvtColor(
                cv2.imdecode(np.frombuffer(sets[name][0], np.uint8), cv2.IMREAD_COLOR),
                cv2.COLOR_BGR2RGB,
            )
            diff = int(np.abs(a.astype(int) - b.astype(int)).max()) if a.shape == b.shape else -1
            rows.append(
                {
                    "set": name,
                    "how": "nvImageCodec (GPU, full size)",
                    "img_s": r,
                    "max_abs_diff_vs_cpu": diff,
                }
            )
    for row in rows:
        extra = row.get("skipped") or (
            f"max |gpu-cpu| {row['max_abs_diff_vs_cpu']}" if "max_abs_diff_vs_cpu" in row else ""
        )
        value = f"{row['img_s']:>9.0f} img/s" if "img_s" in row else "          -"
        print(f"decode {row['set']:>8} {row['how']:>30} {value}  {extra}", flush=True)
    args.json.write_text(json.dumps({"cpu_count": os.cpu_count(), "rows": rows}, indent=1))


if __name__ == "__main__":
    main()
