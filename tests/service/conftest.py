"""Fixtures for the service tests: one tiny real model (trained and exported by model/ once per
session), an app factory with a live lifespan, and image builders.

Test doubles exist only as :class:`RunnerControl`, a wrapper around the *real* engine's run used to
force slow or failing inference (503 / 504 / 500 paths) and to hold warm-up back (readiness).
"""

from __future__ import annotations

import asyncio
import io
import threading
import time
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from asgi_lifespan import LifespanManager
from PIL import Image

from rdad.service.app import create_app
from rdad.service.engine import BatchOutput
from rdad.service.scoring_types import Runner
from rdad.service.settings import Settings

MODEL_NAME = "tiny"
IMAGE_SIZE = 64


@pytest.fixture(scope="session")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder with ``tiny.onnx``: resnet18, 64 px, 1 epoch on synthetic parts, random teacher."""
    from rdad.model.export import export_onnx
    from rdad.model.synthetic import write_synthetic_dataset
    from rdad.model.train import TrainConfig, train

    root = tmp_path_factory.mktemp("rdad-model")
    data = write_synthetic_dataset(root / "data", image_size=IMAGE_SIZE, num_train=24, num_test=8)
    config = TrainConfig(
        data=str(data),
        out=str(root / "run"),
        backbone="resnet18",
        image_size=IMAGE_SIZE,
        epochs=1,
        batch_size=8,
        teacher_weights="random",
        seed=0,
        device="cpu",
    )
    checkpoint = train(config, progress=False)
    out = root / "models"
    export_onnx(checkpoint, out / f"{MODEL_NAME}.onnx")
    return out


@pytest.fixture(scope="session")
def synthetic_dir(model_dir: Path) -> Path:
    return model_dir.parent / "data"


@dataclass
class RunnerControl:
    """Wraps the real engine's run: optional gate (blocks until released), delay, one-shot failure,
    and a log of every batch size that actually reached the engine."""

    gate: threading.Event = field(default_factory=threading.Event)
    entered: threading.Event = field(default_factory=threading.Event)
    fail_next: bool = False
    delay_s: float = 0.0
    batch_sizes: list[int] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.gate.set()  # open unless a test closes it

    def hook(self, name: str, run: Runner) -> Runner:
        def wrapped(images: np.ndarray) -> BatchOutput:
            self.entered.set()
            if not self.gate.wait(timeout=30):
                raise RuntimeError("test gate never opened")
            if self.delay_s:
                time.sleep(self.delay_s)
            if self.fail_next:
                self.fail_next = False
                raise RuntimeError("injected inference failure")
            self.batch_sizes.append(len(images))
            return run(images)

        return wrapped


Client = httpx.AsyncClient
AppFactory = Callable[..., Any]


async def wait_ready(client: httpx.AsyncClient, timeout_s: float = 30.0) -> None:
    end = time.monotonic() + timeout_s
    while time.monotonic() < end:
        if (await client.get("/readyz")).status_code == 200:
            return
        await asyncio.sleep(0.02)
    raise AssertionError("service never became ready")


async def until(predicate: Callable[[], object], timeout_s: float = 10.0) -> None:
    """Poll ``predicate`` on the running loop until it holds; fail after ``timeout_s``."""
    loop = asyncio.get_running_loop()
    end = loop.time() + timeout_s
    while not predicate():
        assert loop.time() < end, "condition not reached in time"
        await asyncio.sleep(0.005)


@pytest.fixture
def make_client(model_dir: Path) -> AppFactory:
    """``async with make_client(**settings) as client`` — a started, warm app (unless
    ``ready=False``); pass ``control=RunnerControl()`` to wrap inference."""

    @asynccontextmanager
    async def factory(
        *, control: RunnerControl | None = None, ready: bool = True, **overrides: Any
    ) -> AsyncIterator[httpx.AsyncClient]:
        overrides.setdefault("model_dir", model_dir)
        overrides.setdefault("runtime", "onnxruntime")  # OpenVINO has its own tests
        app = create_app(Settings(**overrides), runner_hook=control.hook if control else None)
        async with LifespanManager(app, startup_timeout=60) as manager:
            transport = httpx.ASGITransport(app=manager.app)
            async with httpx.AsyncClient(transport=transport, base_url="http://rdad") as client:
                client.app = app  # type: ignore[attr-defined]
                if ready:
                    await wait_ready(client)
                yield client

    return factory


# --- images ---------------------------------------------------------------------------------


def rgb_array(width: int, height: int, seed: int = 0) -> np.ndarray:
    """A smooth, deterministic RGB uint8 ``(height, width, 3)`` picture (compresses well)."""
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    rng = np.random.default_rng(seed)
    phase = rng.uniform(0, 6.28, 3)
    channels = [np.sin(xx / (7 + 3 * c) + yy / (11 + c) + phase[c]) for c in range(3)]
    return ((np.stack(channels, -1) * 0.5 + 0.5) * 255).astype(np.uint8)


def encode(image: Image.Image, fmt: str = "PNG", **params: Any) -> bytes:
    buf = io.BytesIO()
    image.save(buf, fmt, **params)
    return buf.getvalue()


def png_bytes(width: int = 96, height: int = 80, seed: int = 0) -> bytes:
    return encode(Image.fromarray(rgb_array(width, height, seed)))


def decode_png(data: bytes) -> np.ndarray:
    with Image.open(io.BytesIO(data)) as im:
        return np.asarray(im)


def upload(data: bytes, name: str = "part.png", media: str = "image/png") -> dict[str, Any]:
    return {"file": (name, data, media)}


def post_scope(
    path: str = "/predict",
    headers: Sequence[tuple[bytes, bytes]] = (),
    *,
    root_path: str = "",
) -> dict[str, Any]:
    """The ASGI scope uvicorn passes for ``POST path``: for tests that play the client's
    ``receive``/``send`` themselves (streamed, slow, unauthenticated or vanishing uploads)."""
    return {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "POST",
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "query_string": b"",
        "root_path": root_path,
        "headers": [(b"host", b"rdad"), *headers],
        "client": ("127.0.0.1", 40000),
        "server": ("rdad", 80),
    }


def multipart_file(
    data: bytes, boundary: bytes, *, field: str = "file", name: str = "a.png"
) -> bytes:
    """One PNG file part of a multipart body (without the closing ``--boundary--``)."""
    return (
        b"--" + boundary + b'\r\nContent-Disposition: form-data; name="' + field.encode() + b'"; '
        b'filename="' + name.encode() + b'"\r\nContent-Type: image/png\r\n\r\n' + data + b"\r\n"
    )


def metric_value(text: str, name: str, **labels: str) -> float:
    """Sum of the samples called ``name`` whose labels include ``labels`` in Prometheus text."""
    from prometheus_client.parser import text_string_to_metric_families

    total = 0.0
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                total += sample.value
    return total


@pytest.fixture
def images() -> Any:
    """The image helpers above, as a namespace (conftest modules are not importable)."""

    class Images:
        rgb = staticmethod(rgb_array)
        encode = staticmethod(encode)
        png = staticmethod(png_bytes)
        decode_png = staticmethod(decode_png)
        upload = staticmethod(upload)
        metric = staticmethod(metric_value)

    return Images


@pytest.fixture
def control() -> RunnerControl:
    return RunnerControl()


@pytest.fixture
def ready() -> Callable[[httpx.AsyncClient], Any]:
    return wait_ready


@pytest.fixture(scope="session")
def metadata(model_dir: Path) -> Any:
    from rdad.metadata import read_onnx_metadata

    return read_onnx_metadata(model_dir / f"{MODEL_NAME}.onnx")


@pytest.fixture(scope="session")
def reference(model_dir: Path) -> Callable[[bytes], tuple[np.ndarray, float]]:
    """Score image bytes the way ``rdad eval`` does (rdad.imaging decode + resize, bare ORT
    session): served results must equal these."""
    import onnxruntime as ort

    from rdad.imaging import decode_image, resize_rgb

    session = ort.InferenceSession(
        str(model_dir / f"{MODEL_NAME}.onnx"), providers=["CPUExecutionProvider"]
    )

    def score(data: bytes) -> tuple[np.ndarray, float]:
        pixels = resize_rgb(decode_image(data, min_side=IMAGE_SIZE), IMAGE_SIZE)
        anomaly_map, scores = session.run(None, {"images": pixels[None]})
        return anomaly_map[0], float(scores[0])

    return score
