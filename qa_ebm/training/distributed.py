"""Several processes, one run: what the trainers need beyond what `accelerate` does by itself.

`accelerate launch --num_processes N` starts the same trainer N times. For the N copies to be one run:

- **One writer.** The run dir, checkpoints, metrics, final weights and latents are written by the main
  process only; the others wait for it instead of racing it (:func:`on_main`, and the trainers' barriers).
- **One global batch.** The config's ``batch_size`` is the batch of a whole step. Process r trains on the
  r-th contiguous block of the step's rows (:func:`share_of`), so a step sees the same examples whatever N
  is, and the gradient averaged over processes is that of the whole batch's mean loss (exactly so when
  the blocks are equal and the loss is a per-example mean).
- **One model.** Every process starts from the same weights; at each checkpoint the processes check that
  they still agree (:func:`check_in_sync`), so a gradient that was never averaged stops the run instead of
  training N different models of which only one is saved.
- **Independent noise.** Dropout and sampling noise are drawn per process (:func:`process_seed`); process 0
  keeps the single-process seeds, so a one-process run is unchanged by any of this. Each process's RNG
  state is checkpointed (:func:`rng_states`) so that ``--resume`` continues every process exactly.
- **One loss.** What is logged is the mean over processes (:func:`mean_over_processes`), not the main
  process's own share of the batch; losses that compare an example with the rest of its batch (the
  energy transformer's contrastive rivals) read the whole batch, which every process has in memory.
- **A launch that fits.** Data parallel only, a global batch that splits evenly, and the config's
  precision (:func:`check_launch`).

With one process every function here is a no-op or the identity.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

import numpy as np
import torch

from qa_ebm.errors import ConfigError, QaEbmError
from qa_ebm.training.checkpoint import rng_tensors

T = TypeVar("T")

# Relative gap between two processes' weights above which they are out of sync. Replicas that average the
# same gradients are bitwise equal on CPU; the slack covers non-deterministic reductions on accelerators.
SYNC_TOLERANCE = 1e-6


def launch_state():
    """accelerate's process state, set up the way `Accelerator()` sets it up (ACCELERATE_USE_CPU honoured).

    Calling it before the trainer's `Accelerator` is created (the run dir is prepared first) must not
    initialise the state differently from the Accelerator, or the latter refuses to start.
    """
    from accelerate import PartialState
    from accelerate.utils import parse_flag_from_env

    state = PartialState(cpu=parse_flag_from_env("ACCELERATE_USE_CPU"))
    launched = int(os.environ.get("WORLD_SIZE", "1"))
    if launched > 1 and state.num_processes == 1:
        # Each copy would train alone and all would write the same run dir.
        raise ConfigError(
            f"{launched} processes were launched (WORLD_SIZE={launched}) but accelerate sees one: on a machine "
            "without GPUs set ACCELERATE_USE_CPU=1 (accelerate launch --multi_gpu then runs on CPU with gloo)"
        )
    return state


def is_main_process() -> bool:
    """Whether this process is the one that writes and reports (always, with one process)."""
    return launch_state().is_main_process


def require_one_process(command: str) -> None:
    """For trainers not made several-process safe yet: refuse a launch rather than race on the run dir."""
    processes = launch_state().num_processes
    if processes > 1:
        raise ConfigError(f"{command} runs on one process (launched on {processes}); run it without accelerate launch")


def on_main(fn: Callable[[], T]) -> T:
    """Run `fn` on the main process only; every process returns its result, or raises its error.

    The other processes wait for the main one, so they never see a half-made run dir, and an error on
    the main process (an existing run dir, a config that does not resume) stops them all with the same
    message instead of leaving them blocked at the next collective.
    """
    state = launch_state()
    if state.num_processes == 1:
        return fn()
    from accelerate.utils import broadcast_object_list

    outcome: list = [None]
    error: BaseException | None = None
    if state.is_main_process:
        try:
            outcome = [("ok", fn())]
        except Exception as e:
            error = e
            # Project errors cross as they are; anything else as its one-line description.
            outcome = [("error", e if isinstance(e, QaEbmError) else f"{type(e).__name__}: {e}")]
    broadcast_object_list(outcome, from_process=0)  # pickled between our own processes only
    kind, value = outcome[0]
    if error is not None:
        raise error
    if kind == "error":
        raise value if isinstance(value, QaEbmError) else QaEbmError(f"the main process failed: {value}")
    return value


# --------------------------------------------------------------------------------------- batches


@dataclass(frozen=True)
class Share:
    """One process's block of a step's global batch."""

    batch: np.ndarray  # the global batch's dataset rows (all processes)
    start: int  # where this process's block begins in it
    stop: int

    @property
    def rows(self) -> np.ndarray:
        """The dataset rows this process trains on."""
        return self.batch[self.part]

    @property
    def part(self) -> slice:
        """This process's rows of anything laid out like the global batch (e.g. start points drawn for it)."""
        return slice(self.start, self.stop)

    @property
    def total(self) -> int:
        return len(self.batch)


def share_of(rows: np.ndarray, process_index: int = 0, num_processes: int = 1) -> Share:
    """Process `process_index`'s contiguous block of the global batch `rows` (blocks in rank order).

    A batch with fewer rows than processes (the last, short batch of an epoch) repeats rows, so that no
    process is left with nothing to train on.
    """
    if len(rows) < num_processes:
        rows = np.resize(rows, num_processes)
    bounds = np.cumsum([0, *(len(b) for b in np.array_split(rows, num_processes))])
    return Share(batch=rows, start=int(bounds[process_index]), stop=int(bounds[process_index + 1]))


def check_launch(accelerator, section: str, batch_size: int, mixed_precision: str) -> None:
    """Refuse, before anything is written, a launch these trainers would get wrong.

    - FSDP, DeepSpeed and Megatron shard the weights and optimizer state; the checkpoints here are full
      replicas written by the main process (DDP's layout), so a sharded run would save one shard.
    - The global batch must split evenly, or the equal-weight average of the processes' gradients is not
      the gradient of the batch's mean loss.
    - `accelerate launch --mixed_precision X` is overridden by the config's `mixed_precision` (the value the
      run records and --resume checks); silently training in another precision than asked is refused.
    """
    from accelerate.utils import DistributedType

    kind = accelerator.distributed_type
    if kind in (DistributedType.FSDP, DistributedType.DEEPSPEED, DistributedType.MEGATRON_LM):
        raise ConfigError(
            f"{section}: {kind.value} shards the model, which these checkpoints (full copies written by the main "
            "process) do not support; launch data-parallel instead (accelerate launch --multi_gpu)"
        )
    if batch_size % accelerator.num_processes:
        raise ConfigError(
            f"{section}.batch_size={batch_size} is the global batch of a step and must split evenly over "
            f"{accelerator.num_processes} processes; use a multiple of {accelerator.num_processes}"
        )
    launched = os.environ.get("ACCELERATE_MIXED_PRECISION", "no").lower()
    if launched not in ("no", mixed_precision):
        raise ConfigError(
            f"accelerate launch asked for --mixed_precision {launched} but {section}.mixed_precision="
            f"{mixed_precision}; set it in the config (--set {section}.mixed_precision={launched}), which the run "
            "records"
        )


def gather_rows(tensor: torch.Tensor, accelerator) -> torch.Tensor:
    """Every process's rows of `tensor`, concatenated in rank order (on CPU); shares may differ in size."""
    if accelerator.num_processes == 1:
        return tensor.cpu()
    from accelerate.utils import gather_object

    return torch.cat(gather_object([tensor.detach().cpu()]))


# --------------------------------------------------------------------------------------- seeds, RNG


def process_seed(seed: int, process_index: int) -> int:
    """A seed for `process_index`'s own draws: `seed` itself for process 0 (one-process runs are unchanged)."""
    if process_index == 0:
        return seed
    return hash((seed, process_index)) & (2**63 - 1)  # hashing ints is not salted: the same in every run


def seed_process(seed: int, accelerator) -> None:
    """Give this process its own dropout and noise stream; call once the model is built from the shared seed."""
    if accelerator.process_index:
        torch.manual_seed(process_seed(seed, accelerator.process_index))


def rng_states(accelerator) -> dict[str, torch.Tensor]:
    """Every process's torch RNG state, for :func:`qa_ebm.training.checkpoint.save_trainer_state`.

    The main process's under the plain names (``cpu``, ``cuda.0``...), process r's as ``process{r}.cpu``...
    A collective: every process must call it.
    """
    own = rng_tensors()
    if accelerator.num_processes == 1:
        return own
    from accelerate.utils import gather_object

    states = gather_object([own])
    merged = dict(states[0])
    for rank, state in enumerate(states[1:], start=1):
        merged.update({f"process{rank}.{k}": v for k, v in state.items()})
    return merged


# --------------------------------------------------------------------------------------- gradients, weights


def average_gradients(parameters, accelerator) -> None:
    """Average every parameter's gradient over the processes (what DDP does in its backward hooks).

    For models trained through methods other than `forward` (the energy transformer's `condition` and
    `energy`, with gradients of gradients), which DDP's wrapper cannot see. One all-reduce of all
    gradients; a parameter with no gradient on any process keeps none, as in a one-process run.
    """
    if accelerator.num_processes == 1:
        return
    params = [p for p in parameters if p.requires_grad]
    has_grad = accelerator.reduce(
        torch.tensor([p.grad is not None for p in params], dtype=torch.float32, device=accelerator.device), "sum"
    )
    flat = torch.cat([(p.grad if p.grad is not None else torch.zeros_like(p)).reshape(-1) for p in params])
    flat = accelerator.reduce(flat, "mean")
    offset = 0
    for p, used in zip(params, has_grad.tolist(), strict=True):
        n = p.numel()
        p.grad = flat[offset : offset + n].view_as(p).clone() if used else None
        offset += n


def check_in_sync(model: torch.nn.Module, accelerator, step: int) -> None:
    """Stop the run if the processes' weights have drifted apart (their gradients were not averaged)."""
    if accelerator.num_processes == 1:
        return
    sums = torch.stack([p.detach().double().sum() for p in model.parameters()]).to(accelerator.device)
    every = accelerator.gather(sums[None]).cpu()  # (processes, params)
    gap = (every - every[0]).abs().max().item()
    if gap > SYNC_TOLERANCE * (1 + every[0].abs().max().item()):
        from qa_ebm.training.runs import TrainingError

        raise TrainingError(
            f"the {accelerator.num_processes} processes' weights differ at step {step} (largest gap {gap:.3g}): "
            "their gradients are not being averaged; not saving a model only one process trained"
        )


def any_process(flag: bool, accelerator) -> bool:
    """Whether `flag` holds on any process: for decisions every process must take together.

    A time budget is read from each process's own clock; were one to stop while another started the
    next step, that one would wait forever at the step's gradient all-reduce.
    """
    if accelerator.num_processes == 1:
        return flag
    return bool(accelerator.reduce(torch.tensor([float(flag)], device=accelerator.device), "sum").item())


def mean_over_processes(values: dict[str, float], accelerator) -> dict[str, float]:
    """The mean of each value over the processes (the same keys on every process, in the same order)."""
    if accelerator.num_processes == 1:
        return values
    tensor = torch.tensor(list(values.values()), dtype=torch.float64, device=accelerator.device)
    return dict(zip(values, accelerator.reduce(tensor, "mean").tolist(), strict=True))
