"""Built-in answer judges for ``duma eval``: ``llm`` (any backend as judge, BELLE-style
prompts), ``exact``, ``contains`` and ``numeric``.

The classes (and the :class:`Judge` base and :class:`JudgeResult`) live in
:mod:`duma.plugins.evaluation.judging` and load on first use, so that ``duma --help`` does
not import pydantic; ``from duma.plugins.judges import Judge, JudgeResult`` still works.
"""

from __future__ import annotations

from typing import Any

import duma


@duma.hookimpl
def register_judges(register: Any) -> None:
    from duma.plugins.evaluation.judging import BUILTIN_JUDGES

    for judge_cls in BUILTIN_JUDGES:
        register(judge_cls)


def __getattr__(name: str) -> Any:
    # Lazy re-exports: Judge, JudgeResult, LLMJudge, parse_score, normalise_class...
    import duma.plugins.evaluation.judging as judging

    if not name.startswith("_") and hasattr(judging, name):
        return getattr(judging, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
