"""A plugin with a misspelt hook name (register_tool instead of register_tools)."""

from __future__ import annotations

from typing import Any

from duma import hookimpl


@hookimpl
def register_tool(register: Any) -> None:
    raise AssertionError("never called")
