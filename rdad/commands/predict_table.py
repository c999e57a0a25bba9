"""The result table of ``rdad predict --out DIR``: Parquet part files under
``DIR/results.parquet/``, one row per file, appended by every run and never rewritten.

Each part is written to a hidden temporary name and renamed into place, so a part that exists is
whole; a killed run loses at most the batch it was scoring. Parts written by Ray (``--engine
ray``) are written in place by Ray, so a torn one is possible after a kill: reading skips any part
that does not open (its files are scored again). ``results.csv`` and ``results.json`` are
regenerated from the whole table at the end of every run. :data:`SCHEMA` is the table's one
definition; ``docs/offline-scoring.md`` lists it and a test checks the two agree.
"""

from __future__ import annotations

import base64
import csv
import hashlib
import json
import os
import sys
import time
import uuid
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from rdad.commands.predict_io import CSV_COLUMNS, PICTURES, Failure, Input
from rdad.commands.predict_uri import Location, Uri, read, stat

TABLE = "results.parquet"


def _field(name: str, kind: pa.DataType, doc: str, nullable: bool = True) -> pa.Field:
    return pa.field(name, kind, nullable=nullable, metadata={"doc": doc})


SCHEMA = pa.schema(
    [
        _field("path", pa.string(), "the file: absolute path, or URI as given", nullable=False),
        _field("size", pa.int64(), "bytes of the file when it was scored (null: missing)"),
        _field("mtime_ns", pa.int64(), "its modification time, ns since the epoch"),
        _field("sha256", pa.string(), "hex digest of its bytes (only with --resume-by hash)"),
        _field("status", pa.string(), "`scored` or `not scored`", nullable=False),
        _field("error", pa.string(), "why it was not scored: an error code (null when scored)"),
        _field("detail", pa.string(), "the error in words (null when scored)"),
        _field("score", pa.float64(), "raw image score (max of the anomaly map)"),
        _field("normalized_score", pa.float64(), "0-1, exactly 0.5 at the calibrated threshold"),
        _field("is_anomalous", pa.bool_(), "normalized_score > normalized_threshold"),
        _field("threshold", pa.float64(), "raw image-score threshold of the verdict"),
        _field("normalized_threshold", pa.float64(), "the threshold in normalised units"),
        _field("width", pa.int32(), "image width in pixels"),
        _field("height", pa.int32(), "image height in pixels"),
        _field("regions", pa.int32(), "number of anomalous regions (mask components)"),
        _field("regions_json", pa.string(), "the regions as JSON (x, y, width, height, ...)"),
        _field("heatmap_png", pa.string(), "heatmap PNG relative to --out (null with --no-images)"),
        _field("overlay_png", pa.string(), "overlay PNG relative to --out (null with --no-images)"),
        _field("mask_png", pa.string(), "mask PNG relative to --out (null with --no-images)"),
        _field("model_name", pa.string(), "the model's name (its file name without .onnx)"),
        _field("model_version", pa.string(), "the model's version from its metadata"),
        _field("model_sha256", pa.string(), "hex digest of the model file"),
        _field("decode_ms", pa.float64(), "milliseconds decoding the image"),
        _field("inference_ms", pa.float64(), "milliseconds of its batch's inference"),
        _field("encode_ms", pa.float64(), "milliseconds rendering outputs and verdict"),
        _field("engine", pa.string(), "`local` or `ray`", nullable=False),
        _field("scored_at", pa.timestamp("ms", tz="UTC"), "when the row was written"),
    ]
)


@dataclass(frozen=True)
class ModelInfo:
    name: str
    version: str
    sha256: str


@dataclass(frozen=True)
class Key:
    """What makes a file already done on a rerun: path + size + mtime, or path + content hash."""

    path: str
    size: int | None
    mtime_ns: int | None
    sha256: str | None = None

    def resume_key(self) -> tuple[Any, ...]:
        if self.sha256 is not None:
            return (self.path, self.sha256)
        return (self.path, self.size, self.mtime_ns)


def file_sha256(path: Location) -> str | None:
    """Hex digest of a local file's or a URI's bytes (None when they cannot be read)."""
    digest = hashlib.sha256()
    try:
        if isinstance(path, Uri):
            return hashlib.sha256(read(path)).hexdigest()
        with path.open("rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                digest.update(block)
    except OSError:
        return None
    return digest.hexdigest()


def location_text(path: Location) -> str:
    """The table's ``path`` of a location: a local file's absolute path, or the URI as given."""
    return path.text if isinstance(path, Uri) else os.path.abspath(path)


def key_of(path: Location, *, by_hash: bool) -> Key:
    """The resume key: size and mtime from the file's stat (or its URI's file info)."""
    text = location_text(path)
    try:
        if isinstance(path, Uri):
            size, mtime_ns = stat(path)
        else:
            info = path.stat()
            size, mtime_ns = info.st_size, info.st_mtime_ns
    except OSError:
        return Key(text, None, None, "" if by_hash else None)
    digest = (file_sha256(path) or "") if by_hash else None
    return Key(text, size, mtime_ns, digest)


def _picture_path(key: PurePosixPath, kind: str) -> PurePosixPath:
    return key.with_name(f"{key.stem}.{kind}.png")


def rows_of(
    batch: Iterable[tuple[Input, Key, dict[str, Any] | Failure]],
    model: ModelInfo,
    out: Path,
    engine: str,
) -> pa.Table:
    """Table rows for one scored batch; the answers' PNGs (base64, when asked for) are written
    under ``out`` at paths that mirror the inputs (:attr:`Input.key`)."""
    now = int(time.time() * 1000)
    rows: list[dict[str, Any]] = []
    for item, key, answer in batch:
        row: dict[str, Any] = {
            "path": key.path,
            "size": key.size,
            "mtime_ns": key.mtime_ns,
            "sha256": key.sha256 or None,
            "model_name": model.name,
            "model_version": model.version,
            "model_sha256": model.sha256,
            "engine": engine,
            "scored_at": now,
        }
        if isinstance(answer, Failure):
            row.update(status="not scored", error=answer.error, detail=answer.detail)
            rows.append(row)
            continue
        row["status"] = "scored"
        served = answer.get("model") or {}  # a service names the model that answered
        row["model_name"] = served.get("name", model.name)
        row["model_version"] = served.get("version", model.version)
        for column in CSV_COLUMNS[2:9]:
            row[column] = answer.get(column)
        regions = answer.get("regions") or []
        row["regions"] = len(regions)
        row["regions_json"] = json.dumps(regions)
        timings = answer.get("timings_ms", {})
        for stage in ("decode", "inference", "encode"):
            row[f"{stage}_ms"] = timings.get(stage)
        for kind in PICTURES:
            data = answer.get(f"{kind}_png")
            if data:
                relative = _picture_path(item.key, kind)
                target = out / relative
                target.parent.mkdir(parents=True, exist_ok=True)
                target.write_bytes(base64.b64decode(data))
                row[f"{kind}_png"] = relative.as_posix()
        rows.append(row)
    return pa.Table.from_pylist(rows, schema=SCHEMA)


class PartWriter:
    """Appends one part file per batch: written under a hidden name, then renamed."""

    def __init__(self, out: Path) -> None:
        self.folder = out / TABLE
        self.folder.mkdir(parents=True, exist_ok=True)
        self._run = f"{time.strftime('%Y%m%dT%H%M%S')}-{uuid.uuid4().hex[:8]}"
        self._count = 0

    def write(self, table: pa.Table) -> None:
        name = f"local-{self._run}-{self._count:06d}.parquet"
        temporary = self.folder / f".{name}.tmp"
        pq.write_table(table, temporary)
        os.replace(temporary, self.folder / name)
        self._count += 1


def parts(out: Path) -> list[Path]:
    folder = out / TABLE
    if not folder.is_dir():
        return []
    return sorted(
        p for p in folder.iterdir() if p.suffix == ".parquet" and not p.name.startswith((".", "_"))
    )


def read_table(out: Path, columns: list[str] | None = None) -> pa.Table:
    """Every whole part of ``out``'s table (a part that does not open is skipped, with a note)."""
    tables = []
    for part in parts(out):
        try:
            tables.append(pq.read_table(part, columns=columns, schema=SCHEMA))
        except (OSError, pa.ArrowException) as exc:
            print(f"rdad predict: skipped a torn part {part.name}: {exc}", file=sys.stderr)
    schema = SCHEMA if columns is None else pa.schema([SCHEMA.field(c) for c in columns])
    return pa.concat_tables(tables) if tables else schema.empty_table()


def done_keys(out: Path) -> set[tuple[Any, ...]]:
    """Resume keys of every row in the table (both kinds: path+size+mtime and path+hash)."""
    table = read_table(out, ["path", "size", "mtime_ns", "sha256"])
    keys: set[tuple[Any, ...]] = set()
    for path, size, mtime, digest in zip(
        *(table[c].to_pylist() for c in table.column_names), strict=True
    ):
        keys.add((path, size, mtime))
        if digest is not None:
            keys.add((path, digest))
    return keys


def latest_rows(out: Path) -> Iterator[dict[str, Any]]:
    """The newest row per path (a file scored again after it changed replaces its older row)."""
    table = read_table(out)
    latest: dict[str, dict[str, Any]] = {}
    for row in table.sort_by("scored_at").to_pylist():
        latest[row["path"]] = row
    return iter(sorted(latest.values(), key=lambda r: str(r["path"])))


def record_of(row: dict[str, Any]) -> dict[str, Any]:
    """One row as the JSON record of ``results.json`` and ``--json``."""
    if row["status"] != "scored":
        return {"path": row["path"], "status": row["status"], "error": row["detail"]}
    record = {k: row[k] for k in ("path", "status", *CSV_COLUMNS[2:9])}
    record["regions"] = json.loads(row["regions_json"] or "[]")
    record["model"] = {"name": row["model_name"], "version": row["model_version"]}
    record["timings_ms"] = {s: row[f"{s}_ms"] for s in ("decode", "inference", "encode")}
    record.update({f"{k}_png": row[f"{k}_png"] for k in PICTURES if row[f"{k}_png"]})
    return record


def write_summaries(out: Path, rows: list[dict[str, Any]]) -> None:
    """``results.csv`` and ``results.json`` of the whole table, replaced atomically."""
    csv_tmp, json_tmp = out / ".results.csv.tmp", out / ".results.json.tmp"
    with csv_tmp.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, CSV_COLUMNS, extrasaction="ignore")
        writer.writeheader()
        writer.writerows({**r, "error": r["detail"]} for r in rows)
    json_tmp.write_text(json.dumps([record_of(r) for r in rows], indent=2) + "\n")
    os.replace(csv_tmp, out / "results.csv")
    os.replace(json_tmp, out / "results.json")
