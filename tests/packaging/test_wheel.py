"""The built wheel: the ``rdad`` package and its metadata only (``model/`` and ``service/`` ship as
``rdad.model`` and ``rdad.service``, never as top-level packages), every source module inside it,
the console script, and the platform markers on ONNX Runtime intact."""

from __future__ import annotations

import zipfile
from email.parser import Parser
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from .conftest import PYPROJECT, REPO, environment

# source folder → the package path it is installed as
SOURCE_ROOTS = {"rdad": "rdad", "model": "rdad/model", "service": "rdad/service"}


def wheel_files(wheel: Path) -> list[str]:
    with zipfile.ZipFile(wheel) as zf:
        return [name for name in zf.namelist() if not name.endswith("/")]


def dist_info(wheel: Path) -> str:
    version = PYPROJECT["project"]["version"]
    return f"rdad-{version}.dist-info/"


def read_member(wheel: Path, name: str) -> str:
    with zipfile.ZipFile(wheel) as zf:
        return zf.read(name).decode()


def test_wheel_holds_only_rdad_and_its_metadata(built_wheel: Path) -> None:
    files = wheel_files(built_wheel)
    meta = dist_info(built_wheel)
    stray = [f for f in files if not f.startswith(("rdad/", meta))]
    assert not stray, f"files outside rdad/ in the wheel: {stray}"
    assert {f.split("/")[0] for f in files} == {"rdad", meta.rstrip("/")}
    assert f"{meta}METADATA" in files and f"{meta}RECORD" in files
    if f"{meta}top_level.txt" in files:  # written by setuptools; other backends may omit it
        assert read_member(built_wheel, f"{meta}top_level.txt").split() == ["rdad"]
    assert "rdad/model/network.py" in files and "rdad/service/app.py" in files


def test_wheel_ships_every_source_module(built_wheel: Path) -> None:
    """A new sub-package missing from ``[tool.setuptools] packages`` would be left out silently."""
    files = set(wheel_files(built_wheel))
    expected = {
        f"{target}/{path.relative_to(REPO / folder).as_posix()}"
        for folder, target in SOURCE_ROOTS.items()
        for path in (REPO / folder).rglob("*.py")
        if "__pycache__" not in path.parts
    }
    assert len(expected) > 30
    missing = sorted(expected - files)
    assert not missing, f"not in the wheel (add the package to pyproject.toml): {missing}"
    shipped = {f for f in files if f.endswith(".py")}
    assert shipped == expected, f"in the wheel but not in the source: {sorted(shipped - expected)}"


def test_wheel_metadata_keeps_console_script_and_runtime_markers(built_wheel: Path) -> None:
    meta = dist_info(built_wheel)
    entry_points = read_member(built_wheel, f"{meta}entry_points.txt")
    assert "rdad = rdad.cli:main" in [line.strip() for line in entry_points.splitlines()]

    metadata = Parser().parsestr(read_member(built_wheel, f"{meta}METADATA"))
    requires = [Requirement(r) for r in metadata.get_all("Requires-Dist") or []]

    def names_for(extra: str, platform: str) -> set[str]:
        env = {**environment(platform), "extra": extra}
        return {
            canonicalize_name(r.name)
            for r in requires
            if r.marker is None or r.marker.evaluate(env)
        }

    assert "onnxruntime-gpu" in names_for("serve", "linux-x86_64")
    assert "onnxruntime" not in names_for("serve", "linux-x86_64")
    assert "onnxruntime" in names_for("serve", "macos-arm64")
    assert "onnxruntime-gpu" not in names_for("serve", "macos-arm64")
    assert not {"torch", "torchvision"} & names_for("serve", "linux-x86_64")
    assert {"torch", "torchvision"} <= names_for("train", "linux-x86_64")
