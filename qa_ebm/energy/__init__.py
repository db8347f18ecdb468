"""Energy landscapes and samplers: noise schedules, and refinement of a latent by descent on an energy.

Nothing here imports a model: a sampler takes a callable ``energy_fn(y, k) -> (B,)``.
"""

from qa_ebm.energy.samplers import (
    SAMPLERS,
    BestOfNResult,
    DivergenceError,
    EnergyFn,
    GradientDescentConfig,
    GradientDescentSampler,
    InitFn,
    IREDConfig,
    IREDSampler,
    LangevinConfig,
    LangevinSampler,
    RefinementError,
    SampleResult,
    StepOutput,
    best_of_n,
    build_sampler,
)
from qa_ebm.energy.schedules import NOISE_SCHEDULES, corrupt, cosine_alpha_bar, langevin_sigmas

__all__ = [
    "NOISE_SCHEDULES",
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
    "corrupt",
    "cosine_alpha_bar",
    "langevin_sigmas",
]
