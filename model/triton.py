"""Hand an exported model over to Triton: a model repository entry for the very same ONNX file.

``write_triton_repository(model.onnx, DIR, options)`` writes::

    DIR/NAME/config.pbtxt          platform onnxruntime_onnx, I/O, batching, instances, parameters
    DIR/NAME/VERSION/model.onnx    byte-identical copy of model.onnx (same sha256)

Both files are replaced in one rename each (:mod:`rdad.atomic`), the model first: a Triton
server polling the repository never loads half a file, and the config, which pins the served
version to ``VERSION`` (its parameters describe that file), switches only once the file is there.

A version folder is never silently overwritten: one that already holds a *different* model (or
anything but a ``model.onnx``) is refused unless ``options.replace``; the same file again is
accepted (the config is rewritten). Torch-free: only the graph's inputs, outputs and metadata
are read (:mod:`.triton_config`).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

import onnx

from rdad.atomic import write_atomically, write_text_atomically
from rdad.metadata import read_onnx_metadata

from .triton_config import (
    TritonError,
    TritonOptions,
    build_config,
    graph_signature,
    model_parameters,
    render,
)

MODEL_FILENAME = "model.onnx"
"""The ONNX Runtime backend's default model file name in a version folder."""
CONFIG_FILENAME = "config.pbtxt"


@dataclass(frozen=True)
class TritonModel:
    """What :func:`write_triton_repository` wrote."""

    config: Path
    model: Path
    sha256: str


def file_sha256(path: Path) -> str:
    with path.open("rb") as stream:
        return hashlib.file_digest(stream, "sha256").hexdigest()


def _versions(model_dir: Path) -> list[int]:
    if not model_dir.is_dir():
        return []
    return sorted(int(p.name) for p in model_dir.iterdir() if p.is_dir() and p.name.isdigit())


def check_version_folder(root: Path, options: TritonOptions, sha256: str | None = None) -> None:
    """Refuse (:class:`TritonError`) to write into ``root/NAME/VERSION`` when it already holds
    something other than the model with ``sha256`` (``None``: a model not exported yet, which
    can only be new, since every export records its own time) — unless ``options.replace``."""
    folder = root / options.name / str(options.version)
    if options.replace or not folder.is_dir():
        return
    contents = sorted(p.name for p in folder.iterdir())
    if not contents:
        return
    if contents != [MODEL_FILENAME]:
        what = f"files besides {MODEL_FILENAME} ({', '.join(contents)})"
    elif sha256 is None:
        what = "a model"
    elif file_sha256(folder / MODEL_FILENAME) != sha256:
        what = "a different model"
    else:
        return  # the same file again
    free = max(_versions(root / options.name), default=0) + 1
    raise TritonError(
        f"{folder} already holds {what}: choose another version (next free: {free}) or "
        "replace it explicitly (--triton-version / --triton-replace)"
    )


def triton_config_text(source: Path, options: TritonOptions, sha256: str) -> str:
    """``config.pbtxt`` for the exported graph ``source`` (see :mod:`.triton_config`)."""
    meta = read_onnx_metadata(source)
    # Only the graph's declarations are needed; external weight files (none in rdad exports)
    # are not read.
    proto = onnx.load(str(source), load_external_data=False)
    inputs, outputs = graph_signature(proto.graph, meta)
    config = build_config(options, inputs, outputs, model_parameters(meta, sha256))
    header = (
        f"# Written by 'rdad export --triton' (rdad {meta.rdad_version}) for {source.name},\n"
        f"# sha256 {sha256}. Rewritten by every export into this model.\n"
    )
    return header + render(config)


def write_triton_repository(
    source: Path | str, root: Path | str, options: TritonOptions
) -> TritonModel:
    """Write the Triton model ``options.name`` for the exported ``source`` under ``root``."""
    source, root = Path(source), Path(root)
    if not source.is_file():
        raise FileNotFoundError(f"model not found: {source}")
    sha256 = file_sha256(source)
    check_version_folder(root, options, sha256)
    text = triton_config_text(source, options, sha256)  # refuses a foreign graph before writing
    model_dir = root / options.name
    target = model_dir / str(options.version) / MODEL_FILENAME
    if not (target.is_file() and file_sha256(target) == sha256):
        write_atomically(source, target)
    config = model_dir / CONFIG_FILENAME
    write_text_atomically(text, config)
    return TritonModel(config=config, model=target, sha256=sha256)
