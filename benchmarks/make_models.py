"""Build the benchmark models: untrained (0-epoch) RD graphs with a seeded random teacher.

Speed does not depend on the weights, so these graphs time exactly like trained ones; they are
calibrated on synthetic images so that the service accepts them.

    python benchmarks/make_models.py --out bench-models --backbones wide_resnet50_2,resnet18
"""

from __future__ import annotations

import argparse
import tempfile
import warnings
from pathlib import Path

from rdad.model.checkpoint import TrainConfig
from rdad.model.export import export_onnx
from rdad.model.synthetic import write_synthetic_dataset
from rdad.model.train import train


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--backbones", default="wide_resnet50_2,resnet18")
    parser.add_argument("--image-size", type=int, default=256)
    parser.add_argument("--precisions", default="fp32", help="fp32,fp16: fp16 goes to NAME-fp16/")
    parser.add_argument("--device", default="cpu", help="device for the calibration pass")
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
            for precision in args.precisions.split(","):
                name = backbone if precision == "fp32" else f"{backbone}-{precision}"
                export_onnx(checkpoint, args.out / name / "model.onnx", precision=precision)


if __name__ == "__main__":
    main()
