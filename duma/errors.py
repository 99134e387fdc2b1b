"""User-facing errors: one line saying what is wrong and what to do."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any


class DumaError(Exception):
    """An error the CLI prints as one line (no traceback unless --debug), exit code 1.

    ``hint`` says what to do about it; it is appended after the message.
    """

    exit_code: int = 1

    def __init__(self, message: str, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        return f"{self.message} ({self.hint})" if self.hint else self.message


class ConfigError(DumaError):
    """Bad configuration: names the key path (and file) and what is allowed."""

    exit_code = 2


class PluginError(DumaError):
    """A plugin failed to load or raised inside a hook (strict mode), or a name clash."""


class ModelLoadError(DumaError):
    """A model could not be found or loaded."""


class LogStoreError(DumaError):
    """The conversation log database is locked, corrupt or unreadable."""


def first_line(error: BaseException | str, *, with_type: bool = False, limit: int = 300) -> str:
    """The first line of an exception's text (or of a string), cut to ``limit`` characters.

    An exception with no text is named by its type; ``with_type`` prefixes the type anyway
    (``"ValueError: ..."``), for messages where the kind of failure matters.
    """
    if isinstance(error, BaseException):
        text = str(error).strip()
        kind = type(error).__name__
        line = text.splitlines()[0][:limit] if text else kind
        return f"{kind}: {line}" if with_type and text else line
    text = error.strip()
    return text.splitlines()[0][:limit] if text else ""


def validation_problems(exc: Any, *, show_input: bool = True) -> list[tuple[str, str]]:
    """A pydantic ``ValidationError`` as ``(dotted key path, short message)`` pairs, first
    problem first. Messages are short and say what is allowed (``unknown key``, ``missing``,
    ``must be one of ...``) and, with ``show_input``, the bad value (a server answering
    strangers does not echo what it was sent)."""
    problems = []
    for err in exc.errors(include_url=False):
        path = ".".join(str(p) for p in err.get("loc", ()))
        problems.append((path, _problem_message(err, show_input)))
    return problems


def _problem_message(err: Any, show_input: bool = True) -> str:
    kind, ctx = err.get("type"), err.get("ctx") or {}
    if kind == "extra_forbidden":
        return "unknown key"
    if kind == "missing":
        return "missing"
    if kind == "string_too_short" and ctx.get("min_length") == 1:
        return "empty"
    if kind == "too_short":
        n = ctx.get("min_length")
        return f"needs at least {n} item{'s' * (n != 1)}"
    bounds = {"less_than_equal": ("<=", "le"), "less_than": ("<", "lt"),
              "greater_than_equal": (">=", "ge"), "greater_than": (">", "gt")}
    if kind in bounds:
        symbol, key = bounds[kind]
        bound = ctx.get(key)
        msg = f"must be {symbol} {bound:g}" if isinstance(bound, float) else f"must be {symbol} {bound}"
    elif kind == "literal_error" and "expected" in ctx:
        msg = f"must be one of {ctx['expected']}"
    elif kind and kind.startswith("int_"):
        msg = "must be an integer"
    elif kind and kind.startswith("float_"):
        msg = "must be a number"
    else:
        msg = str(err.get("msg", "invalid"))
        msg = msg.removeprefix("Value error, ")
    value = err.get("input")
    if show_input and "input" in err and not isinstance(value, (dict, list)) and not hasattr(value, "model_fields"):
        shown = repr(value)
        msg += f" (got {shown if len(shown) <= 60 else shown[:57] + '...'})"
    return msg


def format_validation_error(exc: Any, *, prefix: str = "", source: str | None = None,
                            origin: Callable[[tuple[Any, ...]], str | None] | None = None) -> str:
    """The one-line form of a pydantic ``ValidationError``: ``where: key.path: message``
    for each problem, joined with ``; `` (the first problem first).

    ``prefix`` is the key path the validated data sits under (``agent.router_options``);
    ``origin(loc)`` names where a key came from (``cfg.yaml:3``), ``source`` is the fallback.
    """
    lines = []
    for err, (path, message) in zip(exc.errors(include_url=False), validation_problems(exc)):
        full = ".".join(p for p in (prefix, path) if p) or "(top level)"
        where = (origin(err.get("loc", ())) if origin else None) or source
        lines.append(f"{where + ': ' if where else ''}{full}: {message}")
    return "; ".join(lines)
