"""The DUMA text protocol: how the fast and slow minds' inputs are written and their outputs
parsed.

Fast mind: inputs ``User[...]`` and ``SlowMind[...]``; output ``Response[...]`` then
``Invoke[True|False]``. Slow mind: ``Reason[...]``, ``Act[tool(args)]``, ``Obs[...]`` (written by
duma), ``Finish[...]``. Training data and inference both format through this module, so the
two never drift apart.

Parsing is lenient: a model that does not follow the protocol (e.g. the untrained embedded
model) still yields a usable reply: its raw text, and no handoff. Where the backend can, the
minds' generations are held to the protocol while decoding instead (the patterns of
:mod:`duma.agents.grammar`): the lenient parser then reads only protocol output.

The chat layout each mind sees (train on exactly this):

- fast mind: ``system`` = its prompt; then per turn ``user`` = ``User[q]``, ``assistant`` =
  ``Response[r]\\nInvoke[False]``; a handoff turn continues with ``assistant`` =
  ``Response[interim]\\nInvoke[True]``, ``user`` = ``SlowMind[result]``, ``assistant`` =
  ``Response[final]\\nInvoke[False]``.
- slow mind: ``system`` = its prompt with the tool list; ``user`` = the retrospect
  (``Query 0: ... Answer 0: ... Query t: ...``); then ``assistant`` = ``Reason[...]\\nAct[...]``
  and ``user`` = ``Obs[...]`` pairs; the last ``assistant`` = ``Reason[...]\\nFinish[...]``.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from typing import Any

RESPONSE_OPEN = "Response["
INVOKE_OPEN = "Invoke["
# Strings the fast mind must not write: they start the next input, which duma writes.
FAST_STOP = ["User[", "SlowMind["]
# The slow mind writes one Reason/Act step at a time; duma writes the observation.
SLOW_STOP = ["Obs["]


# Every field name of the protocol: text that duma wraps in one of them must not open another.
PROTOCOL_FIELDS = ("User", "SlowMind", "Response", "Invoke", "Reason", "Act", "Obs", "Finish")
_FIELD_OPEN_RE = re.compile(r"\b(" + "|".join(PROTOCOL_FIELDS) + r")\s*\[")


# --------------------------------------------------------------------------- formatting

def neutralize_markup(text: str) -> str:
    """Text from outside the minds (a user's message, a tool's observation, a slow-mind
    result) as plain text inside a protocol field: a field opener in it (``Invoke[``,
    ``SlowMind[``...) is written with parentheses instead (``Invoke(...)``), and a ``]`` that
    would close the surrounding field early becomes ``)``. Brackets that are not markup and
    are balanced stay as they are. Training data and prompts both go through here."""
    out: list[str] = []
    stack: list[bool] = []  # per open "[": whether it opened a neutralised field
    i = 0
    while i < len(text):
        match = _FIELD_OPEN_RE.match(text, i) if text[i].isalpha() and (i == 0 or not text[i - 1].isalnum()) else None
        if match:
            out.append(match.group(1) + "(")
            stack.append(True)
            i = match.end()
            continue
        ch = text[i]
        if ch == "[":
            stack.append(False)
            out.append(ch)
        elif ch == "]":
            if not stack:
                out.append(")")  # unbalanced: it would close the surrounding field
            else:
                out.append(")" if stack.pop() else "]")
        else:
            out.append(ch)
        i += 1
    return "".join(out)


def format_user(text: str) -> str:
    return f"User[{neutralize_markup(text)}]"


def format_slow_mind(result: str) -> str:
    return f"SlowMind[{neutralize_markup(result)}]"


def format_fast_output(response: str, invoke: bool) -> str:
    """What a well-behaved fast mind writes (used for history and training data)."""
    return f"{RESPONSE_OPEN}{response}]\n{INVOKE_OPEN}{invoke}]"


def format_observation(observation: str) -> str:
    return f"Obs[{neutralize_markup(observation)}]"


def format_slow_step(reason: str, action: str | None = None, finish: str | None = None) -> str:
    parts = [f"Reason[{reason}]"] if reason else []
    if action is not None:
        parts.append(f"Act[{action}]")
    if finish is not None:
        parts.append(f"Finish[{finish}]")
    return "\n".join(parts)


def format_retrospect(turns: list[tuple[str, str]], query: str) -> str:
    """The slow mind's view of the dialogue: ``Query 0: ... Answer 0: ... Query t: ...``."""
    lines = []
    for i, (q, a) in enumerate(turns):
        lines.append(f"Query {i}: {neutralize_markup(q)}")
        lines.append(f"Answer {i}: {neutralize_markup(a)}")
    lines.append(f"Query {len(turns)}: {neutralize_markup(query)}")
    return "\n".join(lines)


# --------------------------------------------------------------------------- bracket helpers

def find_closing(text: str, start: int) -> int:
    """Index of the ``]`` that closes the bracket opened just before ``start`` (nested
    brackets counted), or -1 when it is not closed."""
    depth = 1
    for i in range(start, len(text)):
        ch = text[i]
        if ch == "[":
            depth += 1
        elif ch == "]":
            depth -= 1
            if depth == 0:
                return i
    return -1


def extract_field(text: str, name: str) -> str | None:
    """The content of the first ``name[...]`` in ``text`` (None when absent or unclosed)."""
    m = re.search(rf"\b{re.escape(name)}\[", text)
    if m is None:
        return None
    end = find_closing(text, m.end())
    return None if end < 0 else text[m.end():end]


# --------------------------------------------------------------------------- fast mind

_INVOKE_RE = re.compile(r"Invoke\[\s*(True|False|true|false|yes|no|1|0)\s*\]")


@dataclass
class FastOutput:
    """The parsed fast-mind output. ``parse_ok`` is False when a field was missing or
    garbled; then ``invoke`` is False and ``response`` is the raw text (markup stripped)."""

    response: str
    invoke: bool
    parse_ok: bool
    raw: str


def _markup_start(content: str) -> int:
    """Where markup begins inside an unclosed ``Response[`` body: ``Invoke[``, or a second
    ``Response[`` (a model that restarts its reply instead of closing the first); -1 if none."""
    found = [i for i in (content.find(INVOKE_OPEN), content.find(RESPONSE_OPEN)) if i >= 0]
    return min(found) if found else -1


def _strip_invoke(text: str) -> str:
    """Raw text without a stray ``Invoke[...]`` and anything after it."""
    i = text.find(INVOKE_OPEN)
    return (text[:i] if i >= 0 else text).strip()


def parse_fast(raw: str) -> FastOutput:
    """Parse ``Response[...] Invoke[...]`` leniently."""
    stripped = raw.strip()
    invoke_match = _INVOKE_RE.search(stripped)
    if stripped.startswith(RESPONSE_OPEN):
        start = len(RESPONSE_OPEN)
        end = find_closing(stripped, start)
        markup = _markup_start(stripped[start:])
        if end < 0 or (0 <= markup < end - start):
            # Unclosed Response[: the reply runs to Invoke[, a restarted Response[ or the end.
            body = stripped[start: start + markup if markup >= 0 else len(stripped)]
            return FastOutput(body.strip(), False, False, raw)
        body = stripped[start:end].strip()
        if invoke_match is None or invoke_match.start() < end:
            return FastOutput(body, False, False, raw)
        invoke = invoke_match.group(1).lower() in ("true", "yes", "1")
        return FastOutput(body, invoke, bool(body) or invoke, raw)
    return FastOutput(_strip_invoke(stripped), False, False, raw)


class FastStreamParser:
    """Incremental twin of :func:`parse_fast`: ``feed(delta)`` returns the text the user should
    see now (the inside of ``Response[...]``, or the raw text when the output does not follow
    the protocol), holding back anything that may still turn out to be markup.

    ``done`` becomes True once ``Invoke[...]`` is closed, or once the model restarts its reply
    with a second ``Response[``: the caller may stop generating.
    """

    def __init__(self) -> None:
        self.raw = ""
        self.emitted = ""
        self.done = False

    def feed(self, delta: str) -> str:
        self.raw += delta
        return self._emit(final=False)

    def finish(self) -> str:
        """Flush what is left at the end of the output."""
        return self._emit(final=True)

    def result(self) -> FastOutput:
        return parse_fast(self.raw)

    def _emit(self, final: bool) -> str:
        visible, self.done = visible_fast_text(self.raw, final)
        if not visible.startswith(self.emitted):
            return ""  # never retract what was shown (rare: the final text is authoritative)
        new = visible[len(self.emitted):]
        self.emitted = visible
        return new


def visible_fast_text(raw: str, final: bool) -> tuple[str, bool]:
    """What of ``raw`` the user sees so far, and whether ``Invoke[...]`` is closed. At the
    end (``final``) the text equals ``parse_fast(raw).response``."""
    body = raw.lstrip()
    if not final and RESPONSE_OPEN.startswith(body):
        return "", False  # may still become Response[
    if body.startswith(RESPONSE_OPEN):
        content = body[len(RESPONSE_OPEN):]
        cut = find_closing(content, 0)
    else:
        content, cut = body, -1
    in_response = body.startswith(RESPONSE_OPEN)
    markup = _markup_start(content) if in_response else content.find(INVOKE_OPEN)
    if markup >= 0 and (cut < 0 or markup < cut):
        cut = markup
    closed = cut >= 0
    text = content[:cut] if closed else content
    # Hold back a tail that may be the start of markup. A reply's first character alone is
    # not held: markup there would make the reply empty (malformed output), while holding it
    # delays the first visible token by a decode step on every reply that starts that way.
    if not closed and not final:
        openers = (INVOKE_OPEN, RESPONSE_OPEN) if in_response else (INVOKE_OPEN,)
        held = max((k for opener in openers for k in range(1, min(len(opener), len(text)) + 1)
                    if opener.startswith(text[-k:])), default=0)
        if held == 1 and len(text.lstrip()) == 1:
            held = 0
        text = text[:len(text) - held]
    # Done: Invoke[...] is closed, or the reply was restarted (a second Response[ cut it).
    restarted = closed and content.startswith(RESPONSE_OPEN, cut)
    done = (closed and _INVOKE_RE.search(content, cut) is not None) or restarted
    # Surrounding whitespace is held back (the final reply is stripped).
    return text.strip(), done


# --------------------------------------------------------------------------- slow mind

@dataclass
class SlowOutput:
    """One parsed slow-mind step."""

    reason: str = ""
    action: str | None = None
    finish: str | None = None
    raw: str = ""

    @property
    def garbled(self) -> bool:
        return self.action is None and self.finish is None


def parse_slow(raw: str) -> SlowOutput:
    """Parse ``Reason[...] Act[...]`` or ``Reason[...] Finish[...]`` leniently; the first Act
    or Finish wins (whichever comes first)."""
    out = SlowOutput(raw=raw)
    out.reason = (extract_field(raw, "Reason") or "").strip()
    act = re.search(r"\bAct\[", raw)
    fin = re.search(r"\bFinish\[", raw)
    if act and (not fin or act.start() < fin.start()):
        end = find_closing(raw, act.end())
        out.action = (raw[act.end():end] if end >= 0 else raw[act.end():]).strip()
    elif fin:
        end = find_closing(raw, fin.end())
        out.finish = (raw[fin.end():end] if end >= 0 else raw[fin.end():]).strip()
    if not out.reason and out.garbled:
        out.reason = raw.strip()
    return out


@dataclass
class ToolCall:
    name: str
    positional: list[Any] = field(default_factory=list)
    keywords: dict[str, Any] = field(default_factory=dict)
    raw_args: str = ""
    json_args: dict[str, Any] | None = None


class ActionError(ValueError):
    """A malformed ``Act[...]``; its message becomes the observation."""


_CALL_RE = re.compile(r"^\s*([A-Za-z_][\w\-.]*)\s*(?:\((.*)\))?\s*$", re.S)


_THOUSANDS_COMMA = re.compile(r"(?<=\d),(?=\d{3}(?!\d))")


def split_top_level(args: str, *, thousands: bool = False) -> list[str]:
    """Split on commas outside brackets and quotes; with ``thousands``, not on a comma that
    separates a number's digit groups (``1,500``)."""
    parts: list[str] = []
    depth = 0
    quote: str | None = None
    current: list[str] = []
    for i, ch in enumerate(args):
        if quote:
            current.append(ch)
            if ch == quote:
                quote = None
            continue
        if ch in "\"'":
            quote = ch
        elif ch in "([{":
            depth += 1
        elif ch in ")]}":
            depth -= 1
        elif ch == "," and depth == 0 and not (thousands and _THOUSANDS_COMMA.match(args, i)):
            parts.append("".join(current).strip())
            current = []
            continue
        current.append(ch)
    parts.append("".join(current).strip())
    return parts


def _unquote(value: str) -> str:
    value = value.strip()
    if len(value) >= 2 and value[0] == value[-1] and value[0] in "\"'":
        return value[1:-1]
    return value


def parse_action(action: str) -> ToolCall:
    """``name(a, b)``, ``name(key=value)``, ``name({"json": ...})``, ``name()`` or ``name``."""
    m = _CALL_RE.match(action)
    if m is None:
        raise ActionError(f"cannot read the action {action!r}; write Act[tool(arguments)]")
    name, args = m.group(1), (m.group(2) or "").strip()
    call = ToolCall(name=name, raw_args=args)
    if not args:
        return call
    if args.startswith("{"):
        try:
            loaded = json.loads(args)
        except ValueError as exc:
            raise ActionError(f"the JSON arguments of {name} are invalid ({exc})") from None
        if not isinstance(loaded, dict):
            raise ActionError(f"the JSON arguments of {name} must be an object")
        call.json_args = loaded
        return call
    for part in split_top_level(args):
        kw = re.match(r"^([A-Za-z_]\w*)\s*=(?!=)\s*(.*)$", part, re.S)
        if kw:
            call.keywords[kw.group(1)] = _unquote(kw.group(2))
        else:
            if call.keywords:
                raise ActionError(f"positional argument {part!r} after keyword arguments in {name}(...)")
            call.positional.append(_unquote(part))
    return call


def bind_arguments(call: ToolCall, arg_names: list[str]) -> dict[str, Any]:
    """Map a parsed call onto a tool's argument names (in order). A one-argument tool gets
    the whole argument text, commas included (``calculator(17% of 2,340)``)."""
    if call.json_args is not None:
        return dict(call.json_args)
    if not call.raw_args:
        return {}
    if len(arg_names) == 1 and not call.keywords:
        return {arg_names[0]: _unquote(call.raw_args)}
    if len(call.positional) > len(arg_names) and not call.keywords:
        # convert_units(1,500, m, ft): too many arguments unless 1,500 is one number
        regrouped = [_unquote(part) for part in split_top_level(call.raw_args, thousands=True)]
        if len(regrouped) <= len(arg_names):
            call = ToolCall(name=call.name, positional=regrouped, raw_args=call.raw_args)
    if len(call.positional) > len(arg_names):
        expected = ", ".join(arg_names) or "no arguments"
        raise ActionError(f"{call.name} takes {len(arg_names)} argument(s) ({expected}), "
                          f"got {len(call.positional)}")
    bound = dict(zip(arg_names, call.positional))
    for key, value in call.keywords.items():
        if key not in arg_names:
            raise ActionError(f"{call.name} has no argument {key!r} (arguments: {', '.join(arg_names)})")
        bound[key] = value
    return bound


__all__ = [
    "FAST_STOP",
    "SLOW_STOP",
    "ActionError",
    "FastOutput",
    "FastStreamParser",
    "SlowOutput",
    "ToolCall",
    "bind_arguments",
    "extract_field",
    "format_fast_output",
    "format_observation",
    "format_retrospect",
    "format_slow_mind",
    "format_slow_step",
    "format_user",
    "parse_action",
    "parse_fast",
    "parse_slow",
]
