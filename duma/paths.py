"""Where duma keeps its files: ``DUMA_HOME`` (default ``~/.cache/duma``)."""

from __future__ import annotations

import os
from pathlib import Path


def duma_home() -> Path:
    """The directory for caches and the conversation log; created on first use."""
    home = Path(os.environ.get("DUMA_HOME") or Path.home() / ".cache" / "duma").expanduser()
    home.mkdir(parents=True, exist_ok=True)
    return home
