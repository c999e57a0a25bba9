"""``rdad predict --engine ray``: the same scoring on Ray Data, for archives past one machine.

The files still to score (listed and filtered for resume by the driver) become a Ray dataset of
``(path, key, size, mtime_ns, sha256)`` rows → ``map_batches`` over a pool of
:class:`ScoringActor` (each loads the model once, reads its batch's bytes where it runs and scores
them with :class:`~rdad.commands.predict_sources.LocalSource`, i.e. the service's one scoring
flow) → ``write_parquet`` into the same table the local engine appends to
(:mod:`rdad.commands.predict_table`). On a cluster the files and ``--out`` must be on storage
every node sees.
"""

from __future__ import annotations

import math
from pathlib import Path, PurePosixPath
from typing import Any

import pyarrow as pa

from rdad.commands.predict_io import Input, read_file
from rdad.commands.predict_table import TABLE, Key, ModelInfo, rows_of
from rdad.commands.predict_uri import location_of
from rdad.errors import CommandError

INSTALL = "--engine ray needs Ray: pip install 'rdad[ray]'"


def import_ray() -> Any:
    """The ``ray`` module, or the one line that says how to install it."""
    try:
        import ray
        import ray.data
    except ImportError:
        raise CommandError(INSTALL) from None
    return ray


class ScoringActor:
    """One per Ray actor: the model loaded once, then one Parquet table per batch of files."""

    def __init__(
        self,
        model: str,
        batch: int,
        threads: int,
        images: bool,
        threshold: float | None,
        out: str,
        info: ModelInfo,
    ) -> None:
        from rdad.commands.predict_sources import LocalSource

        self.source = LocalSource(Path(model), batch, threads)
        self.images, self.threshold = images, threshold
        self.out, self.info = Path(out), info

    def __call__(self, batch: pa.Table) -> pa.Table:
        columns = {name: batch[name].to_pylist() for name in batch.column_names}
        items = [
            Input(location_of(p), PurePosixPath(k))
            for p, k in zip(columns["path"], columns["key"], strict=True)
        ]
        keys = [
            Key(p, s, m, h)
            for p, s, m, h in zip(
                columns["path"],
                columns["size"],
                columns["mtime_ns"],
                columns["sha256"],
                strict=True,
            )
        ]
        answers = self.source.score_data(
            [(item, read_file(item)) for item in items],
            images=self.images,
            threshold=self.threshold,
        )
        return rows_of(zip(items, keys, answers, strict=True), self.info, self.out, "ray")


def run_ray(
    todo: list[tuple[Input, Key]],
    model: Path,
    info: ModelInfo,
    out: Path,
    *,
    address: str | None,
    actors: int | None,
    cpus: int,
    gpus: float,
    batch: int,
    images: bool,
    threshold: float | None,
    progress: bool,
) -> None:
    """Score ``todo`` on Ray (a new local instance, or the cluster at ``address``); rows are
    appended to ``out``'s table as Parquet parts written by Ray, one per batch. ``actors``
    defaults to as many as the cluster's CPUs hold at ``cpus`` each."""
    ray = import_ray()
    if not ray.is_initialized():
        ray.init(address=address, include_dashboard=False, log_to_driver=False)
    if actors is None:
        actors = max(1, int(ray.cluster_resources().get("CPU", 1)) // cpus)
    context = ray.data.DataContext.get_current()
    context.enable_progress_bars = progress
    rows = [
        {
            "path": key.path,
            "key": item.key.as_posix(),
            "size": key.size,
            "mtime_ns": key.mtime_ns,
            "sha256": key.sha256,
        }
        for item, key in todo
    ]
    # One block per batch: each batch becomes one part file, so a killed job loses at most
    # the batches in flight.
    dataset = ray.data.from_items(rows, override_num_blocks=max(1, math.ceil(len(rows) / batch)))
    scored = dataset.map_batches(
        ScoringActor,
        fn_constructor_args=(
            str(model.resolve()),
            batch,
            cpus,
            images,
            threshold,
            str(out.resolve()),
            info,
        ),
        batch_size=batch,
        batch_format="pyarrow",
        compute=ray.data.ActorPoolStrategy(size=actors),
        num_cpus=cpus,
        num_gpus=gpus or None,
    )
    scored.write_parquet(str((out / TABLE).resolve()), max_rows_per_file=batch)
