"""What every built-in tool shares: how it is built and how it reports bad arguments.

Error convention (the same for every built-in tool): the plain Python functions raise
``ToolException`` with a one-line message; the langchain tools built by :func:`make_tool`
turn it into an observation string starting with ``"Error: "`` (``handle_tool_error``), and
do the same for arguments that fail pydantic validation. So ``tool.invoke(...)`` never
raises for bad input: the slow mind reads ``Obs[Error: ...]`` and can correct itself.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

from langchain_core.tools import BaseTool, StructuredTool, ToolException
from pydantic import ValidationError

from duma.errors import first_line, format_validation_error

ERROR_PREFIX = "Error: "


def format_number(value: float | int, significant: int = 10) -> str:
    """Integers without ``.0``; floats rounded to ``significant`` digits (397.8, not
    397.79999999999995)."""
    if isinstance(value, bool):
        return str(value)
    if isinstance(value, int):
        return str(value)
    if math.isnan(value) or math.isinf(value):
        raise ToolException("the result is not a finite number")
    rounded = float(f"{value:.{significant}g}")
    if rounded.is_integer() and abs(rounded) < 1e15:
        return str(int(rounded))
    text = f"{rounded:.{significant}g}"
    return text


def _tool_error(exc: ToolException) -> str:
    message = first_line(exc)
    return message if message.startswith(ERROR_PREFIX) else ERROR_PREFIX + message


def _validation_error(tool_name: str) -> Callable[[ValidationError], str]:
    def describe(exc: ValidationError) -> str:
        return f"{ERROR_PREFIX}invalid arguments for {tool_name}: {format_validation_error(exc)}"

    return describe


def make_tool(func: Callable[..., Any], name: str, description: str) -> BaseTool:
    """A langchain tool whose argument order is the function's parameter order (the slow
    mind's positional ``Act[name(a, b)]`` maps onto it) and whose errors are observations."""
    return StructuredTool.from_function(
        func,
        name=name,
        description=description,
        handle_tool_error=_tool_error,
        handle_validation_error=_validation_error(name),
    )


__all__ = ["ERROR_PREFIX", "ToolException", "format_number", "make_tool"]
