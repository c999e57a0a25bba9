"""What ``/metrics`` shows under ``rdad serve --workers N``: every worker's values, merged.

prometheus-client's :class:`MultiProcessCollector` merges the ``rdad_*`` files the workers write
to the shared folder (:mod:`service.run_dir`). ``process_*`` has no multiprocess form, and one
worker's own figures would describe whichever worker happened to answer the scrape, so
:class:`ServiceProcesses` reports the whole service instead: memory, CPU time and open files
summed over the supervisor and its running workers (the start time is the oldest one's).
"""

from __future__ import annotations

import functools
import os
import re
from collections.abc import Iterable
from pathlib import Path

from prometheus_client import CollectorRegistry, PlatformCollector, ProcessCollector
from prometheus_client.metrics_core import Metric
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.registry import Collector

# Every worker writes files named TYPE[_MODE]_PID.db; mark_process_dead removes the "live*" gauge
# files of a worker that ended, so these name exactly the running workers.
_LIVE_FILE = re.compile(r"^gauge_live[a-z]+_(\d+)\.db$")
_OLDEST = {"process_start_time_seconds"}
_LARGEST = {"process_max_fds"}


def live_worker_pids(folder: Path) -> list[int]:
    """Process ids of the workers running now (those with live-gauge files in ``folder``)."""
    try:
        names = os.listdir(folder)
    except OSError:
        return []
    return sorted({int(m.group(1)) for n in names if (m := _LIVE_FILE.match(n))})


class ServiceProcesses(Collector):
    """``process_*`` of the supervisor and every running worker together (module docstring)."""

    def __init__(self, folder: Path) -> None:
        self._folder = folder

    def _pids(self) -> list[int]:
        pids = live_worker_pids(self._folder)
        parent = os.getppid()
        if parent > 1 and parent not in pids:  # 1: this worker outlived its supervisor
            pids.append(parent)
        return pids

    def collect(self) -> Iterable[Metric]:
        merged: dict[str, Metric] = {}
        for pid in self._pids():
            one = ProcessCollector(pid=functools.partial(int, pid), registry=None)
            for family in one.collect():
                value = family.samples[0].value
                if family.name not in merged:
                    total = Metric(family.name, family.documentation, family.type)
                    total.add_sample(family.samples[0].name, {}, value)
                    merged[family.name] = total
                    continue
                total = merged[family.name]
                current = total.samples[0].value
                if family.name in _OLDEST:
                    value = min(current, value)
                elif family.name in _LARGEST:
                    value = max(current, value)
                else:
                    value += current
                total.samples[0] = total.samples[0]._replace(value=value)
        return list(merged.values())


def worker_registry(folder: str) -> CollectorRegistry:
    """The registry ``/metrics`` renders in multiprocess mode: the workers' merged files, the
    service's processes, and the Python platform."""
    registry = CollectorRegistry()
    MultiProcessCollector(registry, path=folder)
    registry.register(ServiceProcesses(Path(folder)))
    PlatformCollector(registry=registry)
    return registry
