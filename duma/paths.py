"""Where duma keeps its files (``DUMA_HOME``, default ``~/.cache/duma``) and how it writes them."""

from __future__ import annotations

import os
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path


def duma_home() -> Path:
    """The directory for caches and the conversation log; created on first use."""
    home = Path(os.environ.get("DUMA_HOME") or Path.home() / ".cache" / "duma").expanduser()
    home.mkdir(parents=True, exist_ok=True)
    return home


TEMPORARY_MARK = ".tmp-"


def temporary_path(path: Path) -> Path:
    """A hidden sibling of ``path`` to write before renaming it into place:
    ``.<name>.tmp-<pid>-<random>`` (the pid tells a later run whether its writer is alive)."""
    return path.with_name(f".{path.name}{TEMPORARY_MARK}{os.getpid()}-{uuid.uuid4().hex[:8]}")


def temporary_owner(tmp: Path) -> int | None:
    """The pid of the process that made a :func:`temporary_path`, or None if unknown."""
    owner = tmp.name.rsplit(TEMPORARY_MARK, 1)[-1].split("-")[0]
    return int(owner) if TEMPORARY_MARK in tmp.name and owner.isdigit() else None


def write_atomically(path: str | Path, write: Callable[[Path], None]) -> Path:
    """Call ``write(temporary_path)``, then rename the result onto ``path``: readers never
    see a half-written file, and a failed write leaves the old one in place."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = temporary_path(path)
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def path_beside(input_path: Path, name: str) -> Path:
    """``<input stem>.<name>`` in the input's folder: where a file derived from an input goes
    when no option names it (``data.jsonl`` -> ``data.rejects.jsonl``), never the current
    directory."""
    return input_path.parent / f"{input_path.stem}.{name}"


def version_stamp(path: Path) -> str:
    """What a copy derived from ``path`` depends on: its resolved path and the name, size and
    modification time of the file, or of every file at the top of the folder (weights,
    config, tokenizer). Cached conversions are named by a digest of it."""
    path = path.expanduser().resolve()
    files = [path] if path.is_file() else sorted(p for p in path.iterdir() if p.is_file())
    parts = [str(path)]
    for p in files:
        stat = p.stat()
        parts.append(f"{p.name}|{stat.st_size}|{stat.st_mtime_ns}")
    return "\n".join(parts)


@contextmanager
def file_lock(path: Path) -> Iterator[None]:
    """An exclusive lock between processes on the file ``path`` (created if missing)."""
    try:
        import fcntl
    except ImportError:  # not on POSIX: callers still rename atomically
        yield
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)
