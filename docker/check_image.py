"""Build-time checks of the rdad images: a wrong base image fails ``docker build``, not the first
request in production. Run by the Dockerfiles (and imported by ``tests/docker``)::

    python check_image.py serve   # no torch; onnxruntime-gpu's CUDA/cuDNN libraries load
    python check_image.py train   # torch is a CUDA build; the model code imports

The serving image gets CUDA and cuDNN from its ``nvidia/cuda:*-cudnn-runtime-*`` base, so the base
must carry the CUDA *major* version the resolved onnxruntime-gpu wheel was built for (1.31: CUDA 13,
cuDNN 9). Loading those libraries needs no GPU, so this runs on any build machine.
"""

from __future__ import annotations

import ctypes
import importlib.util
import sys

CUDNN_MAJOR = 9  # onnxruntime-gpu >= 1.19 is built against cuDNN 9


class ImageCheckError(RuntimeError):
    """A check failed; the message says what to change."""


def onnxruntime_cuda_major() -> int:
    """The CUDA major version this onnxruntime-gpu wheel was built for (``13`` for 1.31.x)."""
    from onnxruntime.capi import build_and_package_info as info

    version = getattr(info, "cuda_version", None)
    if not version:
        raise ImageCheckError(
            f"onnxruntime {info.__version__} is not a CUDA build (onnxruntime-gpu)"
        )
    return int(str(version).split(".")[0])


def cuda_libraries(cuda_major: int) -> list[str]:
    """Shared libraries ONNX Runtime's CUDA provider loads (sonames), for a CUDA major version."""
    return [
        f"libcudart.so.{cuda_major}",
        f"libcublas.so.{cuda_major}",
        f"libcublasLt.so.{cuda_major}",
        f"libcudnn.so.{CUDNN_MAJOR}",
    ]


def check_no_torch() -> None:
    for name in ("torch", "torchvision"):
        if importlib.util.find_spec(name) is not None:
            raise ImageCheckError(
                f"{name} is installed: the serving image must install .[serve] only"
            )


def check_cuda_libraries() -> list[str]:
    import onnxruntime as ort

    if "CUDAExecutionProvider" not in ort.get_available_providers():
        raise ImageCheckError(f"onnxruntime {ort.__version__} has no CUDAExecutionProvider")
    major = onnxruntime_cuda_major()
    loaded = []
    for soname in cuda_libraries(major):
        try:
            ctypes.CDLL(soname)
        except OSError as exc:
            raise ImageCheckError(
                f"onnxruntime-gpu {ort.__version__} is built for CUDA {major} / cuDNN "
                f"{CUDNN_MAJOR}, but this image cannot load {soname} ({exc}). Build with a "
                "matching base, e.g. "
                f"--build-arg CUDA_IMAGE=nvidia/cuda:{major}.X.Y-cudnn-runtime-ubuntu24.04"
            ) from None
        loaded.append(soname)
    return loaded


def check_serve() -> None:
    check_no_torch()
    loaded = check_cuda_libraries()
    import rdad.service.app  # noqa: F401  (the whole service imports without torch)

    print(f"check_image serve: ok (no torch; loaded {', '.join(loaded)})")


def check_train() -> None:
    import torch

    if torch.version.cuda is None:
        raise ImageCheckError(f"torch {torch.__version__} is a CPU-only build")
    import onnxruntime  # noqa: F401

    import rdad.model.network  # noqa: F401

    print(f"check_image train: ok (torch {torch.__version__}, CUDA {torch.version.cuda})")


def main(argv: list[str]) -> int:
    checks = {"serve": check_serve, "train": check_train}
    if len(argv) != 1 or argv[0] not in checks:
        print(f"usage: check_image.py {{{'|'.join(checks)}}}", file=sys.stderr)
        return 2
    try:
        checks[argv[0]]()
    except ImageCheckError as exc:
        print(f"check_image {argv[0]}: FAILED: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
