"""Run-dir helpers: one-rename checkpoints (weights + trainer state + extra files), their recovery, metrics trimming."""

from __future__ import annotations

import json
import os
import shutil
import signal

import pytest
import torch
from safetensors.torch import load_file
from torch import nn

from qa_ebm.errors import CheckpointError
from qa_ebm.training import runs
from qa_ebm.training.runs import TrainingInterrupted, load_checkpoint, save_checkpoint, trim_metrics


def _parts(seed: int):
    from accelerate import Accelerator

    torch.manual_seed(seed)
    model = nn.Linear(3, 2)
    optimizer = torch.optim.AdamW(model.parameters(), lr=0.1)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)
    return Accelerator(cpu=True), model, optimizer, scheduler


def _train(model, optimizer, scheduler, steps: int = 2) -> None:
    for _ in range(steps):
        model(torch.ones(1, 3)).sum().backward()
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad()


def test_a_checkpoint_holds_weights_state_and_extra_files_and_loads_back(tmp_path):
    accelerator, model, optimizer, scheduler = _parts(0)
    _train(model, optimizer, scheduler)
    extra = {"replay.safetensors": {"y": torch.arange(6.0).view(2, 3)}}
    save_checkpoint(tmp_path / "state", accelerator, model, optimizer, scheduler, {"step": 2}, extra)
    assert torch.equal(load_file(str(tmp_path / "state" / "replay.safetensors"))["y"], torch.arange(6.0).view(2, 3))

    accelerator, fresh, optimizer2, scheduler2 = _parts(1)
    assert load_checkpoint(tmp_path / "state", accelerator, fresh, optimizer2, scheduler2) == {"step": 2}
    assert all(torch.equal(a, b) for a, b in zip(model.parameters(), fresh.parameters(), strict=True))
    assert optimizer2.state_dict()["state"][0]["step"] == 2
    assert load_checkpoint(tmp_path / "none", accelerator, fresh, optimizer2, scheduler2) is None  # nothing saved yet


def test_a_failure_between_the_weights_and_the_state_keeps_the_previous_checkpoint(tmp_path, monkeypatch):
    accelerator, model, optimizer, scheduler = _parts(0)
    save_checkpoint(tmp_path / "state", accelerator, model, optimizer, scheduler, {"step": 0})
    before = load_file(str(tmp_path / "state" / runs.MODEL_FILE))
    _train(model, optimizer, scheduler)
    real = runs.save_module

    def save_then_fail(module, path):
        real(module, path)
        raise OSError("disk full")

    monkeypatch.setattr(runs, "save_module", save_then_fail)
    with pytest.raises(OSError, match="disk full"):
        replay = {"replay.safetensors": {"y": torch.ones(2)}}
        save_checkpoint(tmp_path / "state", accelerator, model, optimizer, scheduler, {"step": 2}, replay)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["state"]
    assert json.loads((tmp_path / "state" / "state.json").read_text()) == {"step": 0}
    assert not (tmp_path / "state" / "replay.safetensors").exists()
    after = load_file(str(tmp_path / "state" / runs.MODEL_FILE))
    assert all(torch.equal(before[k], after[k]) for k in before)  # weights and state of the same step


def test_a_checkpoint_left_aside_by_a_kill_mid_rename_is_resumed_not_restarted(tmp_path):
    accelerator, model, optimizer, scheduler = _parts(0)
    _train(model, optimizer, scheduler)
    save_checkpoint(tmp_path / "state", accelerator, model, optimizer, scheduler, {"step": 2})
    dead = 2**22 + 12345  # above the default pid_max: no such process
    os.replace(tmp_path / "state", tmp_path / f".state.old-{dead}")  # killed between the two renames
    shutil.copytree(tmp_path / f".state.old-{dead}", tmp_path / f".state.tmp-{dead}")  # and its half-written new one
    accelerator, fresh, optimizer2, scheduler2 = _parts(1)
    assert load_checkpoint(tmp_path / "state", accelerator, fresh, optimizer2, scheduler2) == {"step": 2}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["state"]


def test_a_damaged_checkpoint_is_refused_not_skipped(tmp_path):
    accelerator, model, optimizer, scheduler = _parts(0)
    save_checkpoint(tmp_path / "state", accelerator, model, optimizer, scheduler, {"step": 2})
    (tmp_path / "state" / runs.MODEL_FILE).unlink()
    with pytest.raises(CheckpointError, match=r"model\.safetensors: no such file"):
        load_checkpoint(tmp_path / "state", accelerator, model, optimizer, scheduler)


def test_trim_metrics_drops_lines_after_the_checkpoint_and_a_half_written_one(tmp_path):
    path = tmp_path / "metrics.jsonl"
    path.write_text("".join(json.dumps({"step": s, "loss": 1.0}) + "\n" for s in (2, 4, 6)) + '{"step": 8, "lo')
    trim_metrics(path, 4)
    assert [json.loads(line)["step"] for line in path.read_text().splitlines()] == [2, 4]
    trim_metrics(tmp_path / "absent.jsonl", 4)  # a run stopped before its first eval
    assert not (tmp_path / "absent.jsonl").exists()


@pytest.mark.parametrize(("signum", "status"), [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_an_interrupted_run_exits_with_the_signals_status(tmp_path, signum, status):
    error = TrainingInterrupted(signum, 7, tmp_path / "trainer_state")
    assert error.exit_status == status
    assert (
        str(error)
        == f"interrupted by {signal.Signals(signum).name} at step 7; saved a checkpoint in {tmp_path}/trainer_state"
    )
