"""How much memory this process may use: the cgroup limit (a Kubernetes pod, a Docker
``--memory``), else the machine's RAM. The memory budget's default is derived from it."""

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


DEFAULT_MAX_PIXELS = 40_000_000
"""Pixels one image may have (from its header), unless ``RDAD_MAX_PIXELS`` says otherwise."""

DECODE_BYTES_PER_PIXEL = 5
"""A decode's peak per decoded pixel: 3 bytes of RGB plus what libpng/libjpeg and the resize hold
alongside (measured: a 6000×6500 PNG raises the peak RSS by ~4.2 bytes per pixel)."""


def pixel_reserve(max_pixels: int) -> int:
    """Bytes one image at the pixel limit needs to be decoded: always available to pixels."""
    return DECODE_BYTES_PER_PIXEL * max_pixels


def default_memory_budget(max_pixels: int, max_upload_bytes: int, limit_bytes: int | None) -> int:
    """Bytes of request bodies and decoded pixels allowed in flight, when
    ``RDAD_MEMORY_BUDGET_MB`` is not set.

    A sixteenth of the memory limit, at most 256 MiB (the rest is the model, the runtime's
    arena, the answers being sent and the Python heap), but never less than one image at the
    pixel limit being decoded while one upload at the size limit is received: both must always
    be possible. With no known limit: 256 MiB.
    """
    floor = pixel_reserve(max_pixels) + max_upload_bytes
    share = 256 * MIB if limit_bytes is None else min(limit_bytes // 16, 256 * MIB)
    return max(share, floor)
