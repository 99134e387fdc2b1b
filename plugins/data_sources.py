"""Built-in plugin: the data sources ``belle``, ``alpaca``, ``sharegpt``, ``text``,
``preference``, ``unpaired``, ``prompts``, ``seed-tasks`` and ``duma-logs``.

Imported when the CLI starts: the source classes live in :mod:`duma.plugins.builtin_sources`
and are imported inside the hook.
"""

from __future__ import annotations

from typing import Any

import duma


@duma.hookimpl
def register_data_sources(register: Any) -> None:
    from duma.plugins.builtin_sources import BUILTIN_SOURCES

    for source in BUILTIN_SOURCES:
        register(source)
