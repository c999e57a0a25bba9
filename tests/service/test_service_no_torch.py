"""The serving side imports no torch: the app starts and answers with torch made unimportable."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

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
    print("served without torch")
    """
)


def test_service_runs_without_torch(model_dir: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-c", SCRIPT, str(model_dir)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "served without torch" in result.stdout
