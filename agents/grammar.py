"""The protocol's outputs as regular expressions: the constraint each mind's generation is held
to (``GenerationOptions.constraint``; backends enforce it while decoding, or duma validates).

- fast mind: ``Response[text]`` then ``Invoke[True]`` or ``Invoke[False]``
  (:func:`fast_output_pattern`);
- slow mind: an optional ``Reason[text]``, then ``Act[call]`` or ``Finish[text]``
  (:func:`slow_step_pattern`), where ``call`` can only name a registered tool, with arguments
  that :func:`protocol.parse_action` and :func:`protocol.bind_arguments` read for that tool, in
  the forms its argument schema types (an integer is digits, a string is text that cannot
  split or close the call).

Field text is anything but brackets (a ``]`` would close the field; nested brackets are what
:func:`protocol.neutralize_markup` writes away from the minds' inputs too); the fast mind's
reply text also never holds the word ``Invoke`` (:func:`text_without`). The patterns use only
syntax that every engine taking them reads alike: Python's ``re`` (validation), llguidance
(duma's token masks, onnxruntime-genai's and vLLM's guidance), vLLM's other structured-output
backends: literal text, character classes, capturing groups, ``|``, ``?``, ``*`` and ``+``;
no lookaround, lazy quantifiers, ``.`` or ``\\d`` (Unicode digits in some engines, ASCII in
others). Lengths stay unbounded: ``max_tokens`` bounds them, and a bounded repeat
(``{0,2000}``) would multiply the states of automaton-based engines.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from .protocol import INVOKE_OPEN, RESPONSE_OPEN

# Text inside a protocol field.
FIELD_TEXT = r"[^\[\]]*"
# Between two fields: what protocol.format_* writes (a newline) or a space.
FIELD_SEPARATOR = r"[ \n]"
# Between two arguments of a call.
ARG_SEPARATOR = r", ?"
INTEGER = r"-?[0-9]+"
NUMBER = r"-?[0-9]+(\.[0-9]+)?([eE][-+]?[0-9]+)?"
BOOLEAN = r"(true|false|True|False)"
# A string argument among several: no comma, bracket, quote or "=" (each would split the
# call differently, close it, or turn the value into a keyword), unless double-quoted.
BARE_VALUE = r"""([^\s\[\](){},"'=][^\n\[\](){},"'=]*|"[^"\n\[\]]*")"""
# The argument text of a one-argument string tool: the whole text is the value, commas and
# parentheses included (calculator((3+4)*2)); it must not read as JSON ("{") or a keyword.
RAW_VALUE = r"[^\s\[\]{=][^\n\[\]=]*"
# The tool names protocol.parse_action reads (others could never be called).
_TOOL_NAME_RE = re.compile(r"[A-Za-z_][\w\-.]*")
_SPECIAL = set("\\.^$*+?()[]{}|")


def literal(text: str) -> str:
    """``text`` as a pattern matching exactly it (only regex metacharacters escaped:
    ``re.escape`` also escapes characters some engines refuse to see escaped)."""
    return "".join("\\" + ch if ch in _SPECIAL else ("\\n" if ch == "\n" else ch) for ch in text)


def text_without(word: str) -> str:
    """Field text (anything but brackets) in which ``word`` never occurs, as a plain regular
    expression (no lookaround).

    The text is a run of pieces: a character other than ``word``'s first, or a partial match of
    ``word`` (its first character repeated, then a proper prefix of the rest) ended by a character
    that neither continues it nor starts it again; the text may end inside a partial match. A
    new partial match can only begin with ``word``'s first character, so ``word`` must not repeat
    it (true of the protocol's markers). Each piece has one parse, so backtracking engines
    (Python's ``re``) stay linear."""
    first, rest = word[0], word[1:]
    if len(word) < 2 or first in rest or set(word) & set("[]"):
        raise ValueError(f"text_without needs a word of 2+ characters, no bracket, whose first does not recur: "
                         f"{word!r}")

    def other_than(*chars: str) -> str:
        return "[^\\[\\]" + "".join("\\" + c if c in "\\^-" else c for c in chars) + "]"

    # After first+: the rest matched up to k, then a character that neither continues nor restarts.
    ended = other_than(first, rest[-1])
    for k in range(len(rest) - 2, -1, -1):
        ended = f"({other_than(first, rest[k])}|{literal(rest[k])}{ended})"
    # A partial match that another one follows at once: first+, then a non-empty proper prefix
    # of the rest (an empty one would make "first+" runs ambiguous).
    runs = ""
    if len(rest) > 1:
        prefix = ""
        for ch in reversed(rest[1:-1]):
            prefix = f"({literal(ch)}{prefix})?"
        runs = f"({literal(first)}+{literal(rest[0])}{prefix})*"
    return f"({other_than(first)}|{runs}{literal(first)}+{ended})*{runs}({literal(first)}+)?"


# The fast mind's reply text never holds "Invoke": a reply that ran on into "\nInvoke\nFalse"
# without closing its field repeated that until the repetition guard cut it.
RESPONSE_TEXT = text_without(INVOKE_OPEN.rstrip("["))


def fast_output_pattern(*, prefilled: bool = False) -> str:
    """What the fast mind writes: ``Response[text]`` then ``Invoke[True|False]``; the text
    never holds the word ``Invoke`` (:data:`RESPONSE_TEXT`).
    ``prefilled``: the backend continues a prefilled ``Response[`` (only the rest is generated)."""
    opener = "" if prefilled else literal(RESPONSE_OPEN)
    return f"{opener}{RESPONSE_TEXT}\\]{FIELD_SEPARATOR}{literal(INVOKE_OPEN)}(True|False)\\]"


def slow_step_pattern(tools: Mapping[str, Any]) -> str:
    """One slow-mind step: an optional ``Reason[text]``, then ``Act[call]`` naming one of
    ``tools`` (name -> langchain tool) with arguments its schema accepts, or ``Finish[text]``."""
    calls = [tool_call_pattern(name, tool) for name, tool in sorted(tools.items()) if _TOOL_NAME_RE.fullmatch(name)]
    finish = f"Finish\\[{FIELD_TEXT}\\]"
    step = f"(Act\\[({'|'.join(calls)})\\]|{finish})" if calls else finish
    return f"(Reason\\[{FIELD_TEXT}\\]{FIELD_SEPARATOR})?{step}"


def tool_args(tool: Any) -> dict[str, dict[str, Any]]:
    """A langchain tool's arguments, in order: name -> JSON schema of the argument."""
    try:
        args = getattr(tool, "args", None) or {}
        return {str(k): dict(v) if isinstance(v, Mapping) else {} for k, v in args.items()}
    except Exception:  # a tool with a broken schema is still listed and callable
        return {}


def tool_call_pattern(name: str, tool: Any) -> str:
    """``name(arguments)`` in the forms ``bind_arguments`` maps onto the tool's arguments:
    positional in order, then ``key=value`` in order (parse_action refuses a positional
    argument after a keyword); arguments with a default may be left out (positional ones only
    at the end); ``name`` alone or ``name()`` when none is required. A one-argument string
    tool takes its whole argument text."""
    args = tool_args(tool)
    if not args:
        return f"{literal(name)}(\\(\\))?"
    params = [_Param(key, schema) for key, schema in args.items()]
    if len(params) == 1:
        p = params[0]
        body = f"({_value_pattern(p.schema, raw=True)}|{p.keyword})"
    else:
        body = f"({params[0].value}{_after_positional(params, 1)}|{_keywords(params, 0, first=True)})"
    if any(p.required for p in params):
        return f"{literal(name)}\\({body}\\)"
    return f"{literal(name)}(\\(({body})?\\))?"


class _Param:
    def __init__(self, key: str, schema: dict[str, Any]) -> None:
        self.schema = schema
        self.required = "default" not in schema
        self.value = _value_pattern(schema)
        self.keyword = f"{literal(key)} ?= ?{self.value}"


def _after_positional(params: list[_Param], i: int) -> str:
    """What may follow positional arguments ``0..i-1``: the next positional one, or the
    keyword ones; nothing where every argument left has a default."""
    if i == len(params):
        return ""
    more = f"({ARG_SEPARATOR}{params[i].value}{_after_positional(params, i + 1)}|{_keywords(params, i, first=False)})"
    return more if any(p.required for p in params[i:]) else f"{more}?"


def _keywords(params: list[_Param], i: int, *, first: bool) -> str:
    """``key=value`` arguments ``i``.. in order, those with a default optional; ``first``: none
    written before (the first one has no separator, and at least one is written)."""
    if not first:
        return "".join(f"{ARG_SEPARATOR}{p.keyword}" if p.required else f"({ARG_SEPARATOR}{p.keyword})?"
                       for p in params[i:])
    starts = []
    for j in range(i, len(params)):  # the first keyword written: any up to the first required one
        starts.append(f"{params[j].keyword}{_keywords(params, j + 1, first=False)}")
        if params[j].required:
            break
    return starts[0] if len(starts) == 1 else "(" + "|".join(starts) + ")"


def _value_pattern(schema: dict[str, Any], *, raw: bool = False) -> str:
    """The text of one argument value of a JSON-schema type: the form pydantic parses for an
    integer, number or boolean, or a string (``raw``: the whole argument text of a
    one-argument tool)."""
    string = RAW_VALUE if raw else BARE_VALUE
    if "enum" in schema and schema["enum"]:
        return "(" + "|".join(literal(str(v)) for v in schema["enum"]) + ")"
    kinds = _kinds(schema) - {"null"}  # an argument is left out, not written as null
    if not kinds or kinds - {"integer", "number", "boolean"}:
        return string  # strings (and what has no plain text form) take text
    forms = [{"integer": INTEGER, "number": NUMBER, "boolean": BOOLEAN}[k] for k in sorted(kinds)]
    return forms[0] if len(forms) == 1 else "(" + "|".join(forms) + ")"


def _kinds(schema: dict[str, Any]) -> set[str]:
    """The JSON types a schema allows (``string`` where it names none)."""
    options = schema.get("anyOf") or schema.get("oneOf")
    if options:
        return set().union(*(_kinds(o) for o in options if isinstance(o, dict)))
    kind = schema.get("type")
    return set(kind) if isinstance(kind, list) else {kind} if isinstance(kind, str) else {"string"}


__all__ = ["fast_output_pattern", "literal", "slow_step_pattern", "text_without", "tool_args", "tool_call_pattern"]
