"""Multi-process training helpers (``torchrun``): process group, device, sharding, reductions.

``torchrun --nproc_per_node N -m rdad train …`` starts N processes with ``RANK``, ``WORLD_SIZE``
and ``LOCAL_RANK`` set; :func:`setup` turns them into a :class:`Process`. Without those variables
(plain ``rdad train``) it is a world of one and nothing here touches ``torch.distributed``. GPUs
use NCCL (one device per process, ``cuda:LOCAL_RANK``); CPUs use gloo.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import cast

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import Dataset, DistributedSampler


@dataclass(frozen=True)
class Process:
    """This process's place in the job."""

    rank: int
    world_size: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        """Rank 0 alone logs, writes checkpoints and calibrates."""
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def launched_by_torchrun() -> bool:
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


@contextmanager
def setup(device: str) -> Iterator[Process]:
    """Join the process group if started by ``torchrun`` (left again on exit)."""
    if not launched_by_torchrun():
        yield Process(0, 1, resolve_device(device))
        return
    wanted = resolve_device(device)
    if wanted.type == "cuda":
        # One GPU per process: torchrun's LOCAL_RANK picks it, whatever index --device named.
        local_rank = int(os.environ.get("LOCAL_RANK", "0"))
        wanted = torch.device("cuda", local_rank)
        torch.cuda.set_device(wanted)
        backend = "nccl"
    else:
        backend = "gloo"
    dist.init_process_group(backend=backend)
    try:
        yield Process(dist.get_rank(), dist.get_world_size(), wanted)
    finally:
        dist.destroy_process_group()


def wrap(model: nn.Module, proc: Process) -> nn.Module:
    """DistributedDataParallel around ``model`` when distributed: gradients of the trainable part
    (OCBE + student) are averaged over processes; frozen teacher parameters are not touched."""
    if not proc.distributed:
        return model
    ids = [proc.device.index] if proc.device.type == "cuda" else None
    return DistributedDataParallel(model, device_ids=ids)


def sampler(num_items: int, proc: Process, *, seed: int) -> DistributedSampler[int]:
    """This process's shard of a seeded shuffle; call ``set_epoch`` before each epoch.

    The order depends only on ``seed`` and the epoch (not on the global RNG), so a run resumed at
    an epoch boundary, with any number of processes, sees the same images per epoch. Shards are
    padded to equal length so every process runs the same number of steps."""
    items = cast("Dataset[int]", range(num_items))  # a Sized sequence is all the sampler reads
    return DistributedSampler(
        items, num_replicas=proc.world_size, rank=proc.rank, shuffle=True, seed=seed
    )


def sum_over_processes(*values: float, proc: Process) -> list[float]:
    """Sum scalars over all processes (identity in a world of one)."""
    if not proc.distributed:
        return list(values)
    t = torch.tensor(values, dtype=torch.float64, device=proc.device)
    dist.all_reduce(t)
    return t.tolist()


def barrier(proc: Process) -> None:
    if proc.distributed:
        dist.barrier()
