"""Each objective lowers its own loss on a tiny fixed batch; the pieces compute what their formulas say."""

import pytest
import torch

from qa_ebm.config import EBTConfig, TrainEBTConfig
from qa_ebm.energy.schedules import cosine_alpha_bar
from qa_ebm.models.ebt import EBTSpec, EnergyTransformer, LatentRegressor
from qa_ebm.training.ebt_objectives import (
    contrastive,
    in_batch_rivals,
    ired_objective,
    masked_mse,
    mcmc_objective,
    regress_objective,
)

CFG = EBTConfig(d_model=32, n_heads=4, n_layers=1, max_condition_tokens=8, num_landscapes=4)
SPEC = EBTSpec(latent_dim=4, num_slots=3, condition_vocab=20)


def _batch(B=6):
    g = torch.Generator().manual_seed(0)
    x = torch.randint(0, 20, (B, 8), generator=g)
    mask = torch.ones(B, 8, dtype=torch.bool)
    slot_mask = torch.ones(B, 3, dtype=torch.bool)
    slot_mask[::2, 2] = False
    gold = torch.randn(B, 3, 4, generator=g) * slot_mask.unsqueeze(-1)
    return x, mask, gold, slot_mask


def test_masked_mse_averages_real_slots_only():
    a = torch.zeros(2, 3, 2)
    b = torch.tensor([[[1.0, 1.0], [3.0, 3.0], [100.0, 100.0]], [[2.0, 2.0], [0.0, 0.0], [0.0, 0.0]]])
    mask = torch.tensor([[1, 1, 0], [1, 1, 1]], dtype=torch.bool)
    torch.testing.assert_close(masked_mse(a, b, mask), torch.tensor([5.0, 4.0 / 3]))


def test_contrastive_is_low_when_the_positive_has_the_lowest_energy():
    pos, neg = torch.tensor([-5.0]), [torch.tensor([5.0]), torch.tensor([4.0])]
    assert contrastive(pos, neg).item() < 1e-3 < contrastive(-pos, [-n for n in neg]).item()


def test_in_batch_rivals_never_pair_an_example_with_itself():
    y = torch.arange(4.0).view(4, 1, 1)
    for yr, _ in in_batch_rivals(y, torch.ones(4, 1, dtype=torch.bool), 7):
        assert not torch.equal(yr, y)
    assert len(in_batch_rivals(y, torch.ones(4, 1, dtype=torch.bool), 7)) == 3


def _fit(objective, model, steps=40, lr=3e-3):
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    x, mask, gold, slot_mask = _batch()
    losses = []
    for step in range(steps):
        gen = torch.Generator().manual_seed(step % 4)  # the same few draws again and again: a fixed problem
        out = objective(model, model.condition(x, mask), gold, slot_mask, gen)
        opt.zero_grad()
        out.loss.backward()
        opt.step()
        losses.append(out.loss.item())
    return losses, out


def test_mcmc_objective_lowers_its_loss_and_learns_the_step_size():
    torch.manual_seed(0)
    model = EnergyTransformer(CFG, SPEC)
    tc = TrainEBTConfig(mcmc_steps=3, mcmc_min_steps=2, truncate=2, langevin_noise=0.0, step_size=0.3)
    start = model.step_size

    def objective(m, cond, gold, slot_mask, gen):
        y0 = torch.randn(gold.shape, generator=gen)
        return mcmc_objective(m, cond, gold, slot_mask, y0, tc, gen, rivals=3)

    losses, out = _fit(objective, model)
    assert sum(losses[-5:]) / 5 < 0.85 * sum(losses[:5]) / 5
    assert model.step_size != pytest.approx(start)  # the step size is trained through the tracked steps
    assert out.refined is not None and not out.refined.requires_grad
    assert {"recon", "contrast", "gold_grad", "refined_mse"} <= set(out.parts)


def test_ired_objective_lowers_its_loss():
    torch.manual_seed(0)
    model = EnergyTransformer(CFG, SPEC)
    tc = TrainEBTConfig()
    abar = cosine_alpha_bar(CFG.num_landscapes)
    losses, out = _fit(lambda m, c, g, s, gen: ired_objective(m, c, g, s, abar, tc, gen, rivals=3), model)
    assert sum(losses[-5:]) / 5 < 0.7 * sum(losses[:5]) / 5
    assert {"denoise", "contrast"} <= set(out.parts)


def test_regress_objective_fits_the_batch():
    torch.manual_seed(0)
    model = LatentRegressor(CFG, SPEC)
    losses, _ = _fit(lambda m, c, g, s, gen: regress_objective(m, c, g, s), model, steps=60, lr=1e-2)
    assert losses[-1] < 0.3 * losses[0]
