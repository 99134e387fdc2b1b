"""A plugin whose register_backends hook raises after registering, and whose tool is fine."""

from __future__ import annotations

from typing import Any

from duma import hookimpl


@hookimpl
def register_backends(register: Any) -> None:
    from duma.testing import ScriptedBackend

    # Registered, then the hook fails: none of this plugin's backends may be kept.
    register(ScriptedBackend, name="half_registered")
    raise RuntimeError("backend registry exploded")


@hookimpl
def register_tools(register: Any) -> None:
    from langchain_core.tools import tool

    @tool
    def fixture_upper(text: str) -> str:
        """Upper-case a text."""
        return text.upper()

    register(fixture_upper)
