"""``rdad predict --out`` on the local engine vs ``--engine ray``, side by side in one run:
images/s, Ray's overhead per image, and the driver's peak resident memory at two job sizes (it
should be flat in the number of images: rows go to Parquet parts, not to the driver).

The images are synthetic copies of the bottle test set resized to ``--image-size`` (JPEG,
generated once into ``--workdir``); every job is ``python -m rdad predict --model M LIST.txt
--out DIR --no-images --no-progress`` in a fresh process (Ray: a new local instance, so its
start-up is in the figure), sampled every 50 ms with psutil (the driver process only: Ray's
workers are processes of their own).

    python benchmarks/make_models.py --out bench-models --backbones resnet18 --image-size 256
    python benchmarks/offline_ray.py --model bench-models/resnet18/model.onnx --sizes 2000,10000
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil
from PIL import Image

from rdad import sysinfo


def make_images(bottle: Path, folder: Path, count: int, size: int) -> list[Path]:
    sources = sorted((bottle / "test").rglob("*.png"))
    folder.mkdir(parents=True, exist_ok=True)
    resized = []
    for source in sources:
        with Image.open(source) as image:
            resized.append(image.convert("RGB").resize((size, size), Image.Resampling.BILINEAR))
    paths = []
    for n in range(count):
        path = folder / f"{n // 1000:03d}" / f"{n:06d}.jpg"
        if not path.exists():
            path.parent.mkdir(exist_ok=True)
            resized[n % len(resized)].save(path, quality=95)
        paths.append(path)
    return paths


def run_job(model: Path, listing: Path, out: Path, engine: str, batch: int) -> tuple[float, int]:
    """Seconds and the driver's peak RSS (bytes) of one job."""
    command = [sys.executable, "-m", "rdad", "predict", "--model", str(model), str(listing)]
    command += ["--out", str(out), "--no-images", "--no-progress", "--batch", str(batch)]
    command += ["--engine", engine]
    started = time.perf_counter()
    job = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    driver = psutil.Process(job.pid)
    peak = 0
    while job.poll() is None:
        try:
            peak = max(peak, driver.memory_info().rss)
        except psutil.NoSuchProcess:
            break
        time.sleep(0.05)
    seconds = time.perf_counter() - started
    errors = job.stderr.read() if job.stderr else ""
    if job.returncode not in (0, 3):
        raise SystemExit(f"{engine} job failed ({job.returncode}): {errors[-2000:]}")
    return seconds, peak


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", type=Path, required=True)
    parser.add_argument("--sizes", default="2000,10000", help="job sizes, images")
    parser.add_argument("--image-size", type=int, default=256)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--bottle", type=Path, default=Path(os.environ["RDAD_MVTEC_BOTTLE"]))
    default_workdir = Path(tempfile.gettempdir()) / "rdad-offline"
    parser.add_argument("--workdir", type=Path, default=default_workdir)
    args = parser.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")]
    images = make_images(args.bottle, args.workdir / "images", max(sizes), args.image_size)
    print(f"{sysinfo.headline()}; model {args.model.name}; batch {args.batch}")
    print(
        "| images | local img/s | Ray img/s | Ray / local | Ray overhead ms/img "
        "| local driver peak MiB | Ray driver peak MiB |"
    )
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for size in sizes:
        listing = args.workdir / f"list-{size}.txt"
        listing.write_text("".join(f"{p}\n" for p in images[:size]))
        figures = {}
        for engine in ("local", "ray"):  # side by side: the same load on the shared cores
            out = args.workdir / f"out-{engine}-{size}"
            shutil.rmtree(out, ignore_errors=True)
            figures[engine] = run_job(args.model, listing, out, engine, args.batch)
            shutil.rmtree(out, ignore_errors=True)
        (local_s, local_rss), (ray_s, ray_rss) = figures["local"], figures["ray"]
        print(
            f"| {size} | {size / local_s:.1f} | {size / ray_s:.1f} | {local_s / ray_s:.2f} "
            f"| {(ray_s - local_s) / size * 1000:.2f} | {local_rss / 2**20:.0f} "
            f"| {ray_rss / 2**20:.0f} |",
            flush=True,
        )


if __name__ == "__main__":
    main()
