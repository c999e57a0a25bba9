"""Shared helpers for the packaging tests: pyproject's requirements, the lock files, and the target
platforms whose environment markers they are judged against."""

from __future__ import annotations

import tomllib
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

REPO = Path(__file__).resolve().parents[2]
PYPROJECT = tomllib.loads((REPO / "pyproject.toml").read_text())
LOCKS = REPO / "requirements"

# Marker environments of the platforms users install on (Python 3.11, the oldest supported).
_PY = {
    "python_version": "3.11",
    "python_full_version": "3.11.9",
    "implementation_name": "cpython",
    "implementation_version": "3.11.9",
    "platform_python_implementation": "CPython",
    "platform_release": "",
    "platform_version": "",
}
PLATFORMS: dict[str, dict[str, str]] = {
    "linux-x86_64": {
        "sys_platform": "linux",
        "platform_system": "Linux",
        "os_name": "posix",
        "platform_machine": "x86_64",
    },
    "linux-aarch64": {
        "sys_platform": "linux",
        "platform_system": "Linux",
        "os_name": "posix",
        "platform_machine": "aarch64",
    },
    "macos-arm64": {
        "sys_platform": "darwin",
        "platform_system": "Darwin",
        "os_name": "posix",
        "platform_machine": "arm64",
    },
    "windows-amd64": {
        "sys_platform": "win32",
        "platform_system": "Windows",
        "os_name": "nt",
        "platform_machine": "AMD64",
    },
}


def environment(platform: str) -> dict[str, str]:
    return {**_PY, **PLATFORMS[platform], "extra": ""}


def applies(req: Requirement, platform: str) -> bool:
    return req.marker is None or req.marker.evaluate(environment(platform))


def project_requirements(*extras: str) -> list[Requirement]:
    """The base dependencies plus those of the given extras, as written in pyproject.toml."""
    project: dict[str, Any] = PYPROJECT["project"]
    lines = list(project["dependencies"])
    for extra in extras:
        lines += project["optional-dependencies"][extra]
    return [Requirement(line) for line in lines]


@dataclass(frozen=True)
class Pin:
    name: str
    version: Version
    requirement: Requirement


def read_lock(name: str) -> list[Pin]:
    """The ``name==version ; marker`` lines of requirements/NAME.lock (comments skipped)."""
    pins = []
    for line in (LOCKS / f"{name}.lock").read_text().splitlines():
        if not line.strip() or line.startswith(("#", " ", "-")):
            continue
        req = Requirement(line)
        (spec,) = req.specifier
        assert spec.operator == "==", f"{name}.lock: not an exact pin: {line}"
        pins.append(Pin(canonicalize_name(req.name), Version(spec.version), req))
    return pins


def pins_for(pins: Iterable[Pin], platform: str) -> dict[str, Version]:
    """The version each package gets on a platform; two applicable pins for one name fail."""
    out: dict[str, Version] = {}
    for pin in pins:
        if applies(pin.requirement, platform):
            assert pin.name not in out, f"{pin.name} pinned twice for {platform}"
            out[pin.name] = pin.version
    return out
