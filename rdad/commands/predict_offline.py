"""``rdad predict --out``: the resumable job. Lists what is not in the result table yet
(:mod:`rdad.commands.predict_table`), scores it here or on Ray (:mod:`rdad.commands.predict_ray`),
then summarises the whole table: CSV, JSON, the files not scored, the exit status."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from pathlib import Path, PurePosixPath
from typing import Any

from rdad.commands.argtypes import int_at_least, number_in
from rdad.commands.predict_io import EXIT_ANOMALY, EXIT_NORMAL, EXIT_UNREADABLE, Failure, Input
from rdad.commands.predict_table import (
    Key,
    ModelInfo,
    PartWriter,
    done_keys,
    file_sha256,
    key_of,
    latest_rows,
    location_text,
    record_of,
    rows_of,
    write_summaries,
)
from rdad.errors import CommandError

ScoreHere = Callable[[argparse.Namespace, list[tuple[Input, Key]], ModelInfo, PartWriter], Any]
"""The local engine's loop (``rdad.commands.predict``): scores a list, appending parts."""


def add_offline_options(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--resume-by",
        choices=("stat", "hash"),
        default="stat",
        help="with --out: a rerun skips files already in DIR/results.parquet with the same path, "
        "size and mtime (stat, default) or the same path and content sha256 (hash: reads every "
        "file once more)",
    )
    p.add_argument(
        "--engine",
        choices=("local", "ray"),
        default="local",
        help="with --model: score in this process (local) or on Ray Data (ray; needs --out and "
        "pip install 'rdad[ray]')",
    )
    p.add_argument(
        "--ray-address",
        metavar="ADDR",
        help="with --engine ray: the cluster to join, as ray start --head prints it "
        "(default: $RAY_ADDRESS, else a new local instance)",
    )
    p.add_argument(
        "--actors",
        type=int_at_least(1),
        metavar="N",
        help="with --engine ray: scoring actors, each with the model loaded once (default: "
        "the cluster's CPUs / --cpus-per-actor)",
    )
    p.add_argument(
        "--cpus-per-actor",
        type=int_at_least(1),
        default=1,
        metavar="N",
        help="with --engine ray: CPUs per actor, also its ONNX Runtime threads",
    )
    p.add_argument(
        "--gpus-per-actor",
        type=number_in(0.0),
        default=0.0,
        metavar="G",
        help="with --engine ray: GPUs per actor on a GPU cluster (e.g. 1, or 0.5 to share one)",
    )


def model_info(args: argparse.Namespace) -> ModelInfo:
    if args.model is None:  # a service: its answers name the model
        return ModelInfo(args.name or "", "", "")
    from rdad.metadata import MetadataError, read_onnx_metadata

    try:
        version = read_onnx_metadata(args.model).model_version
    except (MetadataError, OSError) as exc:
        raise CommandError(f"--model {args.model}: {exc}") from None
    return ModelInfo(args.model.stem, version, file_sha256(args.model) or "")


def run_table(
    args: argparse.Namespace,
    inputs: list[Input],
    failures: list[Failure],
    score_here: ScoreHere,
) -> int:
    """--out: append what is not in DIR's table yet, then summarise the whole table."""
    out: Path = args.out
    info = model_info(args)
    by_hash = args.resume_by == "hash"
    done = done_keys(out)
    todo: list[tuple[Input, Key]] = []
    for item in inputs:
        key = key_of(item.path, by_hash=by_hash)
        if key.resume_key() not in done:  # also a file given twice (a folder and a manifest)
            done.add(key.resume_key())
            todo.append((item, key))
    skipped = len(inputs) - len(todo)
    new_failures = [f for f in failures if (location_text(f.path), None, None) not in done]
    writer = PartWriter(out)
    if new_failures:  # files that were never readable: rows of their own, written first
        failed = [(Input(f.path, PurePosixPath(f.path.name)), f) for f in new_failures]
        keyed = [(item, key_of(item.path, by_hash=False), f) for item, f in failed]
        writer.write(rows_of(keyed, info, out, args.engine))
    if args.engine == "ray" and todo:
        from rdad.commands.predict_ray import run_ray

        run_ray(
            todo,
            args.model,
            info,
            out,
            address=args.ray_address,
            actors=args.actors,
            cpus=args.cpus_per_actor,
            gpus=args.gpus_per_actor,
            batch=args.batch,
            images=not args.no_images,
            threshold=args.threshold,
            progress=not args.no_progress,
        )
    elif args.engine != "ray":
        score_here(args, todo, info, writer)
    rows = list(latest_rows(out))
    write_summaries(out, rows)
    if args.json:
        print(json.dumps([record_of(r) for r in rows], indent=2))
    errors = [r for r in rows if r["status"] != "scored"]
    for row in errors:
        print(f"rdad predict: not scored: {row['path']}: {row['detail']}", file=sys.stderr)
    scored = len(rows) - len(errors)
    anomalous = sum(bool(r["is_anomalous"]) for r in rows)
    print(
        f"rdad predict: {len(todo)} new files, {skipped} already in the table; the table: "
        f"{scored} scored, {anomalous} anomalous, {len(errors)} not scored; results in {out}",
        file=sys.stderr,
    )
    return exit_status(scored, anomalous, len(errors))


def exit_status(scored: int, anomalous: int, failures: int) -> int:
    """0, 3 or 4 (see ``rdad predict --help``); nothing scored at all is an error."""
    if not scored:
        raise CommandError("no image could be scored")
    if anomalous:
        return EXIT_ANOMALY
    return EXIT_UNREADABLE if failures else EXIT_NORMAL
