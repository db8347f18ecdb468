"""Loss pieces shared by the latent-variable models.

Free bits (`free_bits_kl`, Kingma et al., 2016, https://arxiv.org/abs/1606.04934). The KL term is replaced by
max(floor, KL): below the floor the KL costs a constant, so the optimiser has no reason to push it further towards
zero, and each latent may carry ``floor`` nats for free. Per dimension (D latent dimensions, KL averaged over the N
counted items first, since the floor applies to the batch average rather than to each item):

    sum_d max(floor, mean_n KL[n, d])

or for the whole group: max(floor * D, mean_n sum_d KL[n, d]). The per-dimension form stops single dimensions from
collapsing; the group form only bounds the total, so the model may still concentrate it in a few dimensions.
"""

from __future__ import annotations

import torch


def _mean_over_counted(kl: torch.Tensor, mask: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-dimension mean of `kl` over the counted rows, and the number of counted rows (a tensor)."""
    if mask is None:
        counted = kl
        count = kl.new_tensor(float(kl.shape[0]))
    else:
        keep = mask.to(torch.bool)
        # torch.where rather than kl * mask: padded rows may hold inf/NaN, and 0 * inf would poison the sum.
        counted = torch.where(keep[:, None], kl, kl.new_zeros(()))
        count = keep.sum().to(kl.dtype)
    # clamp_min(1) only matters when nothing is counted; the caller zeroes that case.
    return counted.sum(dim=0) / count.clamp_min(1.0), count


def free_bits_kl(kl: torch.Tensor, floor: float, per_dim: bool, mask: torch.Tensor | None = None) -> torch.Tensor:
    """KL to put in the loss, with free bits (Kingma et al., 2016).

    kl: (N, D) per-item, per-dimension KL; mask: optional (N,) 1 for items that count (e.g. real sentences), 0 else.
    Averages over counted items first, then:
      per_dim=True:  sum_d max(floor, mean_n kl[n, d])       (floor in nats per dimension)
      per_dim=False: max(floor * D, mean_n sum_d kl[n, d])   (the same floor for the whole group)
    With floor == 0 both equal mean_n sum_d kl[n, d]. Returns a scalar; gradients flow only where the KL is above
    its floor. With no counted items (mask all zero) returns 0 (a zero tensor that keeps the graph).

    Any nonzero mask entry counts the item. Raises ValueError for a kl that is not 2-D, a mask that is not (N,),
    or a negative floor.
    """
    if kl.dim() != 2:
        raise ValueError(f"kl must be (N, D), got shape {tuple(kl.shape)}")
    if mask is not None and mask.shape != kl.shape[:1]:
        raise ValueError(f"mask must be (N,) = ({kl.shape[0]},), got shape {tuple(mask.shape)}")
    if floor < 0.0:
        raise ValueError(f"floor must be >= 0, got {floor}")

    mean_kl, count = _mean_over_counted(kl, mask)
    if per_dim:
        out = mean_kl.clamp_min(floor).sum()
    else:
        out = mean_kl.sum().clamp_min(floor * kl.shape[1])
    # Multiply by (count > 0) instead of branching on it: a Python `if` on a device tensor would force a host sync
    # every step. With nothing counted, `out` is the finite floor, so this gives an exact 0 still in the graph.
    return out * (count > 0).to(out.dtype)


# --------------------------------------------------------------------------------------------------------------------
# Learning rate
# --------------------------------------------------------------------------------------------------------------------
