"""What both pipelines share on disk: a JSON file naming the format, beside the component directories.

A pipeline directory may come from someone else (a download, a shared drive), so what is read from it stays
inside it: a link that leads out of the directory, or a name in its JSON that is a path elsewhere
(``../../etc``, ``/home/...``), is refused before anything is loaded.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from qa_ebm.errors import CheckpointError
from qa_ebm.io import inside, read_json


def read_meta(directory: Path, meta_file: str, parts: Sequence[str], fmt: str, what: str) -> tuple[dict, str]:
    """(the parsed `meta_file`, its path for messages), after checking that every part exists, that nothing in
    `directory` links outside it, that the file is JSON and that it names `fmt`; `what` ("an answer pipeline")
    goes into the messages."""
    missing = [p for p in (meta_file, *parts) if not (directory / p).exists()]
    if missing:
        raise CheckpointError(f"{directory}: not {what} directory (missing {', '.join(missing)})")
    check_links_stay_inside(directory)
    where = str(directory / meta_file)
    meta: Any = read_json(directory / meta_file)
    if not isinstance(meta, dict) or meta.get("format") != fmt:
        raise CheckpointError(f"{where}: not {what} (format should be {fmt!r})")
    return meta, where


def check_links_stay_inside(directory: Path) -> None:
    """Refuse a directory holding a symlink whose target lies outside it (a part that reads elsewhere)."""
    root = directory.resolve()
    for parent, dirs, files in os.walk(directory):
        for name in (*dirs, *files):
            path = Path(parent) / name
            if path.is_symlink() and not inside(path.resolve(), [root]):
                raise CheckpointError(
                    f"{path}: a link to {os.readlink(path)}, outside {directory}; a pipeline directory must hold its "
                    "own files"
                )


def check_model_name(name: str, where: str, field: str) -> str:
    """`name` as read from a pipeline's JSON: a Hub id or packaged alias (``org/model``), never a path.

    A local model a pipeline needs travels inside it (``save_pretrained`` copies it in and names it by its
    directory there); a path anywhere else is refused, so a pipeline cannot make the loader read outside it.
    """
    parts = name.replace("\\", "/").split("/")
    if not name or name.startswith(("/", "~", ".")) or "\\" in name or len(parts) > 2 or ".." in parts:
        raise CheckpointError(
            f"{where}: {field} = {name!r} is a path; a pipeline may name a Hub model id or a directory inside itself"
        )
    return name
