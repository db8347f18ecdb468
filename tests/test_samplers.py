import itertools
import json

import pytest
import torch
from torch import nn

from qa_ebm.energy.samplers import (
    SAMPLERS,
    DivergenceError,
    GradientDescentConfig,
    GradientDescentSampler,
    IREDConfig,
    IREDSampler,
    LangevinConfig,
    LangevinSampler,
    RefinementError,
    best_of_n,
    build_sampler,
)
from qa_ebm.errors import ConfigError, QaEbmError

B, SLOTS, D = 3, 4, 5  # latents (B, 1+S, D) with S = 3 sentence slots


def _targets(seed=0, batch=B):
    return torch.rand(batch, SLOTS, D, generator=torch.Generator().manual_seed(seed)) * 2 - 1  # in [-1, 1]


def _noise(seed=1, batch=B):
    return torch.randn(batch, SLOTS, D, generator=torch.Generator().manual_seed(seed))


def quadratic(c, mask=None):
    """E(y) = sum over real slots ||y - c||^2, per example; ignores k."""

    def energy(y, k):
        sq = (y - c).square().sum(-1)  # (B, 1+S)
        return (sq if mask is None else sq * mask).sum(-1)

    return energy


def ired_quadratic(c, alpha_bar):
    """Landscape k's minimum at sqrt(abar_k) c, as an IRED-trained energy's is (it learns on corrupted latents)."""

    def energy(y, k):
        centre = alpha_bar[k].sqrt().view(-1, 1, 1) * c
        return (y - centre).square().sum((1, 2))

    return energy


def wiggly(y, k):
    """A non-convex energy: many local minima."""
    return (torch.sin(3 * y) + 0.1 * y.square()).sum((1, 2))


def _distance(y, c):
    return (y - c).norm(dim=(1, 2))


# --------------------------------------------------------------------------------------------------------------------
# Convergence on a convex toy
# --------------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("sampler", "tolerance"),
    [
        (GradientDescentSampler(step_size=0.05, max_steps=200), 0.05),  # normalised: oscillates within one step
        (GradientDescentSampler(step_size=0.25, max_steps=200, normalize=False, tol_energy=1e-8), 1e-3),
        (LangevinSampler(step_size=0.05, max_steps=200, sigma_max=0.05, tol_energy=0.0), 0.06),
        (GradientDescentSampler(step_size=0.05, max_steps=200, accept_if_lower=True), 0.05),
    ],
    ids=["gd", "gd-unnormalised", "langevin", "gd-accept-if-lower"],
)
def test_samplers_lower_the_energy_and_converge(sampler, tolerance):
    c = _targets()
    result = sampler.sample(quadratic(c), _noise(), generator=torch.Generator().manual_seed(0))
    assert bool((result.energy < result.initial_energy).all())
    assert bool((_distance(result.y, c) < tolerance).all()), _distance(result.y, c)
    assert result.y.shape == (B, SLOTS, D)
    assert result.steps.dtype == torch.long


@pytest.mark.parametrize("normalize", [True, False])
def test_ired_converges_to_the_clean_minimum(normalize):
    c = _targets()
    sampler = IREDSampler(
        num_landscapes=4,
        steps_per_landscape=60,
        step_size=0.05 if normalize else 0.3,
        normalize=normalize,
        unscale_output=True,
    )
    result = sampler.sample(ired_quadratic(c, sampler.alpha_bar), _noise())
    # The landscape-0 minimum is sqrt(abar_0) c; unscale_output divides sqrt(abar_0) out again.
    assert bool((_distance(result.y, c) < 0.06).all()), _distance(result.y, c)
    assert bool((result.energy < 0.01).all())


# --------------------------------------------------------------------------------------------------------------------
# Adaptive stopping
# --------------------------------------------------------------------------------------------------------------------


def test_adaptive_stopping_uses_more_steps_on_a_far_example():
    c = _targets(batch=2)
    offset = torch.tensor([0.01, 10.0]).view(2, 1, 1)
    sampler = GradientDescentSampler(step_size=0.25, max_steps=100, normalize=False, tol_energy=1e-6)
    result = sampler.sample(quadratic(c), c + offset)
    near, far = result.steps.tolist()
    assert 0 < near < far < 100
    assert [len(e) for e in result.energies] == [near, far]
    # Stopped because the energy stopped changing: the last change is below tol_energy.
    assert abs(result.energies[0][-1] - result.energies[0][-2]) < 1e-6


def test_an_example_at_its_minimum_takes_no_step():
    c = _targets(batch=2)
    y0 = c.clone()
    y0[1] += 1.0
    result = GradientDescentSampler(step_size=0.1, max_steps=10).sample(quadratic(c), y0)
    assert result.steps[0].item() == 0
    assert result.energies[0] == []
    assert torch.equal(result.y[0], c[0])
    assert result.steps[1].item() > 0


def test_tolerances_zero_run_to_the_cap():
    c = _targets()
    sampler = GradientDescentSampler(step_size=0.05, max_steps=7, tol_energy=0.0, tol_grad=0.0)
    result = sampler.sample(quadratic(c), _noise())
    assert result.steps.tolist() == [7] * B


# --------------------------------------------------------------------------------------------------------------------
# Accept-if-lower
# --------------------------------------------------------------------------------------------------------------------


def _monotone(trace):
    return all(b <= a for a, b in itertools.pairwise(trace))


def test_wiggly_energy_trace_is_not_monotone_without_accept_if_lower():
    # The toy is hard enough: plain descent with a large step goes up somewhere, so the next tests can fail.
    sampler = GradientDescentSampler(step_size=0.5, max_steps=30, tol_energy=0.0, diverge_patience=0)
    result = sampler.sample(wiggly, _noise())
    assert not all(_monotone(trace) for trace in result.energies)


def test_accept_if_lower_never_raises_the_energy_on_a_nonconvex_toy():
    sampler = GradientDescentSampler(step_size=0.5, max_steps=30, tol_energy=0.0, accept_if_lower=True)
    result = sampler.sample(wiggly, _noise())
    for trace, start in zip(result.energies, result.initial_energy.tolist(), strict=True):
        assert _monotone([start, *trace])
    assert bool((result.energy <= result.initial_energy).all())


def test_ired_trace_is_monotone_within_each_landscape():
    sampler = IREDSampler(
        num_landscapes=3,
        steps_per_landscape=20,
        step_size=0.5,
        normalize=True,
        clamp=None,
        scale_clamp=False,
        tol_energy=0.0,
    )
    result = sampler.sample(lambda y, k: wiggly(y, k) * (1 + k.view(-1)), _noise())
    assert result.landscapes is not None
    for trace, ks in zip(result.energies, result.landscapes, strict=True):
        assert len(trace) == len(ks)
        for _, group in itertools.groupby(zip(ks, trace, strict=True), key=lambda p: p[0]):
            assert _monotone([e for _, e in group])


def test_rejected_step_keeps_y_and_energy():
    # E = ||y||^2 and an unnormalised step of 10: y - 20 y = -19 y, which is higher, so every step is rejected.
    y0 = _noise()
    sampler = GradientDescentSampler(step_size=10.0, max_steps=5, normalize=False, accept_if_lower=True, tol_energy=0.0)
    energy = lambda y, k: y.square().sum((1, 2))  # noqa: E731
    state = sampler.evaluate(energy, y0)
    out = sampler.step(energy, state, 0)
    assert not bool(out.accepted.any())
    assert torch.equal(out.y, y0)
    assert torch.equal(out.energy, state.energy)
    result = sampler.sample(energy, y0)
    assert result.steps.tolist() == [1] * B  # a rejected example stops: the same step would be proposed again


# --------------------------------------------------------------------------------------------------------------------
# Masks
# --------------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["gd", "langevin", "ired"])
def test_padded_slots_never_move(name):
    c = _targets()
    mask = torch.tensor([[1, 1, 1, 1], [1, 1, 0, 0], [1, 0, 0, 0]], dtype=torch.bool)
    y0 = _noise() * 3
    # The energy also pulls on padded slots (an unmasked model); the sampler must still leave them alone.
    sampler = build_sampler(name, step_size=0.1, **({"steps_per_landscape": 10} if name == "ired" else {}))
    result = sampler.sample(quadratic(c), y0, mask=mask, generator=torch.Generator().manual_seed(0))
    padded = ~mask
    assert torch.equal(result.y[padded], y0[padded])
    assert not torch.equal(result.y[mask], y0[mask])


def test_grad_norm_counts_real_slots_only():
    c = torch.zeros(2, SLOTS, D)
    y0 = torch.zeros(2, SLOTS, D)
    y0[:, 0] = 1.0  # real slot: g = 2 per entry
    y0[:, 3] = 100.0  # padded slot: would dominate the norm
    mask = torch.tensor([[1, 1, 1, 0], [1, 1, 1, 0]], dtype=torch.bool)
    state = GradientDescentSampler().evaluate(quadratic(c), y0, mask=mask)
    assert torch.allclose(state.grad_norm, torch.full((2,), 2.0 * D**0.5))
    assert bool((state.grad[:, 3] == 0).all())


def test_mask_with_bad_shape_is_rejected():
    with pytest.raises(ValueError, match="does not broadcast"):
        GradientDescentSampler().sample(quadratic(_targets()), _noise(), mask=torch.ones(B, SLOTS + 1))


# --------------------------------------------------------------------------------------------------------------------
# Best of N
# --------------------------------------------------------------------------------------------------------------------


def test_best_of_n_returns_the_argmin_candidate():
    c = _targets(batch=2)
    n = 4
    y0s = _noise(batch=2 * n).view(2, n, SLOTS, D) * torch.tensor([3.0, 0.5, 2.0, 1.0]).view(1, n, 1, 1)
    sampler = GradientDescentSampler(step_size=0.05, max_steps=3)
    result = best_of_n(sampler, quadratic(c.repeat_interleave(n, dim=0)), y0s)
    assert result.energies.shape == (2, n)
    assert torch.equal(result.index, result.energies.argmin(dim=1))
    assert torch.equal(result.energy, result.energies.min(dim=1).values)
    rows = torch.arange(2) * n + result.index
    assert torch.equal(result.y, result.candidates.y[rows])
    # Candidates differ, so the choice is not trivial.
    assert bool((result.energies.max(dim=1).values > result.energy).all())


def test_best_of_n_with_init_fn_lays_rows_out_example_major():
    c = torch.stack([torch.full((SLOTS, D), 0.5), torch.full((SLOTS, D), -0.5)])  # (2, 1+S, D)
    n = 3
    seen = []

    def energy(y, k):
        seen.append(y.shape[0])
        return quadratic(c.repeat_interleave(n, dim=0))(y, k)

    def init_fn(rows, generator):
        return torch.randn(rows, SLOTS, D, generator=generator)

    sampler = GradientDescentSampler(step_size=0.2, max_steps=50, normalize=False)
    result = best_of_n(sampler, energy, n=n, init_fn=init_fn, batch_size=2, generator=torch.Generator().manual_seed(0))
    assert set(seen) == {2 * n}
    assert result.y.shape == (2, SLOTS, D)
    assert torch.allclose(result.y, c, atol=1e-2)


# --------------------------------------------------------------------------------------------------------------------
# IRED landscapes
# --------------------------------------------------------------------------------------------------------------------


def test_ired_visits_landscapes_from_noisiest_to_cleanest():
    num = 5
    calls = []

    def energy(y, k):
        assert k is not None and k.dtype == torch.long and k.shape == (y.shape[0],)
        assert len(set(k.tolist())) == 1
        calls.append(int(k[0]))
        return y.square().sum((1, 2))

    IREDSampler(num_landscapes=num, steps_per_landscape=2, tol_energy=0.0).sample(energy, _noise())
    visited = [key for key, _ in itertools.groupby(calls)]
    assert visited == list(range(num - 1, -1, -1))


def test_gd_passes_no_landscape():
    ks = []
    GradientDescentSampler(max_steps=2).sample(lambda y, k: ks.append(k) or y.square().sum((1, 2)), _noise())
    assert ks and all(k is None for k in ks)


def test_ired_rescales_between_landscapes():
    # Every step is rejected (see test_rejected_step_keeps_y_and_energy), so only the rescales (5) move y.
    sampler = IREDSampler(num_landscapes=4, steps_per_landscape=3, step_size=10.0, clamp=None, scale_clamp=False)
    y0 = _noise()
    result = sampler.sample(lambda y, k: y.square().sum((1, 2)), y0)
    abar = sampler.alpha_bar
    assert torch.allclose(result.y, y0 * (abar[0] / abar[-1]).sqrt(), rtol=1e-5)
    assert torch.allclose(sampler.rescale(y0, 2, 1), y0 * (abar[1] / abar[2]).sqrt())


def test_ired_scaled_clamp_bounds_every_landscape():
    sampler = IREDSampler(num_landscapes=3, steps_per_landscape=5, step_size=0.5, normalize=True, clamp=2.0)
    bounds = []

    def energy(y, k):
        bounds.append((y.abs().max().item(), 2.0 * sampler.alpha_bar[k[0]].sqrt().item()))
        return -y.square().sum((1, 2))  # pushes y outwards, against the clamp

    result = sampler.sample(energy, _noise() * 5)
    assert all(seen <= bound + 1e-6 for seen, bound in bounds)
    assert result.y.abs().max().item() == pytest.approx(2.0 * sampler.alpha_bar[0].sqrt().item(), rel=1e-5)


# --------------------------------------------------------------------------------------------------------------------
# Failures
# --------------------------------------------------------------------------------------------------------------------


def test_nan_energy_raises_naming_the_step():
    calls = {"n": 0}

    def energy(y, k):
        calls["n"] += 1
        e = y.square().sum((1, 2))
        if calls["n"] == 4:  # call 1 evaluates y0, call t + 1 evaluates after step t
            e = e.clone()
            e[1] = float("nan")
        return e

    with pytest.raises(RefinementError, match=r"step 3: .*NaN/inf for 1 of 3 examples.*step size") as info:
        GradientDescentSampler(step_size=0.1, max_steps=10, tol_energy=0.0).sample(energy, _noise())
    assert isinstance(info.value, QaEbmError)


def test_nan_at_the_start_blames_the_inputs():
    y0 = _noise()
    y0[0, 0, 0] = float("inf")
    with pytest.raises(RefinementError, match=r"step 0 \(landscape k=9\): .*1 of 3 .*start latent"):
        IREDSampler(clamp=None, scale_clamp=False).sample(lambda y, k: y.square().sum((1, 2)), y0)


def test_rising_energy_raises_divergence():
    # Unnormalised step 1.5 on ||y - c||^2: y - c -> -2 (y - c), the energy quadruples every step.
    sampler = GradientDescentSampler(step_size=1.5, max_steps=50, normalize=False, diverge_patience=3)
    with pytest.raises(DivergenceError, match=r"step 3: the energy rose for 3 consecutive steps.* 3 of 3 .*step size"):
        sampler.sample(quadratic(_targets()), _noise())


def test_exploding_latent_raises_divergence():
    # E = -||y||^2 falls forever while y grows: no rising energy, but the latent's scale explodes.
    sampler = GradientDescentSampler(step_size=1.0, max_steps=50, normalize=False, max_rms=100.0)
    with pytest.raises(DivergenceError, match="RMS"):
        sampler.sample(lambda y, k: -y.square().sum((1, 2)), _noise())


def test_energy_without_gradient_is_a_clear_error():
    with pytest.raises(RefinementError, match="does not depend on the latent"):
        GradientDescentSampler().sample(lambda y, k: torch.zeros(y.shape[0]), _noise())


def test_energy_of_wrong_shape_is_rejected():
    with pytest.raises(ValueError, match=r"\(B,\) = \(3,\)"):
        GradientDescentSampler().sample(lambda y, k: y.square().sum(), _noise())


def test_inference_mode_is_refused():
    with torch.inference_mode(), pytest.raises(RefinementError, match="inference_mode"):
        GradientDescentSampler().sample(quadratic(_targets()), _noise())


# --------------------------------------------------------------------------------------------------------------------
# Model parameters, determinism
# --------------------------------------------------------------------------------------------------------------------


def test_model_parameters_get_no_gradient():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(D, 8), nn.Tanh(), nn.Linear(8, 1))

    def energy(y, k):
        return model(y).squeeze(-1).sum(-1)  # (B,)

    y0 = _noise()
    with torch.no_grad():  # refinement must work even where the caller disabled gradients
        result = LangevinSampler(max_steps=5).sample(energy, y0, generator=torch.Generator().manual_seed(0))
    assert all(p.grad is None for p in model.parameters())
    assert not result.y.requires_grad and not result.energy.requires_grad
    assert not torch.equal(result.y, y0)


def test_langevin_is_deterministic_given_the_generator():
    c = _targets()
    sampler = LangevinSampler(step_size=0.1, max_steps=10, sigma_max=0.5, tol_energy=0.0)

    def run(seed):
        return sampler.sample(quadratic(c), _noise(), generator=torch.Generator().manual_seed(seed)).y

    assert torch.equal(run(0), run(0))
    assert not torch.equal(run(0), run(1))


def test_step_leaves_inactive_rows_alone():
    c = _targets()
    sampler = GradientDescentSampler(step_size=0.1)
    state = sampler.evaluate(quadratic(c), _noise())
    active = torch.tensor([True, False, True])
    out = sampler.step(quadratic(c), state, 0, active=active)
    assert out.accepted.tolist() == [True, False, True]
    assert torch.equal(out.y[1], state.y[1]) and out.energy[1] == state.energy[1]
    assert torch.allclose((out.y[0] - state.y[0]).norm(), torch.tensor(0.1))  # a normalised step moves alpha


# --------------------------------------------------------------------------------------------------------------------
# Configs and the registry
# --------------------------------------------------------------------------------------------------------------------


def test_registry_names():
    assert SAMPLERS == {"gd": GradientDescentSampler, "langevin": LangevinSampler, "ired": IREDSampler}
    sampler = build_sampler("ired", num_landscapes=3, step_size=0.2)
    assert isinstance(sampler, IREDSampler)
    assert sampler.config.num_landscapes == 3 and sampler.config.step_size == 0.2
    assert sampler.alpha_bar.shape == (3,)


def test_build_sampler_unknown_name_lists_valid_names():
    with pytest.raises(ConfigError, match="unknown sampler 'adam'; valid: gd, langevin, ired"):
        build_sampler("adam")


def test_build_sampler_unknown_option_lists_valid_options():
    with pytest.raises(ConfigError, match=r"unknown option\(s\) \['num_landscapes'\].*valid: step_size, max_steps"):
        build_sampler("gd", num_landscapes=3)


@pytest.mark.parametrize(
    ("name", "kwargs", "message"),
    [
        ("gd", {"step_size": 0.0}, "step_size must be > 0"),
        ("gd", {"max_steps": 2.5}, "max_steps must be int"),
        ("gd", {"normalize": 1}, "normalize must be bool"),
        ("langevin", {"sigma_min": 1.0, "sigma_max": 0.5}, "sigma_min <= sigma_max"),
        ("langevin", {"noise_schedule": "exp"}, "noise_schedule must be one of"),
        ("ired", {"clamp": None, "scale_clamp": True}, "scale_clamp needs a clamp"),
        ("ired", {"num_landscapes": 0}, "num_landscapes must be >= 1"),
    ],
)
def test_bad_values_raise_config_error(name, kwargs, message):
    with pytest.raises(ConfigError, match=message):
        build_sampler(name, **kwargs)


@pytest.mark.parametrize("config_class", [GradientDescentConfig, LangevinConfig, IREDConfig])
def test_config_json_round_trip(config_class):
    config = config_class(step_size=0.3)
    data = json.loads(json.dumps(config.to_dict()))
    assert config_class.from_dict(data) == config
    sampler = SAMPLERS[config_class.sampler].from_config(data)
    assert sampler.config == config


def test_config_accepts_ints_for_floats_from_json():
    assert GradientDescentConfig.from_dict({"step_size": 1}).step_size == 1.0
    assert isinstance(GradientDescentConfig.from_dict({"step_size": 1}).step_size, float)


def test_langevin_with_accept_if_lower_retries_after_a_rejection():
    # Noise makes proposals differ, so a rejection must not stop the example (it does for deterministic samplers).
    c = _targets()
    sampler = LangevinSampler(
        step_size=0.05, max_steps=40, sigma_max=0.5, noise_schedule="constant", accept_if_lower=True, tol_energy=0.0
    )
    result = sampler.sample(quadratic(c), c + 0.01, generator=torch.Generator().manual_seed(0))
    assert result.steps.tolist() == [40] * B
    for trace, start in zip(result.energies, result.initial_energy.tolist(), strict=True):
        assert _monotone([start, *trace])


def test_ired_ddim_transition_recovers_the_clean_latent_from_an_exact_noise_predictor():
    """E_k(y) = |y - sqrt(abar_k) y*|^2 / (2 sqrt(1 - abar_k)): its gradient is exactly the noise of y_k.

    With the gradient as the noise estimate, DDIM lands on y* whatever the few in-landscape steps did.
    """
    from qa_ebm.energy.samplers import IREDSampler

    K = 6
    target = torch.randn(3, 2, 4, generator=torch.Generator().manual_seed(1))
    sampler = IREDSampler(
        num_landscapes=K,
        steps_per_landscape=1,
        step_size=1e-3,
        clamp=None,
        scale_clamp=False,
        transition="ddim",
        unscale_output=True,
    )
    abar = sampler.alpha_bar

    def energy(y, k):
        a = abar[k].view(-1, 1, 1)
        return ((y - a.sqrt() * target) ** 2).sum((1, 2)) / (2 * (1 - a).sqrt().squeeze())

    y0 = torch.randn(3, 2, 4, generator=torch.Generator().manual_seed(2))
    out = sampler.sample(energy, y0)
    torch.testing.assert_close(out.y, target, atol=1e-3, rtol=1e-3)
    rescaled = IREDSampler(K, 1, 1e-3, clamp=None, scale_clamp=False, unscale_output=True)
    assert (rescaled.sample(energy, y0).y - target).abs().max() > 0.1  # the noise-free rescale keeps the noise
