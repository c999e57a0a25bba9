"""Checkpoint contents and safe loading (torch.load(weights_only=True) everywhere)."""

from __future__ import annotations

import pickle
import random
from pathlib import Path

import numpy as np
import pytest
import torch

from rdad.model.checkpoint import (
    CHECKPOINT_FORMAT,
    RESUME_ONLY_KEYS,
    CheckpointError,
    load_model,
    read_checkpoint,
)
from rdad.model.evaluate import load_for_eval
from rdad.model.rng import rng_state, set_rng_state


class Payload:
    """Unpickling this runs code: the reason checkpoints must never be loaded with pickle."""

    def __reduce__(self) -> tuple[object, tuple[str]]:
        return (print, ("pwned",))


def test_final_checkpoint_holds_what_export_needs_and_last_pt_what_resume_needs(
    tiny_checkpoint: Path,
) -> None:
    final = read_checkpoint(tiny_checkpoint)
    last = read_checkpoint(tiny_checkpoint.parent / "last.pt")
    assert not set(RESUME_ONLY_KEYS) & set(final)
    assert set(RESUME_ONLY_KEYS) <= set(last)
    assert {"config", "model", "calibration", "data_summary", "teacher_source"} <= set(final)
    # The optimiser state (Adam: two moments per trainable weight) is what makes last.pt larger.
    assert (
        tiny_checkpoint.stat().st_size < 0.6 * (tiny_checkpoint.parent / "last.pt").stat().st_size
    )
    for key, value in final["model"].items():
        torch.testing.assert_close(last["model"][key], value, rtol=0, atol=0, msg=key)


def test_checkpoints_are_plain_tensors_and_types(tiny_checkpoint: Path) -> None:
    # weights_only=True is what read_checkpoint uses; load them here directly to be explicit.
    for path in (tiny_checkpoint, tiny_checkpoint.parent / "last.pt"):
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
        assert ckpt["format"] == CHECKPOINT_FORMAT
        assert isinstance(ckpt["config"], dict)


def test_a_checkpoint_with_a_pickled_object_is_refused(
    tiny_checkpoint: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    ckpt = read_checkpoint(tiny_checkpoint)
    ckpt["history"] = [Payload()]
    evil = tmp_path / "evil.pt"
    torch.save(ckpt, evil)
    with pytest.raises(CheckpointError, match=r"pickled Python object \(print\)"):
        read_checkpoint(evil)
    with pytest.raises(CheckpointError):
        load_model(evil)
    with pytest.raises(CheckpointError):
        load_for_eval(evil)
    assert "pwned" not in capsys.readouterr().out
    # Plain pickle would have run it: the refusal above is what protects.
    ckpt_bytes = pickle.dumps(Payload())
    pickle.loads(ckpt_bytes)
    assert "pwned" in capsys.readouterr().out


def test_not_a_checkpoint_is_refused_with_a_reason(tmp_path: Path) -> None:
    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match=r"not a PyTorch file.*'not a checkpoint'"):
        read_checkpoint(garbage)
    empty = tmp_path / "empty.pt"
    empty.touch()
    with pytest.raises(CheckpointError, match="empty"):
        read_checkpoint(empty)
    # A damaged file of torch's older (pickle) format: the unpickler's own error (a KeyError, an
    # EOFError, ...) is reported as a damaged checkpoint, never as the bare exception.
    legacy = tmp_path / "legacy.pt"
    torch.save({"format": 2}, legacy, _use_new_zipfile_serialization=False)
    legacy.write_bytes(legacy.read_bytes()[:24] + b"hello")
    with pytest.raises(CheckpointError, match=f"cannot read checkpoint {legacy}"):
        read_checkpoint(legacy)
    state_dict = tmp_path / "teacher.pth"
    torch.save({"conv1.weight": torch.zeros(1)}, state_dict)
    with pytest.raises(CheckpointError, match="state dict"):
        read_checkpoint(state_dict)
    other = tmp_path / "other.pt"
    torch.save({"format": 1, "model": {}}, other)
    with pytest.raises(CheckpointError, match="format"):
        read_checkpoint(other)


def test_rng_state_round_trips_through_a_weights_only_file(tmp_path: Path) -> None:
    torch.manual_seed(1)
    np.random.seed(1)
    random.seed(1)
    np.random.standard_normal()  # leaves a cached Gaussian in the legacy numpy state
    path = tmp_path / "rng.pt"
    torch.save(rng_state(), path)
    expected = (torch.rand(3), np.random.standard_normal(3), random.random())
    set_rng_state(torch.load(path, weights_only=True))
    got = (torch.rand(3), np.random.standard_normal(3), random.random())
    torch.testing.assert_close(got[0], expected[0], rtol=0, atol=0)
    np.testing.assert_array_equal(got[1], expected[1])
    assert got[2] == expected[2]
