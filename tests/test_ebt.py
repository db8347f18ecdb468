import json

import pytest
import torch

from qa_ebm.config import EBTConfig
from qa_ebm.errors import CheckpointError
from qa_ebm.models.ebt import EBTSpec, EnergyTransformer, LatentModel, LatentRegressor, energy_gradient

CFG = EBTConfig(d_model=32, n_heads=4, n_layers=2, max_condition_tokens=16, soft_tokens=2, num_landscapes=4)
SPEC = EBTSpec(latent_dim=6, num_slots=4, condition_vocab=40)


def _inputs(seed=0, B=3, L=10, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    x = torch.randint(1, 40, (B, L), generator=g)
    x_mask = torch.ones(B, L, dtype=torch.bool)
    x_mask[0, 6:] = False
    y = torch.randn(B, SPEC.num_slots, SPEC.latent_dim, generator=g, dtype=dtype)
    slot_mask = torch.tensor([[1, 1, 0, 0], [1, 1, 1, 1], [1, 0, 0, 0]], dtype=torch.bool)[:B]
    return x, x_mask, y, slot_mask


def _model(cls=EnergyTransformer, spec=SPEC):
    torch.manual_seed(0)
    return cls(CFG, spec).eval()


def test_energy_gradient_matches_finite_differences():
    model = _model().double()
    x, x_mask, y, slot_mask = _inputs(dtype=torch.float64)
    cond = model.condition(x, x_mask)
    _, g = energy_gradient(model, cond, y, slot_mask)
    eps = 1e-6
    for b, p, d in [(0, 0, 0), (1, 3, 5), (2, 0, 2), (0, 1, 4)]:
        bump = torch.zeros_like(y)
        bump[b, p, d] = eps
        fd = (model.energy(cond, y + bump, slot_mask) - model.energy(cond, y - bump, slot_mask))[b] / (2 * eps)
        assert g[b, p, d].item() == pytest.approx(fd.item(), rel=1e-5, abs=1e-8)
    y_req = y.clone().requires_grad_(True)
    assert torch.autograd.gradcheck(lambda t: model.energy(cond, t, slot_mask), (y_req,))


def test_padding_changes_nothing():
    model = _model()
    x, x_mask, y, slot_mask = _inputs()
    e = model(x, x_mask, y, slot_mask).energy
    x2, y2 = x.clone(), y.clone()
    x2[0, 6:] = 7  # padded condition tokens of example 0
    y2[0, 2:] = 100.0  # padded slots of example 0
    y2[2, 1:] = -50.0
    torch.testing.assert_close(model(x2, x_mask, y2, slot_mask).energy, e)
    _, g = energy_gradient(model, model.condition(x, x_mask), y, slot_mask)
    assert torch.all(g[0, 2:] == 0) and torch.all(g[2, 1:] == 0)


def test_cached_condition_is_reused_across_candidates():
    model = _model()
    x, x_mask, y, slot_mask = _inputs()
    n = 3
    cond = model.condition(x, x_mask).repeat_interleave(n)
    ys = y.repeat_interleave(n, 0) + 0.1 * torch.randn(len(y) * n, *y.shape[1:])
    masks = slot_mask.repeat_interleave(n, 0)
    direct = model(x.repeat_interleave(n, 0), x_mask.repeat_interleave(n, 0), ys, masks).energy
    torch.testing.assert_close(model.energy(cond, ys, masks), direct)


def test_energy_reads_question_latent_and_landscape():
    model = _model()
    x, x_mask, y, slot_mask = _inputs()
    e = model(x, x_mask, y, slot_mask).energy
    assert not torch.allclose(model(x.flip(0), x_mask.flip(0), y, slot_mask).energy, e)
    assert not torch.allclose(model(x, x_mask, y + 1, slot_mask).energy, e)
    k = torch.full((len(y),), 3)
    assert not torch.allclose(model(x, x_mask, y, slot_mask, k).energy, e)


def test_double_backward_reaches_the_weights():
    model = _model()
    x, x_mask, y, slot_mask = _inputs()
    cond = model.condition(x, x_mask)
    _, g = energy_gradient(model, cond, y, slot_mask, create_graph=True)
    g.pow(2).sum().backward()
    assert model.head[0].weight.grad is not None and model.head[0].weight.grad.abs().sum() > 0
    assert model.backbone.cond_in.weight.grad.abs().sum() > 0


def test_standardize_round_trip():
    model = _model()
    mean, std = torch.randn(2, SPEC.latent_dim), torch.rand(2, SPEC.latent_dim) + 0.5
    model.set_latent_stats(mean, std)
    z = torch.randn(3, SPEC.num_slots, SPEC.latent_dim)
    y = model.standardize(z)
    torch.testing.assert_close(y[:, 0], (z[:, 0] - mean[0]) / std[0])
    torch.testing.assert_close(y[:, 2], (z[:, 2] - mean[1]) / std[1])
    torch.testing.assert_close(model.unstandardize(y), z)


def test_condition_longer_than_configured_is_refused():
    model = _model()
    with pytest.raises(ValueError, match="max_condition_tokens"):
        model.condition(torch.ones(1, 17, dtype=torch.long), torch.ones(1, 17, dtype=torch.bool))


@pytest.mark.parametrize("cls", [EnergyTransformer, LatentRegressor])
def test_save_and_load_round_trip(cls, tmp_path):
    spec = EBTSpec(latent_dim=6, num_slots=4, condition_dim=12, hvae_run="abc")
    model = _model(cls, spec)
    model.set_latent_stats(torch.ones(2, 6), 2 * torch.ones(2, 6))
    model.save_pretrained(tmp_path / "m")
    loaded = LatentModel.from_pretrained(tmp_path / "m").eval()
    assert type(loaded) is cls and loaded.spec == spec
    feats, mask = torch.randn(2, 5, 12), torch.ones(2, 5, dtype=torch.bool)
    _, _, y, slot_mask = _inputs(B=2)
    if cls is EnergyTransformer:
        torch.testing.assert_close(loaded(feats, mask, y, slot_mask).energy, model(feats, mask, y, slot_mask).energy)
    else:
        torch.testing.assert_close(loaded(feats, mask, slot_mask), model(feats, mask, slot_mask))
    torch.testing.assert_close(loaded.latent_std, model.latent_std)


def test_load_refuses_the_wrong_kind_and_unknown_keys(tmp_path):
    _model(LatentRegressor).save_pretrained(tmp_path / "r")
    with pytest.raises(CheckpointError, match="LatentRegressor"):
        EnergyTransformer.from_pretrained(tmp_path / "r")
    meta = json.loads((tmp_path / "r" / "config.json").read_text())
    meta["ebt"]["depth"] = 3
    (tmp_path / "r" / "config.json").write_text(json.dumps(meta))
    with pytest.raises(Exception, match=r"unknown key 'depth'.*valid keys"):
        LatentModel.from_pretrained(tmp_path / "r")
    with pytest.raises(CheckpointError, match="not a saved"):
        LatentModel.from_pretrained(tmp_path / "nothing")


def test_spec_needs_one_condition_kind():
    with pytest.raises(ValueError, match="exactly one"):
        EBTSpec(latent_dim=2, num_slots=2)
    with pytest.raises(ValueError, match="exactly one"):
        EBTSpec(latent_dim=2, num_slots=2, condition_vocab=3, condition_dim=4)


def test_regressor_predicts_every_slot():
    model = _model(LatentRegressor)
    x, x_mask, _, slot_mask = _inputs()
    assert model(x, x_mask, slot_mask).shape == (3, SPEC.num_slots, SPEC.latent_dim)


def test_condition_select_matches_recomputing_for_those_rows():
    model = _model()
    x, x_mask, y, slot_mask = _inputs()
    rows = torch.tensor([2, 0, 2, 1])
    cond = model.condition(x, x_mask).select(rows)
    direct = model(x[rows], x_mask[rows], y[:4].repeat(2, 1, 1)[:4], slot_mask[rows]).energy
    torch.testing.assert_close(model.energy(cond, y[:4].repeat(2, 1, 1)[:4], slot_mask[rows]), direct)
