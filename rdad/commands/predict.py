"""``rdad predict``: score image files and folders, locally or through a running service.

``--model FILE.onnx`` scores in this process with the service's own engine and scoring flow
(:mod:`rdad.service.scoring`); otherwise images go to ``--url`` (default: the local service).
Results: one line per image on stdout (or ``--json``), and with ``--out`` a Parquet result table
that a rerun resumes (:mod:`rdad.commands.predict_table`), a CSV and a JSON of the whole table,
and the heatmap / overlay / mask PNGs per image under paths that mirror the inputs, so that two
inputs called ``000.png`` in different folders never overwrite each other. ``--engine ray`` runs
the same scoring on Ray Data (:mod:`rdad.commands.predict_ray`); a PATH may be a manifest
(:mod:`rdad.commands.predict_manifest`). docs/offline-scoring.md describes it all.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any

from rdad.commands._common import add_command
from rdad.commands.argtypes import int_at_least, number_in
from rdad.commands.predict_io import (
    EXIT_ANOMALY,
    EXIT_NORMAL,
    EXIT_UNREADABLE,
    Failure,
    Input,
    collect_inputs,
    progress_bar,
)
from rdad.commands.predict_manifest import expand
from rdad.commands.predict_offline import add_offline_options, exit_status, run_table
from rdad.commands.predict_table import Key, ModelInfo, PartWriter, parts, rows_of
from rdad.commands.predict_uri import Location
from rdad.errors import CommandError

DEFAULT_URL = "http://127.0.0.1:8000"

EXAMPLES = f"""\
  rdad predict part1.png part2.jpg
      asks the service at {DEFAULT_URL} (or $RDAD_URL)
  rdad predict --model models/bottle.onnx photos/ --out results/
      scores every image under photos/ in this process (no service needed); writes the table
      results/results.parquet/, results/results.csv, results/results.json and, per image,
      results/photos/.../NAME.{{heatmap,overlay,mask}}.png; the same command again resumes
      (skips the files already in the table)
  rdad predict --model models/bottle.onnx march.txt --out rescore/ --no-images --engine ray
      a manifest (one path a line; also .csv / .parquet with a path column) scored on Ray
      Data (pip install 'rdad[ray]'); add --ray-address HEAD:6379 for a cluster
  rdad predict --url http://inspect:8000 --name bottle --json line3/*.png > verdicts.json
  rdad predict --threshold 0.3 photos/ && echo "all parts good"
      a stricter (lower) threshold in normalised units; 0.5 is the model's calibrated one
  RDAD_API_KEY=... rdad predict --url https://inspect.example.com part.png
  rdad predict --url http://triton:8000 --protocol v2 --name bottle line3/
      any Open Inference Protocol v2 server: rdad serve, or Triton serving rdad export --triton

exit status:
  {EXIT_NORMAL}  every image was scored and none is anomalous
  {EXIT_ANOMALY}  at least one image is anomalous
  {EXIT_UNREADABLE}  none is anomalous, but some files could not be scored (listed on stderr)
  (with --out: of every file in the result table, not only the ones of this run)
  1  error: nothing could be scored (service unreachable, bad model file, ...)
  2  wrong arguments
"""


def register(subparsers: argparse._SubParsersAction, name: str, help_text: str) -> None:
    p = add_command(
        subparsers,
        name,
        help_text,
        description="Score image files, folders (recursive: png, jpg, bmp, tif, webp) and "
        "manifests (.txt/.csv/.parquet lists of paths) with a local ONNX model (--model, same "
        "engine as the service; --engine ray for Ray Data) or a running rdad service (--url). "
        "Prints one verdict per image; --out writes a resumable Parquet table, CSV, JSON and PNGs.",
        examples=EXAMPLES,
    )
    p.add_argument(
        "paths",
        nargs="+",
        type=Path,
        metavar="PATH",
        help="image files, folders, or manifests (.txt/.lst: a path a line; .csv/.parquet: a "
        "path column); a manifest entry may be a URI (s3://, gs://, file://), read through "
        "pyarrow filesystems",
    )
    where = p.add_mutually_exclusive_group()
    where.add_argument(
        "--model",
        type=Path,
        metavar="FILE.onnx",
        help="score locally with this exported model (no service)",
    )
    where.add_argument(
        "--url",
        default=None,
        help=f"service base URL (default: $RDAD_URL or {DEFAULT_URL})",
    )
    p.add_argument(
        "--name", metavar="MODEL", help="served model name (default: the service's default)"
    )
    p.add_argument(
        "--protocol",
        choices=("rdad", "v2"),
        default="rdad",
        help="with --url: rdad's own POST /predict (default), or the Open Inference Protocol v2 "
        "(rdad serve, Triton, KServe; needs --name)",
    )
    p.add_argument(
        "--threshold",
        type=number_in(0.0, 1.0, high_open=True),
        metavar="T",
        help="verdict threshold in normalised units, 0 < T < 1 (default: the model's "
        "calibrated threshold = 0.5)",
    )
    p.add_argument(
        "--out",
        type=Path,
        metavar="DIR",
        help="write the result table DIR/results.parquet/ (a rerun resumes it), results.csv, "
        "results.json of the whole table, and PNGs here",
    )
    p.add_argument("--json", action="store_true", help="print the JSON results on stdout")
    p.add_argument(
        "--batch", type=int_at_least(1), default=8, metavar="N", help="images per request/batch"
    )
    p.add_argument(
        "--timeout",
        type=number_in(0.0),
        default=60.0,
        metavar="S",
        help="seconds per service request",
    )
    p.add_argument(
        "--no-images",
        action="store_true",
        help="with --out: no heatmap/overlay/mask PNGs, only the result table (for archives)",
    )
    add_offline_options(p)
    p.add_argument(
        "--no-progress",
        action="store_true",
        help="no progress bar (there is none anyway when stderr is not a terminal)",
    )
    p.set_defaults(func=run)


def _check(args: argparse.Namespace) -> None:
    if args.model is not None:
        if args.protocol != "rdad":
            raise CommandError("--protocol picks how to talk to a service; it goes with --url")
        if args.name:
            raise CommandError("--name picks a served model; it does not go with --model")
        if not args.model.is_file():
            hint = "" if args.model.suffix == ".onnx" else " (a served model? use --name)"
            raise CommandError(f"--model {args.model}: no such file{hint}")
    missing = [str(p) for p in args.paths if not p.exists()]
    if missing:
        raise CommandError(f"no such file or folder: {', '.join(missing)}")
    if args.engine == "ray" and (args.model is None or args.out is None):
        raise CommandError("--engine ray scores a --model file into an --out folder: give both")
    if args.out is not None and (args.out / "results.csv").exists() and not parts(args.out):
        raise CommandError(f"--out {args.out} holds results.csv but no result table to resume")


def _print_line(result: dict[str, Any], path: Location) -> None:
    verdict = "ANOMALOUS" if result["is_anomalous"] else "normal"
    print(
        f"{verdict:9}  score {result['score']:.4f}  normalized {result['normalized_score']:.3f}"
        f"  {path}",
        flush=True,
    )


def _open_source(args: argparse.Namespace) -> Any:
    if args.model is not None:
        from rdad.commands.predict_sources import LocalSource

        return LocalSource(args.model, args.batch)
    from rdad.commands.predict_sources import RemoteSource
    from rdad.commands.predict_v2 import OpenInferenceSource

    url = (args.url or os.environ.get("RDAD_URL") or DEFAULT_URL).rstrip("/")
    remote = OpenInferenceSource if args.protocol == "v2" else RemoteSource
    return remote(url, args.name, args.timeout, os.environ.get("RDAD_API_KEY"))


def _score_here(
    args: argparse.Namespace,
    todo: list[tuple[Input, Key]],
    info: ModelInfo,
    writer: PartWriter | None,
) -> tuple[list[tuple[Input, dict[str, Any]]], list[Failure]]:
    """Score ``todo`` in this process, batch by batch; with a table, each batch is appended as
    a part file (and not kept: memory stays flat); without one, the results are returned."""
    source = _open_source(args)
    results: list[tuple[Input, dict[str, Any]]] = []
    failures: list[Failure] = []
    images_wanted = args.out is not None and not args.no_images
    bar = progress_bar(len(todo), enabled=not args.no_progress and sys.stderr.isatty())
    try:
        for start in range(0, len(todo), args.batch):
            chunk = todo[start : start + args.batch]
            items = [item for item, _ in chunk]
            answers = source.score(items, images=images_wanted, threshold=args.threshold)
            for item, answer in zip(items, answers, strict=True):
                if isinstance(answer, Failure):
                    failures.append(answer)
                    continue
                if writer is None:
                    results.append((item, answer))
                if not args.json:
                    if bar is not None:
                        bar.clear()
                    _print_line(answer, item.path)
            if writer is not None:
                batch = zip(items, [k for _, k in chunk], answers, strict=True)
                writer.write(rows_of(batch, info, args.out, "local"))
            if bar is not None:
                bar.update(len(chunk))
    finally:
        if bar is not None:
            bar.close()
        source.close()
    return results, failures


def _run_plain(args: argparse.Namespace, inputs: list[Input], failures: list[Failure]) -> int:
    """No --out: verdicts on stdout only."""
    todo = [(item, Key(str(item.path), None, None)) for item in inputs]
    results, more = _score_here(args, todo, ModelInfo("", "", ""), None)
    failures += more
    if args.json:
        records = [
            {"path": str(i.path), **{k: v for k, v in r.items() if not k.endswith("_png")}}
            for i, r in results
        ]
        records += [{"path": str(f.path), "error": f.error, "detail": f.detail} for f in failures]
        print(json.dumps(records, indent=2))
    for failure in failures:
        print(f"rdad predict: not scored: {failure.path}: {failure.detail}", file=sys.stderr)
    anomalous = sum(bool(r["is_anomalous"]) for _, r in results)
    print(
        f"rdad predict: {len(results)} scored, {anomalous} anomalous, {len(failures)} not scored",
        file=sys.stderr,
    )
    return exit_status(len(results), anomalous, len(failures))


def run(args: argparse.Namespace) -> int:
    _check(args)
    if args.engine == "ray":
        from rdad.commands.predict_ray import import_ray

        import_ray()  # without Ray: its one line, before anything is written
    paths, failures = expand(args.paths)
    inputs, unreadable = collect_inputs(paths)
    failures += unreadable
    if not inputs and not failures:
        raise CommandError("no image files found under " + ", ".join(map(str, args.paths)))
    if args.out is None:
        return _run_plain(args, inputs, failures)
    return run_table(args, inputs, failures, _score_here)
