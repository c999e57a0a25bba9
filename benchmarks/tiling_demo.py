"""Tiled versus whole-image inspection on synthetic high-resolution parts with small defects.

Generates :mod:`rdad.model.synthetic_hires` parts (SIZE×SIZE, defects a few pixels wide), trains
two resnet18 models per seed with the same teacher and the **same training compute** — one on the
whole image resized to the model size, one on tiles of that size at native resolution; the resized
model gets as many epochs as the tiled one has tile passes per image, unless ``--resized-epochs``
says otherwise — exports both to ONNX, evaluates both through ``rdad eval``'s code (pixel metrics
on one common grid) and writes ``OUT/report.json``, ``OUT/report.md`` (per seed, then mean and
range over seeds) and a figure (``--figure``, first seed) of one defect of each kind.

    python benchmarks/tiling_demo.py --teacher /work/shared/teachers/resnet18_cifar10.pth \\
        --out runs/tiling-demo --figure docs/tiling_demo.png --seeds 0,1,2

Small and bounded on purpose (a 2-core machine): a few good parts, a few dozen test parts.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from rdad import sysinfo
from rdad.model.evaluate import evaluate, load_for_eval
from rdad.model.export import export_onnx
from rdad.model.scoring import score_images
from rdad.model.synthetic_hires import HIRES_DEFECTS, write_hires_dataset
from rdad.model.train import TrainConfig, train
from rdad.tiling import Tiling, tile_grid

METRICS = ("image_auroc", "pixel_auroc", "aupro")


def colorize(anomaly_map: np.ndarray, pixel_threshold: float) -> np.ndarray:
    """The service's heatmap colours (rdad.service.render.colorize; not imported, so this
    script runs where FastAPI is not installed): the pixel threshold is mid-scale."""
    levels = np.clip(anomaly_map * (255.0 / (2.0 * pixel_threshold)), 0, 255).astype(np.uint8)
    return cv2.applyColorMap(levels, cv2.COLORMAP_JET)


def tiles_per_image(args: argparse.Namespace) -> int:
    return len(tile_grid(args.size, args.size, Tiling(args.model_size, args.model_size // 8)))


def resized_epochs(args: argparse.Namespace) -> int:
    """Equal compute: one resized-image pass per tile pass of the tiled model."""
    return args.resized_epochs or args.tiled_epochs * tiles_per_image(args)


def run_models(args: argparse.Namespace, data: Path, seed: int) -> dict[str, Path]:
    out = args.out / f"seed{seed}"
    common: dict[str, Any] = {
        "data": str(data),
        "backbone": "resnet18",
        "teacher_weights": args.teacher,
        "batch_size": args.batch_size,
        "seed": seed,
        "device": args.device,
        "amp": False,
        "checkpoint_every": 1000,
    }
    configs = {
        # Whole image resized to the model size: one pass per image and epoch, so it gets
        # (tiles per image) × the tiled model's epochs for equal compute.
        "resized": TrainConfig(
            out=str(out / "resized"),
            image_size=args.model_size,
            epochs=resized_epochs(args),
            **common,
        ),
        # Tiles of the same size at native resolution, ≥1/8 tile overlap (5×5 tiles at 4x).
        "tiled": TrainConfig(
            out=str(out / "tiled"),
            image_size=args.model_size,
            tile_size=args.model_size,
            tile_overlap=args.model_size // 8,
            epochs=args.tiled_epochs,
            **common,
        ),
    }
    models = {}
    for name, cfg in configs.items():
        onnx = out / f"{name}.onnx"
        if not onnx.is_file():
            t0 = time.perf_counter()
            checkpoint = train(cfg, progress=False)
            print(f"seed {seed} {name}: trained in {time.perf_counter() - t0:.0f} s", flush=True)
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


def table(rows: dict[str, dict[str, Any]]) -> list[str]:
    lines = [
        "| model | image AUROC | pixel AUROC | AUPRO | " + " | ".join(HIRES_DEFECTS) + " |",
        "|---|---|---|---|" + "---|" * len(HIRES_DEFECTS),
    ]
    for name, r in rows.items():
        cells = [r[k] for k in METRICS] + [r["per_defect"].get(k) for k in HIRES_DEFECTS]
        lines.append(f"| {name} | " + " | ".join(cell_text(c) for c in cells) + " |")
    return lines


def cell_text(value: Any) -> str:
    if isinstance(value, dict):  # over seeds
        return f"{value['mean']:.3f} ({value['min']:.3f}–{value['max']:.3f})"
    return "nan" if value is None else f"{value:.3f}"


def over_seeds(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Mean, min and max of every metric over seeds."""

    def spread(values: list[float]) -> dict[str, float]:
        return {"mean": float(np.mean(values)), "min": min(values), "max": max(values)}

    return {
        **{k: spread([r[k] for r in runs]) for k in METRICS},
        "per_defect": {k: spread([r["per_defect"][k] for r in runs]) for k in HIRES_DEFECTS},
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--teacher", required=True, help="teacher weights (file or 'imagenet')")
    parser.add_argument("--out", type=Path, default=Path("runs/tiling-demo"))
    parser.add_argument("--figure", type=Path, help="write the comparison figure (PNG) here")
    parser.add_argument("--size", type=int, default=1024, help="part images are SIZE×SIZE")
    parser.add_argument("--model-size", type=int, default=256, help="model input = tile size")
    parser.add_argument("--tiled-epochs", type=int, default=2)
    parser.add_argument(
        "--resized-epochs", type=int, default=0, help="0: equal compute (see the module doc)"
    )
    parser.add_argument("--seeds", default="0", help="comma-separated training seeds")
    parser.add_argument("--pixel-size", type=int, default=512, help="common pixel-metric grid")
    parser.add_argument("--device", default="cpu", help="training device (cpu, cuda)")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--num-train", type=int, default=16)
    parser.add_argument("--num-test", type=int, default=12)
    args = parser.parse_args()
    seeds = [int(s) for s in args.seeds.split(",")]

    data = args.out / "data"
    if not (data / "test").is_dir():
        write_hires_dataset(data, size=args.size, num_train=args.num_train, num_test=args.num_test)
    per_tile = tiles_per_image(args)
    report: dict[str, Any] = {
        "system": sysinfo.describe(),
        "training_device": args.device,
        "pixel_metrics_size": args.pixel_size,
        "tiles_per_image": per_tile,
        "epochs": {"tiled": args.tiled_epochs, "resized": resized_epochs(args)},
        "passes_per_training_image": {
            "tiled": args.tiled_epochs * per_tile,
            "resized": resized_epochs(args),
        },
        "seeds": {},
    }
    first_models: dict[str, Path] = {}
    for seed in seeds:
        models = run_models(args, data, seed)
        first_models = first_models or models
        runs = {}
        for name, path in models.items():
            r = evaluate(path, data, pixel_size=args.pixel_size)
            runs[name] = {k: r[k] for k in (*METRICS, "per_defect", "inference_images_per_second")}
        report["seeds"][str(seed)] = runs
        print(f"seed {seed}", *table(runs), sep="\n", flush=True)
    names = list(first_models)
    report["over_seeds"] = {
        name: over_seeds([report["seeds"][str(s)][name] for s in seeds]) for name in names
    }
    (args.out / "report.json").write_text(json.dumps(report, indent=2) + "\n")
    passes = report["passes_per_training_image"]
    lines = [
        f"{sysinfo.headline()}; pixel metrics on a {args.pixel_size}×{args.pixel_size} grid; "
        f"{per_tile} tiles per image; training passes per good image: tiled {passes['tiled']}, "
        f"resized {passes['resized']}",
    ]
    for seed in seeds:
        lines += ["", f"seed {seed}", "", *table(report["seeds"][str(seed)])]
    lines += ["", f"mean (min–max) over seeds {args.seeds}", "", *table(report["over_seeds"])]
    (args.out / "report.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    if args.figure:
        args.figure.parent.mkdir(parents=True, exist_ok=True)
        figure(first_models, data, args.figure, report["seeds"][str(seeds[0])])


if __name__ == "__main__":
    main()
