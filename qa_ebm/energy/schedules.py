"""Noise schedules for the energy landscapes and for Langevin refinement.

Annealed landscapes (IRED = "Learning Iterative Reasoning through Energy Diffusion", Du et al. 2024). The energy
model is trained on K landscapes k = 0..K-1 of rising noise. Landscape k sees latents corrupted as in a diffusion
model's forward process (DDPM, Ho et al. 2020, eq. 4):

    y_k = sqrt(abar_k) * y + sqrt(1 - abar_k) * eps,    eps ~ N(0, I)                                   (1)

with abar_k the cumulative signal fraction of the cosine schedule (Nichol & Dhariwal 2021, "Improved Denoising
Diffusion Probabilistic Models", eq. 17), over T = K diffusion steps t = 0..T and offset s:

    f(t)    = cos^2( (t / T + s) / (1 + s) * pi / 2 )                                                   (2)
    beta_t  = min(0.999, 1 - f(t) / f(t - 1))          t = 1..T      (clipped so the last step is not singular)
    abar_k  = prod_{t=1..k+1} (1 - beta_t)             k = 0..K-1                                      (3)

So landscape k = 0 is the least noisy (abar_0 just below 1) and k = K-1 the noisiest (abar_{K-1} close to 0, a
latent there is almost pure noise). This is `cosine_beta_schedule` + `cumprod` of the IRED code release, which
indexes its timesteps the same way. The offset s keeps beta_1 from being vanishingly small.

Langevin noise (`langevin_sigmas`): the scale sigma_t of the Gaussian noise added at refinement step t, decaying
from sigma_max to sigma_min so that early steps explore and the last steps settle into a minimum:

    linear:    sigma_t = sigma_max + (sigma_min - sigma_max) * t / (T - 1)
    cosine:    sigma_t = sigma_min + (sigma_max - sigma_min) * (1 + cos(pi * t / (T - 1))) / 2
    constant:  sigma_t = sigma_max
"""

from __future__ import annotations

import math

import torch

from qa_ebm.errors import ConfigError

__all__ = ["NOISE_SCHEDULES", "corrupt", "cosine_alpha_bar", "langevin_sigmas"]

NOISE_SCHEDULES = ("linear", "cosine", "constant")


def cosine_alpha_bar(num_landscapes: int, s: float = 0.008) -> torch.Tensor:
    """abar_k for k = 0..K-1 on the cosine schedule, eqs. (2)-(3): shape (K,), float32, in (0, 1], decreasing in k.

    Computed in float64 (the product of K factors near 1 loses digits in float32) and returned as float32.
    Raises ConfigError for num_landscapes < 1 or s <= 0.
    """
    if isinstance(num_landscapes, bool) or not isinstance(num_landscapes, int) or num_landscapes < 1:
        raise ConfigError(f"num_landscapes must be an int >= 1, got {num_landscapes!r}")
    if not s > 0.0:
        raise ConfigError(f"cosine schedule offset s must be > 0, got {s!r}")
    t = torch.arange(num_landscapes + 1, dtype=torch.float64)
    f = torch.cos((t / num_landscapes + s) / (1.0 + s) * math.pi / 2.0) ** 2  # (K+1,)   (2)
    betas = (1.0 - f[1:] / f[:-1]).clamp(0.0, 0.999)  # (K,)
    return torch.cumprod(1.0 - betas, dim=0).to(torch.float32)  # (K,)   (3)


def corrupt(y: torch.Tensor, eps: torch.Tensor, alpha_bar_k: torch.Tensor | float) -> torch.Tensor:
    """Eq. (1): sqrt(abar) * y + sqrt(1 - abar) * eps.

    y, eps: (B, ...) of the same shape. alpha_bar_k: a float, a 0-d tensor, or a (B,) tensor with one abar per
    example (e.g. ``cosine_alpha_bar(K)[k]`` for a LongTensor k of landscape indices), broadcast over the trailing
    dims. Differentiable in y and eps. Raises ValueError for mismatched shapes.
    """
    if eps.shape != y.shape:
        raise ValueError(f"eps must have y's shape {tuple(y.shape)}, got {tuple(eps.shape)}")
    abar = torch.as_tensor(alpha_bar_k, dtype=y.dtype, device=y.device)
    if abar.dim() == 1:
        if abar.shape[0] != y.shape[0]:
            raise ValueError(f"alpha_bar_k must be a scalar or (B,) = ({y.shape[0]},), got {tuple(abar.shape)}")
        abar = abar.view(-1, *([1] * (y.dim() - 1)))  # (B, 1, ..., 1)
    elif abar.dim() != 0:
        raise ValueError(f"alpha_bar_k must be a scalar or (B,), got shape {tuple(abar.shape)}")
    return abar.sqrt() * y + (1.0 - abar).sqrt() * eps


def langevin_sigmas(num_steps: int, sigma_max: float, sigma_min: float = 0.0, schedule: str = "cosine") -> torch.Tensor:
    """Noise scale per Langevin step, shape (num_steps,), float32, from sigma_max (step 0) to sigma_min (last step).

    `schedule` is one of NOISE_SCHEDULES (formulas in the module docstring); with a single step the value is
    sigma_max. Raises ConfigError for num_steps < 1, sigma_min < 0, sigma_min > sigma_max or an unknown schedule.
    """
    if isinstance(num_steps, bool) or not isinstance(num_steps, int) or num_steps < 1:
        raise ConfigError(f"num_steps must be an int >= 1, got {num_steps!r}")
    if not 0.0 <= sigma_min <= sigma_max:
        raise ConfigError(f"need 0 <= sigma_min <= sigma_max, got sigma_min={sigma_min}, sigma_max={sigma_max}")
    if schedule not in NOISE_SCHEDULES:
        raise ConfigError(f"unknown noise schedule {schedule!r}; valid: {', '.join(NOISE_SCHEDULES)}")
    if schedule == "constant" or num_steps == 1:
        return torch.full((num_steps,), float(sigma_max))
    frac = torch.arange(num_steps, dtype=torch.float64) / (num_steps - 1)  # 0 .. 1
    if schedule == "linear":
        sigmas = sigma_max + (sigma_min - sigma_max) * frac
    else:
        sigmas = sigma_min + (sigma_max - sigma_min) * (1.0 + torch.cos(math.pi * frac)) / 2.0
    return sigmas.to(torch.float32)
