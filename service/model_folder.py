"""The model repository folder: ``NAME.onnx`` or ``NAME/model.onnx`` is a model called NAME.

Names are plain identifiers (letters, digits, ``.``, ``_``, ``-``; no leading dot, no ``..``): they
appear in URLs and metric labels, and a request can only ever select a name found here, never a
path.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass, field
from pathlib import Path

from .errors import ModelLoadError

log = logging.getLogger("rdad.service.registry")

NAME_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")


def is_valid_name(name: str) -> bool:
    return bool(NAME_PATTERN.fullmatch(name)) and ".." not in name


EXPECTED = "expected NAME.onnx or NAME/model.onnx"

Signature = tuple[int, int, int]
"""``(mtime_ns, size, inode)`` of a model file: a change in any of them is a new version."""


@dataclass(frozen=True)
class FolderScan:
    """One look at the model folder."""

    folder: Path
    files: dict[str, tuple[Path, Signature]] = field(default_factory=dict)
    """Model name → (file, signature), sorted by name."""
    conflicts: dict[str, str] = field(default_factory=dict)
    """Names claimed by two files → why neither is loaded."""
    exists: bool = True

    @property
    def problem(self) -> str | None:
        """What makes the folder unusable as a whole (missing, or no model file in it)."""
        # No path in it: it reaches the open /readyz, and answers never show the host's paths.
        if not self.exists:
            return f"the model folder does not exist ({EXPECTED})"
        if not self.files and not self.conflicts:
            return f"no models in the model folder ({EXPECTED})"
        return None


def scan_folder(model_dir: Path) -> FolderScan:
    """Every model file in ``model_dir`` with its signature; never raises for a bad folder: a
    missing folder or two files claiming one name are reported in the result."""
    if not model_dir.is_dir():
        return FolderScan(model_dir, exists=False)
    candidates = [(p.stem, p) for p in model_dir.glob("*.onnx")]
    candidates += [(p.parent.name, p) for p in model_dir.glob("*/model.onnx")]
    found: dict[str, tuple[Path, Signature]] = {}
    conflicts: dict[str, str] = {}
    for name, path in sorted(candidates):
        try:
            stat = path.stat()  # follows symlinks: a re-pointed link is a new version
        except OSError:
            continue  # removed between the glob and here, or a dangling link
        if not path.is_file():
            continue
        if not is_valid_name(name):
            log.warning("ignoring %s: '%s' is not a valid model name", path.name, name)
            continue
        if name in found or name in conflicts:
            first = found.pop(name, None)
            where = relative_name(model_dir, first[0]) if first else "another file"
            conflicts[name] = (
                f"two files define model '{name}': {where} and {relative_name(model_dir, path)}"
            )
            continue
        found[name] = (path, (stat.st_mtime_ns, stat.st_size, stat.st_ino))
    return FolderScan(model_dir, dict(sorted(found.items())), conflicts)


def relative_name(model_dir: Path, path: Path) -> str:
    """``NAME.onnx`` or ``NAME/model.onnx``: how responses and logs name a file (no host paths)."""
    try:
        return path.relative_to(model_dir).as_posix()
    except ValueError:
        return path.name


def discover_models(model_dir: Path) -> dict[str, Path]:
    """Map model name → ONNX file, sorted by name. Raises :class:`ModelLoadError` if the folder is
    missing, or if two files claim the same name."""
    scan = scan_folder(model_dir)
    if not scan.exists:
        raise ModelLoadError(f"model directory {model_dir} does not exist")
    if scan.conflicts:
        raise ModelLoadError(next(iter(scan.conflicts.values())))
    return {name: path for name, (path, _) in scan.files.items()}


def choose_default(names: list[str], configured: str | None) -> str | None:
    """The configured default, or the only model; ``None`` (``POST /predict`` answers 404 with a
    hint) when several models are served and none was named."""
    if configured is not None:
        if configured not in names:
            raise ModelLoadError(f"default model '{configured}' is not among {names}")
        return configured
    if len(names) == 1:
        return names[0]
    log.warning("%d models and no RDAD_DEFAULT_MODEL: POST /predict has no default", len(names))
    return None
