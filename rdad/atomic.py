"""Files replaced in one rename, so that a reader watching their folder (``rdad serve``, a Triton
server polling its model repository) never sees one half-written. Torch-free."""

from __future__ import annotations

import os
import shutil
from pathlib import Path


def _partial_name(out: Path) -> Path:
    # A hidden name in out's own folder: the final rename stays on one filesystem (atomic), and no
    # model folder scan takes it for a model (it neither ends in .onnx nor is called model.onnx).
    return out.with_name(f".{out.name}.partial-{os.getpid()}")


def write_atomically(source: Path, out: Path) -> None:
    """Copy ``source`` to ``out``: the bytes go to a hidden temporary name in ``out``'s folder,
    then one rename puts them in place. A reader sees the old file or the new one, never a mix."""
    out.parent.mkdir(parents=True, exist_ok=True)
    partial = _partial_name(out)
    try:
        shutil.copyfile(source, partial)
        os.replace(partial, out)
    finally:
        partial.unlink(missing_ok=True)


def write_text_atomically(text: str, out: Path) -> None:
    """Write ``text`` (UTF-8) to ``out`` the same way as :func:`write_atomically`."""
    out.parent.mkdir(parents=True, exist_ok=True)
    partial = _partial_name(out)
    try:
        partial.write_text(text, encoding="utf-8")
        os.replace(partial, out)
    finally:
        partial.unlink(missing_ok=True)
