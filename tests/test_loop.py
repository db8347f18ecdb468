"""The shared training loop on a toy regression: cadence, budget, signals, non-finite policy, out of memory."""

from __future__ import annotations

import copy
import logging
import os
import signal
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import torch
from torch import nn

from qa_ebm.training.loop import LoopSettings, LoopState, StepOutput, TrainingLoop
from qa_ebm.training.runs import TrainingError, TrainingInterrupted
from qa_ebm.training.schedules import warmup_cosine

STEPS = 6


@dataclass
class Toy:
    """A linear model on fixed data, with the loop's callbacks recording what they were called with."""

    loop: TrainingLoop
    model: nn.Linear
    saves: dict[int, dict] = field(default_factory=dict)  # step -> weights, optimizer, scheduler, loop state
    evals: list[dict] = field(default_factory=list)


def toy(faults=None, nonfinite: str = "stop", max_skips: int = 3, max_seconds: float | None = None, saved=None) -> Toy:
    """`faults(step, model, x)` may poison the step: return a new x, or act on the model / the process."""
    from accelerate import Accelerator

    torch.manual_seed(0)
    x_all, y_all = torch.randn(STEPS * 4, 3), torch.randn(STEPS * 4, 1)
    model = nn.Linear(3, 1)
    optimizer = torch.optim.AdamW(model.parameters(), lr=0.1)
    scheduler = warmup_cosine(optimizer, 1, STEPS, 0.1)
    if saved is not None:
        model.load_state_dict(saved["model"])
        optimizer.load_state_dict(saved["optimizer"])
        scheduler.load_state_dict(saved["scheduler"])
    settings = LoopSettings("train_toy", STEPS, 2, 2, max_seconds, 1.0, nonfinite, max_skips, lr=0.1)
    result = Toy(loop=None, model=model)  # type: ignore[arg-type]

    def step_fn(step: int) -> StepOutput:
        x, y = x_all[step * 4 : step * 4 + 4], y_all[step * 4 : step * 4 + 4]
        if faults is not None:
            x = faults(step, model, x)
        loss = (model(x) - y).pow(2).mean()
        loss.backward()
        return StepOutput(loss=loss.detach(), stats={"loss": loss.item()}, inputs={"x": x})

    def save(step: int, loop_state: dict) -> None:
        result.saves[step] = copy.deepcopy(
            {
                "model": model.state_dict(),
                "optimizer": optimizer.state_dict(),
                "scheduler": scheduler.state_dict(),
                "loop": loop_state,
            }
        )

    def evaluate(step: int, train_stats: dict) -> dict:
        result.evals.append({"step": step, **train_stats})
        return result.evals[-1]

    result.loop = TrainingLoop(
        settings,
        Accelerator(cpu=True),
        model,
        optimizer,
        scheduler,
        step_fn,
        save,
        evaluate,
        checkpoint_dir=Path("ckpt"),
        oom_advice="with train_toy.batch_size=4; try --set train_toy.batch_size=2",
        progress=False,
    )
    return result


def weights(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in model.state_dict().items()}


def test_evaluates_and_saves_on_cadence_and_at_the_end():
    run = toy()
    result = run.loop.run(LoopState())
    assert result.step == STEPS and result.stopped == "done"
    assert [m["step"] for m in run.evals] == [2, 4, 6] and sorted(run.saves) == [2, 4, 6]
    assert {"train_loss", "train_lr", "nonfinite_skips"} <= set(result.metrics)
    assert run.saves[6]["loop"]["step"] == 6 and run.saves[6]["loop"]["window"] == []


def test_time_budget_stops_evaluates_and_saves_at_the_step_it_runs_out():
    run = toy(max_seconds=0.0)
    result = run.loop.run(LoopState())
    assert (result.step, result.stopped) == (1, "time budget")
    assert [m["step"] for m in run.evals] == [1] and sorted(run.saves) == [1]


@pytest.mark.parametrize(("signum", "status"), [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_a_signal_saves_a_checkpoint_and_resuming_it_matches_the_uninterrupted_run(signum, status):
    straight = toy()
    straight.loop.run(LoopState())

    def interrupt(step, model, x):
        if step == 2:  # a signal mid-step: the step finishes, then the loop saves and stops
            os.kill(os.getpid(), signum)
        return x

    run = toy(interrupt)
    before = signal.getsignal(signum)
    with pytest.raises(TrainingInterrupted, match=rf"{signal.Signals(signum).name} at step 3") as e:
        run.loop.run(LoopState())
    assert e.value.exit_status == status and e.value.step == 3
    assert signal.getsignal(signum) is before  # the loop's handlers are gone
    assert sorted(run.saves) == [2, 3] and run.saves[3]["loop"]["window"]  # step 3's stats, not yet evaluated

    resumed = toy(saved=run.saves[3])
    result = resumed.loop.run(LoopState.from_dict(run.saves[3]["loop"]))
    assert result.step == STEPS
    a, b = weights(straight.model), weights(resumed.model)
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert resumed.evals == [m for m in straight.evals if m["step"] > 3]  # the window carried over the stop


def test_a_second_sigint_stops_at_once_without_saving():
    def impatient(step, model, x):
        if step == 3:
            os.kill(os.getpid(), signal.SIGINT)
            os.kill(os.getpid(), signal.SIGINT)
        return x

    run = toy(impatient)
    with pytest.raises(KeyboardInterrupt):
        run.loop.run(LoopState())
    assert sorted(run.saves) == [2]


def test_nonfinite_input_stops_naming_the_step_and_the_last_checkpoint():
    run = toy(lambda step, model, x: x * float("nan") if step == 3 else x)
    with pytest.raises(TrainingError, match=r"batch input 'x' holds 12 non-finite values at step 3.*step 2 \(--resume"):
        run.loop.run(LoopState())
    assert sorted(run.saves) == [2]  # nothing trained on the bad step was saved


def test_nonfinite_before_any_checkpoint_says_so():
    run = toy(lambda step, model, x: x * float("inf"))
    with pytest.raises(TrainingError, match=r"at step 0; stopped without saving, no checkpoint was saved yet"):
        run.loop.run(LoopState())


def test_skip_drops_the_update_counts_it_and_warns(caplog):
    seen: dict[int, dict] = {}

    def nan_at_two(step, model, x):
        seen[step] = weights(model)
        return x * float("nan") if step == 2 else x

    run = toy(nan_at_two, nonfinite="skip")
    with caplog.at_level(logging.WARNING, logger="qa_ebm.training.loop"):
        result = run.loop.run(LoopState())
    assert result.step == STEPS and result.metrics["nonfinite_skips"] == 1
    assert all(torch.equal(seen[2][k], seen[3][k]) for k in seen[2])  # step 2 changed nothing
    assert not all(torch.equal(seen[3][k], seen[4][k]) for k in seen[3])  # step 3 trained again
    assert all(torch.isfinite(p).all() for p in run.model.parameters())
    assert [m["nonfinite_skips"] for m in run.evals] == [0, 1, 1]
    assert all(torch.isfinite(torch.tensor(m["train_loss"])) for m in run.evals)
    assert "batch input 'x' holds 12 non-finite values at step 2; its update is skipped" in caplog.text


@pytest.mark.parametrize("policy", ["stop", "skip"])
def test_an_infinite_gradient_is_caught(policy):
    def inf_grad_at_one(step, model, x):
        if step == 0:  # a gradient hook that corrupts step 1's backward pass only
            model.weight.register_hook(lambda g: g * float("inf") if model.current_step == 1 else g)
        model.current_step = step
        return x

    run = toy(inf_grad_at_one, nonfinite=policy)
    if policy == "stop":
        with pytest.raises(TrainingError, match=r"gradient norm became (inf|nan) at step 1"):
            run.loop.run(LoopState())
    else:
        assert run.loop.run(LoopState()).metrics["nonfinite_skips"] == 1
        assert all(torch.isfinite(p).all() for p in run.model.parameters())


def test_too_many_skips_in_a_row_stop_the_run():
    run = toy(lambda step, model, x: x * float("nan") if step >= 1 else x, nonfinite="skip", max_skips=3)
    with pytest.raises(TrainingError, match=r"at step 3: 3 steps in a row skipped \(train_toy\.max_nonfinite_skips=3"):
        run.loop.run(LoopState())


def test_out_of_memory_names_the_advice():
    def oom(step, model, x):
        raise torch.OutOfMemoryError("CUDA out of memory")

    with pytest.raises(TrainingError, match=r"out of memory at step 0 with train_toy\.batch_size=4; try"):
        toy(oom).loop.run(LoopState())


def test_loop_state_reads_fresh_runs_and_checkpoints_older_than_the_loop():
    assert LoopState.from_dict(None) == LoopState()
    assert LoopState.from_dict({"step": 7, "seed": 0}) == LoopState(step=7)
    state = LoopState(step=3, window=[{"loss": 1.0}], nonfinite_skips=2, consecutive_skips=1)
    assert LoopState.from_dict(state.to_dict()) == state


# Two processes of one toy run: a NaN batch on process 0 only, then a SIGINT to process 1 only.
TWO_PROCESSES = """
import json, os, signal, sys
from pathlib import Path
import torch
from accelerate import Accelerator
from qa_ebm.training.loop import LoopSettings, LoopState, StepOutput, TrainingLoop
from qa_ebm.training.runs import TrainingInterrupted
from qa_ebm.training.schedules import warmup_cosine

accelerator = Accelerator()
rank = accelerator.process_index
torch.manual_seed(0)
model = torch.nn.Linear(3, 1)
optimizer = torch.optim.AdamW(model.parameters(), lr=0.1)
scheduler = warmup_cosine(optimizer, 1, 8, 0.1)
model, optimizer = accelerator.prepare(model, optimizer)
x_all, y_all = torch.randn(64, 3), torch.randn(64, 1)

def step_fn(step):
    rows = slice(step * 8 + rank * 4, step * 8 + rank * 4 + 4)
    x = x_all[rows] * (float("nan") if (step, rank) == (1, 0) else 1.0)
    if (step, rank) == (3, 1):
        os.kill(os.getpid(), signal.SIGINT)
    loss = (model(x) - y_all[rows]).pow(2).mean()
    accelerator.backward(loss)
    return StepOutput(loss=loss.detach(), stats={"loss": loss.item()}, inputs={"x": x})

saves, evals = [], []
settings = LoopSettings("train_toy", 8, 2, 3, None, 1.0, "skip", 3, lr=0.1)
loop = TrainingLoop(
    settings, accelerator, model, optimizer, scheduler, step_fn,
    lambda step, state: saves.append(step), lambda step, stats: evals.append(stats) or stats,
    checkpoint_dir=Path("ckpt"), progress=False,
)
try:
    loop.run(LoopState())
    stopped = None
except TrainingInterrupted as e:
    stopped = e.step
weights = [p.detach().flatten().tolist() for p in model.parameters()]
result = {"stopped": stopped, "saves": saves, "skips": [m["nonfinite_skips"] for m in evals], "weights": weights}
Path(sys.argv[1], f"{rank}.json").write_text(json.dumps(result))
"""


@pytest.mark.slow
def test_two_processes_take_every_stop_decision_together(tmp_path):
    """A signal or a NaN seen by one process only: both skip the same step and stop at the same step."""
    import json
    import socket
    import subprocess
    import sys

    script = tmp_path / "two.py"
    script.write_text(TWO_PROCESSES)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    command = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2"]
    command += ["--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no"]
    command += ["--main_process_port", str(port), str(script), str(tmp_path)]
    root = Path(__file__).resolve().parents[1]
    env = {**os.environ, "ACCELERATE_USE_CPU": "1", "OMP_NUM_THREADS": "1", "PYTHONPATH": str(root)}
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    first, second = (json.loads((tmp_path / f"{rank}.json").read_text()) for rank in (0, 1))
    assert first == second  # the same branch everywhere, and the same weights
    assert first["stopped"] == 4 and first["saves"] == [3, 4] and first["skips"] == [1, 1]
