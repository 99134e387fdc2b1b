"""duma: build, train and run fast/slow conversational agents on open LLMs.

What a plugin implements and what a service embeds, in one place::

    from duma import hookimpl, Backend, Router, DataSource, Trainer, Judge, Agent

Built-in plugins import from here too. Light at import time: each name loads its module on
first use, so importing ``duma`` (and ``duma --help``) never imports torch or transformers.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from duma.hookspecs import hookimpl

__version__ = "0.1.0"

if TYPE_CHECKING:
    from duma.agents import Agent, Reply
    from duma.backend import Backend
    from duma.cli import pass_state
    from duma.config import DumaConfig, load_config
    from duma.data import DataSource
    from duma.errors import DumaError
    from duma.judge import Judge, JudgeResult
    from duma.quantizer import Quantizer
    from duma.routing import RouteDecision, RouteInput, Router
    from duma.trainers.base import Trainer

# Public name -> the module that defines it.
_LAZY: dict[str, str] = {
    "Agent": "duma.agents",
    "Reply": "duma.agents",
    "Backend": "duma.backend",
    "Router": "duma.routing",
    "RouteInput": "duma.routing",
    "RouteDecision": "duma.routing",
    "DataSource": "duma.data",
    "Trainer": "duma.trainers.base",
    "Quantizer": "duma.quantizer",
    "Judge": "duma.judge",
    "JudgeResult": "duma.judge",
    "DumaConfig": "duma.config",
    "load_config": "duma.config",
    "pass_state": "duma.cli",
    "DumaError": "duma.errors",
}

__all__ = ["__version__", "hookimpl", *_LAZY]


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'duma' has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)


def __dir__() -> list[str]:
    return sorted(__all__)
