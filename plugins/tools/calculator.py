"""The ``calculator`` tool: arithmetic only, parsed with :mod:`ast` and evaluated by walking
the tree. Nothing is ever passed to ``eval``: names, attributes, strings, calls other than a
few math functions, comprehensions and lambdas are refused.

Besides Python arithmetic it reads what people write: ``17% of 2,340``, ``17%*2340``,
``2^10``, ``3 × 4``, ``12 ÷ 4``, thousands separators ``2,340`` (inside a function call too,
``round(2,500 * 1.05, 2)``, where reading the comma as an argument separator would make the call
fail), Chinese operator words (``100乘以23等于多少？``) and a trailing ``=`` or ``?``.
"""

from __future__ import annotations

import ast
import math
import operator
import re
from collections.abc import Callable
from typing import Any

from duma.plugins.tools.common import ToolException, format_number, make_tool

MAX_EXPRESSION_CHARS = 500
MAX_INT_BITS = 4096  # about 1233 decimal digits: big enough for arithmetic, small enough to be instant
MAX_EXPONENT = 10_000

Number = int | float

_BINARY: dict[type[ast.operator], Callable[[Any, Any], Any]] = {
    ast.Add: operator.add,
    ast.Sub: operator.sub,
    ast.Mult: operator.mul,
    ast.Div: operator.truediv,
    ast.FloorDiv: operator.floordiv,
    ast.Mod: operator.mod,
    ast.Pow: operator.pow,
}
_UNARY: dict[type[ast.unaryop], Callable[[Any], Any]] = {ast.UAdd: operator.pos, ast.USub: operator.neg}


def _round(x: Number, digits: Number = 0) -> Number:
    if not float(digits).is_integer() or not -20 <= digits <= 20:
        raise ToolException("round(x, digits) needs a whole number of digits between -20 and 20")
    return round(x, int(digits)) if digits else round(x)


def _log(x: Number, base: Number | None = None) -> float:
    return math.log(x) if base is None else math.log(x, base)


def _guarded_factorial(x: Number) -> int:
    if not float(x).is_integer() or not 0 <= x <= 300:
        raise ToolException("factorial(n) needs a whole number n between 0 and 300")
    return math.factorial(int(x))


FUNCTIONS: dict[str, tuple[Callable[..., Number], int, int]] = {
    # name: (function, min args, max args)
    "sqrt": (math.sqrt, 1, 1),
    "abs": (abs, 1, 1),
    "round": (_round, 1, 2),
    "min": (min, 1, 50),
    "max": (max, 1, 50),
    "log": (_log, 1, 2),
    "ln": (math.log, 1, 1),
    "log10": (math.log10, 1, 1),
    "log2": (math.log2, 1, 1),
    "exp": (math.exp, 1, 1),
    "floor": (math.floor, 1, 1),
    "ceil": (math.ceil, 1, 1),
    "factorial": (_guarded_factorial, 1, 1),
}
CONSTANTS: dict[str, float] = {"pi": math.pi, "e": math.e}

_ALLOWED = "numbers, + - * / // % ** ^, parentheses, percentages, pi, e and " + "/".join(FUNCTIONS) + "()"

# A number grouped in thousands: 2,340 or 1,234,567.89 (not 1,23 and not 12,3456).
_THOUSANDS = re.compile(r"(?<![\w.])\d{1,3}(?:,\d{3})+(?:\.\d+)?(?![\d,]*\d)")
# "17% of 2340" -> 17/100*2340 ; "17%" before an operator, ")" or the end -> (17/100).
_PERCENT_OF = re.compile(r"(\d+(?:\.\d+)?)\s*%\s*of\b", re.IGNORECASE)
_PERCENT = re.compile(r"(\d+(?:\.\d+)?)\s*%(?=\s*(?:$|[-+*/)^,]))")


def _strip_thousands_separators(text: str) -> str:
    """Remove thousands separators outside function calls; inside ``max(1,234)`` the comma
    separates arguments, so it is left alone there."""
    call_depths: list[bool] = []  # for each open parenthesis: is it a function call's?
    protected: list[tuple[int, int]] = []
    start: int | None = None
    for i, ch in enumerate(text):
        if ch == "(":
            before = text[:i].rstrip()
            is_call = bool(before) and (before[-1].isalnum() or before[-1] == "_")
            call_depths.append(is_call)
            if is_call and start is None:
                start = i
        elif ch == ")" and call_depths:
            if call_depths.pop() and start is not None and not any(call_depths):
                protected.append((start, i))
                start = None
    if start is not None:
        protected.append((start, len(text)))

    def replace(m: re.Match[str]) -> str:
        if any(a <= m.start() <= b for a, b in protected):
            return m.group(0)
        return m.group(0).replace(",", "")

    return _THOUSANDS.sub(replace, text)


# Chinese operator words: "100乘以23", "12除以4", "3加5", "9减2" (除 alone reverses the operands, so
# only 除以 is read); the punctuation of a Chinese keyboard.
_CHINESE_OPERATORS = (("乘以", "*"), ("乘", "*"), ("除以", "/"), ("加上", "+"), ("加", "+"), ("减去", "-"),
                      ("减", "-"), ("（", "("), ("）", ")"), ("，", ","), ("。", "."))


def normalize_expression(expression: str, separators_in_calls: bool = False) -> str:
    """Rewrite human arithmetic into Python arithmetic, which is parsed and never run.

    ``separators_in_calls``: also read ``2,500`` inside a function call as one number
    (``round(2,500 * 1.05, 2)``); by default a comma there separates arguments (``max(1,234)``)."""
    text = expression.strip()
    text = re.sub(r"^(?:what\s+is|what's|calculate|compute)\s+", "", text, flags=re.IGNORECASE)
    text = re.sub(r"(?:是|等于)?(?:多少|几)?[?=!？！。 \t]*$", "", text).strip()  # "100乘以23等于多少？"
    for human, python in (("×", "*"), ("÷", "/"), ("−", "-"), ("–", "-"), ("^", "**"), *_CHINESE_OPERATORS):
        text = text.replace(human, python)
    text = text.rstrip("?=!？！ \t").strip()
    text = re.sub(r"(\d)\s*(?:percent|per\s+cent|pct)\b", r"\1%", text, flags=re.IGNORECASE)
    text = re.sub(r"(?<=\d)\s*[xX]\s*(?=[\d(])", "*", text)  # 3 x 4
    text = (_THOUSANDS.sub(lambda m: m.group(0).replace(",", ""), text) if separators_in_calls
            else _strip_thousands_separators(text))
    text = _PERCENT_OF.sub(r"(\1/100)*", text)
    text = _PERCENT.sub(r"(\1/100)", text)
    return text


def _check_int_size(value: Number) -> Number:
    if isinstance(value, int) and value.bit_length() > MAX_INT_BITS:
        raise ToolException(f"the result is too large (more than {MAX_INT_BITS} bits)")
    return value


def _power(base: Number, exponent: Number) -> Number:
    if abs(exponent) > MAX_EXPONENT:
        raise ToolException(f"exponent {format_number(exponent)} is too large (at most {MAX_EXPONENT})")
    if isinstance(base, int) and isinstance(exponent, int) and exponent > 0:
        # Estimate before computing: 9**9**9 must be refused, not attempted.
        if max(abs(base), 1).bit_length() * exponent > MAX_INT_BITS + 64:
            raise ToolException(f"the result is too large (more than {MAX_INT_BITS} bits)")
    result = base**exponent
    if isinstance(result, complex):
        raise ToolException("a negative number to a fractional power has no real result")
    return result


def _evaluate(node: ast.AST) -> Number:
    if isinstance(node, ast.Expression):
        return _evaluate(node.body)
    if isinstance(node, ast.Constant):
        if isinstance(node.value, bool) or not isinstance(node.value, (int, float)):
            raise ToolException(f"only numbers are allowed, not {node.value!r}")
        return _check_int_size(node.value)
    if isinstance(node, ast.UnaryOp) and type(node.op) in _UNARY:
        return _UNARY[type(node.op)](_evaluate(node.operand))
    if isinstance(node, ast.BinOp) and type(node.op) in _BINARY:
        left, right = _evaluate(node.left), _evaluate(node.right)
        if isinstance(node.op, ast.Pow):
            return _check_int_size(_power(left, right))
        return _check_int_size(_BINARY[type(node.op)](left, right))
    if isinstance(node, ast.Name):
        if node.id in CONSTANTS:
            return CONSTANTS[node.id]
        raise ToolException(f"unknown name '{node.id}'; the calculator only knows {_ALLOWED}")
    if isinstance(node, ast.Call):
        if not isinstance(node.func, ast.Name) or node.func.id not in FUNCTIONS:
            shown = node.func.id if isinstance(node.func, ast.Name) else "that"
            raise ToolException(f"calling '{shown}' is not allowed; the calculator only knows {_ALLOWED}")
        if node.keywords or any(isinstance(a, ast.Starred) for a in node.args):
            raise ToolException(f"{node.func.id}() takes plain numbers only")
        func, least, most = FUNCTIONS[node.func.id]
        if not least <= len(node.args) <= most:
            wanted = str(least) if least == most else f"{least} to {most}"
            raise ToolException(f"{node.func.id}() takes {wanted} argument(s), got {len(node.args)}")
        return _check_int_size(func(*(_evaluate(a) for a in node.args)))
    if isinstance(node, ast.Tuple):
        raise ToolException("a comma may only group thousands (2,340) or separate a function's arguments")
    kind = type(node).__name__
    raise ToolException(f"'{kind}' expressions are not allowed; the calculator only evaluates {_ALLOWED}")


def calculate(expression: str) -> str:
    """Evaluate an arithmetic expression; raises ``ToolException`` with a readable message."""
    if not isinstance(expression, str) or not expression.strip():
        raise ToolException("give an arithmetic expression, e.g. calculator(17% of 2,340)")
    if len(expression) > MAX_EXPRESSION_CHARS:
        raise ToolException(f"the expression is longer than {MAX_EXPRESSION_CHARS} characters")
    text = normalize_expression(expression)
    try:
        return _calculate(expression, text)
    except ToolException:
        # "round(2,500 * 1.05, 2)": read as arguments, the commas make a call that fails; read
        # as thousands separators they make one that works. The first reading wins when both do
        # ("max(1,234)" is 234).
        other = normalize_expression(expression, separators_in_calls=True)
        if other == text:
            raise
        try:
            return _calculate(expression, other)
        except ToolException:
            pass
        raise


def _calculate(expression: str, text: str) -> str:
    try:
        tree = ast.parse(text, mode="eval")
    except SyntaxError:
        raise ToolException(f"cannot parse {expression!r} as arithmetic; use {_ALLOWED}") from None
    except (RecursionError, MemoryError, ValueError):
        raise ToolException("the expression is too deeply nested") from None
    try:
        value = _evaluate(tree)
    except ToolException:
        raise
    except ZeroDivisionError:
        raise ToolException("division by zero") from None
    except OverflowError:
        raise ToolException("the result is too large") from None
    except RecursionError:
        raise ToolException("the expression is too deeply nested") from None
    except (ValueError, TypeError) as exc:
        raise ToolException(f"math error: {exc}") from None
    return format_number(value)


def calculator(expression: str) -> str:
    """Evaluate arithmetic, e.g. '17% of 2,340', '(3 + 4) * 2', 'sqrt(2) ^ 3'."""
    return calculate(expression)


calculator_tool = make_tool(
    calculator,
    name="calculator",
    description=(
        "Arithmetic, e.g. calculator(17% of 2340).\n"
        "Numbers (2,340 is read as 2340), + - * / ** %, parentheses and sqrt, round, abs, min, max, log only; "
        "e.g. '(3 + 4) * 2', 'sqrt(2)'."
    ),
)
