"""Prometheus metrics (prometheus-client), one registry per app.

A registry per :func:`rdad.service.app.create_app` call (instead of the global default) lets several
apps live in one process (tests) without duplicate-name errors; the default process, platform and
GC collectors are registered on it so ``/metrics`` still shows ``process_*`` and ``python_*``.

Under ``rdad serve --workers N`` (``PROMETHEUS_MULTIPROC_DIR`` set: prometheus-client's
multiprocess mode) every worker writes its values to its own files and ``/metrics``, whichever
worker answers, merges all of them (:mod:`service.worker_metrics`): counters and histograms are
summed over the workers, each gauge is merged by its ``multiprocess_mode`` (``live*``: only
running workers count). Gauges declare that mode always; a single process ignores it.
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    GCCollector,
    Histogram,
    PlatformCollector,
    ProcessCollector,
    generate_latest,
)

from .run_dir import METRICS_ENV
from .worker_metrics import worker_registry

# Latency buckets from 1 ms to 60 s: covers a batch-1 resnet18 on GPU up to a queued CPU request.
LATENCY_BUCKETS = (
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
)  # fmt: skip
SCORE_BUCKETS = tuple(round(0.05 * i, 2) for i in range(1, 21))


def _batch_buckets(max_batch_size: int) -> tuple[float, ...]:
    """Every size up to 16 (so a histogram shows exactly which sizes form), then powers of two."""
    sizes = set(range(1, min(max_batch_size, 16) + 1))
    size = 32
    while size < max_batch_size:
        sizes.add(size)
        size *= 2
    sizes.add(max_batch_size)
    return tuple(float(s) for s in sorted(sizes))


@dataclass(frozen=True)
class ModelMetrics:
    """Metric children bound to one model's label, handed to that model's batcher."""

    queue_wait: Histogram
    inference: Histogram
    batch_size: Histogram
    queue_depth: Gauge
    inference_failures: Counter


class Metrics:
    """All ``rdad_*`` metrics of one service instance."""

    def __init__(self, *, max_batch_size: int) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        # The variable prometheus-client chose its value storage by, when first imported.
        shared = os.environ.get(METRICS_ENV)
        self.multiprocess = shared is not None
        """Values live in the workers' shared files; what ``/metrics`` shows is their merge."""
        self._exposed = self.registry if shared is None else worker_registry(shared)
        if shared is None:
            ProcessCollector(registry=self.registry)
            PlatformCollector(registry=self.registry)
            GCCollector(registry=self.registry)
        reg = self.registry
        self.requests = Counter(
            "rdad_requests", "HTTP requests by model, endpoint and status code.",
            ["model", "endpoint", "status"], registry=reg,
        )  # fmt: skip
        self.request_latency = Histogram(
            "rdad_request_duration_seconds", "HTTP request latency, receipt to last byte.",
            ["model", "endpoint"], buckets=LATENCY_BUCKETS, registry=reg,
        )  # fmt: skip
        self.queue_wait = Histogram(
            "rdad_queue_wait_seconds", "Time an image waited in the batching queue.",
            ["model"], buckets=LATENCY_BUCKETS, registry=reg,
        )  # fmt: skip
        self.inference = Histogram(
            "rdad_inference_duration_seconds", "ONNX Runtime time per batch.",
            ["model"], buckets=LATENCY_BUCKETS, registry=reg,
        )  # fmt: skip
        self.batch_size = Histogram(
            "rdad_batch_size", "Images per inference batch.",
            ["model"], buckets=_batch_buckets(max_batch_size), registry=reg,
        )  # fmt: skip
        self.queue_depth = Gauge(
            "rdad_queue_depth", "Images waiting for a batch.", ["model"], registry=reg,
            multiprocess_mode="livesum",
        )  # fmt: skip
        self.inference_failures = Counter(
            "rdad_inference_failures", "Batches whose inference raised.", ["model"], registry=reg
        )
        self.images = Counter(
            "rdad_images", "Scored images by verdict.", ["model", "verdict"], registry=reg
        )
        self.normalized_score = Histogram(
            "rdad_normalized_score", "Normalised scores (0.5 = threshold): watch for drift.",
            ["model"], buckets=SCORE_BUCKETS, registry=reg,
        )  # fmt: skip
        self.model_info = Gauge(
            "rdad_model_info",
            "Model versions and files (value 1) by state: loading, warming, ready, failed, "
            "draining; version, provider, size, backbone and precision (what runs: fp32, bf16, "
            "int8, int8+bf16, fp16) are empty until a file has loaded.",
            ["model", "version", "provider", "image_size", "backbone", "precision", "state"],
            registry=reg,
            multiprocess_mode="liveall",  # one series per worker (label pid): which has what
        )  # fmt: skip
        self.model_ready = Gauge(
            "rdad_model_ready", "1 once the model is loaded and warm (in every worker).",
            ["model"], registry=reg, multiprocess_mode="livemin",
        )  # fmt: skip
        self.live = Gauge(
            "rdad_live", "1 while /healthz answers 200 (no dead collector, no stuck batch).",
            registry=reg, multiprocess_mode="livemin",
        )  # fmt: skip
        self.liveness_failure = Gauge(
            "rdad_liveness_failure", "1 while this liveness check fails for the model.",
            ["model", "reason"], registry=reg, multiprocess_mode="livemax",
        )  # fmt: skip
        self.batch_running = Gauge(
            "rdad_batch_running_seconds", "How long the model's current batch has been running.",
            ["model"], registry=reg, multiprocess_mode="livemax",
        )  # fmt: skip
        self.overloaded = Counter(
            "rdad_admission_refused", "Requests refused at admission (503) by reason.",
            ["model", "reason"], registry=reg,
        )  # fmt: skip
        self.shed_latency = Histogram(
            "rdad_shed_latency_seconds", "Arrival to a 503 refusal at admission (no work done).",
            ["model"], buckets=LATENCY_BUCKETS, registry=reg,
        )  # fmt: skip
        self.memory_in_use = Gauge(
            "rdad_memory_budget_bytes_in_use",
            "Bytes of request bodies and decoded pixels held by requests in flight.",
            registry=reg, multiprocess_mode="livesum",
        )  # fmt: skip
        self.model_loads = Counter(
            "rdad_model_loads", "Model file loads (start, poll, reload) by result.",
            ["model", "result"], registry=reg,
        )  # fmt: skip

    def for_model(self, name: str) -> ModelMetrics:
        return ModelMetrics(
            queue_wait=self.queue_wait.labels(name),
            inference=self.inference.labels(name),
            batch_size=self.batch_size.labels(name),
            queue_depth=self.queue_depth.labels(name),
            inference_failures=self.inference_failures.labels(name),
        )

    def observe_prediction(self, model: str, normalized_score: float, anomalous: bool) -> None:
        self.images.labels(model, "anomalous" if anomalous else "normal").inc()
        self.normalized_score.labels(model).observe(normalized_score)

    def retire(self, gauge: Gauge, *labels: str) -> None:
        """The series ``labels`` of ``gauge`` no longer applies. In multiprocess mode a worker's
        file keeps every series it ever wrote (prometheus-client cannot remove one there), so
        it is set to 0 instead: for the 1-valued state gauges, 0 means "not any more"."""
        if self.multiprocess:
            gauge.labels(*labels).set(0)
            return
        with contextlib.suppress(KeyError):
            gauge.remove(*labels)

    def render(self) -> bytes:
        return generate_latest(self._exposed)
