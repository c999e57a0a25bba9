"""Manifests for ``rdad predict``: a SOURCE that lists the files to score instead of being one.

``.txt`` / ``.lst``: one path a line (blank lines and ``#`` comments skipped); ``.csv``: the
``path`` column (or the first); ``.parquet``: the ``path`` column. A relative entry is relative to
the manifest's folder. An entry may also be a URI (``s3://bucket/key.png``, ``gs://...``,
``file:///abs/path.png``), read through pyarrow filesystems (:mod:`rdad.commands.predict_uri`).
An entry that does not exist, or a URI that cannot be opened, becomes a failure (an error row),
not an error.
"""

from __future__ import annotations

import csv
from pathlib import Path

from rdad.commands.predict_io import Failure
from rdad.commands.predict_uri import Location, Uri, is_uri, stat
from rdad.errors import CommandError

MANIFEST_SUFFIXES = frozenset({".txt", ".lst", ".csv", ".parquet"})


def _entries(manifest: Path) -> list[str]:
    suffix = manifest.suffix.lower()
    if suffix == ".parquet":
        import pyarrow.parquet as pq

        table = pq.read_table(manifest)
        if "path" not in table.column_names:
            raise CommandError(f"manifest {manifest}: no 'path' column")
        return [str(p) for p in table["path"].to_pylist() if p]
    text = manifest.read_text()
    if suffix == ".csv":
        rows = list(csv.reader(text.splitlines()))
        if not rows:
            return []
        column = rows[0].index("path") if "path" in rows[0] else 0
        start = 1 if rows[0][column] == "path" else 0
        return [row[column] for row in rows[start:] if len(row) > column and row[column]]
    lines = (line.strip() for line in text.splitlines())
    return [line for line in lines if line and not line.startswith("#")]


def _check_uri(uri: Uri) -> Failure | None:
    try:
        stat(uri)
    except FileNotFoundError:
        return Failure(uri, "missing", "no such file")
    except OSError as exc:
        return Failure(uri, "unreadable", str(exc))
    return None


def expand(paths: list[Path]) -> tuple[list[Location], list[Failure]]:
    """``paths`` with every manifest replaced by its existing entries; missing ones (and URIs
    that cannot be opened) as failures."""
    expanded: list[Location] = []
    missing: list[Failure] = []
    for given in paths:
        if not (given.is_file() and given.suffix.lower() in MANIFEST_SUFFIXES):
            expanded.append(given)
            continue
        for entry in _entries(given):
            if is_uri(entry):
                failure = _check_uri(Uri(entry))
                if failure is None:
                    expanded.append(Uri(entry))
                else:
                    missing.append(failure)
                continue
            path = Path(entry) if Path(entry).is_absolute() else given.parent / entry
            if path.exists():
                expanded.append(path)
            else:
                missing.append(Failure(path, "missing", "no such file"))
    return expanded, missing
