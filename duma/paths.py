"""Where duma keeps its files (``DUMA_HOME``, default ``~/.cache/duma``) and how it writes them."""

from __future__ import annotations

import os
import uuid
from collections.abc import Callable
from pathlib import Path


def duma_home() -> Path:
    """The directory for caches and the conversation log; created on first use."""
    home = Path(os.environ.get("DUMA_HOME") or Path.home() / ".cache" / "duma").expanduser()
    home.mkdir(parents=True, exist_ok=True)
    return home


def write_atomically(path: str | Path, write: Callable[[Path], None]) -> Path:
    """Call ``write(temporary_path)``, then rename the result onto ``path``: readers never
    see a half-written file, and a failed write leaves the old one in place."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}")
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
