import itertools

import pytest
import torch

from qa_ebm.training.schedules import kl_beta, warmup_cosine

# --------------------------------------------------------------------------------------------------------------------
# kl_beta
# --------------------------------------------------------------------------------------------------------------------


def _betas(total_steps, beta_max=2.0, **kwargs):
    return [kl_beta(s, total_steps, beta_max, **kwargs) for s in range(total_steps)]


def test_kl_beta_monotonic_ramp_then_flat():
    betas = _betas(100, beta_max=2.0, ramp_fraction=0.5)
    assert betas[0] == 0.0
    # Linear over the ramp: step 25 is half way up.
    assert betas[25] == pytest.approx(1.0)
    assert all(b1 > b0 for b0, b1 in itertools.pairwise(betas[:51]))
    assert betas[50] == pytest.approx(2.0)
    assert betas[50:] == [pytest.approx(2.0)] * 50


def test_kl_beta_full_ramp_reaches_beta_max_at_last_step_only():
    betas = _betas(11, beta_max=1.0, ramp_fraction=1.0)
    assert betas[-1] < 1.0
    assert betas[-1] == pytest.approx(10 / 11)


def test_kl_beta_three_cycles_give_three_ramps():
    betas = _betas(300, beta_max=1.0, cycles=3, ramp_fraction=0.5)
    for start in (0, 100, 200):
        assert betas[start] == 0.0
        assert betas[start + 25] == pytest.approx(0.5)
        assert betas[start + 50 : start + 100] == [pytest.approx(1.0)] * 50
    drops = [s for s in range(1, 300) if betas[s] < betas[s - 1]]
    assert drops == [100, 200]


def test_kl_beta_cycles_not_dividing_total_steps():
    betas = _betas(10, beta_max=1.0, cycles=3, ramp_fraction=1.0)
    # Cycles of 10/3 steps: only step 0 starts a cycle exactly, the later cycles start between steps.
    assert betas[0] == 0.0
    drops = [s for s in range(1, 10) if betas[s] < betas[s - 1]]
    assert len(drops) == 2
    assert all(0.0 <= b < 1.0 for b in betas)


def test_kl_beta_late_decrease():
    total = 100
    betas = _betas(total, beta_max=1.0, cycles=2, ramp_fraction=0.25, decrease_start=0.8, beta_final=0.1)
    assert betas[79] == pytest.approx(1.0)
    assert betas[80] == pytest.approx(1.0)
    assert betas[-1] == pytest.approx(0.1)
    tail = betas[80:]
    assert all(b1 <= b0 for b0, b1 in itertools.pairwise(tail))
    assert tail[0] > tail[-1]
    # Linear: the midpoint of the decrease is the midpoint of the values.
    assert kl_beta(0, 3, 1.0, decrease_start=0.0, beta_final=0.0) == pytest.approx(1.0)
    assert kl_beta(1, 3, 1.0, decrease_start=0.0, beta_final=0.0) == pytest.approx(0.5)


def test_kl_beta_decrease_overrides_cycle_restart():
    # Without the decrease, step 50 would restart the second cycle at 0.
    assert kl_beta(50, 100, 1.0, cycles=2) == 0.0
    assert kl_beta(50, 100, 1.0, cycles=2, decrease_start=0.5, beta_final=0.0) == pytest.approx(1.0)


def test_kl_beta_decrease_starting_at_last_step():
    assert kl_beta(9, 10, 1.0, decrease_start=0.95, beta_final=0.3) == pytest.approx(0.3)
    assert kl_beta(8, 10, 1.0, decrease_start=0.95, beta_final=0.3) == pytest.approx(1.0)


@pytest.mark.parametrize("cycles", [1, 2, 5])
@pytest.mark.parametrize("ramp_fraction", [0.1, 0.5, 1.0])
@pytest.mark.parametrize(("decrease_start", "beta_final"), [(None, 0.0), (0.6, 0.0), (0.3, 0.25)])
def test_kl_beta_stays_in_range(cycles, ramp_fraction, decrease_start, beta_final):
    beta_max = 0.5
    betas = _betas(
        97,
        beta_max=beta_max,
        cycles=cycles,
        ramp_fraction=ramp_fraction,
        decrease_start=decrease_start,
        beta_final=beta_final,
    )
    assert all(min(beta_final, 0.0) <= b <= beta_max for b in betas)


def test_kl_beta_past_the_end_holds_last_value():
    kwargs = dict(decrease_start=0.5, beta_final=0.2)
    assert kl_beta(150, 100, 1.0, **kwargs) == kl_beta(99, 100, 1.0, **kwargs) == pytest.approx(0.2)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        (dict(total_steps=0), "total_steps"),
        (dict(step=-1), "step"),
        (dict(cycles=0), "cycles"),
        (dict(cycles=11), "cycles"),
        (dict(ramp_fraction=0.0), "ramp_fraction"),
        (dict(ramp_fraction=1.5), "ramp_fraction"),
        (dict(decrease_start=1.0), "decrease_start"),
        (dict(decrease_start=-0.1), "decrease_start"),
        (dict(beta_max=-1.0), "beta_max"),
        (dict(beta_final=2.0), "beta_final"),
        (dict(beta_final=-0.1), "beta_final"),
    ],
)
def test_kl_beta_rejects_bad_arguments(kwargs, match):
    args = dict(step=0, total_steps=10, beta_max=1.0) | kwargs
    with pytest.raises(ValueError, match=match):
        kl_beta(**args)


# --------------------------------------------------------------------------------------------------------------------
# free_bits_kl
# --------------------------------------------------------------------------------------------------------------------


def _kl(seed=0, n=6, d=4):
    return torch.rand(n, d, generator=torch.Generator().manual_seed(seed), dtype=torch.float64) * 2


# --------------------------------------------------------------------------------------------------------------------
# warmup_cosine
# --------------------------------------------------------------------------------------------------------------------

BASE_LR = 0.1


def _optimizer(lr=BASE_LR):
    return torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=lr)


def _run(optimizer, scheduler, steps):
    """lr in use before each of `steps` optimiser steps, then the lr after the last one."""
    lrs = [optimizer.param_groups[0]["lr"]]
    for _ in range(steps):
        optimizer.step()
        scheduler.step()
        lrs.append(optimizer.param_groups[0]["lr"])
    return lrs


def test_warmup_cosine_shape():
    warmup, total, ratio = 10, 50, 0.1
    opt = _optimizer()
    lrs = _run(opt, warmup_cosine(opt, warmup, total, min_lr_ratio=ratio), total)

    assert lrs[0] == pytest.approx(BASE_LR / (warmup + 1))
    # Linear during warmup: equal increments.
    increments = [b - a for a, b in itertools.pairwise(lrs[: warmup + 1])]
    assert increments == [pytest.approx(increments[0])] * warmup
    assert increments[0] > 0
    assert lrs[warmup] == pytest.approx(BASE_LR)
    # Strictly decreasing cosine after warmup, ending at the floor.
    decay = lrs[warmup:]
    assert all(b < a for a, b in itertools.pairwise(decay))
    assert lrs[total] == pytest.approx(BASE_LR * ratio)
    midpoint = warmup + (total - warmup) // 2
    assert lrs[midpoint] == pytest.approx(BASE_LR * (ratio + 1) / 2)


def test_warmup_cosine_zero_warmup():
    total = 20
    opt = _optimizer()
    sched = warmup_cosine(opt, 0, total)
    assert isinstance(sched, torch.optim.lr_scheduler.SequentialLR)
    lrs = _run(opt, sched, total)
    assert lrs[0] == pytest.approx(BASE_LR)
    assert all(b < a for a, b in itertools.pairwise(lrs))
    assert lrs[total] == pytest.approx(0.0, abs=1e-12)


def test_warmup_fills_whole_run():
    opt = _optimizer()
    lrs = _run(opt, warmup_cosine(opt, 5, 5), 5)
    assert lrs[-1] == pytest.approx(BASE_LR)
    assert all(b > a for a, b in itertools.pairwise(lrs))


@pytest.mark.parametrize("resume_at", [3, 8, 15])  # in warmup, at the milestone, in the cosine
def test_warmup_cosine_state_dict_round_trip(resume_at):
    warmup, total, ratio = 8, 30, 0.05
    opt = _optimizer()
    sched = warmup_cosine(opt, warmup, total, min_lr_ratio=ratio)
    _run(opt, sched, resume_at)
    opt_state, sched_state = opt.state_dict(), sched.state_dict()
    expected = _run(opt, sched, total - resume_at)

    new_opt = _optimizer()
    new_sched = warmup_cosine(new_opt, warmup, total, min_lr_ratio=ratio)
    new_opt.load_state_dict(opt_state)
    new_sched.load_state_dict(sched_state)
    resumed = _run(new_opt, new_sched, total - resume_at)
    assert resumed == pytest.approx(expected, rel=1e-12, abs=0)


def test_warmup_cosine_param_groups():
    params = [torch.nn.Parameter(torch.zeros(1)) for _ in range(2)]
    opt = torch.optim.SGD([{"params": [params[0]]}, {"params": [params[1]], "lr": 0.01}], lr=BASE_LR)
    # With a zero floor each group simply scales with its own base lr.
    sched = warmup_cosine(opt, 2, 10)
    for _ in range(5):
        opt.step()
        sched.step()
    lr0, lr1 = (g["lr"] for g in opt.param_groups)
    assert lr0 == pytest.approx(10 * lr1)
    # A nonzero floor is a ratio of each group's own lr (the energy transformer trains three groups).
    opt = torch.optim.SGD([{"params": [params[0]]}, {"params": [params[1]], "lr": 0.01}], lr=BASE_LR)
    sched = warmup_cosine(opt, 2, 10, min_lr_ratio=0.1)
    for _ in range(10):
        opt.step()
        sched.step()
    lr0, lr1 = (g["lr"] for g in opt.param_groups)
    assert lr0 == pytest.approx(0.1 * BASE_LR) and lr1 == pytest.approx(0.1 * 0.01)


@pytest.mark.parametrize(
    ("warmup", "total", "ratio", "match"),
    [
        (11, 10, 0.0, "must not exceed total_steps"),
        (0, 0, 0.0, "total_steps must be >= 1"),
        (-1, 10, 0.0, "warmup_steps must be >= 0"),
        (2, 10, -0.1, "min_lr_ratio"),
        (2, 10, 1.5, "min_lr_ratio"),
    ],
)
def test_warmup_cosine_rejects_bad_arguments(warmup, total, ratio, match):
    with pytest.raises(ValueError, match=match):
        warmup_cosine(_optimizer(), warmup, total, min_lr_ratio=ratio)
