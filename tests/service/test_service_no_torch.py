"""The serving side imports no torch: the app starts and answers with torch made unimportable,
both from this checkout's install and from the built wheel (``rdad.service`` as a user gets it)."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import zipfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]

SCRIPT = textwrap.dedent(
    """
    import asyncio, importlib.abc, io, sys

    class NoTorch(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] in ("torch", "torchvision"):
                raise ImportError(f"{name} is blocked in this test")

    sys.meta_path.insert(0, NoTorch())
    try:
        import torch  # noqa: F401
    except ImportError:
        pass
    else:
        raise SystemExit("the torch blocker does not work")

    import httpx
    import numpy as np
    from asgi_lifespan import LifespanManager
    from PIL import Image

    from rdad.cli import main
    from rdad.service.app import create_app
    from rdad.service.settings import Settings

    try:
        main(["serve", "--help"])
    except SystemExit as exc:
        assert exc.code == 0, exc.code

    buf = io.BytesIO()
    Image.fromarray(np.full((50, 70, 3), 128, np.uint8)).save(buf, "PNG")

    async def run():
        app = create_app(Settings(model_dir=sys.argv[1]))
        async with LifespanManager(app, startup_timeout=60) as manager:
            transport = httpx.ASGITransport(app=manager.app)
            async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
                for _ in range(600):
                    if (await client.get("/readyz")).status_code == 200:
                        break
                    await asyncio.sleep(0.05)
                files = {"file": ("a.png", buf.getvalue(), "image/png")}
                response = await client.post("/predict", files=files)
                assert response.status_code == 200, response.text

    asyncio.run(run())
    loaded = sorted(m for m in sys.modules if m.split(".")[0] in ("torch", "torchvision"))
    assert not loaded, loaded
    import rdad.service
    print("served without torch from", rdad.service.__file__)
    """
)


def serve_without_torch(model_dir: Path, cwd: Path, pythonpath: Path | None = None) -> Path:
    """Run SCRIPT in a fresh interpreter; the file ``rdad.service`` was imported from."""
    env = dict(os.environ)
    env.pop("PYTHONPATH", None)
    if pythonpath is not None:
        env["PYTHONPATH"] = str(pythonpath)
    result = subprocess.run(
        [sys.executable, "-c", SCRIPT, str(model_dir)],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=cwd,  # not the checkout: `import rdad` must not pick up ./rdad by accident
        env=env,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    marker = "served without torch from "
    (line,) = [ln for ln in result.stdout.splitlines() if ln.startswith(marker)]
    return Path(line.removeprefix(marker))


def test_service_runs_without_torch(model_dir: Path, tmp_path: Path) -> None:
    origin = serve_without_torch(model_dir, cwd=tmp_path)
    assert origin == REPO / "service" / "__init__.py"  # the installed rdad.service → service/


def test_built_wheel_serves_without_torch(
    model_dir: Path, built_wheel: Path, tmp_path: Path
) -> None:
    """The wheel's own files (a pure-Python wheel installs by unpacking) ahead of everything else
    on sys.path: what `pip install "rdad[serve]"` puts in site-packages runs without torch."""
    site = tmp_path / "site"
    with zipfile.ZipFile(built_wheel) as zf:
        zf.extractall(site)
    origin = serve_without_torch(model_dir, cwd=tmp_path, pythonpath=site)
    assert origin == site / "rdad" / "service" / "__init__.py"


def test_the_scoring_flow_imports_without_a_web_framework(tiny_onnx: Path, tmp_path: Path) -> None:
    """``rdad eval`` runs the service's scoring flow in the training image, which has no FastAPI,
    pydantic, starlette or prometheus-client: the flow, its local runner and eval must import
    and score without them."""
    script = textwrap.dedent(
        f"""
        import importlib.abc, sys

        BLOCKED = ("fastapi", "pydantic", "pydantic_settings", "starlette", "prometheus_client",
                   "uvicorn", "python_multipart", "fastapi_offline")

        class NoWeb(importlib.abc.MetaPathFinder):
            def find_spec(self, name, path=None, target=None):
                if name.split(".")[0] in BLOCKED:
                    raise ImportError(f"{{name}} is blocked in this test")

        sys.meta_path.insert(0, NoWeb())
        from pathlib import Path
        from rdad.model.evaluate import load_for_eval
        from rdad.model.scoring import score_images
        from rdad.model.synthetic import good_part
        import cv2, numpy as np

        model = load_for_eval(Path({str(tiny_onnx)!r}))
        path = Path(sys.argv[1]) / "part.png"
        cv2.imwrite(str(path), good_part(np.random.default_rng(0), 64))
        scored = score_images(model.predict, [path], image_size=model.image_size,
                              tiling=model.tiling, grid=32, calibration=model.calibration)
        assert scored.maps.shape == (1, 32, 32) and len(scored.scores) == 1, scored
        assert not [m for m in sys.modules if m.split(".")[0] in BLOCKED]
        print("ok")
        """
    )
    done = subprocess.run(
        [sys.executable, "-c", script, str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0 and done.stdout.strip() == "ok", done.stdout + done.stderr
