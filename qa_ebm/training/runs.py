"""What every trainer's run directory shares: creation, resume checks, checkpoints, metrics, wandb, the manifest."""

from __future__ import annotations

import json
import os
import platform
import shutil
import signal
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
import yaml
from safetensors.torch import save_file

from qa_ebm import __version__
from qa_ebm.config import Config, load_config
from qa_ebm.errors import CheckpointError, ConfigError, OutputExistsError, QaEbmError
from qa_ebm.io import recover_output_dir
from qa_ebm.training.checkpoint import load_module, load_trainer_state, save_module, save_trainer_state
from qa_ebm.training.distributed import check_in_sync, on_main, rng_states

MODEL_FILE = "model.safetensors"  # the model's weights, inside the trainer-state dir


class TrainingError(QaEbmError):
    """Training cannot go on (non-finite loss, out of memory); the message says what to change."""


class TrainingInterrupted(QaEbmError):
    """A signal (SIGINT, SIGTERM) stopped the run after a checkpoint was saved; --resume continues it."""

    def __init__(self, signum: int, step: int, checkpoint: Path):
        self.signum, self.step, self.checkpoint = signum, step, checkpoint
        name = signal.Signals(signum).name
        super().__init__(f"interrupted by {name} at step {step}; saved a checkpoint in {checkpoint}")

    @property
    def exit_status(self) -> int:
        """The shell's convention for a process stopped by a signal: 128 + its number (130 SIGINT, 143 SIGTERM)."""
        return 128 + self.signum


def prepare_run_dir(
    out: Path, config: Config, resume: bool, overwrite: bool, sections: tuple[str, ...], resumable: set[str]
) -> tuple[Path, Path | None]:
    """Create (or, on resume, check) the run dir; with --overwrite the old run is moved aside, not deleted.

    `sections` are the config sections the run depends on; on --resume only the keys of the training
    section (the last one) named in `resumable` may differ. Returns the run dir and where an old run
    went: the caller removes it once the new run is complete, so a new run that fails leaves the old one
    beside it (`.NAME.old-PID`) rather than losing both.

    In a several-process run the main process does all of this and the others get its answer (or its error).
    """
    return on_main(lambda: _prepare_run_dir(out, config, resume, overwrite, sections, resumable))


def _prepare_run_dir(
    out: Path, config: Config, resume: bool, overwrite: bool, sections: tuple[str, ...], resumable: set[str]
) -> tuple[Path, Path | None]:
    if out.exists() and not out.is_dir():
        raise OutputExistsError(f"{out}: exists and is not a directory")
    if resume:
        if not (out / "config.yaml").is_file():
            raise CheckpointError(f"{out}: nothing to resume (no config.yaml); drop --resume to start a new run")
        changed = changed_keys(load_config(out / "config.yaml"), config, sections, resumable)
        if changed:
            raise ConfigError(
                f"{out}: --resume with a different config ({', '.join(changed)}); only "
                f"{sections[-1]}.{{{', '.join(sorted(resumable))}}} may change"
            )
        _save_config(config, out / "config.yaml")
        return out, None
    replaced = None
    if out.exists() and any(out.iterdir()):
        if not overwrite:
            raise OutputExistsError(
                f"{out}: run directory exists; pass --resume to continue it or --overwrite to replace it"
            )
        replaced = out.with_name(f".{out.name}.old-{os.getpid()}")
        os.replace(out, replaced)
    out.mkdir(parents=True, exist_ok=True)
    _save_config(config, out / "config.yaml")
    return out, replaced


def _save_config(config: Config, path: Path) -> None:
    """config.yaml via a temp file and a rename: a run killed while rewriting it on --resume keeps a readable one."""
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text(yaml.safe_dump(config.to_dict(), sort_keys=False))
    os.replace(tmp, path)


def changed_keys(saved: Config, new: Config, sections: tuple[str, ...], resumable: set[str]) -> list[str]:
    a, b = saved.to_dict(), new.to_dict()
    return [
        f"{section}.{k}"
        for section in sections
        for k in a[section]
        if a[section][k] != b[section][k] and not (section == sections[-1] and k in resumable)
    ]


# --------------------------------------------------------------------------------------- checkpoints


def save_checkpoint(
    directory: Path,
    accelerator,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler,
    state: dict[str, Any],
    tensors: Mapping[str, dict[str, torch.Tensor]] | None = None,
) -> None:
    """The model's weights, optimizer, scheduler, RNG, `state` and any `tensors` files (name -> tensors), as one
    directory replaced in one rename (``save_trainer_state``): a kill at any moment leaves the previous complete
    checkpoint or the new one, never weights of one step beside the optimizer of another.

    Every process calls this; the main process writes, the others wait for it.
    """
    check_in_sync(model, accelerator, state["step"])
    rng = rng_states(accelerator)  # every process's
    if accelerator.is_main_process:
        unwrapped = accelerator.unwrap_model(model)

        def write_weights(tmp: Path) -> None:
            save_module(unwrapped, tmp / MODEL_FILE)
            for name, named_tensors in (tensors or {}).items():
                save_file({k: v.contiguous() for k, v in named_tensors.items()}, str(tmp / name))

        save_trainer_state(directory, optimizer, scheduler, state, rng=rng, write_also=write_weights)
    accelerator.wait_for_everyone()


def load_checkpoint(
    directory: Path, accelerator, model: torch.nn.Module, optimizer: torch.optim.Optimizer, scheduler
) -> dict[str, Any] | None:
    """Restore what :func:`save_checkpoint` wrote (weights, optimizer, scheduler, RNG); return its `state`.

    None when the run saved no checkpoint yet (it was stopped before its first save): it starts from step 0.
    A checkpoint whose writer was killed mid-rename is put back first (``io.recover_output_dir``).
    """
    directory = Path(directory)
    if accelerator.is_main_process:
        recover_output_dir(directory)
    accelerator.wait_for_everyone()
    if not directory.exists():
        return None
    load_module(accelerator.unwrap_model(model), directory / MODEL_FILE)
    return load_trainer_state(directory, optimizer, scheduler, accelerator.process_index)


def trim_metrics(path: Path, step: int) -> None:
    """Drop the metrics lines a killed run logged after its last checkpoint (and a line it left half-written).

    The resumed run logs those steps again, so metrics.jsonl reads as if the run had never stopped.
    """
    if not path.is_file():
        return
    kept = []
    for line in path.read_text().splitlines():
        try:
            if json.loads(line)["step"] <= step:
                kept.append(line)
        except (json.JSONDecodeError, KeyError, TypeError):
            continue  # the last line of a run killed while writing it
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text("".join(f"{line}\n" for line in kept))
    os.replace(tmp, path)


def init_wandb(report_to: str, section: str, config: Config, out: Path, job_type: str):
    if report_to != "wandb":
        return None
    try:
        import wandb
    except ImportError as e:
        raise ConfigError(f"{section}.report_to=wandb needs the wandb package (pip install wandb)") from e
    mode = os.environ.get("WANDB_MODE") or ("online" if os.environ.get("WANDB_API_KEY") else "offline")
    return wandb.init(project="qa-ebm", dir=str(out), config=config.to_dict(), mode=mode, job_type=job_type)


def base_manifest(fmt: str, config: Config, step: int, stopped: str, metrics: dict, seconds: float) -> dict[str, Any]:
    return {
        "format": fmt,
        "format_version": 1,
        "created_by": f"qa-ebm {__version__}",
        "config_hash": config.hash(),
        "step": step,
        "stopped": stopped,
        "seconds": round(seconds, 1),
        "final_metrics": {k: v for k, v in metrics.items() if not isinstance(v, list)},
        "versions": {"python": platform.python_version(), "torch": torch.__version__},
    }


def remove_replaced(replaced: Path | None) -> None:
    """Delete the run --overwrite moved aside, now that the new one is complete.

    Every process calls this: it is also where the others wait for the main process to finish writing.
    """

    def remove() -> None:
        if replaced is not None:
            shutil.rmtree(replaced, ignore_errors=True)

    on_main(remove)
