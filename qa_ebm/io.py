"""Small file helpers shared by every stage: compressed input, content hashes, atomic output."""

from __future__ import annotations

import contextlib
import gzip
import hashlib
import io
import json
import os
import shutil
import zlib
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import IO, Any

from qa_ebm.errors import CheckpointError, DataError, OutputExistsError, QaEbmError

GZIP_MAGIC = b"\x1f\x8b"
# What reading an input from `open_input` can raise midway: I/O, a gzip stream cut short (EOFError) or
# corrupt (zlib.error, which is no OSError), bytes that are not UTF-8.
READ_ERRORS = (OSError, EOFError, zlib.error, UnicodeDecodeError)


def open_input(path: str | os.PathLike, mode: str = "rt") -> IO:
    """Open a local input file, transparently gunzipping it.

    Compression is recognised by the file's magic bytes, not its name, so a mis-named file still
    reads; a `.gz` name on a file that is not gzip is reported rather than parsed as garbage.
    """
    path = Path(path)
    if not path.exists():
        raise DataError(f"{path}: no such file")
    if not path.is_file():
        raise DataError(f"{path}: not a file")
    try:
        with path.open("rb") as f:
            magic = f.read(2)
    except OSError as e:
        raise DataError(f"{path}: cannot read ({e.strerror})") from e
    binary = "b" in mode
    if magic == GZIP_MAGIC:
        raw: IO = gzip.open(path, "rb")
    else:
        if path.suffix == ".gz":
            raise DataError(f"{path}: named .gz but is not gzip-compressed (first bytes {magic!r})")
        raw = path.open("rb")
    if binary:
        return raw
    return io.TextIOWrapper(raw, encoding="utf-8-sig", errors="strict")


def strip_compression_suffix(path: str | os.PathLike) -> str:
    """`train.json.gz` -> `train.json`: the name that says what format is inside."""
    name = Path(path).name.lower()
    return name[:-3] if name.endswith(".gz") else name


def sha256_file(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with Path(path).open("rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def sha256_json(obj: Any) -> str:
    """Hash of a JSON-serialisable object, independent of key order."""
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()


def read_text_file(path: str | os.PathLike, error: type[QaEbmError] = CheckpointError) -> str:
    """A saved artifact's text file as UTF-8; unreadable or undecodable bytes (a binary file in its place)
    raise `error` naming the file, never a bare UnicodeDecodeError."""
    path = Path(path)
    try:
        return path.read_bytes().decode("utf-8")
    except OSError as e:
        raise error(f"{path}: cannot read ({e.strerror or e})") from e
    except UnicodeDecodeError as e:
        bad = e.object[e.start : e.start + 1]
        raise error(f"{path}: not UTF-8 text (byte {e.start} is {bad!r}); not a file qa-ebm wrote") from e


def read_json(path: str | os.PathLike, error: type[QaEbmError] = CheckpointError) -> Any:
    """A saved artifact's JSON file; unreadable, undecodable or invalid JSON raises `error` naming the file."""
    text = read_text_file(path, error)
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        raise error(f"{path}: not valid JSON ({e.msg} at line {e.lineno} column {e.colno})") from e


def inside(path: str | os.PathLike, roots: Iterable[str | os.PathLike], base: str | os.PathLike | None = None) -> bool:
    """Whether `path` (relative ones taken from `base`, default the working dir) lies in one of `roots`.

    Lexical, like the path a user reads: `..` and absolute paths are resolved, symlinks are not, so a
    link the user placed on purpose (a data dir on another disk) still counts as inside.
    """
    p = Path(os.path.normpath(Path(base or Path.cwd()) / path))
    for root in roots:
        r = Path(os.path.normpath(Path.cwd() / root))
        if p == r or r in p.parents:
            return True
    return False


def write_json(path: str | os.PathLike, obj: Any) -> None:
    """Write JSON atomically (temp file + rename): a crash never leaves half a file."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text(json.dumps(obj, indent=2, sort_keys=False, default=str) + "\n")
    os.replace(tmp, path)


def check_output_dir(out: str | os.PathLike, overwrite: bool) -> Path:
    """Fail early, before any work, if `out` exists and may not be replaced."""
    out = Path(out)
    if out.exists() and not overwrite:
        raise OutputExistsError(f"{out}: output directory exists; pass --overwrite to replace it")
    if out.exists() and not out.is_dir():
        raise OutputExistsError(f"{out}: exists and is not a directory")
    return out


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, owned by someone else
        return True
    return True


def recover_output_dir(out: Path) -> None:
    """Clear what a killed run (its pid gone) left beside `out`.

    Its temp dir is half-written and goes. Its `.old` dir is the previous good output: if the run died
    between moving it aside and renaming the new one in, `out` is missing and the old one is put back.
    Readers that may follow a killed writer (a resumed training run) call this before looking at `out`.
    """
    for kind in ("tmp", "old"):
        for stale in out.parent.glob(f".{out.name}.{kind}-*"):
            pid = stale.name.rsplit("-", 1)[-1]
            if not pid.isdigit() or int(pid) == os.getpid() or _pid_alive(int(pid)):
                continue
            if kind == "old" and not out.exists():
                os.replace(stale, out)
            else:
                shutil.rmtree(stale, ignore_errors=True)


@contextlib.contextmanager
def atomic_output_dir(out: str | os.PathLike, overwrite: bool = False) -> Iterator[Path]:
    """Yield a fresh temp dir beside `out`; on success it replaces `out` in one rename.

    If the body raises (or the process dies), `out` keeps whatever good content it had and the temp
    dir is removed (or, after a hard kill, left under a dot-name that the next run clears).
    """
    recover_output_dir(Path(out))  # first: a restored output is then protected like any other
    out = check_output_dir(out, overwrite)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp-{os.getpid()}")
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir()
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    old = out.with_name(f".{out.name}.old-{os.getpid()}")
    if out.exists():
        os.replace(out, old)
    os.replace(tmp, out)
    if old.exists():
        shutil.rmtree(old, ignore_errors=True)
