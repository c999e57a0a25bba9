"""The folder the processes of ``rdad serve --workers N`` share.

``metrics/`` holds prometheus-client's multiprocess files (``PROMETHEUS_MULTIPROC_DIR``: every
worker writes its own, ``/metrics`` merges them all); ``reload/`` holds the reload requests one
worker passes on to the others (:mod:`service.reload_requests`). The supervisor prepares the
folder before the first worker starts: files left by an earlier run (a killed pod, a crashed
supervisor) would otherwise be counted again, so both subfolders start empty.
"""

from __future__ import annotations

import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

METRICS_ENV = "PROMETHEUS_MULTIPROC_DIR"
"""prometheus-client reads it when first imported: it must be in a worker's environment before."""


def metrics_dir(run_dir: Path) -> Path:
    return run_dir / "metrics"


def reload_dir(run_dir: Path) -> Path:
    return run_dir / "reload"


@dataclass(frozen=True)
class RunDir:
    path: Path
    created: bool
    """Made here (a temporary folder): removed again at exit. A configured one is kept."""

    @property
    def metrics(self) -> Path:
        return metrics_dir(self.path)

    def remove(self) -> None:
        if self.created:
            shutil.rmtree(self.path, ignore_errors=True)
        else:
            for sub in (metrics_dir(self.path), reload_dir(self.path)):
                shutil.rmtree(sub, ignore_errors=True)


def prepare_run_dir(configured: Path | None) -> RunDir:
    """The configured folder (``RDAD_RUN_DIR``), or a new temporary one, with empty
    ``metrics/`` and ``reload/`` subfolders."""
    if configured is None:
        run = RunDir(Path(tempfile.mkdtemp(prefix="rdad-serve-")), created=True)
    else:
        configured.mkdir(parents=True, exist_ok=True)
        run = RunDir(configured, created=False)
    for sub in (metrics_dir(run.path), reload_dir(run.path)):
        shutil.rmtree(sub, ignore_errors=True)
        sub.mkdir()
    return run
