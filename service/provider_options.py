"""How each ONNX Runtime provider's session is configured: batch-size buckets (what a batch is
padded up to on GPUs), CUDA options, and TensorRT's engine cache and optimisation profiles."""

from __future__ import annotations

from typing import Any

from rdad.metadata import ModelMetadata

from .device import CUDA, TENSORRT
from .settings import Settings


def batch_buckets(settings: Settings, on_gpu: bool) -> list[int]:
    """Sizes a batch is padded up to (empty: no padding)."""
    top = settings.max_batch_size
    if settings.batch_buckets is not None:
        if 0 in settings.batch_buckets:
            return []
        sizes = {s for s in settings.batch_buckets if 1 <= s <= top}
    elif on_gpu:
        sizes = {1 << k for k in range(top.bit_length()) if 1 << k <= top}
    else:
        return []
    return sorted(sizes | {top})


def _trt_profile(meta: ModelMetadata, buckets: list[int], top: int) -> dict[str, str]:
    """TensorRT optimisation profiles: one exact-shape profile per bucket (batches are padded to
    a bucket, so no other shape ever reaches the engine), or one 1..max profile without buckets.

    ORT reads comma-separated ``input:shape`` lists; the k-th entries of min/opt/max form profile
    k when the same input is named several times.
    """
    shape = f"{meta.image_size}x{meta.image_size}x3"
    name = meta.input_name
    lows, highs = (buckets, buckets) if buckets else ([1], [top])
    return {
        "trt_profile_min_shapes": ",".join(f"{name}:{b}x{shape}" for b in lows),
        "trt_profile_opt_shapes": ",".join(f"{name}:{b}x{shape}" for b in highs),
        "trt_profile_max_shapes": ",".join(f"{name}:{b}x{shape}" for b in highs),
    }


def provider_options(
    name: str, settings: Settings, meta: ModelMetadata, batch: int | None = None
) -> dict[str, Any]:
    """ORT provider options; ``batch``: the one batch size this session will ever see (its
    TensorRT engine is then built for exactly that shape)."""
    dev = str(settings.device_id)
    if name == CUDA:
        # Exhaustive cuDNN search picks the fastest kernel per input shape on its first run:
        # slow once, which is why warm-up runs every batch size the batcher can form. Measured on
        # an H200, a *change* of input shape between runs of one session also costs ~0.6 s, so
        # on GPUs each batch bucket gets its own session (see Engine.load).
        return {
            "device_id": dev,
            "cudnn_conv_algo_search": "EXHAUSTIVE",
            "cudnn_conv_use_max_workspace": "1",
            "do_copy_in_default_stream": "1",
        }
    if name == TENSORRT:
        cache = settings.trt_cache_dir or settings.model_dir / ".trt-cache"
        cache.mkdir(parents=True, exist_ok=True)
        fp16 = settings.trt_fp16 or meta.precision == "fp16"
        return {
            "device_id": dev,
            "trt_fp16_enable": "True" if fp16 else "False",
            "trt_engine_cache_enable": "True",
            "trt_engine_cache_path": str(cache),
            "trt_timing_cache_enable": "True",
            "trt_timing_cache_path": str(cache),
            "trt_max_workspace_size": str(8 << 30),
            **_trt_profile(
                meta, [batch] if batch else batch_buckets(settings, True), settings.max_batch_size
            ),
        }
    return {}
