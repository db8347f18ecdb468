import math

import pytest
import torch

from qa_ebm.models.losses import free_bits_kl


def _kl(seed=0, n=6, d=4):
    return torch.rand(n, d, generator=torch.Generator().manual_seed(seed), dtype=torch.float64) * 2


@pytest.mark.parametrize("per_dim", [True, False])
def test_free_bits_floor_zero_is_mean_of_row_sums(per_dim):
    kl = _kl()
    assert free_bits_kl(kl, 0.0, per_dim).item() == pytest.approx(kl.sum(dim=1).mean().item())


@pytest.mark.parametrize("per_dim", [True, False])
def test_free_bits_mask_ignores_rows(per_dim):
    kl = _kl()
    kl[[1, 4]] = torch.tensor([1e6, math.inf, math.nan, 5.0], dtype=kl.dtype)  # garbage in padded rows
    mask = torch.tensor([1, 0, 1, 1, 0, 1])
    expected = kl[mask.bool()].sum(dim=1).mean().item()
    assert free_bits_kl(kl, 0.0, per_dim, mask=mask).item() == pytest.approx(expected)
    assert free_bits_kl(kl, 0.0, per_dim, mask=mask.bool()).item() == pytest.approx(expected)


def test_free_bits_per_dim_clamps_low_dimensions_by_hand():
    kl = torch.tensor([[0.1, 2.0, 0.0], [0.3, 4.0, 1.0]], dtype=torch.float64, requires_grad=True)
    # Means per dimension: 0.2, 3.0, 0.5. Floor 0.6 lifts dims 0 and 2: 0.6 + 3.0 + 0.6.
    out = free_bits_kl(kl, 0.6, per_dim=True)
    assert out.item() == pytest.approx(4.2)
    out.backward()
    # d out / d kl[n, 1] = 1 / N for the dimension above its floor, 0 for the clamped ones.
    expected_grad = torch.tensor([[0.0, 0.5, 0.0], [0.0, 0.5, 0.0]], dtype=torch.float64)
    torch.testing.assert_close(kl.grad, expected_grad)


def test_free_bits_per_dim_with_mask_uses_counted_mean():
    kl = torch.tensor([[0.1, 2.0], [9.0, 9.0], [0.3, 4.0]], dtype=torch.float64, requires_grad=True)
    out = free_bits_kl(kl, 0.6, per_dim=True, mask=torch.tensor([1.0, 0.0, 1.0]))
    assert out.item() == pytest.approx(0.6 + 3.0)
    out.backward()
    torch.testing.assert_close(kl.grad, torch.tensor([[0.0, 0.5], [0.0, 0.0], [0.0, 0.5]], dtype=torch.float64))


def test_free_bits_group_floor():
    kl = torch.tensor([[0.1, 0.2, 0.0], [0.3, 0.4, 0.2]], dtype=torch.float64, requires_grad=True)
    # mean_n sum_d = (0.3 + 0.9) / 2 = 0.6, below floor * D = 0.3 * 3 = 0.9.
    below = free_bits_kl(kl, 0.3, per_dim=False)
    assert below.item() == pytest.approx(0.9)
    below.backward()
    assert torch.count_nonzero(kl.grad) == 0

    kl.grad = None
    # The group floor only bounds the total: dimension 2 (mean 0.1) would be clamped by a per-dim floor of 0.15.
    above = free_bits_kl(kl, 0.15, per_dim=False)
    assert above.item() == pytest.approx(0.6)
    above.backward()
    torch.testing.assert_close(kl.grad, torch.full_like(kl, 0.5))
    assert free_bits_kl(kl, 0.15, per_dim=True).item() == pytest.approx(0.2 + 0.3 + 0.15)


@pytest.mark.parametrize("per_dim", [True, False])
def test_free_bits_empty_mask_returns_zero_with_graph(per_dim):
    kl = _kl().requires_grad_(True)
    out = free_bits_kl(kl, 0.5, per_dim, mask=torch.zeros(kl.shape[0]))
    assert out.dim() == 0
    assert out.item() == 0.0
    assert out.requires_grad
    out.backward()
    assert torch.count_nonzero(kl.grad) == 0


def test_free_bits_no_rows_returns_zero():
    kl = torch.zeros(0, 3, requires_grad=True)
    out = free_bits_kl(kl, 0.5, per_dim=True)
    assert out.item() == 0.0
    out.backward()


def test_free_bits_rejects_bad_arguments():
    with pytest.raises(ValueError, match="kl must be"):
        free_bits_kl(torch.zeros(3), 0.0, True)
    with pytest.raises(ValueError, match="mask must be"):
        free_bits_kl(torch.zeros(3, 2), 0.0, True, mask=torch.ones(2))
    with pytest.raises(ValueError, match="floor"):
        free_bits_kl(torch.zeros(3, 2), -0.1, True)
