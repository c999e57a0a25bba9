"""``rdad serve``: the HTTP inference service (FastAPI + ONNX Runtime; one process, or
``--workers N`` processes on one port, see docs/workers.md).

Every flag is also an ``RDAD_*`` environment variable (``--max-batch-size`` ↔
``RDAD_MAX_BATCH_SIZE``); a flag wins over its variable. Imports no torch, unless there is no model
to serve and the embedded demo model has to be built first.
"""

from __future__ import annotations

import argparse
import logging
import os
import socket
from pathlib import Path
from typing import TYPE_CHECKING, Any

from rdad.commands._common import add_command, setup_logging
from rdad.errors import CommandError

if TYPE_CHECKING:
    from rdad.service.settings import Settings

EXAMPLES = """\
  rdad serve
      no model yet: builds the embedded demo model (random teacher, synthetic parts) into
      ~/.cache/rdad/models once, then serves it on http://127.0.0.1:8000
  rdad serve --model-dir models/ --host 0.0.0.0 --port 8080
      serve every models/NAME.onnx and models/NAME/model.onnx
  RDAD_PROVIDERS=cuda,cpu RDAD_MAX_BATCH_SIZE=32 rdad serve --model-dir models/
  rdad serve --model-dir models/ --tensorrt --max-delay-ms 2
  rdad serve --model-dir models/ --workers 2
      two server processes on one port (a small model on a fast GPU: the event loop is the
      limit); each loads every model; /metrics sums both
  curl -F file=@part.png "http://127.0.0.1:8000/predict?heatmap=false"
"""

# (flag, Settings field, type, help). bool flags are tri-state: absent = keep the env/default.
FLAGS: list[tuple[str, str, Any, str]] = [
    ("--model-dir", "model_dir", Path, "model repository (default ~/.cache/rdad/models)"),
    ("--default-model", "default_model", str, "model answering POST /predict"),
    ("--model-poll-s", "model_poll_s", float, "re-read the model folder every S s (5; 0 = off)"),
    ("--host", "host", str, "bind address (default 127.0.0.1; 0.0.0.0 in containers)"),
    ("--port", "port", int, "TCP port (default 8000)"),
    ("--read-timeout-s", "read_timeout_s", float, "headers, and a body's start, within S s"),
    ("--min-upload-rate-kb-s", "min_upload_rate_kb_s", float, "slower uploads are cut off (408)"),
    ("--keep-alive-s", "keep_alive_s", float, "idle keep-alive connections close after S s"),
    ("--max-connections", "max_connections", int, "open connections, 503 beyond"),
    ("--workers", "workers", int, "server processes on the port, each with its own models"),
    ("--run-dir", "run_dir", Path, "folder the workers share (default: a temporary one)"),
    ("--max-batch-size", "max_batch_size", int, "images per inference batch (default 16)"),
    ("--max-delay-ms", "max_delay_ms", float, "batch closes this long after its first image"),
    ("--batch-early-close", "batch_early_close", bool, "close early if nothing is coming"),
    ("--max-queue", "max_queue", int, "queued images per model before 503 (default 256)"),
    ("--request-timeout-s", "request_timeout_s", float, "per request, then 504 (default 30)"),
    ("--device", "device", str, "auto (GPU if usable), cuda (GPU or refuse to start), cpu"),
    ("--providers", "providers", str, "execution providers in order (default tensorrt,cuda,cpu)"),
    ("--runtime", "runtime", str, "auto (default), onnxruntime or openvino (CPU)"),
    ("--cpu-precision", "cpu_precision", str, "fp32 (default), bf16 or auto (OpenVINO, checked)"),
    ("--tensorrt", "tensorrt", bool, "allow TensorRT (slow first start: engine build)"),
    ("--device-id", "device_id", int, "GPU index (default 0)"),
    ("--io-binding", "io_binding", bool, "GPU: IO binding with reused buffers (default off)"),
    ("--batch-buckets", "batch_buckets", str, "pad batches to these sizes (0 = off; see docs)"),
    ("--inflight-batches", "inflight_batches", int, "batches at once (0 = 2 on GPU, 1 on CPU)"),
    ("--gpu-decode", "gpu_decode", bool, "decode JPEGs on the GPU (nvImageCodec, optional)"),
    ("--intra-op-threads", "intra_op_threads", int, "CPU provider threads (0 = ORT default)"),
    ("--warmup-batch-sizes", "warmup_batch_sizes", str, "e.g. 1,8,16 (default: see docs)"),
    ("--cpu-workers", "cpu_workers", int, "decode/encode threads (0 = CPU count)"),
    ("--decode-processes", "decode_processes", int, "decode in N processes (0 = threads)"),
    ("--max-upload-mb", "max_upload_mb", float, "request body limit, 413 beyond (default 50)"),
    ("--max-files", "max_files", int, "files per request (default 16)"),
    ("--max-pixels", "max_pixels", int, "per image, from the header (default 40000000)"),
    ("--overlay-max-side", "overlay_max_side", int, "overlay PNG longest side (default 1024)"),
    ("--original-max-side", "original_max_side", int, "original-size heatmap/mask longest side"),
    ("--memory-budget-mb", "memory_budget_mb", float, "uploads + pixels in flight (MiB)"),
    ("--auth-health", "auth_health", bool, "health routes need the API key too"),
    ("--reload-without-key", "reload_without_key", bool, "allow model reload with no API key"),
    ("--auth-metrics", "auth_metrics", bool, "/metrics needs the API key too"),
    ("--drain-delay-s", "drain_delay_s", float, "after SIGTERM, serve on with /readyz 503"),
    ("--grace-period-s", "grace_period_s", float, "SIGTERM to exit, at most (default 25)"),
    ("--log-level", "log_level", str, "uvicorn log level (default info)"),
    ("--access-log", "access_log", bool, "log every request (default on)"),
]

_METAVARS = {
    "model_dir": "DIR",
    "default_model": "NAME",
    "host": "HOST",
    "port": "PORT",
    "providers": "LIST",
    "warmup_batch_sizes": "LIST",
    "batch_buckets": "LIST",
    "device": "DEVICE",
    "log_level": "LEVEL",
}


def _with_default(text: str, field: str) -> str:
    """``text`` plus the setting's default (read from :class:`Settings`, so it cannot go stale)
    unless the text states it already. Flags default to None (keep the environment's value)."""
    if "(default" in text:
        return text
    from rdad.service.settings import Settings

    info = Settings.model_fields.get(field)
    if info is None:
        return text
    value = info.get_default(call_default_factory=True)
    if isinstance(value, bool):
        shown = "on" if value else "off"
    elif isinstance(value, list | tuple):
        shown = ",".join(str(v) for v in value)
    else:
        shown = "none" if value is None else str(value)
    return f"{text} (default: {shown})"


def register(subparsers: argparse._SubParsersAction, name: str, help_text: str) -> None:
    p = add_command(
        subparsers,
        name,
        help_text,
        description="Serve ONNX models over HTTP: POST /predict, GET /models, /healthz, /readyz, "
        "/metrics, /docs. Every option is also an RDAD_* environment variable (flags win); the "
        "API key is only read from RDAD_API_KEY (a flag would show in `ps`).",
        examples=EXAMPLES,
    )
    for flag, field, kind, help_text_ in FLAGS:
        help_text_ = _with_default(help_text_, field)
        if kind is bool:
            p.add_argument(flag, dest=field, action=argparse.BooleanOptionalAction, help=help_text_)
            continue
        # Short metavars: --max-batch-size N, --max-delay-ms MS, --model-dir DIR.
        metavar = _METAVARS.get(field) or ("N" if kind is int else field.rsplit("_", 1)[-1].upper())
        p.add_argument(flag, dest=field, type=kind, metavar=metavar, help=help_text_)
    p.set_defaults(func=run)


def _settings(args: argparse.Namespace) -> Any:
    from pydantic import ValidationError

    from rdad.service.settings import Settings

    overrides = {field: getattr(args, field) for _, field, _, _ in FLAGS}
    overrides = {k: v for k, v in overrides.items() if v is not None}
    try:
        return Settings(**overrides)
    except ValidationError as exc:
        first = exc.errors()[0]
        field = ".".join(str(p) for p in first["loc"])
        # A check across settings has no field, and pydantic prefixes "Value error, ": use the
        # check's own words.
        error = first.get("ctx", {}).get("error")
        reason = str(error) if isinstance(error, ValueError) else first["msg"]
        if not field:
            raise CommandError(reason) from None
        option = f"--{field.replace('_', '-')} (RDAD_{field.upper()})"
        raise CommandError(f"invalid {option}: {reason}") from None


def _ensure_models(settings: Any, model_dir_given: bool) -> None:
    """Build the demo model into the default folder when it is empty. An explicit folder with no
    model is watched when polling is on (the container case: the service stays up, not ready, and
    loads models as they appear) and refused when it is off."""
    from rdad.service.errors import ModelLoadError
    from rdad.service.model_folder import choose_default, scan_folder

    model_dir: Path = settings.model_dir
    scan = scan_folder(model_dir)
    found = list(scan.files)
    polling = settings.model_poll_s > 0
    if not found and not model_dir_given:
        from rdad.default_model import build_demo_model

        print(f"rdad serve: no model in {model_dir}", flush=True)
        build_demo_model(model_dir, say=lambda line: print(f"rdad serve: {line}", flush=True))
        scan = scan_folder(model_dir)
        found = list(scan.files)
    if scan.problem is not None:
        if not polling:
            raise CommandError(
                f"{model_dir}: {scan.problem}; omit --model-dir to build and serve the embedded "
                "demo model, or set RDAD_MODEL_POLL_S to wait for models"
            )
        print(
            f"rdad serve: {model_dir}: {scan.problem}; starting anyway (/readyz answers 503) "
            f"and loading models as they appear (checked every {settings.model_poll_s:g} s)",
            flush=True,
        )
        return
    try:
        choose_default(found, settings.default_model)
    except ModelLoadError as exc:
        if not polling:
            raise CommandError(exc.detail) from None
        print(f"rdad serve: {exc.detail}; waiting for it to appear", flush=True)
    print(f"rdad serve: loading {', '.join(found)} from {model_dir}", flush=True)
    if not model_dir_given and found == ["demo"]:
        from rdad.default_model import try_it_lines

        # A wildcard bind address is not a URL a client can call: print loopback instead.
        wildcard = settings.host in ("0.0.0.0", "::")  # nosec B104 - compared, never bound
        host = "127.0.0.1" if wildcard else settings.host
        for line in try_it_lines(model_dir, f"http://{host}:{settings.port}"):
            print(f"rdad serve: {line}", flush=True)


def _drop_model_load_traceback(record: logging.LogRecord) -> bool:
    """Uvicorn logs a failed start's traceback; for a model folder where nothing loads (polling
    off) the reasons are already logged and repeated in the exit message, so it is noise."""
    message = record.getMessage()
    return not (message.startswith("Traceback") and "ModelLoadError" in message)


def _server(settings: Settings, worker: int | None = None) -> tuple[Any, Any]:
    """The app and its server, as one process (``worker`` None) or one of ``--workers N``."""
    from rdad.service.app import create_app
    from rdad.service.server import GracefulServer, uvicorn_config

    app = create_app(settings)
    server = GracefulServer(
        uvicorn_config(app, settings, worker=worker),
        on_drain=app.state.runtime.begin_drain,
        drain_delay_s=settings.drain_delay_s,
        parent_pid=None if worker is None else os.getppid(),
    )
    logging.getLogger("uvicorn.error").addFilter(_drop_model_load_traceback)
    return app, server


def serve_worker(settings: Settings, sockets: list[socket.socket], index: int) -> None:
    """One worker process of ``rdad serve --workers N`` (:mod:`rdad.service.workers` spawns it
    with the supervisor's settings, flags included): the same server as a single process, on
    the socket the supervisor bound for it. Exits 3 when its start fails, as uvicorn does."""
    setup_logging()
    _, server = _server(settings, worker=index)
    server.run(sockets=sockets)


def _check_port(host: str, port: int) -> None:
    """Before models load and warm up: a busy port is said at once, with the options to change."""
    from rdad.service.workers import port_in_use

    if problem := port_in_use(host, port):
        raise CommandError(
            f"cannot listen on {host}:{port}: {problem.strerror or problem} (another rdad "
            "serve?); choose another port with --port or RDAD_PORT"
        )


def run(args: argparse.Namespace) -> int:
    from rdad.service.device import DevicePolicyError, preflight

    setup_logging()
    settings = _settings(args)
    try:
        preflight(settings)  # RDAD_DEVICE=cuda on a host that cannot run it: refuse at once
    except DevicePolicyError as exc:
        raise CommandError(exc.detail) from None
    _check_port(settings.host, settings.port)
    _ensure_models(settings, args.model_dir is not None or bool(os.environ.get("RDAD_MODEL_DIR")))
    url = f"http://{settings.host}:{settings.port}"
    print(f"rdad serve: starting on {url} (docs: {url}/docs, ready: {url}/readyz)", flush=True)
    if settings.workers > 1:
        from uvicorn.config import STARTUP_FAILURE

        from rdad.service.workers import Supervisor

        status = Supervisor(settings, serve_worker).run()
        if status == STARTUP_FAILURE:  # a worker's start failed, or the port: logged above
            raise CommandError("the service failed to start: see the error above")
        return status
    app, server = _server(settings)
    try:
        server.run()
    except SystemExit as exc:  # uvicorn exits 3 when the lifespan (model loading) fails
        if exc.code not in (0, None):
            reason = app.state.runtime.repository.start_error or "see the error above"
            raise CommandError(f"the service failed to start: {reason}") from None
        raise
    return 0
