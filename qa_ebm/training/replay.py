"""Replay buffer of refined latents: start points for the next batches' refinement.

Short-run MCMC from fresh noise only ever learns the energy near its own short trajectories. Keeping the latents
that refinement produced in past batches, and restarting most chains from them, lets later batches continue those
chains, so training sees longer effective runs and the energy is shaped beyond the first few steps (Du & Mordatch
2019, "Implicit Generation and Generalization in Energy-Based Models", sec. 3.1; IREM and EBT use the same device).
A small fraction of rows restarts from fresh noise (``reinit_prob``), so the buffer keeps exploring and does not
collapse onto a few modes.

Per row of a requested batch, independently:

    fresh  = u < reinit_prob  or  len(buffer) < min(batch_size, capacity),    u ~ U[0, 1)
    row    = init_fn(...)  if fresh  else  buffer[j],          j ~ U{0 .. len(buffer) - 1}   (with replacement)

Storage is a ring of ``capacity`` rows on the CPU (first in, first out: a full buffer overwrites its oldest row).
Every draw comes from the buffer's own ``torch.Generator`` (in a fixed order: u, then j, then init_fn), so a run is
reproducible, and the generator's state is part of ``state_dict`` so a resumed run draws what it would have.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from qa_ebm.errors import CheckpointError, ConfigError

__all__ = ["ReplayBuffer", "ReplaySample"]

InitFn = Callable[[int, "torch.Generator | None"], torch.Tensor]


@dataclass
class ReplaySample:
    """A batch drawn from the buffer."""

    y: torch.Tensor  # (B, *shape)
    mask: torch.Tensor  # (B, *mask_shape) bool; all True for fresh rows
    fresh: torch.Tensor  # (B,) bool, True where the row came from init_fn


class ReplayBuffer:
    """FIFO store of refined latents (and their slot masks) with random replay; see the module docstring.

    capacity: rows kept. shape: one latent's shape, e.g. (1+S, D). mask_shape: one mask's shape, default shape[:-1]
    (one flag per slot). reinit_prob: the chance a row is fresh. generator: the source of every draw (a new one
    seeded 0 when None). dtype: storage dtype of the latents.
    """

    def __init__(
        self,
        capacity: int,
        shape: tuple[int, ...],
        reinit_prob: float = 0.05,
        generator: torch.Generator | None = None,
        mask_shape: tuple[int, ...] | None = None,
        dtype: torch.dtype = torch.float32,
    ) -> None:
        if isinstance(capacity, bool) or not isinstance(capacity, int) or capacity < 1:
            raise ConfigError(f"replay buffer capacity must be an int >= 1, got {capacity!r}")
        if not 0.0 <= reinit_prob <= 1.0:
            raise ConfigError(f"replay buffer reinit_prob must be in [0, 1], got {reinit_prob!r}")
        self.capacity = capacity
        self.shape = tuple(int(d) for d in shape)
        self.mask_shape = self.shape[:-1] if mask_shape is None else tuple(int(d) for d in mask_shape)
        self.reinit_prob = float(reinit_prob)
        self.generator = torch.Generator().manual_seed(0) if generator is None else generator
        if self.generator.device.type != "cpu":
            raise ConfigError(f"replay buffer generator must be a CPU generator, got {self.generator.device}")
        self._y = torch.zeros(capacity, *self.shape, dtype=dtype)  # (capacity, *shape), a ring
        self._mask = torch.zeros(capacity, *self.mask_shape, dtype=torch.bool)
        self._size = 0
        self._next = 0  # the ring slot the next push writes (the oldest row once full)
        self.num_pushed = 0  # rows ever pushed, evicted ones included

    def __len__(self) -> int:
        return self._size

    def push(self, y: torch.Tensor, mask: torch.Tensor | None = None) -> None:
        """Store detached CPU copies of y (n, *shape) and mask (n, *mask_shape) (None: all slots real).

        The oldest rows are evicted once the buffer is full; of a push larger than the capacity only the last
        `capacity` rows stay.
        """
        if y.dim() != len(self.shape) + 1 or tuple(y.shape[1:]) != self.shape:
            raise ValueError(f"push expects y of shape (n, {', '.join(map(str, self.shape))}), got {tuple(y.shape)}")
        n = y.shape[0]
        if mask is None:
            mask = torch.ones(n, *self.mask_shape, dtype=torch.bool)
        if tuple(mask.shape) != (n, *self.mask_shape):
            raise ValueError(f"push expects mask of shape {(n, *self.mask_shape)}, got {tuple(mask.shape)}")
        y = y.detach().to("cpu", self._y.dtype)
        mask = mask.detach().to("cpu", torch.bool)
        self.num_pushed += n
        if n > self.capacity:
            y, mask, n = y[-self.capacity :], mask[-self.capacity :], self.capacity
        slots = (self._next + torch.arange(n)) % self.capacity  # (n,) ring positions, wrapping past the end
        self._y[slots] = y
        self._mask[slots] = mask
        self._next = (self._next + n) % self.capacity
        self._size = min(self._size + n, self.capacity)

    def sample(self, batch_size: int, init_fn: InitFn, device: torch.device | str = "cpu") -> ReplaySample:
        """A batch of `batch_size` rows, each fresh from ``init_fn(n_fresh, generator)`` with probability
        reinit_prob (always, while the buffer holds fewer than min(batch_size, capacity) rows), else a uniformly
        drawn stored row.

        init_fn must return (n_fresh, *shape) and should draw from the generator it is given. The batch is on
        `device`; stored rows are copies, so writing into the batch never changes the buffer.
        """
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        fresh = torch.rand(batch_size, generator=self.generator) < self.reinit_prob  # (B,)
        if self._size < min(batch_size, self.capacity):  # too few rows to draw a varied batch from
            fresh = torch.ones(batch_size, dtype=torch.bool)
        index = torch.randint(0, max(self._size, 1), (batch_size,), generator=self.generator)  # (B,)
        # Chronological position -> ring slot: the oldest row sits at _next once the buffer has wrapped.
        slots = (index + (self._next if self._size == self.capacity else 0)) % self.capacity
        y = self._y[slots].clone()  # (B, *shape)
        mask = self._mask[slots].clone()
        n_fresh = int(fresh.sum())
        if n_fresh:
            new = init_fn(n_fresh, self.generator)
            if tuple(new.shape) != (n_fresh, *self.shape):
                raise ValueError(
                    f"init_fn({n_fresh}, generator) must return {(n_fresh, *self.shape)}, got {tuple(new.shape)}"
                )
            y[fresh] = new.detach().to("cpu", y.dtype)
            mask[fresh] = True
        return ReplaySample(y=y.to(device), mask=mask.to(device), fresh=fresh.to(device))

    def state_dict(self) -> dict[str, torch.Tensor | int]:
        """Plain tensors and ints, to save as safetensors (the tensors) + JSON (the ints).

        Tensors: ``y`` (len, *shape) and ``mask`` (len, *mask_shape), oldest row first, and ``rng_state`` (the
        generator's uint8 state). Ints: ``capacity`` and ``num_pushed``.
        """
        order = (torch.arange(self._size) + (self._next if self._size == self.capacity else 0)) % self.capacity
        return {
            "y": self._y[order].clone(),
            "mask": self._mask[order].clone(),
            "rng_state": self.generator.get_state(),
            "capacity": self.capacity,
            "num_pushed": self.num_pushed,
        }

    def load_state_dict(self, state: dict[str, torch.Tensor | int]) -> None:
        """Restore what ``state_dict`` returned. Raises CheckpointError for missing keys or other shapes.

        A state saved with a larger capacity keeps its newest `capacity` rows.
        """
        missing = sorted({"y", "mask", "rng_state", "num_pushed"} - set(state))
        if missing:
            raise CheckpointError(f"replay buffer state is missing {missing}")
        y, mask, rng = state["y"], state["mask"], state["rng_state"]
        if not all(isinstance(t, torch.Tensor) for t in (y, mask, rng)):
            raise CheckpointError("replay buffer state: y, mask and rng_state must be tensors")
        if tuple(y.shape[1:]) != self.shape or tuple(mask.shape) != (y.shape[0], *self.mask_shape):
            raise CheckpointError(
                f"replay buffer state holds latents {tuple(y.shape[1:])} and masks {tuple(mask.shape[1:])}, "
                f"this buffer expects {self.shape} and {self.mask_shape}"
            )
        try:
            self.generator.set_state(rng.to(torch.uint8))
        except RuntimeError as e:
            raise CheckpointError(f"replay buffer state: invalid rng_state ({e})") from e
        self._y.zero_()
        self._mask.zero_()
        self._size = self._next = 0
        if y.shape[0]:
            self.push(y, mask)
        self.num_pushed = int(state["num_pushed"])
