"""Model weights as safetensors: one file per module, written atomically, never unpickled.

Shared by the models' `save_pretrained` / `from_pretrained` and the trainers' checkpoints. Tied weights
such as GPT-2's ``lm_head``/``wte`` are stored once and re-tied on load; a pickle renamed
``.safetensors`` is refused, never executed.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_model, save_model

from qa_ebm.errors import CheckpointError

log = logging.getLogger(__name__)

_SHOW_KEYS = 5  # how many offending keys an error message lists

# Leading bytes of the formats people most often mistake for safetensors (torch.save zip, raw pickle).
_PICKLE_HINTS = ((b"PK\x03\x04", "a zip archive (torch.save?)"), (b"\x80", "a pickle"))


def save_module(module: torch.nn.Module, path: Path) -> None:
    """Write `module.state_dict()` to safetensors at `path`, atomically (temp file + rename).

    Tensors that share storage (tied weights) are stored once; :func:`load_module` re-ties them.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        save_model(module, str(tmp), force_contiguous=True)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def load_module(module: torch.nn.Module, path: Path, strict: bool = True) -> None:
    """Load a safetensors file written by :func:`save_module` into `module`, in place.

    A missing or unreadable file, one that is not safetensors (a pickle renamed ``.safetensors`` is
    refused, never unpickled), or, with `strict`, one whose keys do not match the module raises
    :class:`CheckpointError`.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: no such file")
    try:
        missing, unexpected = load_model(module, path, strict=False)
    except (SafetensorError, OSError) as e:
        raise CheckpointError(f"{path}: not a readable safetensors file{safetensors_hint(path)} ({e})") from e
    except RuntimeError as e:  # load_state_dict: shape mismatch
        details = "; ".join(line.strip() for line in str(e).strip().splitlines()[1:]) or str(e)
        raise CheckpointError(f"{path}: does not fit {type(module).__name__}: {details}") from e
    if missing or unexpected:
        problem = _key_problem(sorted(missing), sorted(unexpected))
        if strict:
            raise CheckpointError(f"{path}: keys do not match {type(module).__name__}: {problem}")
        log.info("%s: non-strict load into %s: %s", path, type(module).__name__, problem)


def _key_problem(missing: list[str], unexpected: list[str]) -> str:
    parts = []
    for label, keys in (("missing", missing), ("unexpected", unexpected)):
        if keys:
            shown = ", ".join(keys[:_SHOW_KEYS]) + (", ..." if len(keys) > _SHOW_KEYS else "")
            parts.append(f"{len(keys)} {label} ({shown})")
    return "; ".join(parts)


def safetensors_hint(path: Path) -> str:
    """' (empty file)' or what the file looks like when it is a pickle/zip in disguise; else ''."""
    try:
        with path.open("rb") as f:
            head = f.read(4)
    except OSError:
        return ""
    if not head:
        return " (empty file)"
    for magic, what in _PICKLE_HINTS:
        if head.startswith(magic):
            return f"; it looks like {what}, which is refused: loading it could run arbitrary code"
    return ""
