"""Loading from the Hugging Face Hub, with errors that say how to go offline instead."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from qa_ebm.errors import DataError

_HUB_ID_RE = re.compile(r"[A-Za-z0-9][\w.-]*(/[\w.-]+)?")


def looks_like_hub_id(spec: str) -> bool:
    """`rajpurkar/squad` yes; `data/x.json`, `./squad`, `x.json.gz` no."""
    if spec.startswith((".", "/", "~")) or Path(spec).suffix.lower() in {
        ".json",
        ".jsonl",
        ".gz",
        ".xml",
        ".csv",
        ".parquet",
    }:
        return False
    return bool(_HUB_ID_RE.fullmatch(spec))


def resolve_local(spec: str, what: str, example: str) -> Path | None:
    """A local path if `spec` is one; None if it is a Hub id; a DataError if it is neither."""
    path = Path(spec).expanduser()
    if path.exists():
        return path
    if looks_like_hub_id(spec):
        return None
    raise DataError(f"{spec}: no such file or directory (expected {what}, e.g. {example})")


def load_hub_dataset(repo_id: str, local_hint: str, **kwargs: Any):
    """`datasets.load_dataset(repo_id, **kwargs)`; failures become one line with the offline way out."""
    import datasets

    try:
        return datasets.load_dataset(repo_id, **kwargs)
    except Exception as e:
        reason = str(e).splitlines()[0] if str(e) else e.__class__.__name__
        raise DataError(
            f"cannot load {repo_id!r} from the Hugging Face Hub ({e.__class__.__name__}: {reason}); "
            f"offline? pass a local file instead, e.g. {local_hint}"
        ) from e
