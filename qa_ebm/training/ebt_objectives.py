"""Training objectives of the energy transformer (and of its direct-regression baseline).

All latents are standardised (see models/ebt.py), shaped (B, P, D) with a slot mask (B, P). The MSE of
two latents is the mean over real slots of the mean over dimensions of the squared difference.

mcmc (EBT, IREM; the original system)
    y_0 ~ N(0, I) or a replay-buffer sample;  T ~ U{T_min..T_max}
    y_{t+1} = y_t - a * u * g_t / |g_t| + sigma * n,   g_t = dE(x, y_t)/dy,  a = model.step_size learnable,
              u ~ U[1 - j, 1 + j] per example,  n ~ N(0, I)
    gradients flow through the last `truncate` steps only (earlier y_t are detached)
    L = recon * mean_{tracked t} MSE(y_t, y*)
      + contrast * CE(-[E(y*), E(sg(y_T)), E(y*_other)...], 0)            gold lowest among its rivals
      + gold_grad * |dE(x, y*)/dy|^2                                      the gold a fixed point
ired (Du et al. 2024, "Learning Iterative Reasoning through Energy Diffusion")
    k ~ U{0..K-1},  y_k = sqrt(abar_k) y* + sqrt(1 - abar_k) eps          (eq. 3, cosine abar)
    L = denoise * MSE(dE(x, y_k, k)/dy, eps)                              (eq. 5: the gradient predicts the noise)
      + contrast * CE(-[E(y_k), E(y_k + s n), E(y_k^other)...], 0)       (eq. 6: stronger corruption and
                                                                           other questions' answers rank higher)
regress (baseline)
    L = MSE(f(x), y*)
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from qa_ebm.config import TrainEBTConfig
from qa_ebm.energy.schedules import corrupt
from qa_ebm.models.ebt import Condition, EnergyTransformer, LatentRegressor, energy_gradient

# A several-process run's whole batch of gold latents (N, P, D), their slot mask (N, P), and which rows of it
# are this process's: where in-batch rivals come from.
WholeBatch = tuple[torch.Tensor, torch.Tensor, slice]


@dataclass
class ObjectiveOutput:
    loss: torch.Tensor
    parts: dict[str, float] = field(default_factory=dict)
    refined: torch.Tensor | None = None  # mcmc: the final y_T, detached (for the replay buffer)


def masked_mse(a: torch.Tensor, b: torch.Tensor, slot_mask: torch.Tensor) -> torch.Tensor:
    """Per-example MSE over real slots: (B, P, D) x2, (B, P) -> (B,)."""
    w = slot_mask.to(a.dtype)
    return ((a - b).pow(2).mean(-1) * w).sum(1) / w.sum(1).clamp_min(1.0)


def in_batch_rivals(
    y: torch.Tensor, slot_mask: torch.Tensor, n: int, whole: WholeBatch | None = None
) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Other questions' answers as negatives: the batch rolled by 1..n (never an example's own answer).

    In a several-process run `y` is this process's part of the step's batch and `whole` the batch itself:
    rivals are rolled over the whole batch, so each example has the rivals it has in a one-process run.
    """
    y_all, mask_all, part = (y, slot_mask, slice(None)) if whole is None else whole
    B = y_all.shape[0]
    return [(y_all.roll(s, 0)[part], mask_all.roll(s, 0)[part]) for s in range(1, min(n, B - 1) + 1)]


def contrastive(e_pos: torch.Tensor, e_negs: list[torch.Tensor]) -> torch.Tensor:
    """CE(-[E_pos, E_neg...], 0): the softmax over negative energies puts the positive first."""
    logits = -torch.stack([e_pos, *e_negs], dim=1)  # (B, 1 + n)
    return F.cross_entropy(logits, torch.zeros(len(e_pos), dtype=torch.long, device=logits.device))


def _normalise(g: torch.Tensor) -> torch.Tensor:
    return g / g.flatten(1).norm(dim=1).clamp_min(1e-8)[:, None, None]


def mcmc_objective(
    model: EnergyTransformer,
    cond: Condition,
    gold: torch.Tensor,
    slot_mask: torch.Tensor,
    y0: torch.Tensor,
    tc: TrainEBTConfig,
    generator: torch.Generator,
    rivals: int,
    whole: WholeBatch | None = None,
) -> ObjectiveOutput:
    B = gold.shape[0]
    real = slot_mask.to(gold.dtype).unsqueeze(-1)
    T = int(torch.randint(tc.mcmc_min_steps, tc.mcmc_steps + 1, (1,), generator=generator))
    jitter = 1 + tc.step_size_jitter * (2 * torch.rand(B, 1, 1, generator=generator) - 1)
    alpha = model.log_step_size.exp() * jitter.to(gold.device)  # (B, 1, 1)
    y, recon = y0 * real, []
    for t in range(T):
        tracked = t >= T - tc.truncate
        y = y if tracked else y.detach()
        _, g = energy_gradient(model, cond, y, slot_mask, create_graph=tracked)
        y = y - alpha * _normalise(g)
        if tc.langevin_noise > 0:
            y = y + tc.langevin_noise * torch.randn(y.shape, generator=generator).to(y.device)
        y = y * real
        if tracked:
            recon.append(masked_mse(y, gold, slot_mask).mean())
    recon_loss = torch.stack(recon).mean()

    e_gold, g_gold = energy_gradient(model, cond, gold, slot_mask, create_graph=True)
    e_refined = model.energy(cond, y.detach(), slot_mask)
    e_rivals = [model.energy(cond, yr, mr) for yr, mr in in_batch_rivals(gold, slot_mask, rivals, whole)]
    contrast = contrastive(e_gold, [e_refined, *e_rivals])
    gold_grad = g_gold.pow(2).sum((1, 2)).mean()
    loss = tc.recon_coeff * recon_loss + tc.contrast_coeff * contrast + tc.gold_grad_coeff * gold_grad
    parts = {
        "recon": recon_loss.item(),
        "contrast": contrast.item(),
        "gold_grad": gold_grad.item(),
        "refined_mse": masked_mse(y.detach(), gold, slot_mask).mean().item(),
        "step_size": model.step_size,
        "e_gold": e_gold.mean().item(),
        "e_refined": e_refined.mean().item(),
    }
    return ObjectiveOutput(loss, parts, refined=y.detach())


def ired_objective(
    model: EnergyTransformer,
    cond: Condition,
    gold: torch.Tensor,
    slot_mask: torch.Tensor,
    alpha_bar: torch.Tensor,
    tc: TrainEBTConfig,
    generator: torch.Generator,
    rivals: int,
    whole: WholeBatch | None = None,
) -> ObjectiveOutput:
    B = gold.shape[0]
    real = slot_mask.to(gold.dtype).unsqueeze(-1)
    k = torch.randint(0, len(alpha_bar), (B,), generator=generator).to(gold.device)
    abar = alpha_bar.to(gold.device)[k]  # (B,)
    eps = torch.randn(gold.shape, generator=generator).to(gold.device) * real
    y_k = corrupt(gold, eps, abar)
    e_pos, g = energy_gradient(model, cond, y_k, slot_mask, k, create_graph=True)
    denoise = masked_mse(g, eps, slot_mask).mean()

    stronger = (y_k + tc.negative_noise * torch.randn(gold.shape, generator=generator).to(gold.device)) * real
    e_negs = [model.energy(cond, stronger, slot_mask, k)]
    for yr, mr in in_batch_rivals(gold, slot_mask, rivals, whole):
        eps_r = torch.randn(gold.shape, generator=generator).to(gold.device) * mr.to(gold.dtype).unsqueeze(-1)
        e_negs.append(model.energy(cond, corrupt(yr, eps_r, abar), mr, k))
    contrast = contrastive(e_pos, e_negs)
    loss = tc.denoise_coeff * denoise + tc.contrast_coeff * contrast
    parts = {"denoise": denoise.item(), "contrast": contrast.item(), "e_pos": e_pos.mean().item()}
    return ObjectiveOutput(loss, parts)


def regress_objective(model: LatentRegressor, cond: Condition, gold: torch.Tensor, slot_mask: torch.Tensor):
    mse = masked_mse(model.predict(cond, slot_mask), gold, slot_mask).mean()
    return ObjectiveOutput(mse, {"mse": mse.item()})
