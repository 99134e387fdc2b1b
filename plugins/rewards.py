"""Built-in plugin: the verifiable rewards ``exact``, ``numeric``, ``duma-slow`` and
``duma-fast`` that the ``grpo`` trainer scores sampled completions with.

A reward is a class with a ``name`` and ``score(prompt_messages, completion, answer) -> float``
(see :func:`duma.hookspecs.register_rewards`); subclassing :class:`Reward` is optional. Pure
Python (regular expressions and the DUMA protocol parser): cheap to import at CLI start-up.
"""

from __future__ import annotations

import math
import re
import unicodedata
from typing import Any, ClassVar

import duma

Messages = list[dict[str, Any]]

# A number as people write it: sign, thousands separators, decimals, exponent.
_NUMBER_RE = re.compile(r"[-+]?(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?(?:[eE][-+]?\d+)?|[-+]?\.\d+")


class Reward:
    """Base class of a reward (optional: any class with ``name`` and ``score`` will do)."""

    name: ClassVar[str] = ""
    description: ClassVar[str] = ""

    def score(self, prompt_messages: Messages, completion: str, answer: str | None) -> float:
        raise NotImplementedError


def normalise_answer(text: str) -> str:
    """Case-, width- and white-space-insensitive form of a short answer, without surrounding
    quotes and final punctuation (``" Paris."`` == ``"paris"``)."""
    text = unicodedata.normalize("NFKC", text).casefold()
    text = " ".join(text.split())
    return text.strip(" \"'`").rstrip(".!?。！？,;:").strip(" \"'`")


def numbers_in(text: str) -> list[float]:
    """The numbers written in ``text``, in order (``2,340`` is one number)."""
    out = []
    for m in _NUMBER_RE.finditer(text):
        try:
            out.append(float(m.group().replace(",", "")))
        except ValueError:
            continue
    return out


def numbers_equal(a: float, b: float, rel_tol: float = 1e-4, abs_tol: float = 1e-6) -> bool:
    return math.isclose(a, b, rel_tol=rel_tol, abs_tol=abs_tol)


class ExactReward(Reward):
    """1 when the completion equals the answer after :func:`normalise_answer`, else 0."""

    name = "exact"
    description = "1 if the completion equals the answer (case, spacing and final punctuation ignored)"

    def score(self, prompt_messages: Messages, completion: str, answer: str | None) -> float:
        if answer is None:
            return 0.0
        return float(normalise_answer(completion) == normalise_answer(answer))


class NumericReward(Reward):
    """1 when the last number in the completion equals the answer's number (the last one it
    holds) within a relative tolerance, else 0."""

    name = "numeric"
    description = "1 if the completion's last number equals the answer's number (relative tolerance 1e-4)"
    rel_tol: ClassVar[float] = 1e-4
    abs_tol: ClassVar[float] = 1e-6

    def score(self, prompt_messages: Messages, completion: str, answer: str | None) -> float:
        wanted = numbers_in(answer or "")
        said = numbers_in(completion)
        if not wanted or not said:
            return 0.0
        return float(numbers_equal(said[-1], wanted[-1], self.rel_tol, self.abs_tol))


def slow_trace_fields(text: str) -> list[tuple[str, str]] | None:
    """A slow-mind trace as its ``(field, content)`` list, or None unless the text is only
    closed protocol fields separated by white space."""
    from duma.agents.protocol import find_closing

    fields: list[tuple[str, str]] = []
    pos = 0
    opener = re.compile(r"\s*([A-Za-z]+)\[")
    while pos < len(text):
        if not text[pos:].strip():
            break
        m = opener.match(text, pos)
        if m is None:
            return None
        end = find_closing(text, m.end())
        if end < 0:
            return None
        fields.append((m.group(1), text[m.end():end]))
        pos = end + 1
    return fields


def well_formed_slow_trace(text: str) -> bool:
    """``(Reason? Act Obs)* Reason? Finish``: nothing else, every ``Act`` a readable tool call,
    and the trace ends at its ``Finish[...]``."""
    from duma.agents.protocol import ActionError, parse_action

    fields = slow_trace_fields(text)
    if not fields or fields[-1][0] != "Finish":
        return False
    i = 0
    while i < len(fields):
        name, content = fields[i]
        if name == "Reason":
            i += 1
            if i == len(fields) or fields[i][0] not in ("Act", "Finish"):
                return False
            continue
        if name == "Finish":
            return i == len(fields) - 1
        if name != "Act" or i + 1 == len(fields) or fields[i + 1][0] != "Obs":
            return False
        try:
            parse_action(content)
        except ActionError:
            return False
        i += 2
    return False


class DumaSlowReward(Reward):
    """A slow-mind trace (``Reason[...] Act[...] Obs[...] ... Finish[...]``): ``correct`` when
    its ``Finish[...]`` contains the answer (text, or the answer's number among the numbers it
    writes), plus ``form`` when the whole trace is well formed."""

    name = "duma-slow"
    description = "slow-mind trace: 0.8 if Finish[...] holds the answer, +0.2 if the trace is well formed"
    correct: ClassVar[float] = 0.8
    form: ClassVar[float] = 0.2

    def score(self, prompt_messages: Messages, completion: str, answer: str | None) -> float:
        from duma.agents.protocol import parse_slow

        total = self.form if well_formed_slow_trace(completion) else 0.0
        # The final answer: the last Finish of the trace (a step may think aloud before it).
        finishes = [c for name, c in (slow_trace_fields(completion) or []) if name == "Finish"]
        finish = finishes[-1] if finishes else parse_slow(completion).finish
        if answer is not None and finish is not None and finish_holds(finish, answer):
            total += self.correct
        return total


def finish_holds(finish: str, answer: str) -> bool:
    """Whether a ``Finish[...]`` text gives ``answer``: as text, or numerically when the
    answer is a number."""
    wanted = normalise_answer(answer)
    if wanted and wanted in normalise_answer(finish):
        return True
    target = numbers_in(answer)
    return len(target) == 1 and any(numbers_equal(x, target[0]) for x in numbers_in(finish))


_LABELS = {"true": True, "yes": True, "1": True, "false": False, "no": False, "0": False}


class DumaFastReward(Reward):
    """A fast-mind output (``Response[...]`` then ``Invoke[True|False]``): ``form`` when it
    parses as the protocol and ends at its ``Invoke[...]``, plus ``correct`` when the handoff
    decision matches ``answer`` (``"True"``/``"False"``). An output that does not parse gets 0:
    the lenient parser's default (no handoff) earns nothing."""

    name = "duma-fast"
    description = "fast-mind output: 0.2 if it parses as Response[...] Invoke[...], +0.8 if Invoke matches the label"
    correct: ClassVar[float] = 0.8
    form: ClassVar[float] = 0.2

    def score(self, prompt_messages: Messages, completion: str, answer: str | None) -> float:
        from duma.agents.protocol import INVOKE_OPEN, find_closing, parse_fast

        parsed = parse_fast(completion)
        if not parsed.parse_ok:
            return 0.0
        stripped = completion.strip()
        close = find_closing(stripped, stripped.rfind(INVOKE_OPEN) + len(INVOKE_OPEN))
        if close < 0 or stripped[close + 1:].strip():
            return 0.0  # text after the decision: duma would show or drop it, not the model's intent
        total = self.form
        if answer is not None:
            label = _LABELS.get(answer.strip().lower())
            if label is None:
                raise ValueError(f"duma-fast reward: the answer must be True or False, got {answer!r}")
            if parsed.invoke == label:
                total += self.correct
        return total


BUILTIN_REWARDS: list[type[Reward]] = [ExactReward, NumericReward, DumaSlowReward, DumaFastReward]


@duma.hookimpl
def register_rewards(register: Any) -> None:
    for reward in BUILTIN_REWARDS:
        register(reward)
