"""Training schedules: the KL weight and the learning rate (free bits: qa_ebm.models.losses).

KL weight (`kl_beta`). The loss of a latent-variable model is ``recon + beta * KL``. With beta = 1 from the start, a
strong decoder learns to ignore the latents and the KL collapses to zero ("posterior collapse"). Annealing starts at
beta = 0, so the latents are first trained as a plain autoencoder, and raises beta linearly to ``beta_max``.
Cyclical annealing (Fu et al., 2019, https://arxiv.org/abs/1903.10145) repeats this ramp: the run of T steps is cut
into C equal cycles, and with tau = (step mod (T / C)) / (T / C) in [0, 1) the position within the current cycle
and R = ``ramp_fraction``,

    beta(step) = beta_max * min(1, tau / R).

Each return to beta = 0 lets the encoder re-learn informative codes from the previous cycle's solution. C = 1 is
plain monotonic annealing. An optional late decrease overrides the cycles from step
s0 = min(``decrease_start`` * T, T - 1) to the last step T - 1:

    beta(step) = beta_max + (beta_final - beta_max) * (step - s0) / (T - 1 - s0),

so the last steps train with a low beta and the latents carry more of the answer. The decrease starts from
beta_max whatever the cycle was doing, so if s0 falls inside a ramp beta jumps up to beta_max there.

Learning rate (`warmup_cosine`). Linear warmup over W steps (adaptive optimisers' second-moment estimates are
unreliable in the first steps, and a full lr there can blow up a transformer), then cosine annealing to
``min_lr_ratio`` * base lr at step T:

    lr(t) = base * (s + (1 - s) * t / W)                                            for t <= W, s = 1 / (W + 1)
    lr(t) = eta_min + (base - eta_min) * (1 + cos(pi * (t - W) / (T - W))) / 2      for W <= t <= T
"""

from __future__ import annotations

import math

import torch
from torch.optim.lr_scheduler import LambdaLR, LinearLR, SequentialLR

__all__ = ["kl_beta", "warmup_cosine"]


# --------------------------------------------------------------------------------------------------------------------
# KL weight
# --------------------------------------------------------------------------------------------------------------------


def _check_kl_beta_args(
    step: int,
    total_steps: int,
    beta_max: float,
    cycles: int,
    ramp_fraction: float,
    decrease_start: float | None,
    beta_final: float,
) -> None:
    if total_steps < 1:
        raise ValueError(f"total_steps must be >= 1, got {total_steps}")
    if step < 0:
        raise ValueError(f"step must be >= 0, got {step}")
    if cycles < 1:
        raise ValueError(f"cycles must be >= 1, got {cycles}")
    if cycles > total_steps:
        raise ValueError(f"cycles ({cycles}) must not exceed total_steps ({total_steps}): a cycle needs a step")
    if not 0.0 < ramp_fraction <= 1.0:
        raise ValueError(f"ramp_fraction must be in (0, 1], got {ramp_fraction}")
    if decrease_start is not None and not 0.0 <= decrease_start < 1.0:
        raise ValueError(f"decrease_start must be in [0, 1) or None, got {decrease_start}")
    if beta_max < 0.0:
        raise ValueError(f"beta_max must be >= 0, got {beta_max}")
    # A negative KL weight would reward the KL, and a final beta above beta_max is not a decrease.
    if not 0.0 <= beta_final <= beta_max:
        raise ValueError(f"beta_final must be in [0, beta_max={beta_max}], got {beta_final}")


def _cyclical_beta(step: int, total_steps: int, beta_max: float, cycles: int, ramp_fraction: float) -> float:
    # Position within the cycle in integer arithmetic, so cycle boundaries land exactly on 0 with no float drift
    # even when total_steps is not a multiple of cycles.
    tau = (step * cycles % total_steps) / total_steps
    return beta_max * min(1.0, tau / ramp_fraction)


def _late_decrease_beta(step: int, total_steps: int, beta_max: float, start: float, beta_final: float) -> float:
    last = total_steps - 1
    # When the decrease starts at the last step, that step is the whole decrease.
    progress = 1.0 if last <= start else (step - start) / (last - start)
    return beta_max + (beta_final - beta_max) * progress


def kl_beta(
    step: int,
    total_steps: int,
    beta_max: float,
    cycles: int = 1,
    ramp_fraction: float = 0.5,
    decrease_start: float | None = None,
    beta_final: float = 0.0,
) -> float:
    """KL weight at `step` (0-based) of `total_steps`.

    Cyclical annealing (Fu et al., 2019): the run is split into `cycles` equal cycles; within each, beta rises
    linearly from 0 to beta_max over the first `ramp_fraction` of the cycle, then stays at beta_max.
    cycles=1 is plain monotonic annealing. Optional late decrease: from step decrease_start*total_steps to the
    end, beta falls linearly from beta_max to beta_final (this overrides the cycles there), so the last steps
    train with a low beta and the latents carry more of the answer.

    Steps at or past `total_steps` (a run resumed with more steps than planned) hold the value of the last step.
    Raises ValueError for total_steps < 1, step < 0, cycles outside [1, total_steps], ramp_fraction outside (0, 1],
    decrease_start outside [0, 1), beta_max < 0 or beta_final outside [0, beta_max].
    """
    _check_kl_beta_args(step, total_steps, beta_max, cycles, ramp_fraction, decrease_start, beta_final)
    step = min(step, total_steps - 1)
    if decrease_start is not None:
        # Clamped to the last step so the run always ends at beta_final, even when decrease_start * total_steps
        # falls between the last step and the end.
        start = min(decrease_start * total_steps, total_steps - 1)
        if step >= start:
            return _late_decrease_beta(step, total_steps, beta_max, start, beta_final)
    return _cyclical_beta(step, total_steps, beta_max, cycles, ramp_fraction)


def _check_warmup_cosine_args(warmup_steps: int, total_steps: int, min_lr_ratio: float) -> None:
    if total_steps < 1:
        raise ValueError(f"total_steps must be >= 1, got {total_steps}")
    if warmup_steps < 0:
        raise ValueError(f"warmup_steps must be >= 0, got {warmup_steps}")
    if warmup_steps > total_steps:
        raise ValueError(f"warmup_steps ({warmup_steps}) must not exceed total_steps ({total_steps})")
    if not 0.0 <= min_lr_ratio <= 1.0:
        raise ValueError(f"min_lr_ratio must be in [0, 1], got {min_lr_ratio}")


def warmup_cosine(
    optimizer: torch.optim.Optimizer, warmup_steps: int, total_steps: int, min_lr_ratio: float = 0.0
) -> SequentialLR:
    """Linear warmup then cosine annealing, as a torch `SequentialLR` (call `.step()` once per optimiser step).

    The lr starts at base / (warmup_steps + 1) (small but nonzero, so the first step still moves the weights),
    rises linearly to the base lr at step `warmup_steps` (`LinearLR`), then follows a cosine down to
    base * `min_lr_ratio` at step `total_steps` (a `LambdaLR`: each param group decays from its own base lr, so
    groups with different lrs keep their ratio). The two are chained by `SequentialLR` with milestone
    `warmup_steps`.

    warmup_steps=0 still returns a SequentialLR (milestone 0: torch starts directly in the cosine, and the LinearLR is
    an inert placeholder), so checkpoints have the same state_dict layout whatever the warmup. With
    warmup_steps == total_steps there is no room for the decay: the lr reaches the base lr at total_steps.
    Past total_steps the cosine turns back up: do not step beyond it.

    To resume: build the optimizer and this scheduler as for a fresh run, then load both state_dicts (construction
    writes the optimizer's lr, so loading first would be overwritten).

    Raises ValueError for total_steps < 1, warmup_steps outside [0, total_steps] and min_lr_ratio outside [0, 1].
    """
    _check_warmup_cosine_args(warmup_steps, total_steps, min_lr_ratio)
    warmup = LinearLR(optimizer, start_factor=1.0 / (warmup_steps + 1), end_factor=1.0, total_iters=warmup_steps)
    # max(1, ...): a zero-length decay would divide by zero when warmup fills the whole run.
    decay_steps = max(1, total_steps - warmup_steps)

    def cosine_factor(t: int) -> float:  # of each group's own base lr, so groups may differ
        return min_lr_ratio + (1.0 - min_lr_ratio) * 0.5 * (1.0 + math.cos(math.pi * t / decay_steps))

    cosine = LambdaLR(optimizer, cosine_factor)
    return SequentialLR(optimizer, schedulers=[warmup, cosine], milestones=[warmup_steps])
