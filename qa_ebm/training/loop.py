"""The training loop every trainer shares: update, cadence, time budget, interruption, non-finite steps.

A trainer says what one step computes (``step_fn(step) -> StepOutput``: the forward and backward passes on
the step's batch), how to save a checkpoint and how to evaluate; :class:`TrainingLoop` does the rest, the
same way for every trainer:

- the update: gradient clipping, optimizer and scheduler step;
- evaluation every ``eval_every`` steps and a checkpoint every ``save_every`` steps (and at the last step);
- the wall-clock budget ``max_seconds``: evaluate, save and stop at the step where it runs out;
- SIGINT / SIGTERM: the step under way finishes (with its evaluation, when one is due), a checkpoint is
  saved and :class:`TrainingInterrupted` is raised (the command exits 128 + the signal's number); a
  second SIGINT stops at once, as Ctrl-C normally does, leaving the last checkpoint as it was;
- non-finite values in the step's float inputs, its loss or its gradient norm, by the ``nonfinite``
  setting: ``stop`` raises :class:`TrainingError` naming the step and the last good checkpoint (nothing
  is saved, so the checkpoint is never one trained on the bad step); ``skip`` drops the step's update
  with a warning, counts it (``nonfinite_skips`` in the metrics) and stops once ``max_nonfinite_skips``
  steps in a row were skipped;
- out of memory: a TrainingError with the trainer's advice (a smaller batch...).

A skipped step still advances the step counter and the lr schedule: the batch and the schedule stay a
function of the step, and the bad batch is not retried forever.

The loop's own state (step, the metrics window since the last evaluation, skip counters) goes into every
checkpoint (:meth:`LoopState.to_dict`), so a run resumed after an interruption trains and logs exactly
as the uninterrupted run.

With several processes (``accelerate launch``) each stop decision (a signal, the budget, a non-finite
value) is reduced over the processes at every step, so that all of them take the same branch.
"""

from __future__ import annotations

import logging
import signal
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch

from qa_ebm.training.runs import TrainingError, TrainingInterrupted

log = logging.getLogger(__name__)

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


@dataclass(frozen=True)
class LoopSettings:
    """Cadence, budget and fault policy of a run: read from a trainer's config section (`from_config`)."""

    section: str  # the config section ("train_hvae"), named in messages
    steps: int
    eval_every: int
    save_every: int
    max_seconds: float | None
    grad_clip: float
    nonfinite: Literal["stop", "skip"] = "stop"
    max_nonfinite_skips: int = 10
    lr_key: str = "lr"  # the learning-rate setting a non-finite message suggests lowering
    lr: float = 0.0

    @classmethod
    def from_config(cls, tc: Any, section: str, lr_key: str = "lr") -> LoopSettings:
        return cls(
            section=section,
            steps=tc.steps,
            eval_every=tc.eval_every,
            save_every=tc.save_every,
            max_seconds=tc.max_seconds,
            grad_clip=tc.grad_clip,
            nonfinite=tc.nonfinite,
            max_nonfinite_skips=tc.max_nonfinite_skips,
            lr_key=lr_key,
            lr=getattr(tc, lr_key),
        )


@dataclass
class StepOutput:
    """What one step computed, before its update is applied."""

    loss: torch.Tensor  # the loss (or the losses of its micro-batches) that was backpropagated
    stats: dict[str, float]  # logged, averaged over the steps since the last evaluation
    inputs: Mapping[str, torch.Tensor] = field(default_factory=dict)  # the batch: float tensors are checked
    after_update: Callable[[], None] | None = None  # runs once the update is applied (never on a skipped step)


@dataclass
class LoopState:
    """Where a run is: saved in every checkpoint so that a resumed run goes on as if never stopped."""

    step: int = 0
    window: list[dict[str, float]] = field(default_factory=list)  # stats of the steps since the last eval
    nonfinite_skips: int = 0  # steps skipped so far
    consecutive_skips: int = 0

    def to_dict(self) -> dict[str, Any]:
        return {
            "step": self.step,
            "window": self.window,
            "nonfinite_skips": self.nonfinite_skips,
            "consecutive_skips": self.consecutive_skips,
        }

    @classmethod
    def from_dict(cls, state: Mapping[str, Any] | None) -> LoopState:
        """From a checkpoint's state.json (None: a fresh run); checkpoints older than the loop have a step only."""
        if state is None:
            return cls()
        return cls(
            step=int(state["step"]),
            window=list(state.get("window", [])),
            nonfinite_skips=int(state.get("nonfinite_skips", 0)),
            consecutive_skips=int(state.get("consecutive_skips", 0)),
        )


@dataclass
class LoopResult:
    step: int
    stopped: str  # "done" | "time budget"
    metrics: dict[str, Any]  # the last evaluation's


class StopRequest:
    """Turns SIGINT and SIGTERM into a request to stop after the step under way, while the loop runs.

    The handlers only record the signal (a handler that does real work could run in the middle of a
    checkpoint write); the loop reads it between steps. A second SIGINT raises KeyboardInterrupt at once.
    Handlers can only be set from the main thread; elsewhere (a loop run from a worker thread) signals
    keep their usual effect.
    """

    def __init__(self) -> None:
        self.signum: int | None = None
        self._previous: dict[int, Any] = {}

    def __enter__(self) -> StopRequest:
        if threading.current_thread() is threading.main_thread():
            for signum in STOP_SIGNALS:
                self._previous[signum] = signal.signal(signum, self._handle)
        return self

    def __exit__(self, *exc: object) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
        self._previous.clear()

    def _handle(self, signum: int, frame: object) -> None:
        if self.signum is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.signum = self.signum or signum


class TrainingLoop:
    """Runs `step_fn` from a saved (or fresh) :class:`LoopState` to the end, the budget or a signal.

    `save(step, loop_state)` writes a checkpoint holding `loop_state` (a dict, for state.json);
    `evaluate(step, train_stats)` returns the step's metrics (and logs them). `oom_advice` finishes the
    message of an out-of-memory error ("with train_x.batch_size=32; try ..."). `show` names the stats the
    progress bar displays.
    """

    def __init__(
        self,
        settings: LoopSettings,
        accelerator,
        model: torch.nn.Module,
        optimizer: torch.optim.Optimizer,
        scheduler,
        step_fn: Callable[[int], StepOutput],
        save: Callable[[int, dict[str, Any]], None],
        evaluate: Callable[[int, dict[str, float]], dict[str, Any]],
        checkpoint_dir: Path,
        oom_advice: str = "",
        desc: str = "train",
        show: tuple[str, ...] = ("loss",),
        progress: bool = True,
    ) -> None:
        self.settings = settings
        self.accelerator = accelerator
        self.model, self.optimizer, self.scheduler = model, optimizer, scheduler
        self.step_fn, self.save, self.evaluate = step_fn, save, evaluate
        self.checkpoint_dir = checkpoint_dir
        self.oom_advice, self.desc, self.show, self.progress = oom_advice, desc, show, progress

    def run(self, state: LoopState) -> LoopResult:
        from tqdm.auto import tqdm

        s = self.settings
        started, metrics, stopped = time.perf_counter(), {}, "done"
        last_saved = state.step if state.step > 0 else None
        bar = tqdm(
            total=s.steps,
            initial=state.step,
            desc=self.desc,
            disable=not self.progress or not self.accelerator.is_main_process,
        )
        try:
            with StopRequest() as stop:
                while state.step < s.steps:
                    output, fault = self._compute(state.step)
                    out_of_time = s.max_seconds is not None and time.perf_counter() - started > s.max_seconds
                    signum, out_of_time, faulty = self._agree(stop.signum, out_of_time, fault)
                    if faulty:
                        fault = fault or "loss or gradient of another process became non-finite"
                        self._skip(state.step, fault, state, last_saved)
                    else:
                        self._update(output, state)
                    state.step += 1
                    bar.update(1)
                    if state.window:
                        bar.set_postfix({k: f"{state.window[-1][k]:.3f}" for k in self.show if k in state.window[-1]})
                    if state.step % s.eval_every == 0 or state.step == s.steps or out_of_time:
                        metrics = self.evaluate(state.step, self._train_stats(state))
                        state.window = []
                    if state.step % s.save_every == 0 or state.step == s.steps or out_of_time or signum:
                        self.save(state.step, state.to_dict())
                        last_saved = state.step
                    if signum:
                        raise TrainingInterrupted(signum, state.step, self.checkpoint_dir)
                    if out_of_time:
                        stopped = "time budget"
                        break
        finally:
            bar.close()
        return LoopResult(step=state.step, stopped=stopped, metrics=metrics)

    # ------------------------------------------------------------------------------------------- a step

    def _compute(self, step: int) -> tuple[StepOutput, str | None]:
        """Forward, backward and gradient clipping; the first non-finite value found, described, or None."""
        s = self.settings
        try:
            output = self.step_fn(step)
            fault = _nonfinite_input(output.inputs) or _nonfinite("loss", output.loss)
            grad_norm = self.accelerator.clip_grad_norm_(self.model.parameters(), s.grad_clip)
        except torch.OutOfMemoryError as e:
            raise TrainingError(f"out of memory at step {step} {self.oom_advice}".rstrip()) from e
        return output, fault or _nonfinite("gradient norm", grad_norm)

    def _update(self, output: StepOutput, state: LoopState) -> None:
        self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad()
        if output.after_update is not None:
            output.after_update()
        state.consecutive_skips = 0
        state.window.append({**output.stats, "lr": self.scheduler.get_last_lr()[0]})

    def _skip(self, step: int, fault: str, state: LoopState, last_saved: int | None) -> None:
        """Apply the non-finite policy: stop (raise), or drop this step's update and count it."""
        s = self.settings
        checkpoint = (
            f"the last good checkpoint is step {last_saved} (--resume continues from it)"
            if last_saved is not None
            else "no checkpoint was saved yet"
        )
        advice = (
            f"try a lower {s.section}.{s.lr_key} (now {s.lr}), {s.section}.grad_clip, or {s.section}.mixed_precision=no"
        )
        if s.nonfinite == "stop":
            raise TrainingError(
                f"the {fault} at step {step}; stopped without saving, {checkpoint}; {advice}, "
                f"or --set {s.section}.nonfinite=skip to skip such steps"
            )
        self.optimizer.zero_grad()
        self.scheduler.step()  # the schedule stays a function of the step
        state.nonfinite_skips += 1
        state.consecutive_skips += 1
        log.warning(
            "%s: the %s at step %d; its update is skipped (%d skipped so far)",
            s.section,
            fault,
            step,
            state.nonfinite_skips,
        )
        if state.consecutive_skips >= s.max_nonfinite_skips:
            raise TrainingError(
                f"the {fault} at step {step}: {state.consecutive_skips} steps in a row skipped "
                f"({s.section}.max_nonfinite_skips={s.max_nonfinite_skips}); stopped without saving, "
                f"{checkpoint}; {advice}"
            )

    def _agree(self, signum: int | None, out_of_time: bool, fault: str | None) -> tuple[int, bool, bool]:
        """The stop decisions of all processes, combined (the largest signal, any budget, any fault)."""
        if self.accelerator.num_processes == 1:
            return signum or 0, out_of_time, fault is not None
        flags = torch.tensor(
            [signum or 0, float(out_of_time), float(fault is not None)], device=self.accelerator.device
        )
        flags = self.accelerator.reduce(flags, "max").tolist()
        return int(flags[0]), bool(flags[1]), bool(flags[2])

    def _train_stats(self, state: LoopState) -> dict[str, float]:
        """The mean of each stat over the steps since the last evaluation, and the skip count."""
        stats = {f"train_{k}": float(np.mean([w[k] for w in state.window])) for k in (state.window or [{}])[0]}
        stats["nonfinite_skips"] = state.nonfinite_skips
        return stats


def _nonfinite(what: str, value: torch.Tensor) -> str | None:
    if bool(torch.isfinite(value).all()):
        return None
    bad = value.detach().flatten()[~torch.isfinite(value.detach().flatten())][0].item()
    return f"{what} became {bad}"


def _nonfinite_input(inputs: Mapping[str, torch.Tensor]) -> str | None:
    for name, tensor in inputs.items():
        if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
            bad = int((~torch.isfinite(tensor)).sum())
            return f"batch input {name!r} holds {bad} non-finite value{'s' if bad > 1 else ''}"
    return None


__all__ = ["LoopResult", "LoopSettings", "LoopState", "StepOutput", "StopRequest", "TrainingLoop"]
