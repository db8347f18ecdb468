import math

import pytest
import torch

from qa_ebm.energy.schedules import corrupt, cosine_alpha_bar, langevin_sigmas
from qa_ebm.errors import ConfigError

# --------------------------------------------------------------------------------------------------------------------
# cosine_alpha_bar
# --------------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("k", [1, 2, 10, 100])
def test_cosine_alpha_bar_in_unit_interval_and_decreasing(k):
    abar = cosine_alpha_bar(k)
    assert abar.shape == (k,)
    assert abar.dtype == torch.float32
    assert bool((abar > 0).all()) and bool((abar <= 1).all())
    assert bool((abar[1:] < abar[:-1]).all())


def test_cosine_alpha_bar_matches_nichol_dhariwal_formula():
    k, s = 10, 0.008

    def f(t):
        return math.cos((t / k + s) / (1 + s) * math.pi / 2) ** 2

    # Unclipped steps: abar_k = f(k + 1) / f(0) (the product telescopes).
    abar = cosine_alpha_bar(k, s)
    for i in range(k - 1):
        assert abar[i].item() == pytest.approx(f(i + 1) / f(0), rel=1e-5)
    # The last beta is clipped to 0.999 (f(K) = 0 would make it 1), so the noisiest landscape keeps 1/1000 of abar.
    assert abar[-1].item() == pytest.approx(abar[-2].item() * 1e-3, rel=1e-4)


def test_cosine_alpha_bar_least_noisy_first():
    abar = cosine_alpha_bar(10)
    assert abar[0] > 0.95
    assert abar[-1] < 1e-3


@pytest.mark.parametrize("bad", [0, -1, 2.5, True])
def test_cosine_alpha_bar_rejects_bad_count(bad):
    with pytest.raises(ConfigError, match="num_landscapes"):
        cosine_alpha_bar(bad)


# --------------------------------------------------------------------------------------------------------------------
# corrupt
# --------------------------------------------------------------------------------------------------------------------


def test_corrupt_scalar_and_per_example_abar():
    g = torch.Generator().manual_seed(0)
    y = torch.randn(3, 2, 4, generator=g)
    eps = torch.randn(3, 2, 4, generator=g)
    assert torch.allclose(corrupt(y, eps, 0.25), 0.5 * y + math.sqrt(0.75) * eps)
    abar = torch.tensor([1.0, 0.5, 0.0])
    out = corrupt(y, eps, abar)
    assert torch.allclose(out[0], y[0])
    assert torch.allclose(out[1], math.sqrt(0.5) * (y[1] + eps[1]))
    assert torch.allclose(out[2], eps[2])


def test_corrupt_with_landscape_indices_and_gradients():
    abar = cosine_alpha_bar(5)
    k = torch.tensor([0, 4])
    y = torch.ones(2, 3, requires_grad=True)
    out = corrupt(y, torch.zeros(2, 3), abar[k])
    out.sum().backward()
    # d/dy sqrt(abar_k) y = sqrt(abar_k), per example.
    assert torch.allclose(y.grad[:, 0], abar[k].sqrt())


def test_corrupt_rejects_mismatched_shapes():
    with pytest.raises(ValueError, match="eps"):
        corrupt(torch.zeros(2, 3), torch.zeros(2, 4), 0.5)
    with pytest.raises(ValueError, match="alpha_bar_k"):
        corrupt(torch.zeros(2, 3), torch.zeros(2, 3), torch.ones(3))


# --------------------------------------------------------------------------------------------------------------------
# langevin_sigmas
# --------------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("schedule", ["linear", "cosine"])
def test_langevin_sigmas_decay_from_max_to_min(schedule):
    sigmas = langevin_sigmas(11, sigma_max=1.0, sigma_min=0.1, schedule=schedule)
    assert sigmas.shape == (11,)
    assert sigmas[0].item() == pytest.approx(1.0)
    assert sigmas[-1].item() == pytest.approx(0.1)
    assert bool((sigmas[1:] < sigmas[:-1]).all())
    assert sigmas[5].item() == pytest.approx(0.55)  # both are symmetric about the midpoint


def test_langevin_sigmas_cosine_is_flat_at_the_ends():
    lin = langevin_sigmas(101, 1.0, 0.0, "linear")
    cos = langevin_sigmas(101, 1.0, 0.0, "cosine")
    assert cos[1] > lin[1]  # explores longer at the start
    assert cos[-2] < lin[-2]  # settles sooner at the end


def test_langevin_sigmas_constant_and_single_step():
    assert torch.equal(langevin_sigmas(4, 0.3, 0.0, "constant"), torch.full((4,), 0.3))
    assert langevin_sigmas(1, 0.3, 0.1, "linear").tolist() == [pytest.approx(0.3)]


def test_langevin_sigmas_rejects_bad_args():
    with pytest.raises(ConfigError, match="num_steps"):
        langevin_sigmas(0, 1.0)
    with pytest.raises(ConfigError, match="sigma_min"):
        langevin_sigmas(5, 0.1, 0.2)
    with pytest.raises(ConfigError, match="valid: linear, cosine, constant"):
        langevin_sigmas(5, 1.0, schedule="exp")
