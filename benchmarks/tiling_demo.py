"""Tiled versus whole-image inspection on synthetic high-resolution parts with small defects.

Generates :mod:`rdad.model.synthetic_hires` parts (1024×1024, defects a few pixels wide), trains
two resnet18 models with the same teacher and about the same training compute — one on the whole
image resized to 256×256, one on 256-px tiles at native resolution — exports both to ONNX,
evaluates both through ``rdad eval``'s code (pixel metrics on one common grid) and writes
``OUT/report.json``, ``OUT/report.md`` and a figure (``--figure``) of one defect of each kind.

    python benchmarks/tiling_demo.py --teacher /work/shared/teachers/resnet18_cifar10.pth \\
        --out runs/tiling-demo --figure docs/tiling_demo.png

Small and bounded on purpose (a shared 2-core machine): 16 good parts, 12 + 12 test parts.
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from rdad.model.evaluate import evaluate, load_for_eval
from rdad.model.export import export_onnx
from rdad.model.scoring import score_images
from rdad.model.synthetic_hires import HIRES_DEFECTS, write_hires_dataset
from rdad.model.train import TrainConfig, train

METRICS = ("image_auroc", "pixel_auroc", "aupro")


def colorize(anomaly_map: np.ndarray, pixel_threshold: float) -> np.ndarray:
    """The service's heatmap colours (rdad.service.imaging.colorize; not imported, so this
    script runs where FastAPI is not installed): the pixel threshold is mid-scale."""
    levels = np.clip(anomaly_map * (255.0 / (2.0 * pixel_threshold)), 0, 255).astype(np.uint8)
    return cv2.applyColorMap(levels, cv2.COLORMAP_JET)


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                flags = Path("/proc/cpuinfo").read_text()
                ext = [f for f in ("avx512_vnni", "avx512f", "avx2") if f" {f}" in flags]
                return f"{line.split(':', 1)[1].strip()} ({', '.join(ext) or 'no AVX2'})"
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def run_models(args: argparse.Namespace, data: Path) -> dict[str, Path]:
    common: dict[str, Any] = {
        "data": str(data),
        "backbone": "resnet18",
        "teacher_weights": args.teacher,
        "batch_size": args.batch_size,
        "seed": 0,
        "device": args.device,
        "amp": False,
        "checkpoint_every": 1000,
    }
    configs = {
        # Whole image → 256×256: 12 images per epoch; more epochs for about equal compute.
        "resized": TrainConfig(
            out=str(args.out / "resized"),
            image_size=args.model_size,
            epochs=args.resized_epochs,
            **common,
        ),
        # Tiles of the same size at native resolution, ≥1/8 tile overlap (5×5 tiles at 4x).
        "tiled": TrainConfig(
            out=str(args.out / "tiled"),
            image_size=args.model_size,
            tile_size=args.model_size,
            tile_overlap=args.model_size // 8,
            epochs=args.tiled_epochs,
            **common,
        ),
    }
    models = {}
    for name, cfg in configs.items():
        onnx = args.out / f"{name}.onnx"
        if not onnx.is_file():
            t0 = time.perf_counter()
            checkpoint = train(cfg, progress=False)
            print(f"{name}: trained in {time.perf_counter() - t0:.0f} s")
            export_onnx(checkpoint, onnx)
        models[name] = onnx
    return models


def figure(models: dict[str, Path], data: Path, out: Path, report: dict[str, Any]) -> None:
    """One row per defect kind: native crop with the true outline, then each model's heatmap."""
    crop, cell = 160, 240
    rows = []
    loaded = {name: load_for_eval(path) for name, path in models.items()}
    for kind in HIRES_DEFECTS:
        path = sorted((data / "test" / kind).glob("*.png"))[0]
        mask = cv2.imread(str(data / "ground_truth" / kind / f"{path.stem}_mask.png"), 0)
        image = cv2.imread(str(path))
        ys, xs = np.nonzero(mask)
        cy, cx = int(ys.mean()), int(xs.mean())
        y0 = int(np.clip(cy - crop // 2, 0, image.shape[0] - crop))
        x0 = int(np.clip(cx - crop // 2, 0, image.shape[1] - crop))
        window = (slice(y0, y0 + crop), slice(x0, x0 + crop))
        contours, _ = cv2.findContours(mask[window], cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)
        tiles = [image[window].copy()]
        for model in loaded.values():
            assert model.calibration is not None
            scored = score_images(
                model.predict,
                [path],
                image_size=model.image_size,
                tiling=model.tiling,
                grid=image.shape[0],
            )
            heat = colorize(scored.maps[0][window], model.calibration.pixel_threshold)
            tiles.append(heat)
        row = []
        for tile in tiles:
            big = cv2.resize(tile, (cell, cell), interpolation=cv2.INTER_NEAREST)
            scaled = [c * (cell / crop) for c in contours]
            cv2.drawContours(big, [c.astype(np.int32) for c in scaled], -1, (255, 255, 255), 1)
            row.append(cv2.copyMakeBorder(big, 4, 4, 4, 4, cv2.BORDER_CONSTANT, value=(0, 0, 0)))
        label = np.zeros((28, len(row) * (cell + 8), 3), np.uint8)
        cv2.putText(label, kind, (6, 20), cv2.FONT_HERSHEY_SIMPLEX, 0.6, (255, 255, 255), 1)
        rows += [label, np.hstack(row)]
    header = np.zeros((64, rows[0].shape[1], 3), np.uint8)
    size = next(iter(loaded.values())).image_size
    titles = ["image (native, 160 px crop)", f"whole image -> {size} px", f"tiled, {size} px tiles"]
    for i, title in enumerate(titles):
        cv2.putText(header, title, (6 + i * (cell + 8), 22), 0, 0.45, (255, 255, 255), 1)
    for i, name in enumerate(models):
        r = report[name]
        text = f"img {r['image_auroc']:.3f}  px {r['pixel_auroc']:.3f}"
        cv2.putText(header, text, (6 + (i + 1) * (cell + 8), 48), 0, 0.45, (200, 255, 200), 1)
    cv2.imwrite(str(out), np.vstack([header, *rows]))
    print(f"wrote {out}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--teacher", required=True, help="teacher weights (file or 'imagenet')")
    parser.add_argument("--out", type=Path, default=Path("runs/tiling-demo"))
    parser.add_argument("--figure", type=Path, help="write the comparison figure (PNG) here")
    parser.add_argument("--size", type=int, default=1024, help="part images are SIZE×SIZE")
    parser.add_argument("--model-size", type=int, default=256, help="model input = tile size")
    parser.add_argument("--tiled-epochs", type=int, default=2)
    parser.add_argument("--resized-epochs", type=int, default=50)
    parser.add_argument("--pixel-size", type=int, default=512, help="common pixel-metric grid")
    parser.add_argument("--device", default="cpu", help="training device (cpu, cuda)")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--num-train", type=int, default=16)
    parser.add_argument("--num-test", type=int, default=12)
    args = parser.parse_args()

    data = args.out / "data"
    if not (data / "test").is_dir():
        write_hires_dataset(data, size=args.size, num_train=args.num_train, num_test=args.num_test)
    models = run_models(args, data)
    report: dict[str, Any] = {
        "cpu": cpu_name(),
        "training_device": args.device,
        "pixel_metrics_size": args.pixel_size,
        "epochs": {"tiled": args.tiled_epochs, "resized": args.resized_epochs},
    }
    for name, path in models.items():
        r = evaluate(path, data, pixel_size=args.pixel_size)
        report[name] = {k: r[k] for k in (*METRICS, "per_defect", "inference_images_per_second")}
    (args.out / "report.json").write_text(json.dumps(report, indent=2) + "\n")
    lines = [
        f"CPU: {report['cpu']}; pixel metrics on a {args.pixel_size}×{args.pixel_size} grid",
        "",
        "| model | image AUROC | pixel AUROC | AUPRO | " + " | ".join(HIRES_DEFECTS) + " |",
        "|---|---|---|---|" + "---|" * len(HIRES_DEFECTS),
    ]
    for name in models:
        r = report[name]
        per = " | ".join(f"{r['per_defect'].get(k, float('nan')):.3f}" for k in HIRES_DEFECTS)
        lines.append(
            f"| {name} | {r['image_auroc']:.3f} | {r['pixel_auroc']:.3f} | {r['aupro']:.3f} "
            f"| {per} |"
        )
    (args.out / "report.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    if args.figure:
        args.figure.parent.mkdir(parents=True, exist_ok=True)
        figure(models, data, args.figure, report)


if __name__ == "__main__":
    main()
