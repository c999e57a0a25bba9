"""Build-time checks of the rdad images: a wrong base image fails ``docker build``, not the first
request in production. Run by the Dockerfiles (and imported by ``tests/docker``)::

    python check_image.py serve [--onnxruntime-gpu VERSION]   # no torch; CUDA/cuDNN libraries load
    python check_image.py train                               # torch is a CUDA build; model imports

The serving image gets CUDA and cuDNN from its ``nvidia/cuda:*-cudnn-runtime-*`` base, so the base
must carry the CUDA *major* version the installed onnxruntime-gpu wheel was built for. Loading those
libraries needs no GPU, so this runs on any build machine.
"""

from __future__ import annotations

import argparse
import ctypes
import importlib.util
import sys

CUDNN_MAJOR = 9  # onnxruntime-gpu >= 1.19 is built against cuDNN 9

# The serving image's tested build-argument pairs, by CUDA major version; docker/Dockerfile's
# defaults are the CUDA 13 pair. CUDA 12 serves hosts whose NVIDIA driver predates 580.
BUILD_PAIRS: dict[int, dict[str, str]] = {
    13: {
        "CUDA_IMAGE": "nvidia/cuda:13.0.2-cudnn-runtime-ubuntu24.04",
        "ONNXRUNTIME_GPU_VERSION": "1.31.1",
    },
    12: {
        "CUDA_IMAGE": "nvidia/cuda:12.8.1-cudnn-runtime-ubuntu24.04",
        "ONNXRUNTIME_GPU_VERSION": "1.26.0",
    },
}


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


def pypi_cuda_major(onnxruntime_gpu_version: str) -> int:
    """The CUDA major version PyPI's onnxruntime-gpu wheels of a release are built for: 1.19-1.26
    CUDA 12, 1.27 and newer CUDA 13 (older ones: CUDA 11 / cuDNN 8, which rdad does not support).
    Read from the wheels' ``build_and_package_info``: 1.26.0 says 12.8, 1.27.0 says 13.0.
    """
    major, minor = (int(part) for part in onnxruntime_gpu_version.split(".")[:2])
    if (major, minor) >= (1, 27):
        return 13
    if (major, minor) >= (1, 19):
        return 12
    raise ImageCheckError(
        f"onnxruntime-gpu {onnxruntime_gpu_version} is older than 1.19 (CUDA 11 / cuDNN 8)"
    )


def build_args_hint(cuda_major: int) -> str:
    pair = BUILD_PAIRS.get(cuda_major)
    if pair is None:
        return f"a nvidia/cuda:{cuda_major}.X.Y-cudnn-runtime-ubuntu24.04 base"
    return " ".join(f"--build-arg {key}={value}" for key, value in pair.items())


def check_onnxruntime_version(expected: str) -> None:
    """The installed onnxruntime-gpu is the build argument's version, and PyPI's CUDA split above
    holds for it (so the documented pairs stay true)."""
    import onnxruntime as ort

    if ort.__version__ != expected:
        raise ImageCheckError(
            f"onnxruntime {ort.__version__} is installed, ONNXRUNTIME_GPU_VERSION is {expected}"
        )
    built_for, expected_major = onnxruntime_cuda_major(), pypi_cuda_major(expected)
    if built_for != expected_major:
        raise ImageCheckError(
            f"onnxruntime-gpu {expected} is built for CUDA {built_for}, not {expected_major}: "
            "update BUILD_PAIRS and pypi_cuda_major in docker/check_image.py"
        )


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
                f"{name} is installed: the serving image must install requirements/serve.lock only"
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
                f"matching pair: {build_args_hint(major)}"
            ) from None
        loaded.append(soname)
    return loaded


def check_serve(onnxruntime_gpu: str | None = None) -> None:
    check_no_torch()
    if onnxruntime_gpu is not None:
        check_onnxruntime_version(onnxruntime_gpu)
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
    parser = argparse.ArgumentParser(prog="check_image.py", description=__doc__.split("\n")[0])
    parser.add_argument("image", choices=["serve", "train"])
    parser.add_argument("--onnxruntime-gpu", metavar="VERSION", help="expected version (serve)")
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # usage errors: exit status 2, as argparse's
        return int(exc.code or 0)
    try:
        if args.image == "serve":
            check_serve(args.onnxruntime_gpu)
        else:
            check_train()
    except ImageCheckError as exc:
        print(f"check_image {args.image}: FAILED: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
