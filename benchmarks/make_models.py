"""Build the benchmark models: untrained (0-epoch) RD graphs with a seeded random teacher.

Speed does not depend on the weights, so these graphs time exactly like trained ones; they are
calibrated on synthetic images so that the service accepts them.

``--int8`` also writes ``model_int8.onnx``: the same QDQ quantisation as ``rdad export --precision
int8``, calibrated on the synthetic images, *without* the int8 parity check — a random teacher
scores every image alike, so there is no ranking to preserve (the export would rightly refuse
it). These files are for timing only; the int8 quality figure comes from a trained model.

    python benchmarks/make_models.py --out bench-models --backbones wide_resnet50_2,resnet18 \
        --int8 --checkpoints
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import warnings
from pathlib import Path

from rdad.model.checkpoint import TrainConfig
from rdad.model.data import good_training_images, load_images
from rdad.model.export import export_onnx
from rdad.model.quantize import quantize_int8
from rdad.model.synthetic import write_synthetic_dataset
from rdad.model.train import train


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--backbones", default="wide_resnet50_2,resnet18")
    parser.add_argument("--image-size", type=int, default=256)
    parser.add_argument("--precisions", default="fp32", help="fp32,fp16: fp16 goes to NAME-fp16/")
    parser.add_argument("--device", default="cpu", help="device for the calibration pass")
    parser.add_argument("--int8", action="store_true", help="also write NAME/model_int8.onnx")
    parser.add_argument(
        "--checkpoints", action="store_true", help="also keep NAME/checkpoint.pt (torch eager)"
    )
    args = parser.parse_args()
    warnings.simplefilter("ignore", UserWarning)  # the deliberate random-teacher warning
    with tempfile.TemporaryDirectory() as tmp:
        data = write_synthetic_dataset(Path(tmp) / "data", image_size=args.image_size, num_train=8)
        for backbone in args.backbones.split(","):
            cfg = TrainConfig(
                data=str(data),
                out=str(Path(tmp) / backbone),
                backbone=backbone,
                image_size=args.image_size,
                epochs=0,
                teacher_weights="random",
                device=args.device,
            )
            checkpoint = train(cfg, progress=False)
            if args.checkpoints:
                (args.out / backbone).mkdir(parents=True, exist_ok=True)
                shutil.copy2(checkpoint, args.out / backbone / "checkpoint.pt")
            for precision in args.precisions.split(","):
                name = backbone if precision == "fp32" else f"{backbone}-{precision}"
                export_onnx(checkpoint, args.out / name / "model.onnx", precision=precision)
            if args.int8:
                fp32 = args.out / backbone / "model.onnx"
                if not fp32.exists():
                    fp32 = export_onnx(checkpoint, fp32)
                images = load_images(good_training_images(data), args.image_size).images
                quantize_int8(fp32, fp32.with_name("model_int8.onnx"), images)


if __name__ == "__main__":
    main()
