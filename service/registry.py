"""The model repository folder: ``NAME.onnx`` or ``NAME/model.onnx`` is a model called NAME.

Names are plain identifiers (letters, digits, ``.``, ``_``, ``-``; no leading dot, no ``..``): they
appear in URLs and metric labels, and a request can only ever select a name found here, never a
path.
"""

from __future__ import annotations

import logging
import re
from pathlib import Path

from .errors import ModelLoadError

log = logging.getLogger("rdad.service.registry")

NAME_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")


def is_valid_name(name: str) -> bool:
    return bool(NAME_PATTERN.fullmatch(name)) and ".." not in name


def discover_models(model_dir: Path) -> dict[str, Path]:
    """Map model name → ONNX file, sorted by name. Raises :class:`ModelLoadError` if the folder is
    missing, or if two files claim the same name."""
    if not model_dir.is_dir():
        raise ModelLoadError(f"model directory {model_dir} does not exist")
    found: dict[str, Path] = {}
    candidates = [(p.stem, p) for p in model_dir.glob("*.onnx") if p.is_file()]
    candidates += [(p.parent.name, p) for p in model_dir.glob("*/model.onnx") if p.is_file()]
    for name, path in candidates:
        if not is_valid_name(name):
            log.warning("ignoring %s: '%s' is not a valid model name", path.name, name)
            continue
        if name in found:
            raise ModelLoadError(f"two files define model '{name}': {found[name]} and {path}")
        found[name] = path
    return dict(sorted(found.items()))


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
