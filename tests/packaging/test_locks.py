"""The lock files in requirements/ and the environment markers in pyproject.toml.

The locks are what .ci/run, the README commands and both Docker images install from; these tests
fail when pyproject.toml gained or changed a dependency and ``scripts/lock.sh`` was not re-run, and
when a platform would get no ONNX Runtime, two of them, or torch in the serving install.
"""

from __future__ import annotations

import pytest
from packaging.utils import canonicalize_name

from .conftest import PLATFORMS, applies, pins_for, project_requirements, read_lock

RUNTIMES = {"onnxruntime", "onnxruntime-gpu"}
# lock file → the extras it is resolved for (scripts/lock.sh)
LOCK_EXTRAS = {"dev": ("train", "serve", "dev", "docs"), "serve": ("serve",), "train": ("train",)}


@pytest.mark.parametrize("extra", ["serve", "train"])
@pytest.mark.parametrize("platform", sorted(PLATFORMS))
def test_each_platform_gets_exactly_one_onnx_runtime(extra: str, platform: str) -> None:
    """Linux x86-64 gets the CUDA build (onnxruntime-gpu), every other platform the CPU build:
    never both (they install the same `onnxruntime` module over each other), never none."""
    chosen = {
        canonicalize_name(req.name)
        for req in project_requirements(extra)
        if canonicalize_name(req.name) in RUNTIMES and applies(req, platform)
    }
    expected = "onnxruntime-gpu" if platform == "linux-x86_64" else "onnxruntime"
    assert chosen == {expected}


@pytest.mark.parametrize("lock", sorted(LOCK_EXTRAS))
@pytest.mark.parametrize("platform", sorted(PLATFORMS))
def test_lock_pins_every_requirement_within_its_range(lock: str, platform: str) -> None:
    pinned = pins_for(read_lock(lock), platform)
    missing, outside = [], []
    for req in project_requirements(*LOCK_EXTRAS[lock]):
        if not applies(req, platform):
            continue
        name = canonicalize_name(req.name)
        if name not in pinned:
            missing.append(str(req))
        elif not req.specifier.contains(pinned[name], prereleases=True):
            outside.append(f"{req} (locked {pinned[name]})")
    hint = "pyproject.toml changed without a lock refresh: run scripts/lock.sh"
    assert not missing, f"requirements/{lock}.lock lacks {missing} on {platform}; {hint}"
    assert not outside, f"requirements/{lock}.lock pins {outside} on {platform}; {hint}"


@pytest.mark.parametrize("platform", sorted(PLATFORMS))
def test_serving_lock_is_torch_free(platform: str) -> None:
    pinned = pins_for(read_lock("serve"), platform)
    assert "fastapi" in pinned
    assert not {"torch", "torchvision", "triton"} & set(pinned)
    assert len(RUNTIMES & set(pinned)) == 1


@pytest.mark.parametrize("lock", ["serve", "train"])
@pytest.mark.parametrize("platform", sorted(PLATFORMS))
def test_image_locks_agree_with_the_dev_lock(lock: str, platform: str) -> None:
    """What CI tests is what the images ship: one version per package across the locks."""
    dev = pins_for(read_lock("dev"), platform)
    image = pins_for(read_lock(lock), platform)
    differ = {name: (str(v), str(dev.get(name))) for name, v in image.items() if dev.get(name) != v}
    assert not differ, f"requirements/{lock}.lock vs dev.lock: {differ}; run scripts/lock.sh"
