"""What both pipelines share on disk: a JSON file naming the format, beside the component directories."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from qa_ebm.errors import CheckpointError


def read_meta(directory: Path, meta_file: str, parts: Sequence[str], fmt: str, what: str) -> tuple[dict, str]:
    """(the parsed `meta_file`, its path for messages), after checking that every part exists, that the file is
    JSON and that it names `fmt`; `what` ("an answer pipeline") goes into the messages."""
    missing = [p for p in (meta_file, *parts) if not (directory / p).exists()]
    if missing:
        raise CheckpointError(f"{directory}: not {what} directory (missing {', '.join(missing)})")
    where = str(directory / meta_file)
    try:
        meta: Any = json.loads((directory / meta_file).read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise CheckpointError(f"{where}: not valid JSON ({e})") from e
    if not isinstance(meta, dict) or meta.get("format") != fmt:
        raise CheckpointError(f"{where}: not {what} (format should be {fmt!r})")
    return meta, where
