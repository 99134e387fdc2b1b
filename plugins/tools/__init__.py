"""Built-in tools for the slow mind: calculator, dates, unit conversion, knowledge search.

Tool names and arguments (the slow mind writes ``Act[name(arg1, arg2)]``; positional
arguments map in this order):

- ``calculator(expression)``
- ``today()``, ``date_diff(start, end)``, ``weekday(date)``, ``add_days(date, days)``
- ``convert_units(value, from_unit, to_unit)`` (also ``convert_units(5 km, mi)``, ``convert_units(5 km to mi)``)
- ``search_knowledge(query)``: registered as a factory, built for each agent from its
  ``agent.knowledge_dir`` (:func:`duma.plugins.tools.knowledge.knowledge_tool_from_config`)

Errors: every tool's ``invoke`` returns an observation starting with ``"Error: "`` for bad
arguments instead of raising (the Python functions behind them raise ``ToolException``);
see :mod:`duma.plugins.tools.common`.

This module is imported when the CLI starts, so langchain and the tool modules are imported
only inside the hook.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import duma

if TYPE_CHECKING:
    from langchain_core.tools import BaseTool

BUILTIN_TOOL_NAMES = (
    "calculator", "today", "date_diff", "weekday", "add_days", "convert_units", "search_knowledge",
)


def builtin_tools() -> list[BaseTool]:
    """The built-in tools that need no configuration, in a stable order (``search_knowledge``
    is built per agent, see :func:`register_tools`)."""
    from duma.plugins.tools.calculator import calculator_tool
    from duma.plugins.tools.dates import DATE_TOOLS
    from duma.plugins.tools.units import convert_units_tool

    return [calculator_tool, *DATE_TOOLS, convert_units_tool]


@duma.hookimpl
def register_tools(register: Any) -> None:
    from duma.plugins.tools.knowledge import KNOWLEDGE_TOOL_NAME, knowledge_tool_from_config

    for tool in builtin_tools():
        register(tool)
    register(knowledge_tool_from_config, name=KNOWLEDGE_TOOL_NAME)
