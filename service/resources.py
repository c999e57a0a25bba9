"""How much memory this process may use: the cgroup limit (a Kubernetes pod, a Docker
``--memory``), else the machine's RAM. The decoded-pixel budget's default is derived from it."""

from __future__ import annotations

import os
from pathlib import Path

# cgroup v2 (unified) first, then v1. "max" (v2) or a huge number (v1) means no limit.
_CGROUP_FILES = (
    Path("/sys/fs/cgroup/memory.max"),
    Path("/sys/fs/cgroup/memory/memory.limit_in_bytes"),
)
MIB = 1024 * 1024


def physical_memory_bytes() -> int | None:
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return None


def memory_limit_bytes(cgroup_files: tuple[Path, ...] = _CGROUP_FILES) -> int | None:
    """The smaller of the cgroup memory limit and physical RAM; ``None`` when neither is known."""
    physical = physical_memory_bytes()
    for path in cgroup_files:
        try:
            text = path.read_text().strip()
        except OSError:
            continue
        if text.isdigit():
            limit = int(text)
            return min(limit, physical) if physical else limit
    return physical


def default_pixel_budget(
    max_pixels: int, limit_bytes: int | None, *, bytes_per_pixel: int = 5
) -> int:
    """Bytes of decoded pixels allowed in flight, when ``RDAD_PIXEL_BUDGET_MB`` is not set.

    A sixteenth of the memory limit, at most 256 MiB (the rest is the model, ONNX Runtime's
    arena, the uploads and the Python heap), but never less than one image at the pixel limit,
    which must always be decodable. With no known limit: 256 MiB.
    """
    one_image = max_pixels * bytes_per_pixel
    share = 256 * MIB if limit_bytes is None else min(limit_bytes // 16, 256 * MIB)
    return max(share, one_image)
