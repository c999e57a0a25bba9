"""Service settings: ``RDAD_*`` environment variables, overridden by ``rdad serve`` flags.

Every field is also an environment variable: ``max_batch_size`` ↔ ``RDAD_MAX_BATCH_SIZE``. List
fields take comma-separated values (``RDAD_PROVIDERS=cuda,cpu``). Values passed to ``Settings(...)``
win over the environment, which is how ``rdad serve`` flags override variables.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from .resources import (
    DEFAULT_MAX_PIXELS,
    MIB,
    default_memory_budget,
    memory_limit_bytes,
    pixel_reserve,
)

DEFAULT_PROVIDERS = ("tensorrt", "cuda", "cpu")


def default_model_dir() -> Path:
    """``$XDG_CACHE_HOME/rdad/models`` (``~/.cache/rdad/models``): where ``rdad serve`` keeps the
    embedded demo model, so that a second start finds it instead of training again."""
    cache = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(cache) / "rdad" / "models"


def _split_csv(value: Any) -> Any:
    # NoDecode fields arrive as raw strings from the environment: "cuda, cpu" → ["cuda", "cpu"].
    if isinstance(value, str):
        return [part.strip() for part in value.split(",") if part.strip()]
    return value


class Settings(BaseSettings):
    """All knobs of the inference service (the generated table: docs, *Serving → Settings*)."""

    model_config = SettingsConfigDict(env_prefix="RDAD_", extra="ignore", protected_namespaces=())

    # --- models -------------------------------------------------------------------------------
    model_dir: Path = Field(default_factory=default_model_dir)
    """Model repository: each ``NAME.onnx`` or ``NAME/model.onnx`` is a model called NAME."""
    default_model: str | None = None
    """Model used by ``POST /predict``; optional when the folder holds exactly one model."""
    model_poll_s: float = Field(default=5.0, ge=0.0)
    """Re-read the model folder this often (seconds): new files load, changed files replace the
    serving version, removed files drain away; a change is acted on once two polls in a row agree.
    With polling on, an empty, missing or all-broken folder keeps the service up (not ready) and
    waiting; 0 turns polling off, and then a start with no loadable model exits non-zero."""

    # --- network ------------------------------------------------------------------------------
    host: str = "127.0.0.1"
    port: int = Field(default=8000, ge=0, le=65535)
    read_timeout_s: float = Field(default=10.0, gt=0.0)
    """A request's headers must arrive within this many seconds of the connection (or of the
    previous answer on it), and its body may take this long plus the time its bytes take at
    ``min_upload_rate_kb_s``: a stalled or trickling upload is cut off with 408 and gives back
    its queue slot and memory at once. The request timeout counts from the end of the upload."""
    min_upload_rate_kb_s: float = Field(default=64.0, gt=0.0)
    """Slowest upload kept (KiB/s, averaged): a 50 MB upload is given 10 s + ~760 s, so it passes
    on any link faster than ~0.5 Mbit/s; one that sends slower is cut off."""
    keep_alive_s: float = Field(default=5.0, gt=0.0)
    """An idle keep-alive connection is closed after this many seconds."""
    max_connections: int = Field(default=1000, ge=1)
    """Open connections and requests in flight; beyond it uvicorn answers 503 at once."""
    root_path: str = ""
    """URL prefix the service is served under behind a proxy (``/rdad``), passed to uvicorn as
    its ``root_path``; routes, docs and the API-key gate all apply below it."""
    log_level: str = "info"
    access_log: bool = True

    # --- processes ----------------------------------------------------------------------------
    workers: int = Field(default=1, ge=1, le=64)
    """Server processes on the one port, each with its own models, batchers and event loop,
    sharing the device(s): for when one event loop, not the model, limits the rate (small models
    on a GPU). Each worker holds its own copy of every model (and a CUDA context on a GPU). With
    more than one, unset thread counts and the memory budget are split between them, and
    ``/metrics`` sums every worker (see docs/workers.md)."""
    run_dir: Path | None = None
    """Folder the workers share (metric files, reload requests) when ``workers`` > 1. Default:
    a new temporary folder, removed at exit. A given folder is emptied of rdad's files at start."""

    # --- dynamic batching ---------------------------------------------------------------------
    max_batch_size: int = Field(default=16, ge=1, le=1024)
    max_delay_ms: float = Field(default=5.0, ge=0.0)
    """A batch closes this long after its first image arrived (or when it is full)."""
    batch_early_close: bool = True
    """Close a batch before ``max_delay_ms`` when no other image is being decoded (nothing can
    join it in time), so a lone request never waits for the window."""
    max_queue: int = Field(default=256, ge=1)
    """Images in flight per model (uploading, decoding, queued or running); beyond this a request
    gets 503 + Retry-After at once, before its body is read. Must be at least ``max_files``. A
    request with more images than this (the tiles of a tiled model) runs in waves of this size."""
    request_timeout_s: float = Field(default=30.0, gt=0.0)
    """Seconds from the end of a request's upload to its answer; 504 beyond."""
    retry_after_s: int = Field(default=1, ge=0)
    """Seconds sent in the ``Retry-After`` header of 503 answers."""

    # --- ONNX Runtime -------------------------------------------------------------------------
    device: Literal["auto", "cuda", "cpu"] = "auto"
    """``auto``: a GPU when one is usable, else the CPU with one warning line. ``cuda``: refuse to
    start unless every model runs on a GPU provider (no silent CPU fallback of any kind).
    ``cpu``: never touch CUDA."""
    providers: Annotated[list[str], NoDecode] = Field(
        default_factory=lambda: list(DEFAULT_PROVIDERS)
    )
    """Execution providers in preference order (tensorrt, cuda, cpu or full ORT names;
    ``openvino`` selects the OpenVINO runtime, see ``runtime``)."""
    tensorrt: bool = False
    """TensorRT is skipped unless enabled: its engine build takes minutes on first start."""
    trt_cache_dir: Path | None = None
    """TensorRT engine + timing cache (a volume in containers); default ``MODEL_DIR/.trt-cache``."""
    trt_fp16: bool = True
    """Let TensorRT pick fp16 kernels (fp16-exported graphs keep their fp32 anomaly-map tail)."""
    io_binding: bool = False
    """GPU providers: run through IO binding with device buffers reused per batch size. Off by
    default: on an H200 it did not beat ``session.run`` (equal at batch 8-64, slower at 128)."""
    batch_buckets: Annotated[list[int] | None, NoDecode] = None
    """Pad each batch up to the next of these sizes (fewer shapes to warm up and tune). Default:
    powers of two up to max_batch_size on GPU providers, no padding on CPU; ``0`` turns it off."""
    session_per_bucket: bool = True
    """GPU providers: one ONNX Runtime session per batch bucket, so no session changes input
    shape. Observed on an H200 (CUDA provider, exhaustive cuDNN search): ~0.6 s per shape change
    within a session, seconds per batch under load with mixed batch sizes (docs/performance.md)."""
    inflight_batches: int = Field(default=0, ge=0, le=8)
    """Batches running at once per model (0 = 2 on GPU providers, so the next batch is stacked
    and uploaded while one computes; 1 on CPU, where one run already uses every core)."""
    gpu_decode: bool = False
    """Decode JPEG uploads on the GPU with nvImageCodec (optional package
    ``nvidia-nvimgcodec-cu13``); without it the CPU decoder is used and a warning is logged."""
    device_id: int = Field(default=0, ge=0)
    intra_op_threads: int = Field(default=0, ge=0)
    """CPU provider threads per model (0 = ONNX Runtime's default: one per physical core)."""
    warmup_batch_sizes: Annotated[list[int] | None, NoDecode] = None
    """Batch sizes run at start. Default: every size 1..max_batch_size on GPU providers (cuDNN
    and TensorRT pick kernels per input shape), 1 and max_batch_size on CPU."""
    runtime: Literal["auto", "onnxruntime", "openvino"] = "auto"
    """Inference runtime: ``auto`` = ONNX Runtime on a usable GPU; on a CPU host OpenVINO for int8
    graphs and ONNX Runtime for fp32/fp16 (the rule and its reason: ``service/engine.py``)."""
    cpu_precision: Literal["fp32", "bf16", "auto"] = "fp32"
    """What the CPU runs the non-int8 layers at: ``fp32`` (default: nothing changes silently),
    ``bf16`` (CPUs with AVX512-BF16 or AMX, on OpenVINO, after a parity check against fp32 at
    load; refused with the reason elsewhere) or ``auto`` (bf16 where the CPU has it and parity
    passes, else fp32). The precision used is in ``/models`` and ``rdad_model_info``."""
    cpu_workers: int = Field(default=0, ge=0)
    """Threads decoding uploads and encoding PNGs (0 = number of CPUs)."""
    decode_processes: int = Field(default=0, ge=0)
    """Decode uploads in a pool of this many processes instead of the threads (0). Small JPEGs
    hit the GIL in threads: 256×256 JPEGs on 16 cores decoded at 3,274 img/s with threads and
    13,185 with processes (H200 host, docs/performance.md); large images gain nothing."""

    # --- limits -------------------------------------------------------------------------------
    max_upload_mb: float = Field(default=50.0, gt=0.0)
    """Whole request body; larger uploads get 413 before the body is read."""
    max_files: int = Field(default=16, ge=1)
    """Files per ``/predict`` request, and images per Open Inference Protocol ``infer``."""
    v2_max_json_mb: float = Field(default=4.0, gt=0.0)
    """The JSON header of an Open Inference Protocol request (numbers parsed from JSON take many
    times their size in memory: send images as binary tensors, or as BYTES)."""
    max_pixels: int = Field(default=DEFAULT_MAX_PIXELS, ge=1)
    """Per image, read from the header before decoding (decompression bombs)."""
    overlay_max_side: int = Field(default=1024, ge=16)
    original_max_side: int = Field(default=4096, ge=16)
    """``heatmap_size=original``: heatmap and mask at the image's own size, scaled down to fit
    this longest side (bounds the render's memory and the answer's size)."""
    memory_budget_mb: float | None = Field(default=None, gt=0.0)
    """Request bodies and decoded pixels (model inputs, maps, renders) in flight across all
    requests (MiB). Default: a sixteenth of the memory limit (cgroup / pod limit, else RAM), at
    most 256 MiB, at least one image at ``max_pixels`` being decoded (5 bytes a pixel) beside
    one upload at ``max_upload_mb``. See docs/reliability.md."""

    # --- liveness -----------------------------------------------------------------------------
    stuck_batch_s: float = Field(default=60.0, gt=0.0)
    """A batch running longer than this (a hung CUDA call) turns ``/healthz`` to 503."""

    # --- security -----------------------------------------------------------------------------
    api_key: SecretStr | None = None
    """When set, predict and model routes need ``Authorization: Bearer <key>``."""
    reload_without_key: bool = False
    """Allow ``POST /models/{name}/reload`` with no API key set (off: without a key the route
    answers 403; cross-site requests are refused either way)."""
    auth_health: bool = False
    auth_metrics: bool = False

    # --- shutdown -----------------------------------------------------------------------------
    drain_delay_s: float = Field(default=2.0, ge=0.0)
    """After SIGTERM, keep serving (/readyz at 503) this long so load balancers stop routing."""
    grace_period_s: float = Field(default=25.0, gt=0.0)
    """Upper bound from SIGTERM to exit; must stay below the orchestrator's kill timeout."""

    @field_validator("providers", mode="before")
    @classmethod
    def _parse_providers(cls, value: Any) -> Any:
        return _split_csv(value)

    @field_validator("warmup_batch_sizes", "batch_buckets", mode="before")
    @classmethod
    def _parse_sizes(cls, value: Any) -> Any:
        if isinstance(value, str) and not value.strip():
            return None
        return _split_csv(value)

    @field_validator("default_model", "api_key", mode="before")
    @classmethod
    def _empty_is_none(cls, value: Any) -> Any:
        # An empty RDAD_API_KEY must mean "no key", never "the empty string is the key".
        # (An empty key would let a request without a header pass the compare.)
        return None if isinstance(value, str) and not value.strip() else value

    @model_validator(mode="after")
    def _refuse_incompatible(self) -> Settings:
        # Refused at start: combinations that would fail every request (or some) at run time.
        from PIL import Image

        problems = []
        if self.max_queue < self.max_files:
            problems.append(
                f"max_queue ({self.max_queue}) < max_files ({self.max_files}): a request with "
                "the maximum number of files could never be queued"
            )
        pillow_limit = Image.MAX_IMAGE_PIXELS
        if pillow_limit is not None and self.max_pixels > 2 * pillow_limit:
            problems.append(
                f"max_pixels ({self.max_pixels}) is over twice Pillow's MAX_IMAGE_PIXELS "
                f"({pillow_limit}): Pillow refuses such images before our own check"
            )
        needed = self.pixel_reserve_bytes + self.max_upload_bytes
        if self.memory_budget_mb is not None and self.memory_budget_bytes < needed:
            problems.append(
                f"memory_budget_mb ({self.memory_budget_mb:g}) cannot hold one image at "
                f"max_pixels ({self.max_pixels}) being decoded beside one upload at max_upload_mb "
                f"({self.max_upload_mb:g}): at least {needed / MIB:.0f} MiB"
            )
        if self.drain_delay_s >= self.grace_period_s:
            problems.append(
                f"drain_delay_s ({self.drain_delay_s:g}) >= grace_period_s "
                f"({self.grace_period_s:g}): no time would be left to finish requests"
            )
        if problems:
            raise ValueError("incompatible settings: " + "; ".join(problems))
        return self

    @property
    def memory_budget_bytes(self) -> int:
        if self.memory_budget_mb is not None:
            return int(self.memory_budget_mb * MIB)
        return default_memory_budget(self.max_pixels, self.max_upload_bytes, memory_limit_bytes())

    @property
    def pixel_reserve_bytes(self) -> int:
        """Memory kept free of uploads: one image at ``max_pixels`` being decoded."""
        return pixel_reserve(self.max_pixels)

    @property
    def min_upload_rate_bytes_s(self) -> float:
        return self.min_upload_rate_kb_s * 1024

    @property
    def max_upload_bytes(self) -> int:
        return int(self.max_upload_mb * 1024 * 1024)

    @property
    def v2_max_json_bytes(self) -> int:
        return int(self.v2_max_json_mb * 1024 * 1024)

    @property
    def max_delay_s(self) -> float:
        return self.max_delay_ms / 1000.0

    @property
    def cpu_worker_count(self) -> int:
        return self.cpu_workers or os.cpu_count() or 1
