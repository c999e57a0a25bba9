"""Multi-process training: ``torchrun -m rdad train`` with gloo on CPU, and the sharding rules."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from rdad.model import distributed
from rdad.model.checkpoint import read_checkpoint
from rdad.model.evaluate import evaluate
from rdad.model.export import export_onnx
from tests.conftest import REPO, TINY_SIZE


def test_shards_cover_the_epoch_equally_and_ignore_the_global_rng() -> None:
    n, world = 23, 2
    shards = []
    for rank in range(world):
        torch.manual_seed(rank)  # a different global RNG per process must not matter
        proc = distributed.Process(rank, world, torch.device("cpu"))
        sampler = distributed.sampler(n, proc, seed=0)
        sampler.set_epoch(3)
        shards.append(list(sampler))
    assert len(shards[0]) == len(shards[1]) == 12  # padded to equal length: same step count
    assert set(shards[0]) | set(shards[1]) == set(range(n))
    single = distributed.sampler(n, distributed.Process(0, 1, torch.device("cpu")), seed=0)
    single.set_epoch(3)
    order = list(single)
    assert sorted(order) == list(range(n))
    # A world of one is the same seeded shuffle; rank r of W takes every W-th of it.
    assert shards[0] == order[0::2] and shards[1] == [*order[1::2], order[0]]
    single.set_epoch(4)
    assert list(single) != order  # a new order each epoch


def torchrun(nproc: int, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore::UserWarning"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone"]
    cmd += [f"--nproc_per_node={nproc}", "-m", "rdad", "train", *args]
    return subprocess.run(cmd, capture_output=True, text=True, cwd=REPO, env=env, timeout=900)


@pytest.mark.slow
def test_two_gloo_processes_train_export_evaluate_and_resume_with_one(
    synthetic_data: Path, tmp_path: Path
) -> None:
    run = tmp_path / "run"
    common = ["--backbone", "resnet18", "--image-size", str(TINY_SIZE), "--batch-size", "4"]
    common += ["--teacher-weights", "random", "--device", "cpu", "--no-progress"]
    result = torchrun(2, "--data", str(synthetic_data), "--out", str(run), "--epochs", "4", *common)
    assert result.returncode == 0, result.stderr[-3000:]
    out = result.stdout
    assert "effective batch size 8 (4 per process × 2 processes on cpu)" in out
    assert out.count("epoch 1/4 loss") == 1  # rank 0 alone logs
    assert out.count("calibrated on") == 1

    ckpt = read_checkpoint(run / "checkpoint.pt")
    losses = [h["loss"] for h in ckpt["history"]]
    assert len(losses) == 4 and losses[-1] < losses[0], losses
    assert "optimizer" not in ckpt and "optimizer" in read_checkpoint(run / "last.pt")
    # Same format as one process: plain keys (no DDP "module." prefix) that export reads.
    assert not any(k.startswith("module.") for k in ckpt["model"])
    onnx_path = export_onnx(run / "checkpoint.pt", tmp_path / "ddp.onnx")
    report = evaluate(onnx_path, synthetic_data)
    assert report["num_images"] == 16 and 0.0 <= report["image_auroc"] <= 1.0

    # Resume the 2-process run's last.pt in a world of one and extend it by an epoch.
    result = torchrun(1, "--out", str(run), "--resume", "--epochs", "5", "--no-progress")
    assert result.returncode == 0, result.stderr[-3000:]
    assert "resuming" in result.stdout and "epoch 5/5 loss" in result.stdout
    assert "effective batch size 4 (4 per process × 1 process on cpu)" in result.stdout
    resumed = read_checkpoint(run / "checkpoint.pt")
    assert [h["epoch"] for h in resumed["history"]] == [1, 2, 3, 4, 5]
    assert json.dumps(resumed["history"][:4]) == json.dumps(ckpt["history"])
