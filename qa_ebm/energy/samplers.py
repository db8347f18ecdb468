"""Samplers: refine a latent answer by gradient descent on an energy.

A sampler imports no model. It takes a callable ``energy_fn(y, k) -> (B,)`` (k: a LongTensor (B,) of landscape
indices, or None for samplers without landscapes) and a start latent y0 of shape (B, ...), in practice (B, 1+S, D):
a global slot and S sentence slots. An optional `mask` (B, 1+S) bool (anything that broadcasts to y once trailing
dims are added) marks the real slots: padded slots never move and count in no norm. Like a diffusers scheduler, a
sampler is its hyperparameters (``self.config``, a frozen dataclass that round-trips through JSON), a ``step`` that
advances one step, and a ``sample`` loop over steps; swapping it never touches the model.

Gradients. g = dE/dy comes from ``torch.autograd.grad`` on a detached copy of y that requires grad, under
``torch.enable_grad()``: only y is differentiated, so nothing accumulates in the model's ``.grad`` and the graph is
freed after every step (inference). The batch's energies are summed before differentiating, which gives each row
its own gradient only if E_b depends on y_b alone: an energy with cross-row interactions (batch norm in training
mode) is not supported. Do not call under ``torch.inference_mode()`` (it forbids the graph; ``no_grad`` is fine).

The maths (EBT = "Energy-Based Transformers are Scalable Learners and Thinkers", Gladstone et al. 2025;
IRED = "Learning Iterative Reasoning through Energy Diffusion", Du et al. 2024):

    (1) descent (EBT's "thinking" step)      y' = y - alpha * d,   d = g / ||g||  (normalize)  or  d = g
        ||g|| is per example over the real slots, so every example moves exactly alpha when normalised and the
        step size does not depend on the energy's scale.
    (2) Langevin (EBT's exploration noise)   y' = y - alpha * d + sigma_t * eps,  eps ~ N(0, I) on real slots,
        sigma_t from ``schedules.langevin_sigmas`` (decaying, so the last steps settle).
    (3) clamp                                y' = clip(y', -c, c), on every proposal and on the start latent, so y
        stays within the bound throughout. IRED clamps on landscape k with c_k = sf * sqrt(abar_k), sf = 2 for
        continuous tasks: IREDSampler's default (clamp=2, scale_clamp=True). Gradient descent: c = clamp.
    (4) accept-if-lower (IRED inference)     keep y' only where E(y', k) < E(y, k); elsewhere y and E stay.
        A rejected example would propose the same y' again (the step is deterministic), so it stops; with
        Langevin noise the next proposal differs, so there a rejection does not stop the example.
    (5) annealing (IRED inference)           landscapes k = K-1 (noisiest) .. 0 (cleanest), (1)-(4) on each. The
        energy of landscape k is trained on y_k = sqrt(abar_k) y* + sqrt(1 - abar_k) eps (schedules.corrupt), so
        its minima sit near sqrt(abar_k) y*. Moving from landscape k to k-1 rescales accordingly:
                                              y <- y * sqrt(abar_{k-1}) / sqrt(abar_k)
        which is the IRED code release's ``predict_start_from_noise(y, k, noise=0)`` (= y / sqrt(abar_k)) followed
        by multiplying with sqrt(abar_{k-1}). Like the release, the result is the landscape-0 latent, still scaled
        by sqrt(abar_0); ``unscale_output`` divides that out (an estimate of y* for the decoder). Not implemented:
        the release's DDPM ancestral step between inner loops, and its per-landscape step-size table (one
        ``step_size`` here; the default unnormalised step follows g, which IRED trains to predict the noise).
    (5') DDIM transition (``transition="ddim"``). IRED trains dE(x, y_k, k)/dy to predict the noise eps of y_k,
        exactly a diffusion model's eps-prediction, so the end of landscape k also gives
                                              y*_hat = (y - sqrt(1 - abar_k) g) / sqrt(abar_k)
                                              y      <- sqrt(abar_{k-1}) y*_hat + sqrt(1 - abar_{k-1}) g
        (deterministic DDIM, Song et al. 2021, eq. 12 with sigma = 0). Unlike the noise-free rescale, the noise
        the few gradient steps left in y is not amplified; with ``unscale_output`` the result is y*_hat of
        landscape 0.
    (6) adaptive stopping, per example       an example freezes once |E_t - E_{t-1}| < tol_energy, ||g_t|| <
        tol_grad, its step was rejected (4), or it reached the step cap; the loop ends when all are frozen. With
        IRED, freezing holds for the rest of the current landscape; every example resumes on the next one.

Frozen examples keep their latent, but the batch is still evaluated as a whole (energy_fn sees all B rows, e.g.
because it closes over B questions' states), so freezing saves compute only once every example is frozen.

Failure is loud: a NaN/inf energy or gradient raises :class:`RefinementError` naming the step, the landscape and
the number of examples; a latent whose RMS over real entries passes ``max_rms``, or (plain gradient descent, no
accept-if-lower) an energy that rose for ``diverge_patience`` consecutive steps above its start in more than half
the batch, raises :class:`DivergenceError`.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, fields
from typing import Any, ClassVar

import torch

from qa_ebm.energy.schedules import NOISE_SCHEDULES, cosine_alpha_bar, langevin_sigmas
from qa_ebm.errors import ConfigError, QaEbmError

__all__ = [
    "SAMPLERS",
    "BestOfNResult",
    "DivergenceError",
    "EnergyFn",
    "GradientDescentConfig",
    "GradientDescentSampler",
    "IREDConfig",
    "IREDSampler",
    "InitFn",
    "LangevinConfig",
    "LangevinSampler",
    "RefinementError",
    "SampleResult",
    "StepOutput",
    "best_of_n",
    "build_sampler",
]

EnergyFn = Callable[[torch.Tensor, "torch.Tensor | None"], torch.Tensor]
"""energy_fn(y (B, ...), k (B,) long or None) -> energy (B,); lower is better."""

InitFn = Callable[[int, "torch.Generator | None"], torch.Tensor]
"""init_fn(n, generator) -> n fresh start latents (n, ...), e.g. Gaussian noise drawn with `generator`."""

TRANSITIONS = ("rescale", "ddim")

_TINY = 1e-12  # guards g / ||g|| where g = 0 (the direction is then 0, not NaN)


class RefinementError(QaEbmError):
    """Refinement produced a non-finite energy or gradient."""


class DivergenceError(RefinementError):
    """Refinement is running away: the latent's scale exploded or the energy keeps rising."""


# --------------------------------------------------------------------------------------------------------------------
# Configs
# --------------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _SamplerConfig:
    """Base of the samplers' configs: field types checked, values checked, a JSON round-trip."""

    sampler: ClassVar[str] = ""

    def __post_init__(self) -> None:
        for f in fields(self):
            self._check_type(f.name, str(f.type))
        problems = [msg for bad, msg in self._value_checks() if bad]
        if problems:
            raise ConfigError(f"sampler {self.sampler!r}: " + "; ".join(problems))

    def _check_type(self, name: str, annotation: str) -> None:
        value = getattr(self, name)
        optional = annotation.endswith(" | None")
        base = annotation.removesuffix(" | None")
        if value is None and optional:
            return
        if base == "float" and isinstance(value, int) and not isinstance(value, bool):
            object.__setattr__(self, name, float(value))  # JSON writes 1.0 as 1
            return
        expected = {"float": float, "int": int, "bool": bool, "str": str}[base]
        if not isinstance(value, expected) or (expected is not bool and isinstance(value, bool)):
            raise ConfigError(f"sampler {self.sampler!r}: {name} must be {annotation}, got {value!r}")

    def _value_checks(self) -> list[tuple[bool, str]]:
        return []

    def to_dict(self) -> dict[str, Any]:
        """The fields as a JSON-ready dict."""
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> _SamplerConfig:
        """Inverse of to_dict; missing keys take their defaults. Raises ConfigError for unknown keys or bad values."""
        valid = [f.name for f in fields(cls)]
        unknown = sorted(set(data) - set(valid))
        if unknown:
            raise ConfigError(f"sampler {cls.sampler!r}: unknown option(s) {unknown}; valid: {', '.join(valid)}")
        return cls(**data)


def _common_checks(cfg: GradientDescentConfig | IREDConfig) -> list[tuple[bool, str]]:
    return [
        (not cfg.step_size > 0.0, f"step_size must be > 0, got {cfg.step_size}"),
        (cfg.tol_energy < 0.0, f"tol_energy must be >= 0, got {cfg.tol_energy}"),
        (cfg.tol_grad < 0.0, f"tol_grad must be >= 0, got {cfg.tol_grad}"),
        (cfg.clamp is not None and not cfg.clamp > 0.0, f"clamp must be > 0 or None, got {cfg.clamp}"),
        (cfg.diverge_patience < 0, f"diverge_patience must be >= 0 (0 = off), got {cfg.diverge_patience}"),
        (not cfg.max_rms > 0.0, f"max_rms must be > 0, got {cfg.max_rms}"),
    ]


@dataclass(frozen=True)
class GradientDescentConfig(_SamplerConfig):
    """Hyperparameters of :class:`GradientDescentSampler` (see that class)."""

    sampler: ClassVar[str] = "gd"

    step_size: float = 0.1
    max_steps: int = 20
    tol_energy: float = 1e-4
    tol_grad: float = 1e-6
    normalize: bool = True
    clamp: float | None = None
    accept_if_lower: bool = False
    diverge_patience: int = 5
    max_rms: float = 1e4

    def _value_checks(self) -> list[tuple[bool, str]]:
        return [(self.max_steps < 1, f"max_steps must be >= 1, got {self.max_steps}"), *_common_checks(self)]


@dataclass(frozen=True)
class LangevinConfig(GradientDescentConfig):
    """Hyperparameters of :class:`LangevinSampler`: gradient descent's plus the noise schedule."""

    sampler: ClassVar[str] = "langevin"

    sigma_max: float = 0.1
    sigma_min: float = 0.0
    noise_schedule: str = "cosine"

    def _value_checks(self) -> list[tuple[bool, str]]:
        return [
            *super()._value_checks(),
            (
                not 0.0 <= self.sigma_min <= self.sigma_max,
                f"need 0 <= sigma_min <= sigma_max, got sigma_min={self.sigma_min}, sigma_max={self.sigma_max}",
            ),
            (
                self.noise_schedule not in NOISE_SCHEDULES,
                f"noise_schedule must be one of {', '.join(NOISE_SCHEDULES)}, got {self.noise_schedule!r}",
            ),
        ]


@dataclass(frozen=True)
class IREDConfig(_SamplerConfig):
    """Hyperparameters of :class:`IREDSampler` (see that class)."""

    sampler: ClassVar[str] = "ired"

    num_landscapes: int = 10
    steps_per_landscape: int = 5
    step_size: float = 0.1
    normalize: bool = False
    clamp: float | None = 2.0
    scale_clamp: bool = True
    accept_if_lower: bool = True
    tol_energy: float = 1e-4
    tol_grad: float = 1e-6
    unscale_output: bool = False
    transition: str = "rescale"
    cosine_s: float = 0.008
    diverge_patience: int = 5
    max_rms: float = 1e4

    def _value_checks(self) -> list[tuple[bool, str]]:
        return [
            (self.num_landscapes < 1, f"num_landscapes must be >= 1, got {self.num_landscapes}"),
            (self.steps_per_landscape < 1, f"steps_per_landscape must be >= 1, got {self.steps_per_landscape}"),
            (not self.cosine_s > 0.0, f"cosine_s must be > 0, got {self.cosine_s}"),
            (self.scale_clamp and self.clamp is None, "scale_clamp needs a clamp value"),
            (
                self.transition not in TRANSITIONS,
                f"transition must be one of {', '.join(TRANSITIONS)}, got {self.transition!r}",
            ),
            *_common_checks(self),
        ]


# --------------------------------------------------------------------------------------------------------------------
# Outputs
# --------------------------------------------------------------------------------------------------------------------


@dataclass
class StepOutput:
    """One sampler state: the latent, its energy and gradient. Returned by ``evaluate`` and ``step``."""

    y: torch.Tensor  # (B, ...)
    energy: torch.Tensor  # (B,)
    grad: torch.Tensor  # (B, ...) dE/dy at y, zero on padded slots
    grad_norm: torch.Tensor  # (B,) ||g|| over real slots
    accepted: torch.Tensor  # (B,) bool: the step moved this example (all True for a fresh `evaluate`)


@dataclass
class SampleResult:
    """What ``sample`` returns."""

    y: torch.Tensor  # (B, ...) refined latent
    energy: torch.Tensor  # (B,) its energy (IRED: on landscape 0)
    steps: torch.Tensor  # (B,) long, gradient steps each example used (rejected IRED steps count: they cost a pass)
    energies: list[list[float]]  # per example, the energy after each of its steps (len == steps[b])
    initial_energy: torch.Tensor  # (B,) energy of y0 (IRED: on landscape K-1)
    grad_norm: torch.Tensor  # (B,) ||dE/dy|| at the result
    landscapes: list[list[int]] | None = None  # IRED: per example, the landscape of each entry of `energies`


@dataclass
class BestOfNResult:
    """What ``best_of_n`` returns: the lowest-energy candidate per example, and every candidate's energy."""

    y: torch.Tensor  # (B, ...)
    energy: torch.Tensor  # (B,)
    index: torch.Tensor  # (B,) long, which candidate won
    energies: torch.Tensor  # (B, N) final energy of every candidate
    steps: torch.Tensor  # (B,) steps the winner used
    candidates: SampleResult  # all B*N rows, row b*N + j = example b, candidate j


# --------------------------------------------------------------------------------------------------------------------
# Tensor helpers
# --------------------------------------------------------------------------------------------------------------------


def _expand_mask(mask: torch.Tensor | None, y: torch.Tensor) -> torch.Tensor | None:
    """Bool mask with y's number of dims (trailing dims of size 1), broadcastable to y. Idempotent."""
    if mask is None:
        return None
    m = mask.to(device=y.device, dtype=torch.bool)
    while m.dim() < y.dim():
        m = m.unsqueeze(-1)
    try:
        ok = m.dim() == y.dim() and torch.broadcast_shapes(m.shape, y.shape) == y.shape
    except RuntimeError:
        ok = False
    if not ok:
        raise ValueError(f"mask of shape {tuple(mask.shape)} does not broadcast to the latent's {tuple(y.shape)}")
    return m


def _rows(v: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """(B,) -> (B, 1, ..., 1) to broadcast a per-example value over `like`'s trailing dims."""
    return v.view(-1, *([1] * (like.dim() - 1)))


def _per_example_sum(x: torch.Tensor) -> torch.Tensor:
    return x.reshape(x.shape[0], -1).sum(dim=1)  # (B,)


def _real_only(x: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    # torch.where, not x * mask: a padded slot may hold inf, and 0 * inf is NaN.
    return x if mask is None else torch.where(mask, x, torch.zeros((), dtype=x.dtype, device=x.device))


def _rms(y: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """Root mean square of y over each example's real entries, (B,)."""
    count = y[0].numel() if mask is None else _per_example_sum(mask.expand_as(y).to(y.dtype)).clamp_min(1.0)
    return (_per_example_sum(_real_only(y, mask).square()) / count).sqrt()


def _select(take_new: torch.Tensor, new: StepOutput, old: StepOutput) -> StepOutput:
    """Per example: `new` where take_new, else `old`."""
    return StepOutput(
        y=torch.where(_rows(take_new, new.y), new.y, old.y),
        energy=torch.where(take_new, new.energy, old.energy),
        grad=torch.where(_rows(take_new, new.grad), new.grad, old.grad),
        grad_norm=torch.where(take_new, new.grad_norm, old.grad_norm),
        accepted=take_new,
    )


def _where(step: int, landscape: int | None) -> str:
    return f"step {step}" + ("" if landscape is None else f" (landscape k={landscape})")


def _landscape_of(k: torch.Tensor | None) -> int | None:
    # Only called on the error path: int() syncs with the device.
    return None if k is None or k.numel() == 0 else int(k.reshape(-1)[0])


def _energy_and_grad(
    energy_fn: EnergyFn,
    y: torch.Tensor,
    k: torch.Tensor | None,
    mask: torch.Tensor | None,
    *,
    step: int,
    active: torch.Tensor | None = None,
) -> StepOutput:
    """E(y, k) and dE/dy without a graph through anything but y; raises RefinementError on NaN/inf in active rows."""
    if torch.is_inference_mode_enabled():
        raise RefinementError(
            "refinement needs dE/dy, which torch.inference_mode() forbids: call the sampler under torch.no_grad() "
            "or with gradients enabled instead"
        )
    batch = y.shape[0]
    with torch.enable_grad():
        leaf = y.detach().requires_grad_(True)
        energy = energy_fn(leaf, k)
        if not isinstance(energy, torch.Tensor) or energy.shape != (batch,):
            shape = tuple(energy.shape) if isinstance(energy, torch.Tensor) else type(energy).__name__
            raise ValueError(f"energy_fn must return a (B,) = ({batch},) tensor, got {shape}")
        grad = None
        if energy.requires_grad:
            (grad,) = torch.autograd.grad(energy.sum(), leaf, allow_unused=True)
        if grad is None:
            raise RefinementError(
                f"{_where(step, _landscape_of(k))}: the energy does not depend on the latent (no gradient dE/dy): "
                "does energy_fn use y, and does it run with gradients enabled?"
            )
    energy = energy.detach()
    grad = _real_only(grad, mask)
    grad_norm = _per_example_sum(grad.square()).sqrt()  # (B,)
    bad = ~(torch.isfinite(energy) & torch.isfinite(grad_norm))
    if active is not None:
        bad &= active
    if bool(bad.any()):
        cause = (
            "the start latent or the model's weights are not finite"
            if step == 0
            else "the step size is likely too large (the latent left the region the model was trained on) "
            "or the energy model is diverging"
        )
        raise RefinementError(
            f"{_where(step, _landscape_of(k))}: energy or gradient is NaN/inf for {int(bad.sum())} of {batch} "
            f"examples; {cause}"
        )
    ones = torch.ones(batch, dtype=torch.bool, device=y.device)
    return StepOutput(y=y.detach(), energy=energy, grad=grad.detach(), grad_norm=grad_norm, accepted=ones)


class _Trace:
    """Per-step energies, kept as tensors and turned into per-example lists once, at the end (one host sync)."""

    def __init__(self) -> None:
        self.energy: list[torch.Tensor] = []
        self.active: list[torch.Tensor] = []
        self.landscape: list[int | None] = []

    def add(self, energy: torch.Tensor, active: torch.Tensor, landscape: int | None) -> None:
        self.energy.append(energy.detach())
        self.active.append(active.clone())
        self.landscape.append(landscape)

    def per_example(self, batch: int) -> tuple[list[list[float]], list[list[int]]]:
        if not self.energy:
            return [[] for _ in range(batch)], [[] for _ in range(batch)]
        energy = torch.stack(self.energy, dim=1).float().cpu().tolist()  # (B, T)
        active = torch.stack(self.active, dim=1).cpu().tolist()  # (B, T)
        energies = [
            [e for e, a in zip(e_row, a_row, strict=True) if a] for e_row, a_row in zip(energy, active, strict=True)
        ]
        landscapes = [
            [k for k, a in zip(self.landscape, a_row, strict=True) if a and k is not None] for a_row in active
        ]
        return energies, landscapes


# --------------------------------------------------------------------------------------------------------------------
# Samplers
# --------------------------------------------------------------------------------------------------------------------


class _GradientSampler:
    """Steps (1)-(4) and the adaptive loop (6), shared by the samplers below."""

    name: ClassVar[str]
    config_class: ClassVar[type[_SamplerConfig]]
    config: Any
    _deterministic: ClassVar[bool] = True  # the same state always proposes the same step

    @classmethod
    def from_config(cls, config: _SamplerConfig | Mapping[str, Any]) -> _GradientSampler:
        """A sampler from its config object or its ``to_dict()`` form."""
        if isinstance(config, Mapping):
            config = cls.config_class.from_dict(config)
        if type(config) is not cls.config_class:
            raise ConfigError(f"{cls.__name__} needs a {cls.config_class.__name__}, got {type(config).__name__}")
        return cls(**config.to_dict())

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.config})"

    # -- hooks ---------------------------------------------------------------------------------------------------

    def _noise(self, t: int, y: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor | None:
        return None

    def _clamp_bound(self, k: torch.Tensor | None, y: torch.Tensor) -> torch.Tensor | float | None:
        return self.config.clamp

    def _watch_rising_energy(self) -> bool:
        return self.config.diverge_patience > 0 and not self.config.accept_if_lower

    def _clamp(self, y: torch.Tensor, k: torch.Tensor | None, mask: torch.Tensor | None) -> torch.Tensor:
        """(3) on the real slots."""
        bound = self._clamp_bound(k, y)
        if bound is None:
            return y
        clamped = torch.clamp(y, min=-bound, max=bound)
        return clamped if mask is None else torch.where(mask, clamped, y)

    # -- one step ------------------------------------------------------------------------------------------------

    def evaluate(
        self,
        energy_fn: EnergyFn,
        y: torch.Tensor,
        k: torch.Tensor | None = None,
        mask: torch.Tensor | None = None,
    ) -> StepOutput:
        """The state at y: E(y, k) and dE/dy (zero on padded slots). Raises RefinementError on NaN/inf."""
        return _energy_and_grad(energy_fn, y, k, _expand_mask(mask, y), step=0)

    def step(
        self,
        energy_fn: EnergyFn,
        state: StepOutput,
        t: int,
        *,
        k: torch.Tensor | None = None,
        mask: torch.Tensor | None = None,
        active: torch.Tensor | None = None,
        generator: torch.Generator | None = None,
    ) -> StepOutput:
        """Advance `state` by one step (step index t, 0-based); inactive (B,) rows and rejected rows stay as they are.

        `state` is the previous output of ``evaluate`` or ``step`` (it carries the gradient, so a step costs one
        forward and one backward pass, at the proposal). ``accepted`` says which rows moved.
        """
        cfg = self.config
        y = state.y
        m = _expand_mask(mask, y)
        active = torch.ones(y.shape[0], dtype=torch.bool, device=y.device) if active is None else active
        # (1) descent direction; g is already zero on padded slots.
        direction = state.grad / _rows(state.grad_norm.clamp_min(_TINY), y) if cfg.normalize else state.grad
        proposal = y - cfg.step_size * direction
        # (2) Langevin noise, drawn for the whole batch so the generator's stream does not depend on who is active.
        noise = self._noise(t, y, generator)
        if noise is not None:
            proposal = proposal + noise
        proposal = self._clamp(proposal, k, m)  # (3)
        # Padded slots and frozen examples never move.
        moves = _rows(active, y) if m is None else _rows(active, y) & m
        proposal = torch.where(moves, proposal, y)
        new = _energy_and_grad(energy_fn, proposal, k, m, step=t + 1, active=active)
        take = active
        if cfg.accept_if_lower:
            take = active & (new.energy < state.energy)  # (4)
        return _select(take, new, state)

    # -- the adaptive loop (6) ---------------------------------------------------------------------------------

    def _refine(
        self,
        energy_fn: EnergyFn,
        state: StepOutput,
        *,
        num_steps: int,
        k: torch.Tensor | None,
        mask: torch.Tensor | None,
        generator: torch.Generator | None,
        trace: _Trace,
        landscape: int | None,
    ) -> tuple[StepOutput, torch.Tensor]:
        cfg = self.config
        batch = state.y.shape[0]
        steps = torch.zeros(batch, dtype=torch.long, device=state.y.device)
        active = ~(state.grad_norm < cfg.tol_grad)  # already at a stationary point: no step at all
        start = state.energy
        rises = torch.zeros_like(steps)
        for t in range(num_steps):
            if not bool(active.any()):
                break
            new = self.step(energy_fn, state, t, k=k, mask=mask, active=active, generator=generator)
            steps += active
            trace.add(new.energy, active, landscape)
            rises = self._check_divergence(new, state, start, rises, active, mask, t + 1, landscape)
            done = ((new.energy - state.energy).abs() < cfg.tol_energy) | (new.grad_norm < cfg.tol_grad)
            if cfg.accept_if_lower and self._deterministic:
                done |= ~new.accepted
            active = active & ~done
            state = new
        return state, steps

    def _check_divergence(
        self,
        new: StepOutput,
        old: StepOutput,
        start: torch.Tensor,
        rises: torch.Tensor,
        active: torch.Tensor,
        mask: torch.Tensor | None,
        step: int,
        landscape: int | None,
    ) -> torch.Tensor:
        """Raise DivergenceError for an exploding latent or a mostly rising energy; returns the updated rise counts."""
        cfg = self.config
        batch = new.y.shape[0]
        rms = _rms(new.y, mask)
        exploded = active & ~(rms <= cfg.max_rms)  # `~(<=)` also catches NaN
        if bool(exploded.any()):
            raise DivergenceError(
                f"{_where(step, landscape)}: the latent's RMS reached {float(rms[exploded].max()):.3g} "
                f"(max_rms={cfg.max_rms:g}) for {int(exploded.sum())} of {batch} examples; the step size "
                f"{cfg.step_size:g} is likely too large, or the energy is unbounded below"
            )
        if not self._watch_rising_energy():
            return rises
        rose = new.energy > old.energy
        rises = torch.where(active, torch.where(rose, rises + 1, torch.zeros_like(rises)), rises)
        diverging = (rises >= cfg.diverge_patience) & (new.energy > start)
        if int(diverging.sum()) * 2 > batch:
            raise DivergenceError(
                f"{_where(step, landscape)}: the energy rose for {cfg.diverge_patience} consecutive steps, above "
                f"its starting value, for {int(diverging.sum())} of {batch} examples; the step size "
                f"{cfg.step_size:g} is likely too large (try a smaller one, or normalize=True) or the energy model "
                "is diverging"
            )
        return rises

    def _start(self, y0: torch.Tensor, mask: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor | None]:
        if not isinstance(y0, torch.Tensor) or y0.dim() < 1 or not y0.is_floating_point():
            raise ValueError(f"y0 must be a floating-point (B, ...) tensor, got {y0!r:.80}")
        # A copy: the caller's tensor is never written, and an inference-mode tensor becomes an ordinary one.
        y = y0.detach().clone()
        return y, _expand_mask(mask, y)


class GradientDescentSampler(_GradientSampler):
    """Gradient descent on the energy, (1) + (3) + (6), optionally with accept-if-lower (4).

    step_size: alpha in (1); the distance each example moves per step when `normalize`.
    max_steps: the step cap. tol_energy / tol_grad: adaptive stopping (6); 0 disables either.
    normalize: g/||g|| per example (EBT / the design's mcmc objective) rather than the raw g.
    clamp: bound |y| <= clamp (None = off). accept_if_lower: (4), off by default.
    diverge_patience: consecutive rising-energy steps that count as diverging (0 = off; only without (4)).
    max_rms: a latent RMS (over real entries) above this is a divergence.
    """

    name: ClassVar[str] = "gd"
    config_class: ClassVar[type[_SamplerConfig]] = GradientDescentConfig
    config: GradientDescentConfig

    def __init__(
        self,
        step_size: float = GradientDescentConfig.step_size,
        max_steps: int = GradientDescentConfig.max_steps,
        tol_energy: float = GradientDescentConfig.tol_energy,
        tol_grad: float = GradientDescentConfig.tol_grad,
        normalize: bool = GradientDescentConfig.normalize,
        clamp: float | None = GradientDescentConfig.clamp,
        accept_if_lower: bool = GradientDescentConfig.accept_if_lower,
        diverge_patience: int = GradientDescentConfig.diverge_patience,
        max_rms: float = GradientDescentConfig.max_rms,
    ) -> None:
        self.config = GradientDescentConfig(
            step_size=step_size,
            max_steps=max_steps,
            tol_energy=tol_energy,
            tol_grad=tol_grad,
            normalize=normalize,
            clamp=clamp,
            accept_if_lower=accept_if_lower,
            diverge_patience=diverge_patience,
            max_rms=max_rms,
        )

    def sample(
        self,
        energy_fn: EnergyFn,
        y0: torch.Tensor,
        mask: torch.Tensor | None = None,
        generator: torch.Generator | None = None,
    ) -> SampleResult:
        """Refine y0 (B, ...) for up to max_steps steps, calling ``energy_fn(y, None)``; see the module docstring."""
        y, m = self._start(y0, mask)
        y = self._clamp(y, None, m)  # (3)
        state = _energy_and_grad(energy_fn, y, None, m, step=0)
        initial = state.energy
        trace = _Trace()
        state, steps = self._refine(
            energy_fn,
            state,
            num_steps=self.config.max_steps,
            k=None,
            mask=m,
            generator=generator,
            trace=trace,
            landscape=None,
        )
        energies, _ = trace.per_example(y.shape[0])
        return SampleResult(
            y=state.y,
            energy=state.energy,
            steps=steps,
            energies=energies,
            initial_energy=initial,
            grad_norm=state.grad_norm,
        )


class LangevinSampler(GradientDescentSampler):
    """Gradient descent plus Gaussian noise, (2): sigma_t from ``langevin_sigmas(max_steps, sigma_max, sigma_min,
    noise_schedule)``, drawn with `generator` (which must live on y's device) and only on real slots.

    The rising-energy divergence check is off (noise makes the energy rise by design); the RMS check stays. With
    accept_if_lower, a rejected example keeps going (the next noise draw proposes a different step).
    """

    name: ClassVar[str] = "langevin"
    config_class: ClassVar[type[_SamplerConfig]] = LangevinConfig
    config: LangevinConfig
    _deterministic: ClassVar[bool] = False

    def __init__(
        self,
        step_size: float = LangevinConfig.step_size,
        max_steps: int = LangevinConfig.max_steps,
        tol_energy: float = LangevinConfig.tol_energy,
        tol_grad: float = LangevinConfig.tol_grad,
        normalize: bool = LangevinConfig.normalize,
        clamp: float | None = LangevinConfig.clamp,
        accept_if_lower: bool = LangevinConfig.accept_if_lower,
        diverge_patience: int = LangevinConfig.diverge_patience,
        max_rms: float = LangevinConfig.max_rms,
        sigma_max: float = LangevinConfig.sigma_max,
        sigma_min: float = LangevinConfig.sigma_min,
        noise_schedule: str = LangevinConfig.noise_schedule,
    ) -> None:
        self.config = LangevinConfig(
            step_size=step_size,
            max_steps=max_steps,
            tol_energy=tol_energy,
            tol_grad=tol_grad,
            normalize=normalize,
            clamp=clamp,
            accept_if_lower=accept_if_lower,
            diverge_patience=diverge_patience,
            max_rms=max_rms,
            sigma_max=sigma_max,
            sigma_min=sigma_min,
            noise_schedule=noise_schedule,
        )
        self.sigmas = langevin_sigmas(max_steps, sigma_max, sigma_min, noise_schedule)  # (max_steps,)

    def _noise(self, t: int, y: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor | None:
        sigma = float(self.sigmas[min(t, len(self.sigmas) - 1)])
        if sigma == 0.0:
            return None
        return sigma * torch.randn(y.shape, generator=generator, device=y.device, dtype=y.dtype)

    def _watch_rising_energy(self) -> bool:
        return False


class IREDSampler(_GradientSampler):
    """Annealed refinement over K landscapes, (1) + (3) + (4) + (5) + (6); ``energy_fn(y, k)`` gets k = K-1 .. 0.

    num_landscapes: K, on ``cosine_alpha_bar(K, cosine_s)`` (``self.alpha_bar``, (K,)).
    steps_per_landscape: the step cap per landscape (the whole sample uses at most K * steps_per_landscape).
    step_size, normalize: (1); unnormalised by default (IRED steps along g, which it trains to predict noise).
    clamp, scale_clamp: (3); bound |y| <= clamp * sqrt(abar_k) on landscape k as IRED does (default 2, so latent
        entries beyond about +-2 are clipped: raise it for wider latents), or |y| <= clamp without scale_clamp,
        or no bound with clamp=None. Without the scaled bound, (5) can amplify what is left of the noise: the
        clipped cosine schedule makes abar_{K-2} / abar_{K-1} = 1000, a factor sqrt(1000) ~ 32 on the first rescale.
    accept_if_lower: (4), on by default. tol_energy / tol_grad: (6), per landscape.
    unscale_output: divide the final latent by sqrt(abar_0), see (5) (with transition="ddim": y*_hat, see (5')).
    transition: "rescale" (5) or "ddim" (5') between landscapes.
    diverge_patience, max_rms: as for GradientDescentSampler.

    y0 should look like a sample of the noisiest landscape, i.e. roughly N(0, I).
    """

    name: ClassVar[str] = "ired"
    config_class: ClassVar[type[_SamplerConfig]] = IREDConfig
    config: IREDConfig

    def __init__(
        self,
        num_landscapes: int = IREDConfig.num_landscapes,
        steps_per_landscape: int = IREDConfig.steps_per_landscape,
        step_size: float = IREDConfig.step_size,
        normalize: bool = IREDConfig.normalize,
        clamp: float | None = IREDConfig.clamp,
        scale_clamp: bool = IREDConfig.scale_clamp,
        accept_if_lower: bool = IREDConfig.accept_if_lower,
        tol_energy: float = IREDConfig.tol_energy,
        tol_grad: float = IREDConfig.tol_grad,
        unscale_output: bool = IREDConfig.unscale_output,
        transition: str = IREDConfig.transition,
        cosine_s: float = IREDConfig.cosine_s,
        diverge_patience: int = IREDConfig.diverge_patience,
        max_rms: float = IREDConfig.max_rms,
    ) -> None:
        self.config = IREDConfig(
            num_landscapes=num_landscapes,
            steps_per_landscape=steps_per_landscape,
            step_size=step_size,
            normalize=normalize,
            clamp=clamp,
            scale_clamp=scale_clamp,
            accept_if_lower=accept_if_lower,
            tol_energy=tol_energy,
            tol_grad=tol_grad,
            unscale_output=unscale_output,
            transition=transition,
            cosine_s=cosine_s,
            diverge_patience=diverge_patience,
            max_rms=max_rms,
        )
        self.alpha_bar = cosine_alpha_bar(num_landscapes, cosine_s)  # (K,), decreasing in k
        self.timesteps = torch.arange(num_landscapes - 1, -1, -1)  # K-1 .. 0, the order landscapes are visited

    def _clamp_bound(self, k: torch.Tensor | None, y: torch.Tensor) -> torch.Tensor | float | None:
        cfg = self.config
        if cfg.clamp is None or not cfg.scale_clamp:
            return cfg.clamp
        if k is None:
            raise ValueError("scale_clamp needs the landscape index k")
        # (3) IRED: c_k = clamp * sqrt(abar_k), per example.
        return cfg.clamp * _rows(self.alpha_bar.to(y.device, y.dtype)[k].sqrt(), y)

    def rescale(self, y: torch.Tensor, k_from: int, k_to: int, mask: torch.Tensor | None = None) -> torch.Tensor:
        """(5): y * sqrt(abar_{k_to}) / sqrt(abar_{k_from}), on real slots only."""
        abar = self.alpha_bar
        factor = float((abar[k_to] / abar[k_from]).sqrt())
        return torch.where(_expand_mask(mask, y), y * factor, y) if mask is not None else y * factor

    def ddim(self, state: StepOutput, k_from: int, k_to: int | None, mask: torch.Tensor | None) -> torch.Tensor:
        """(5'): the gradient as the noise estimate; k_to=None returns y*_hat itself. Real slots only."""
        abar = self.alpha_bar.to(state.y.device, state.y.dtype)
        y_star = (state.y - (1 - abar[k_from]).sqrt() * state.grad) / abar[k_from].sqrt()
        y = y_star if k_to is None else abar[k_to].sqrt() * y_star + (1 - abar[k_to]).sqrt() * state.grad
        return torch.where(_expand_mask(mask, y), y, state.y) if mask is not None else y

    def sample(
        self,
        energy_fn: EnergyFn,
        y0: torch.Tensor,
        mask: torch.Tensor | None = None,
        generator: torch.Generator | None = None,
    ) -> SampleResult:
        """Refine y0 (B, ...) landscape by landscape, K-1 .. 0; see the module docstring, (5)-(6)."""
        cfg = self.config
        y, m = self._start(y0, mask)
        batch = y.shape[0]
        trace = _Trace()
        total = torch.zeros(batch, dtype=torch.long, device=y.device)
        state: StepOutput | None = None
        initial = None
        for landscape in self.timesteps.tolist():
            k = torch.full((batch,), landscape, dtype=torch.long, device=y.device)
            if state is not None and cfg.transition == "ddim":
                y = self.ddim(state, landscape + 1, landscape, m)  # (5') to the next, cleaner landscape
            elif state is not None:
                y = self.rescale(state.y, landscape + 1, landscape, m)  # (5) to the next, cleaner landscape
            # (3) Within this landscape's bound before the first evaluation. With scale_clamp the rescaled latent is
            # already inside it; without, or for y0, this is the clamp IRED applies after each landscape's loop.
            y = self._clamp(y, k, m)
            state = _energy_and_grad(energy_fn, y, k, m, step=0)
            if initial is None:
                initial = state.energy
            state, steps = self._refine(
                energy_fn,
                state,
                num_steps=cfg.steps_per_landscape,
                k=k,
                mask=m,
                generator=generator,
                trace=trace,
                landscape=landscape,
            )
            total += steps
        assert state is not None and initial is not None  # K >= 1 is checked by the config
        out = state.y
        if cfg.unscale_output and cfg.transition == "ddim":
            out = self.ddim(state, 0, None, m)  # (5') y*_hat of the cleanest landscape
        elif cfg.unscale_output:
            # (5) y_0 / sqrt(abar_0): the release's predict_start_from_noise with zero noise, on real slots.
            scale = float(self.alpha_bar[0].sqrt())
            out = out / scale if m is None else torch.where(m, out / scale, out)
        energies, landscapes = trace.per_example(batch)
        return SampleResult(
            y=out,
            energy=state.energy,
            steps=total,
            energies=energies,
            initial_energy=initial,
            grad_norm=state.grad_norm,
            landscapes=landscapes,
        )


# --------------------------------------------------------------------------------------------------------------------
# Best of N, registry
# --------------------------------------------------------------------------------------------------------------------

Sampler = GradientDescentSampler | LangevinSampler | IREDSampler

SAMPLERS: dict[str, type[_GradientSampler]] = {
    "gd": GradientDescentSampler,
    "langevin": LangevinSampler,
    "ired": IREDSampler,
}


def build_sampler(name: str, **kwargs: Any) -> Sampler:
    """The sampler registered as `name` with hyperparameters `kwargs`.

    Raises ConfigError naming the valid samplers for an unknown name, the valid options for an unknown kwarg, and
    the problem for a bad value.
    """
    if name not in SAMPLERS:
        raise ConfigError(f"unknown sampler {name!r}; valid: {', '.join(SAMPLERS)}")
    cls = SAMPLERS[name]
    return cls.from_config(dict(kwargs))  # type: ignore[return-value]


def best_of_n(
    sampler: Sampler,
    energy_fn: EnergyFn,
    y0s: torch.Tensor | None = None,
    *,
    n: int | None = None,
    init_fn: InitFn | None = None,
    batch_size: int | None = None,
    mask: torch.Tensor | None = None,
    generator: torch.Generator | None = None,
) -> BestOfNResult:
    """Refine N candidates per example in one batch of B*N rows and keep each example's lowest-energy one.

    Start latents: either `y0s` (B, N, ...), or `n`, `batch_size` = B and `init_fn(B * N, generator)`. Rows are laid
    out example-major, row b*N + j = example b, candidate j: `energy_fn` sees B*N rows, so an energy closing over B
    questions must repeat them with ``repeat_interleave(N, dim=0)``. `mask` (B, ...) is repeated the same way.
    """
    if y0s is not None:
        if n is not None or init_fn is not None:
            raise ValueError("pass either y0s or n + init_fn, not both")
        if y0s.dim() < 2:
            raise ValueError(f"y0s must be (B, N, ...), got shape {tuple(y0s.shape)}")
        batch, n = y0s.shape[0], y0s.shape[1]
        flat = y0s.reshape(batch * n, *y0s.shape[2:])  # (B*N, ...)
    else:
        if n is None or init_fn is None or batch_size is None:
            raise ValueError("without y0s, best_of_n needs n, init_fn and batch_size")
        if n < 1 or batch_size < 1:
            raise ValueError(f"n and batch_size must be >= 1, got n={n}, batch_size={batch_size}")
        batch = batch_size
        flat = init_fn(batch * n, generator)  # (B*N, ...)
        if flat.shape[0] != batch * n:
            raise ValueError(f"init_fn({batch * n}, generator) returned {flat.shape[0]} rows")
    flat_mask = None if mask is None else mask.repeat_interleave(n, dim=0)  # (B*N, ...)
    result = sampler.sample(energy_fn, flat, mask=flat_mask, generator=generator)
    energies = result.energy.view(batch, n)  # (B, N)
    index = energies.argmin(dim=1)  # (B,)
    rows = torch.arange(batch, device=index.device) * n + index  # (B,) rows of the winners
    return BestOfNResult(
        y=result.y[rows],
        energy=result.energy[rows],
        index=index,
        energies=energies,
        steps=result.steps[rows],
        candidates=result,
    )
