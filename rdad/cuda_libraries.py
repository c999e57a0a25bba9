"""CUDA/cuDNN libraries for ONNX Runtime's CUDA provider, shared by the service (device policy)
and ``rdad export`` (the parity check on a GPU).

onnxruntime-gpu finds CUDA and cuDNN from the nvidia-* wheels only when asked (or when torch has
loaded them); without this a pip-only install silently loses its CUDA provider.
``RDAD_NO_PRELOAD_DLLS=1`` leaves the library search to the system.
"""

from __future__ import annotations

import logging
import os

log = logging.getLogger("rdad.cuda_libraries")


def preload_for_onnxruntime() -> None:
    import onnxruntime as ort

    preload = getattr(ort, "preload_dlls", None)
    if preload is not None and not os.environ.get("RDAD_NO_PRELOAD_DLLS"):
        try:
            preload()
        except Exception as exc:  # nothing to preload is fine: system CUDA may be on the path
            log.debug("onnxruntime.preload_dlls: %s", exc)
