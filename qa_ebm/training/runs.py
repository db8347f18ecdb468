"""What every trainer's run directory shares: creation, resume checks, wandb, finite checks, the manifest."""

from __future__ import annotations

import os
import platform
import shutil
from pathlib import Path
from typing import Any

import torch

from qa_ebm import __version__
from qa_ebm.config import Config, load_config
from qa_ebm.errors import CheckpointError, ConfigError, OutputExistsError, QaEbmError
from qa_ebm.training.distributed import on_main


class TrainingError(QaEbmError):
    """Training cannot go on (non-finite loss, out of memory); the message says what to change."""


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
        config.save(out / "config.yaml")
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
    config.save(out / "config.yaml")
    return out, replaced


def changed_keys(saved: Config, new: Config, sections: tuple[str, ...], resumable: set[str]) -> list[str]:
    a, b = saved.to_dict(), new.to_dict()
    return [
        f"{section}.{k}"
        for section in sections
        for k in a[section]
        if a[section][k] != b[section][k] and not (section == sections[-1] and k in resumable)
    ]


def check_finite(value: torch.Tensor, step: int, last_saved: int, section: str, lr: float, what: str = "loss") -> None:
    if not torch.isfinite(value).all():
        raise TrainingError(
            f"the {what} became {value.item()} at step {step}; stopped without saving, the last good checkpoint "
            f"is step {last_saved} (--resume continues from it); try a lower {section}.lr (now {lr}), "
            f"{section}.grad_clip, or {section}.mixed_precision=no"
        )


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
