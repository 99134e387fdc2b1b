"""duma: build, train and run fast/slow conversational agents on open LLMs.

Light at import time: heavy modules (torch, transformers, the agent) load on first use.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from duma.hookspecs import hookimpl

__version__ = "0.1.0"

if TYPE_CHECKING:
    from duma.agents import Agent, Reply

__all__ = ["Agent", "Reply", "__version__", "hookimpl"]


def __getattr__(name: str) -> Any:
    if name in ("Agent", "Reply"):
        import duma.agents

        return getattr(duma.agents, name)
    raise AttributeError(f"module 'duma' has no attribute {name!r}")
