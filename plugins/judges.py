"""Registers the built-in answer judges of ``duma eval``: ``llm`` (any backend as judge,
BELLE-style prompts), ``exact``, ``contains`` and ``numeric``.

The classes live in :mod:`duma.plugins.evaluation.builtin_judges`, imported by the hook so
that ``duma --help`` does not import pydantic.
"""

from __future__ import annotations

from duma import hookimpl
from duma.hookspecs import Register


@hookimpl
def register_judges(register: Register) -> None:
    from duma.plugins.evaluation.builtin_judges import BUILTIN_JUDGES

    for judge_cls in BUILTIN_JUDGES:
        register(judge_cls)
