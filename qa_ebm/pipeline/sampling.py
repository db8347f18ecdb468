"""A pipeline's sampler: a JSON-ready config ``{"name": ..., **options}``, built afresh for each call.

Both answer pipelines keep their sampler as a config, not an object, so it is saved beside the weights and
swapped at call time without touching a model.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from qa_ebm.energy.samplers import Sampler, build_sampler
from qa_ebm.errors import ConfigError


def build_from_config(config: Mapping[str, Any], steps: int | None = None) -> Sampler:
    """The sampler `config` names; `steps` (None: the configured cap) caps its gradient steps for this call.

    IRED's cap is per landscape: `steps` is spread over its landscapes (at least one step each).
    """
    options = dict(config)
    name = options.pop("name", None)
    if not isinstance(name, str):
        raise ConfigError(f"sampler config needs a 'name' (gd, langevin or ired), got {dict(config)!r}")
    if steps is not None and name == "ired":
        options["steps_per_landscape"] = max(1, math.ceil(steps / options.get("num_landscapes", 10)))
    elif steps is not None:
        options["max_steps"] = steps
    return build_sampler(name, **options)


def sampler_config(sampler: Sampler) -> dict[str, Any]:
    """The JSON-ready config of a built sampler (the inverse of :func:`build_from_config`)."""
    return {"name": sampler.name, **sampler.config.to_dict()}
