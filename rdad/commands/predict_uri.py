"""URIs in ``rdad predict`` manifests (``s3://``, ``gs://``, ``file://``, ...), read through
pyarrow filesystems: :func:`pyarrow.fs.FileSystem.from_uri` picks the filesystem (S3 and GCS
where pyarrow was built with them and credentials are set up the usual way). A URI that cannot be
opened (unknown scheme, filesystem unavailable, no such object) is reported as an ``OSError``
whose text says why; callers turn it into a failure row, never a crash."""

from __future__ import annotations

import functools
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any
from urllib.parse import urlsplit


@dataclass(frozen=True)
class Uri:
    """Where an input's bytes come from when it is not a local path: the URI as given.
    ``name`` and ``str()`` behave like a :class:`~pathlib.Path`'s, so both can be shown alike."""

    text: str

    def __str__(self) -> str:
        return self.text

    @property
    def name(self) -> str:
        return PurePosixPath(urlsplit(self.text).path).name

    def mirror(self) -> PurePosixPath:
        """Where its outputs go under ``--out``: ``<scheme>/<bucket or host>/<key path>``."""
        parts = urlsplit(self.text)
        folders = [parts.scheme or "uri", parts.netloc]
        return PurePosixPath(*[p for p in folders if p], *PurePosixPath(parts.path).parts[1:])


Location = Path | Uri
"""An input's bytes: a local file, or an object behind a URI."""


def is_uri(text: str) -> bool:
    return "://" in text


def location_of(text: str) -> Location:
    """A location from its text as stored in the table (an absolute path, or the URI)."""
    return Uri(text) if is_uri(text) else Path(text)


@functools.lru_cache(maxsize=4096)
def _open(text: str) -> tuple[Any, str]:
    import pyarrow as pa
    import pyarrow.fs

    try:
        return pyarrow.fs.FileSystem.from_uri(text)
    except (pa.ArrowException, ValueError, ImportError) as exc:
        raise OSError(f"cannot open this URI: {exc}") from None


def stat(uri: Uri) -> tuple[int | None, int | None]:
    """``(size, mtime_ns)`` of the object; ``FileNotFoundError`` when there is none."""
    import pyarrow as pa
    import pyarrow.fs

    filesystem, path = _open(uri.text)
    try:
        info = filesystem.get_file_info(path)
    except pa.ArrowException as exc:
        raise OSError(str(exc)) from None
    if info.type == pyarrow.fs.FileType.NotFound:
        raise FileNotFoundError("no such file")
    if info.type != pyarrow.fs.FileType.File:
        raise OSError("not a file")
    return info.size, info.mtime_ns


def read(uri: Uri) -> bytes:
    """The object's bytes (``OSError`` when they cannot be read)."""
    import pyarrow as pa

    filesystem, path = _open(uri.text)
    try:
        with filesystem.open_input_stream(path) as stream:
            return bytes(stream.read())
    except pa.ArrowException as exc:
        raise OSError(str(exc)) from None
