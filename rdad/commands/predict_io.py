"""``rdad predict`` inputs: finding images, naming outputs that mirror the inputs, reading files;
the CSV columns and exit statuses. The result table and its summaries are
:mod:`rdad.commands.predict_table`. No model code here."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import PurePosixPath
from typing import Any

from rdad.commands.predict_uri import Location, Uri, read

EXIT_NORMAL = 0
EXIT_ANOMALY = 3
EXIT_UNREADABLE = 4
IMAGE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp"})
PICTURES = ("heatmap", "overlay", "mask")
CSV_COLUMNS = (
    "path",
    "status",
    "is_anomalous",
    "normalized_score",
    "score",
    "normalized_threshold",
    "threshold",
    "width",
    "height",
    "regions",
    *(f"{kind}_png" for kind in PICTURES),
    "error",
)


@dataclass(frozen=True)
class Input:
    path: Location
    """Where its bytes come from: a local path, or a URI (:class:`~rdad.commands.predict_uri.Uri`)
    from a manifest."""
    key: PurePosixPath
    """Where its outputs go under ``--out``: the input's own relative path (``folder/sub/x.png``
    for an image found in ``folder``), unique within one run."""


@dataclass(frozen=True)
class Failure:
    path: Location
    error: str
    detail: str

    @classmethod
    def of_file(cls, path: Location, error: str, detail: str) -> Failure:
        """A file's failure as the scorer reported it. Its detail starts with the file's name
        (the service names the file among several); the path is shown beside the detail
        anyway, so that prefix is dropped rather than printed twice."""
        return cls(path, error, detail.removeprefix(f"{path.name}: "))


def collect_inputs(paths: list[Location]) -> tuple[list[Input], list[Failure]]:
    """Files as given, folders searched recursively for images (sorted), URIs as given (their
    outputs under ``<scheme>/<bucket>/<key path>``). Unreadable entries of a folder become
    failures, not errors."""
    found: list[tuple[Location, PurePosixPath]] = []
    failures: list[Failure] = []
    for given in paths:
        if isinstance(given, Uri):
            found.append((given, given.mirror()))
        elif given.is_dir():
            base = PurePosixPath(given.resolve().name or "root")
            try:
                files = sorted(p for p in given.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
            except OSError as exc:
                failures.append(Failure(given, "unreadable", str(exc)))
                continue
            for file in files:
                if file.is_file():
                    found.append((file, base / PurePosixPath(file.relative_to(given).as_posix())))
        else:
            found.append((given, PurePosixPath(given.name)))
    inputs, taken = [], set()
    for path, key in found:
        unique, n = key, 1
        while unique.as_posix().lower() in taken:  # case-insensitive: macOS/Windows folders
            n += 1
            unique = key.with_name(f"{key.stem}~{n}{key.suffix}")
        taken.add(unique.as_posix().lower())
        inputs.append(Input(path, unique))
    return inputs, failures


def read_file(item: Input) -> bytes | Failure:
    """The input's bytes, from a local file or through its URI's pyarrow filesystem."""
    try:
        if isinstance(item.path, Uri):
            return read(item.path)
        return item.path.read_bytes()
    except FileNotFoundError:
        return Failure(item.path, "missing", "no such file")
    except OSError as exc:
        return Failure(item.path, "unreadable", exc.strerror or str(exc))


def progress_bar(total: int, *, enabled: bool) -> Any:
    """A tqdm bar on stderr when ``enabled`` (a terminal) and tqdm is installed, else None."""
    if not enabled:
        return None
    try:
        from tqdm import tqdm
    except ImportError:
        return None
    return tqdm(total=total, unit="img", leave=False)
