"""Checkpoints for resumable training, without pickle.

Tensors go to safetensors and everything else to JSON, so loading a checkpoint can never execute code
(``torch.load`` unpickles, which can run anything a downloaded file asks for). Nothing here calls
``torch.load`` or ``pickle``.

A model is one safetensors file (:func:`save_module` / :func:`load_module`, re-exported from
qa_ebm.models.weights, which the models' own save/load use too). A trainer state is a directory, written under a
temp name and renamed into place only when complete (:func:`save_trainer_state`):

    optimizer.safetensors  every tensor of ``optimizer.state_dict()["state"]``, keyed ``"{param_index}.{name}"``
    optimizer.json         param_groups, per-parameter state key order and non-tensor state values
    scheduler.json         ``scheduler.state_dict()`` (``null`` when there is no scheduler)
    rng.safetensors        torch's CPU RNG state (``"cpu"``) and, when CUDA is available, ``"cuda.{i}"``;
                           in a several-process run also each other process's, as ``"process{r}.cpu"``...
    state.json             the caller's own state: step, epoch, metrics... (written last)
    ...                    the caller's own files (``write_also``), e.g. model.safetensors

JSON is checked strictly before anything is written: a value JSON would silently change (an int dict
key, a tensor, a numpy int) is a :class:`CheckpointError`, not a resume that differs from the run.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch.optim.lr_scheduler import LRScheduler

from qa_ebm.errors import CheckpointError
from qa_ebm.io import atomic_output_dir, write_json
from qa_ebm.models.weights import load_module, safetensors_hint, save_module

__all__ = ["load_module", "load_trainer_state", "rng_tensors", "save_module", "save_trainer_state"]

log = logging.getLogger(__name__)

FORMAT = "qa-ebm/trainer-state"
FORMAT_VERSION = 1

OPTIMIZER_TENSORS = "optimizer.safetensors"
OPTIMIZER_JSON = "optimizer.json"
SCHEDULER_JSON = "scheduler.json"
RNG_TENSORS = "rng.safetensors"
STATE_JSON = "state.json"
TRAINER_STATE_FILES = (OPTIMIZER_TENSORS, OPTIMIZER_JSON, SCHEDULER_JSON, RNG_TENSORS, STATE_JSON)

# -------------------------------------------------------------------------------------- trainer state


def save_trainer_state(
    directory: Path,
    optimizer: torch.optim.Optimizer,
    scheduler: LRScheduler | None,
    state: dict[str, Any],
    rng: dict[str, torch.Tensor] | None = None,
    *,
    write_also: Callable[[Path], None] | None = None,
) -> None:
    """Write optimizer, scheduler, torch RNG and `state` to `directory`, replacing it atomically.

    `rng` defaults to this process's RNG state (:func:`rng_tensors`); a several-process run passes every
    process's (`qa_ebm.training.distributed.rng_states`).

    Everything is gathered and checked before the first byte is written; the files then go to a temp
    dir beside `directory`, which replaces it in one rename. A failure (or a crash) leaves any previous
    state in `directory` as it was. `write_also(tmp)` writes the caller's own files (the model's weights,
    a replay buffer) into the same temp dir, so that weights and trainer state are only ever replaced
    together: a crash between the two writes cannot leave a mismatched pair.
    """
    directory = Path(directory)
    opt_tensors, opt_json = _optimizer_to_files(optimizer, directory)
    sched_json = None if scheduler is None else scheduler.state_dict()
    _require_json(sched_json, f"{directory}: {SCHEDULER_JSON}: {type(scheduler).__name__}.state_dict()")
    if not isinstance(state, Mapping):
        raise CheckpointError(f"{directory}: {STATE_JSON}: trainer state must be a dict, got {type(state).__name__}")
    _require_json(state, f"{directory}: {STATE_JSON}: trainer state")
    rng = rng_tensors() if rng is None else rng

    with atomic_output_dir(directory, overwrite=True) as tmp:
        save_file(opt_tensors, str(tmp / OPTIMIZER_TENSORS))
        write_json(tmp / OPTIMIZER_JSON, opt_json)
        write_json(tmp / SCHEDULER_JSON, sched_json)
        save_file(rng, str(tmp / RNG_TENSORS))
        if write_also is not None:
            write_also(tmp)
        write_json(tmp / STATE_JSON, dict(state))


def load_trainer_state(
    directory: Path, optimizer: torch.optim.Optimizer, scheduler: LRScheduler | None, process_index: int = 0
) -> dict[str, Any]:
    """Restore what :func:`save_trainer_state` wrote into fresh `optimizer` and `scheduler`; return `state`.

    Build the optimizer (over the same parameters, in the same order) and the scheduler exactly as for
    the original run, then call this. Optimizer state tensors are cast to their parameters' dtype and
    device the way ``Optimizer.load_state_dict`` does. The torch RNG state is restored too, so dropout
    and sampling continue as in an uninterrupted run; process `process_index` of a several-process run gets
    its own saved state (or, from a run with fewer processes, the main process's).
    """
    directory = Path(directory)
    if not directory.is_dir():
        raise CheckpointError(f"{directory}: no trainer state here (not a directory)")
    absent = [name for name in TRAINER_STATE_FILES if not (directory / name).is_file()]
    if absent:
        raise CheckpointError(f"{directory}: incomplete trainer state, missing {', '.join(absent)}")

    opt_json = _read_json(directory, OPTIMIZER_JSON)
    opt_tensors = _read_tensors(directory, OPTIMIZER_TENSORS)
    try:
        optimizer_state = _optimizer_from_files(optimizer, opt_tensors, opt_json, directory)
    except (KeyError, TypeError, ValueError, AttributeError) as e:
        raise CheckpointError(f"{directory}: {OPTIMIZER_JSON}: malformed ({e!r})") from e
    sched_json = _read_json(directory, SCHEDULER_JSON)
    rng = _read_tensors(directory, RNG_TENSORS)
    state = _read_json(directory, STATE_JSON)
    if not isinstance(state, dict):
        raise CheckpointError(f"{directory}: {STATE_JSON} holds {type(state).__name__}, not an object")

    try:
        optimizer.load_state_dict(optimizer_state)
    except (ValueError, KeyError, RuntimeError) as e:
        raise CheckpointError(f"{directory}: optimizer state does not fit {type(optimizer).__name__}: {e}") from e
    if scheduler is not None:
        if sched_json is None:
            raise CheckpointError(f"{directory}: {SCHEDULER_JSON}: saved without a scheduler, cannot restore one")
        try:
            scheduler.load_state_dict(sched_json)
        except (ValueError, KeyError, TypeError, IndexError) as e:
            raise CheckpointError(
                f"{directory}: {SCHEDULER_JSON}: does not fit {type(scheduler).__name__}: {e!r}"
            ) from e
    elif sched_json is not None:
        log.warning("%s: a scheduler state was saved but no scheduler was given; it is ignored", directory)
    _restore_rng(_process_rng(rng, process_index, directory), directory)
    return state


def _optimizer_to_files(
    optimizer: torch.optim.Optimizer, directory: Path
) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Split `optimizer.state_dict()` into a flat tensor dict and a JSON document."""
    sd = optimizer.state_dict()
    tensors: dict[str, torch.Tensor] = {}
    key_order: dict[str, list[str]] = {}
    values: dict[str, dict[str, Any]] = {}
    for index, param_state in sd["state"].items():
        if not isinstance(index, int):  # optimizers keyed by name are not supported by this format
            raise CheckpointError(f"{directory}: optimizer state key {index!r} is not a parameter index")
        key_order[str(index)] = list(param_state)
        for name, value in param_state.items():
            if isinstance(value, torch.Tensor):
                tensors[f"{index}.{name}"] = value.detach().cpu().contiguous()
            else:
                values.setdefault(str(index), {})[name] = value
    doc = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "optimizer": type(optimizer).__name__,
        "param_groups": sd["param_groups"],
        "state_keys": key_order,
        "state_values": values,
    }
    _require_json(doc, f"{directory}: {OPTIMIZER_JSON}: {type(optimizer).__name__}.state_dict()")
    return tensors, doc


def _optimizer_from_files(
    optimizer: torch.optim.Optimizer, tensors: dict[str, torch.Tensor], doc: Any, directory: Path
) -> dict[str, Any]:
    """Rebuild an ``Optimizer.state_dict()`` from the two files, checking it against `optimizer`."""
    where = f"{directory}: {OPTIMIZER_JSON}"
    if not isinstance(doc, dict) or doc.get("format") != FORMAT:
        raise CheckpointError(f"{where}: not a {FORMAT} file")
    if doc.get("format_version") != FORMAT_VERSION:
        raise CheckpointError(f"{where}: format version {doc.get('format_version')}, expected {FORMAT_VERSION}")
    saved_groups = doc["param_groups"]
    groups = optimizer.param_groups
    if len(saved_groups) != len(groups):
        raise CheckpointError(f"{where}: {len(saved_groups)} param groups saved, optimizer has {len(groups)}")
    for i, (saved, group) in enumerate(zip(saved_groups, groups, strict=True)):
        if len(saved["params"]) != len(group["params"]):
            raise CheckpointError(
                f"{where}: param group {i} saved with {len(saved['params'])} parameters, "
                f"optimizer has {len(group['params'])}"
            )
    n_params = sum(len(group["params"]) for group in groups)

    state: dict[int, dict[str, Any]] = {}
    used: set[str] = set()
    for index_str, names in doc["state_keys"].items():
        index = int(index_str)
        if not 0 <= index < n_params:
            raise CheckpointError(f"{where}: state for parameter {index}, optimizer has {n_params} parameters")
        values = doc["state_values"].get(index_str, {})
        param_state: dict[str, Any] = {}
        for name in names:
            key = f"{index}.{name}"
            if key in tensors:
                param_state[name] = tensors[key]
                used.add(key)
            elif name in values:
                param_state[name] = values[name]
            else:
                raise CheckpointError(f"{directory}: optimizer state {key} is in neither {OPTIMIZER_TENSORS} nor JSON")
        state[index] = param_state
    extra = sorted(set(tensors) - used)
    if extra:
        raise CheckpointError(f"{directory}: {OPTIMIZER_TENSORS} has tensors not in {OPTIMIZER_JSON}: {extra[:5]}")

    # JSON has no tuples: give values back the type the freshly built optimizer uses (Adam's betas).
    param_groups = []
    for saved, group in zip(saved_groups, groups, strict=True):
        restored = dict(saved)
        for key, value in saved.items():
            if isinstance(group.get(key), tuple) and isinstance(value, list):
                restored[key] = tuple(value)
        param_groups.append(restored)
    return {"state": state, "param_groups": param_groups}


def rng_tensors() -> dict[str, torch.Tensor]:
    """This process's torch RNG states: ``"cpu"`` and, when CUDA is available, ``"cuda.{i}"`` per device."""
    rng = {"cpu": torch.get_rng_state()}
    if torch.cuda.is_available():
        for i, cuda_state in enumerate(torch.cuda.get_rng_state_all()):
            rng[f"cuda.{i}"] = cuda_state.cpu()
    return rng


def _process_rng(rng: dict[str, torch.Tensor], process_index: int, directory: Path) -> dict[str, torch.Tensor]:
    """The RNG states process `process_index` saved: the plain keys for the main process, `process{r}.` ones else."""
    if process_index == 0:
        return {k: v for k, v in rng.items() if not k.startswith("process")}
    prefix = f"process{process_index}."
    own = {k[len(prefix) :]: v for k, v in rng.items() if k.startswith(prefix)}
    if own:
        return own
    log.warning(
        "%s: no RNG state saved for process %d (the run had fewer processes); it continues from the main "
        "process's, so its dropout and noise repeat the main process's",
        directory,
        process_index,
    )
    return _process_rng(rng, 0, directory)


def _restore_rng(rng: dict[str, torch.Tensor], directory: Path) -> None:
    if "cpu" not in rng or rng["cpu"].dtype != torch.uint8:
        raise CheckpointError(f"{directory}: {RNG_TENSORS}: no uint8 'cpu' RNG state")
    cuda_states = [rng[key] for key in sorted((k for k in rng if k.startswith("cuda.")), key=lambda k: int(k[5:]))]
    torch.set_rng_state(rng["cpu"])
    if not cuda_states:
        return
    if not torch.cuda.is_available():
        log.warning("%s: CUDA RNG states were saved but CUDA is not available; they are not restored", directory)
        return
    n_devices = torch.cuda.device_count()
    if len(cuda_states) != n_devices:
        log.warning(
            "%s: %d CUDA RNG states saved, %d devices now; restoring the first %d",
            directory,
            len(cuda_states),
            n_devices,
            min(len(cuda_states), n_devices),
        )
    for i, cuda_state in enumerate(cuda_states[:n_devices]):
        torch.cuda.set_rng_state(cuda_state, device=i)


# ----------------------------------------------------------------------------------------------- files


def _read_json(directory: Path, name: str) -> Any:
    try:
        return json.loads((directory / name).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise CheckpointError(f"{directory}: {name}: unreadable ({e})") from e


def _read_tensors(directory: Path, name: str) -> dict[str, torch.Tensor]:
    path = directory / name
    try:
        return load_file(path)
    except (SafetensorError, OSError) as e:
        raise CheckpointError(
            f"{directory}: {name}: not a readable safetensors file{safetensors_hint(path)} ({e})"
        ) from e


def _require_json(obj: Any, what: str, where: str = "") -> None:
    """Raise unless `obj` survives a JSON round trip unchanged (tuples, read back as lists, excepted)."""
    if obj is None or isinstance(obj, (bool, int, float, str)):
        return
    if isinstance(obj, (list, tuple)):
        for i, value in enumerate(obj):
            _require_json(value, what, f"{where}[{i}]")
    elif isinstance(obj, Mapping):
        for key, value in obj.items():
            if not isinstance(key, str):
                raise CheckpointError(f"{what}: key {key!r} at {where or 'top level'} is not a string (JSON needs one)")
            _require_json(value, what, f"{where}.{key}" if where else key)
    else:
        raise CheckpointError(f"{what}: {type(obj).__name__} at {where or 'top level'} is not JSON-serialisable")
