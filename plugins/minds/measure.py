"""Measure the two minds on held-out templates (``duma minds measure``).

- invoke decisions: the fast mind on each held-out turn's context (the agent's own
  ``build_context``), parsed with ``protocol.parse_fast``: accuracy, precision, recall;
- slow mind: the real ``SlowMind`` loop on held-out traces: share of valid ``Act[...]`` steps,
  of episodes that reach ``Finish[...]``, of answers containing the correct tool result;
- end to end: the real ``Agent`` with the ``duma`` router on held-out dialogues: share of
  correct final answers, median time to first token on fast-path turns; routing APGR/CPT(50%)
  of the ``duma`` router (the fast mind's Invoke) against ``classifier`` (trained on
  router_train.jsonl) and random scores, via ``plugins/evaluation/routing.routing_metrics``.

On the hand-written test set (``--handwritten``, ``tests/data/minds/handwritten.jsonl``), the
real ``Agent`` as ``duma chat`` runs it (duma router, default agent settings, 256 reply tokens)
over each dialogue, turn by turn: routing accuracy, slow-labelled turns answered correctly,
fast-labelled turns kept fast, promises to look something up without an invoke, runaway
replies, median time to first token on the fast path, per category and language, and every
failing turn with its reply and why (:func:`measure_handwritten`).
"""

from __future__ import annotations

import json
import random
import re
import statistics
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from .generate import DEFAULT_TODAY, KNOWLEDGE_DIR, MEMORY_TURNS, fixed_today, logged_message


class InvokeMetrics(BaseModel):
    n: int = 0
    accuracy: float | None = None
    precision: float | None = None
    recall: float | None = None
    parse_ok: float | None = None
    # Same contexts for every model: the turns that need no slow mind, timed to the first
    # visible token of the fast pass (the end-to-end figure depends on each model's routing).
    median_first_token_s_fast_turns: float | None = None


class SlowMetrics(BaseModel):
    episodes: int = 0
    steps: int = 0
    valid_act_share: float | None = None
    finish_share: float | None = None
    correct_share: float | None = None


class EndToEndMetrics(BaseModel):
    dialogues: int = 0
    turns: int = 0
    correct_share: float | None = None
    slow_share: float | None = None
    median_first_token_s_fast_path: float | None = None
    errors: int = 0  # turns the agent ended with an error (counted as wrong)
    first_error: str | None = None


class RouterFigures(BaseModel):
    apgr: float | None = None
    cpt50: float | None = None
    problem: str | None = None


class RoutingQuality(BaseModel):
    """On the held-out routing turns: share answered correctly by the fast mind alone and by
    the slow mind alone (APGR needs the second above the first)."""

    fast_only: float | None = None
    slow_only: float | None = None


# --------------------------------------------------------------------------- hand-written set

HANDWRITTEN_CATEGORIES = ("arithmetic", "dates", "units", "knowledge", "smalltalk", "followup", "injection")
HANDWRITTEN_MAX_TOKENS = 256  # duma chat's reply cap (GenerationOptions.max_tokens)
HELDOUT_MAX_TOKENS = 96
RUNAWAY_S = 10.0  # a fast-mind reply that takes longer than this ran away


class HandwrittenTurn(BaseModel):
    """One user turn of the hand-written set."""

    model_config = ConfigDict(extra="forbid")

    user: str = Field(min_length=1, description="The user's message, exactly as typed.")
    slow: bool = Field(description="Whether the turn needs the slow mind (its tools).")
    expected: list[str] = Field(default_factory=list, description="Accepted substrings of a correct reply "
                                "(any one matches; case and thousands separators ignored).")
    must_not: list[str] = Field(default_factory=list, description="Substrings that mark a wrong reply.")
    category: str | None = Field(None, description="The turn's category when not the dialogue's.")

    @model_validator(mode="after")
    def _slow_turns_say_what_is_right(self) -> HandwrittenTurn:
        if self.slow and not self.expected:
            raise ValueError("a slow turn needs 'expected'")
        if any(not e.strip() for e in [*self.expected, *self.must_not]):
            raise ValueError("'expected' and 'must_not' hold non-empty strings")
        return self


class HandwrittenDialogue(BaseModel):
    """One line of the hand-written set: a dialogue of one or more turns."""

    model_config = ConfigDict(extra="forbid")

    id: str = Field(min_length=1)
    lang: Literal["en", "zh"]
    category: str = Field(description=f"One of {', '.join(HANDWRITTEN_CATEGORIES)}.")
    turns: list[HandwrittenTurn] = Field(min_length=1)

    def turn_category(self, turn: HandwrittenTurn) -> str:
        return turn.category or self.category


def read_handwritten(path: Path) -> list[HandwrittenDialogue]:
    """The dialogues of a hand-written set (JSONL); a bad line is a DumaError naming it."""
    from duma.errors import DumaError, format_validation_error

    dialogues = []
    seen: set[str] = set()
    for number, line in enumerate(Path(path).read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            dialogue = HandwrittenDialogue.model_validate_json(line)
        except ValidationError as exc:
            raise DumaError(f"{path}:{number}: not a hand-written dialogue: {format_validation_error(exc)}",
                            "see tests/data/minds/README.md for the format") from None
        if dialogue.id in seen:
            raise DumaError(f"{path}:{number}: dialogue id {dialogue.id!r} is used twice")
        seen.add(dialogue.id)
        dialogues.append(dialogue)
    return dialogues


_THOUSANDS_SEPARATOR = re.compile(r"(?<=\d),(?=\d{3}(?!\d))")


def _normalise(text: str) -> str:
    return _THOUSANDS_SEPARATOR.sub("", text).replace("\u2019", "'").casefold()


_NUMBER = re.compile(r"(?<![\d.])\d+(?:\.\d+)?")
_DECIMAL = re.compile(r"\d+\.(\d+)")


def mentions(reply: str, wanted: str) -> bool:
    """Whether ``reply`` contains ``wanted``, case and thousands separators ignored. A
    ``wanted`` that starts or ends with a digit must be a whole number there: "14463" is in
    "14,463." and "14463.0" but not in "144630" or "14463.5"; "397.8" is in "397.80". A
    decimal ``wanted`` also matches a more precise number that rounds to it: "26.2" is in
    "26.21876 mi"."""
    text, wanted = _normalise(reply), _normalise(wanted).strip()
    decimal = _DECIMAL.fullmatch(wanted)
    if decimal:
        places = len(decimal.group(1))
        for token in _NUMBER.findall(text):
            if "." in token and len(token.split(".")[1]) > places and \
                    abs(float(token) - float(wanted)) <= 0.5 * 10 ** -places + 1e-9:
                return True
    start = 0
    while wanted and (i := text.find(wanted, start)) >= 0:
        start = i + 1
        before = text[:i]
        if wanted[0].isdigit() and (before[-1:].isdigit() or re.search(r"\d\.$", before)):
            continue
        if wanted[-1].isdigit():
            rest = text[i + len(wanted):]
            digits = re.match(r"\d+", rest)
            if digits:
                if "." not in wanted or digits.group().strip("0"):
                    continue
                rest = rest[digits.end():]
            decimals = re.match(r"\.(\d+)", rest)
            if decimals and decimals.group(1).strip("0"):
                continue
        return True
    return False


def promises(reply: str) -> bool:
    """Whether a reply promises to look something up or work it out (or is only the interim
    reply of a handoff)."""
    from duma.agents import fast_mind

    return fast_mind.promises_lookup(reply)


class GenerationRecord(BaseModel):
    """One generation by one mind, as a :class:`RecordingBackend` saw it."""

    mind: str
    max_tokens: int
    max_repeats: int | None = None
    text: str = ""
    finish_reason: str | None = None  # None: the caller stopped reading (e.g. Invoke[...] closed)
    completion_tokens: int | None = None
    repeated: bool = False  # the repetition guard (stream_guarded) fired on this text
    seconds: float = 0.0

    @property
    def at_cap(self) -> bool:
        """The generation reached its token cap."""
        return self.finish_reason == "length" or (
            self.completion_tokens is not None and self.completion_tokens >= self.max_tokens)


class RecordingBackend:
    """A backend as it is, plus a record of every generation: the text, the finish reason,
    the token count, the time, and whether the agent's repetition guard fired on it (the same
    :class:`duma.backend.RepetitionGuard` run over the same text). Everything else is the
    wrapped backend's."""

    def __init__(self, inner: Any, mind: str) -> None:
        self._inner = inner
        self.mind = mind
        self.records: list[GenerationRecord] = []
        self._lock = threading.Lock()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)

    def stream(self, messages: Sequence[Any], options: Any = None, *, adapter: str | None = None,
               cancel: threading.Event | None = None) -> Iterator[Any]:
        from duma.backend import RepetitionGuard
        from duma.types import GenerationOptions

        options = options or GenerationOptions()
        record = GenerationRecord(mind=self.mind, max_tokens=options.max_tokens, max_repeats=options.max_repeats)
        with self._lock:
            self.records.append(record)
        guard = RepetitionGuard(options.max_repeats)
        start = time.perf_counter()
        kwargs = {"adapter": adapter} if adapter is not None else {}
        stream = self._inner.stream(messages, options, cancel=cancel, **kwargs)
        try:
            for chunk in stream:
                if chunk.text:
                    record.text += chunk.text
                    if not record.repeated and guard.feed(chunk.text):
                        record.repeated = True
                if chunk.done:
                    record.finish_reason = chunk.finish_reason
                    if chunk.usage is not None:
                        record.completion_tokens = chunk.usage.completion_tokens
                yield chunk
        finally:
            record.seconds = time.perf_counter() - start
            close = getattr(stream, "close", None)
            if close is not None:
                close()


def runaway_reason(records: Sequence[GenerationRecord], limit_s: float = RUNAWAY_S) -> str | None:
    """Why one of a turn's fast-mind generations ran away (None: none did)."""
    for r in records:
        if r.mind != "fast":
            continue
        if r.repeated:
            return "the repetition guard stopped it"
        if r.at_cap:
            return f"it hit the token cap ({r.max_tokens})"
        if r.seconds > limit_s:
            return f"it took {r.seconds:.1f} s"
    return None


class HandwrittenTurnResult(BaseModel):
    """What the agent did on one hand-written turn."""

    id: str = Field(description="dialogue id#turn number (from 1)")
    lang: str
    category: str
    user: str
    slow_label: bool
    slow_ran: bool | None = None  # None: the turn failed
    reply: str = ""
    interim: str | None = None
    correct: bool | None = None  # None: nothing expected of the reply
    promise_without_invoke: bool = False
    # The fast mind wrote a promise with Invoke[False] and the agent ran the slow mind anyway
    # (agent.keep_promises): the mind's own broken promise, kept.
    promise_kept: bool = False
    promise_only_final: bool = False  # the slow mind ran, yet the final reply only promises
    runaway: str | None = None
    first_token_s: float | None = None
    total_s: float | None = None
    error: str | None = None
    problems: list[str] = Field(default_factory=list)


class GroupFigures(BaseModel):
    """The main figures of one category or language."""

    turns: int = 0
    routing_accuracy: float | None = None
    correct_share: float | None = None  # of the turns with an expected answer
    slow_share: float | None = None  # turns the slow mind ran on
    failing: int = 0


class HandwrittenMetrics(BaseModel):
    file: str
    today: str = DEFAULT_TODAY
    max_tokens: int = HANDWRITTEN_MAX_TOKENS
    dialogues: int = 0
    turns: int = 0
    multi_turn_dialogues: int = 0
    slow_turns: int = 0  # labelled slow
    fast_turns: int = 0  # labelled fast
    routing_accuracy: float | None = None
    slow_correct_share: float | None = None
    fast_kept_fast_share: float | None = None
    fast_correct_share: float | None = None  # fast-labelled turns with an expected answer
    correct_share: float | None = None  # all turns with an expected answer
    slow_share: float | None = None  # turns the slow mind ran on
    promises_without_invoke: int = 0
    promises_kept: int = 0
    promise_only_finals: int = 0
    runaway_replies: int = 0
    slow_steps_cut: int = 0  # slow-mind steps cut at their token cap or by the repetition guard
    median_first_token_s_fast_path: float | None = None
    median_total_s_fast_path: float | None = None
    median_total_s_slow_path: float | None = None
    errors: int = 0
    by_category: dict[str, GroupFigures] = Field(default_factory=dict)
    by_language: dict[str, GroupFigures] = Field(default_factory=dict)
    failures: list[HandwrittenTurnResult] = Field(default_factory=list)
    results: list[HandwrittenTurnResult] = Field(default_factory=list)


class MeasureReport(BaseModel):
    model: str
    fast_adapter: str | None = None
    slow_adapter: str | None = None
    limit: int | None = None
    backend: str = "auto"
    invoke: InvokeMetrics = Field(default_factory=InvokeMetrics)
    slow: SlowMetrics = Field(default_factory=SlowMetrics)
    end_to_end: EndToEndMetrics = Field(default_factory=EndToEndMetrics)
    routing: dict[str, RouterFigures] = Field(default_factory=dict)
    routing_quality: RoutingQuality = Field(default_factory=RoutingQuality)
    handwritten: HandwrittenMetrics | None = None  # --handwritten: the hand-written test set


def _read_jsonl(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def _share(k: int, n: int) -> float | None:
    return k / n if n else None


def _contains(answer: str, expected: str) -> bool:
    return expected.strip().lower() in answer.lower()


def _logged_history(items: list[dict[str, str]]) -> list[Any]:
    return [logged_message(m["role"], m["content"], m.get("kind", ""), i) for i, m in enumerate(items)]


def measure_invoke(backend: Any, turns: list[dict[str, Any]], max_tokens: int
                   ) -> tuple[InvokeMetrics, list[dict[str, Any]]]:
    """The fast mind's Invoke decision per held-out turn; also per-turn fast-only correctness."""
    from duma.agents import fast_mind, protocol
    from duma.types import GenerationOptions

    options = GenerationOptions(max_tokens=max_tokens, temperature=0.0, stop=list(protocol.FAST_STOP))
    system = fast_mind.fast_system_prompt(None, None)
    tp = fp = fn = tn = parsed = 0
    rows = []
    first_tokens: list[float] = []
    for turn in turns:
        context = fast_mind.build_context(system, _logged_history(turn["history"]), turn["text"], MEMORY_TURNS)
        fast_pass = fast_mind.FastPass()  # the agent's own fast pass (prefill and parser)
        for _ in fast_mind.stream_fast(backend, context, options, fast_pass):
            pass
        out = fast_pass.output
        assert out is not None
        parsed += out.parse_ok
        if not turn["slow"] and fast_pass.first_token_s is not None:
            first_tokens.append(fast_pass.first_token_s)
        if out.invoke and turn["slow"]:
            tp += 1
        elif out.invoke:
            fp += 1
        elif turn["slow"]:
            fn += 1
        else:
            tn += 1
        rows.append({"id": turn["id"], "invoke": out.invoke,
                     "fast_correct": (not out.invoke) and _contains(out.response, turn["expected"])})
    n = len(turns)
    return InvokeMetrics(n=n, accuracy=_share(tp + tn, n), precision=_share(tp, tp + fp), recall=_share(tp, tp + fn),
                         parse_ok=_share(parsed, n),
                         median_first_token_s_fast_turns=statistics.median(first_tokens) if first_tokens else None), rows


def measure_slow(backend: Any, tools: dict[str, Any], episodes: list[tuple[str, str]], max_tokens: int,
                 max_steps: int = 4) -> tuple[SlowMetrics, list[bool]]:
    """Run the real SlowMind loop on (retrospect, expected) pairs."""
    from duma.agents import protocol
    from duma.agents.slow_mind import SlowMind, collect
    from duma.types import GenerationOptions

    mind = SlowMind(backend, tools, options=GenerationOptions(max_tokens=max_tokens, temperature=0.0),
                    max_steps=max_steps, timeout_s=600)
    steps = valid = finished = correct = 0
    correct_rows = []
    for retrospect, expected in episodes:
        result = collect(list(mind.run(retrospect)))
        for step in result.steps:
            if step.action is None:
                if step.observation is not None:
                    steps += 1  # a garbled step (neither Act nor Finish)
                continue
            steps += 1
            try:
                valid += protocol.parse_action(step.action).name in tools
            except protocol.ActionError:
                pass
        finished += result.finished
        ok = result.finished and _contains(result.result, expected)
        correct += ok
        correct_rows.append(ok)
    n = len(episodes)
    return SlowMetrics(episodes=n, steps=steps, valid_act_share=_share(valid, steps),
                       finish_share=_share(finished, n), correct_share=_share(correct, n)), correct_rows


def measure_end_to_end(fast: Any, slow: Any, tools: dict[str, Any], turns: list[dict[str, Any]],
                       max_tokens: int) -> EndToEndMetrics:
    """The real Agent (duma router) over held-out dialogues, turn by turn."""
    from duma.agents import Agent

    config = {"model": {"model": "embedded", "options": {"max_tokens": max_tokens, "temperature": 0.0}},
              "agent": {"router": "duma", "max_slow_steps": 4, "slow_timeout_s": 600}}
    agent = Agent(config, log=False, fast_backend=fast, slow_backend=slow, tools=tools)
    dialogues: dict[str, list[dict[str, Any]]] = {}
    for turn in turns:
        dialogues.setdefault(turn["dialogue"], []).append(turn)
    from duma.errors import DumaError

    correct = slow_turns = n = errors = 0
    first_error: str | None = None
    first_tokens: list[float] = []
    for dialogue in dialogues.values():
        cid = agent.new_conversation()
        for turn in dialogue:
            n += 1
            try:
                reply = agent.chat(turn["text"], cid)
            except DumaError as exc:  # an agent failure is a wrong answer, not the end of the run
                errors += 1
                first_error = first_error or str(exc)
                continue
            correct += _contains(reply.text, turn["expected"])
            slow_turns += reply.slow_ran
            if not reply.slow_ran and reply.first_token_s is not None:
                first_tokens.append(reply.first_token_s)
    return EndToEndMetrics(dialogues=len(dialogues), turns=n, correct_share=_share(correct, n),
                           slow_share=_share(slow_turns, n),
                           median_first_token_s_fast_path=statistics.median(first_tokens) if first_tokens else None,
                           errors=errors, first_error=first_error)


# --------------------------------------------------------------------------- hand-written set: measuring

def handwritten_agent_config(max_tokens: int = HANDWRITTEN_MAX_TOKENS,
                             agent: dict[str, Any] | None = None) -> dict[str, Any]:
    """The agent as ``duma chat`` runs the shipped minds: the duma router and every default of
    ``agent`` (6 slow steps, 60 s, 160 tokens a step, 20 turns of memory, promises kept),
    greedy replies of at most ``max_tokens`` tokens with the repetition guard; the knowledge
    base is the examples. ``agent``: settings that replace those defaults."""
    return {"model": {"options": {"max_tokens": max_tokens}},
            "agent": {"mode": "duma", "router": "duma", "knowledge_dir": str(KNOWLEDGE_DIR), **(agent or {})}}


def judge_turn(result: HandwrittenTurnResult, turn: HandwrittenTurn) -> HandwrittenTurnResult:
    """Fill ``correct``, the promise flags and ``problems`` from the reply and the labels."""
    problems: list[str] = []
    if result.error is not None:
        problems.append(f"agent error: {result.error}")
    else:
        if result.slow_ran != turn.slow:
            problems.append("kept fast, needs the slow mind" if turn.slow
                            else "sent to the slow mind, should stay fast")
        wrong = [w for w in turn.must_not if mentions(result.reply, w)]
        if turn.expected or turn.must_not:
            result.correct = (not turn.expected or any(mentions(result.reply, e) for e in turn.expected)) and not wrong
            if not result.correct:
                problems.append(f"says {wrong[0]!r}" if wrong else
                                f"wrong answer (expected one of {', '.join(repr(e) for e in turn.expected[:3])})")
        result.promise_without_invoke = not result.slow_ran and promises(result.reply)
        result.promise_only_final = bool(result.slow_ran) and promises(result.reply) and result.correct is not True
        if result.promise_without_invoke:
            problems.append("promises to look it up without an invoke")
        elif result.promise_only_final:
            problems.append("the final reply only promises")
    if result.runaway:
        problems.append(f"runaway reply: {result.runaway}")
    result.problems = problems
    return result


def _group(results: Sequence[HandwrittenTurnResult]) -> GroupFigures:
    n = len(results)
    judged = [r for r in results if r.correct is not None]
    return GroupFigures(turns=n, routing_accuracy=_share(sum(r.slow_ran == r.slow_label for r in results), n),
                        correct_share=_share(sum(bool(r.correct) for r in judged), len(judged)),
                        slow_share=_share(sum(bool(r.slow_ran) for r in results), n),
                        failing=sum(bool(r.problems) for r in results))


def summarise_handwritten(results: list[HandwrittenTurnResult], dialogues: Sequence[HandwrittenDialogue],
                          file: str, max_tokens: int, today: str, slow_steps_cut: int = 0) -> HandwrittenMetrics:
    slow = [r for r in results if r.slow_label]
    fast = [r for r in results if not r.slow_label]
    fast_judged = [r for r in fast if r.correct is not None]
    judged = [r for r in results if r.correct is not None]
    kept_fast = [r for r in results if r.slow_ran is False]
    slow_path = [r for r in results if r.slow_ran]

    def median(values: list[float | None]) -> float | None:
        present = [v for v in values if v is not None]
        return statistics.median(present) if present else None

    categories = [c for c in HANDWRITTEN_CATEGORIES if any(r.category == c for r in results)]
    categories += sorted({r.category for r in results} - set(categories))
    return HandwrittenMetrics(
        file=file, today=today, max_tokens=max_tokens, dialogues=len(dialogues), turns=len(results),
        multi_turn_dialogues=sum(len(d.turns) > 1 for d in dialogues),
        slow_turns=len(slow), fast_turns=len(fast),
        routing_accuracy=_share(sum(r.slow_ran == r.slow_label for r in results), len(results)),
        slow_correct_share=_share(sum(bool(r.correct) for r in slow), len(slow)),
        fast_kept_fast_share=_share(sum(r.slow_ran is False for r in fast), len(fast)),
        fast_correct_share=_share(sum(bool(r.correct) for r in fast_judged), len(fast_judged)),
        correct_share=_share(sum(bool(r.correct) for r in judged), len(judged)),
        slow_share=_share(len(slow_path), len(results)),
        promises_without_invoke=sum(r.promise_without_invoke for r in results),
        promises_kept=sum(r.promise_kept for r in results),
        promise_only_finals=sum(r.promise_only_final for r in results),
        runaway_replies=sum(r.runaway is not None for r in results),
        slow_steps_cut=slow_steps_cut,
        median_first_token_s_fast_path=median([r.first_token_s for r in kept_fast]),
        median_total_s_fast_path=median([r.total_s for r in kept_fast]),
        median_total_s_slow_path=median([r.total_s for r in slow_path]),
        errors=sum(r.error is not None for r in results),
        by_category={c: _group([r for r in results if r.category == c]) for c in categories},
        by_language={lang: _group([r for r in results if r.lang == lang])
                     for lang in sorted({r.lang for r in results})},
        failures=[r for r in results if r.problems], results=results)


def measure_handwritten(fast: Any, slow: Any, tools: dict[str, Any], dialogues: Sequence[HandwrittenDialogue],
                        max_tokens: int = HANDWRITTEN_MAX_TOKENS, *, file: str = "", today: str = DEFAULT_TODAY,
                        agent_settings: dict[str, Any] | None = None,
                        progress: Callable[[str], None] | None = None) -> HandwrittenMetrics:
    """The real Agent (:func:`handwritten_agent_config`) over each hand-written dialogue, turn by
    turn, in a conversation of its own. The date tools' clock must be fixed to ``today`` by
    the caller (:func:`measure` does it)."""
    from duma.agents import Agent
    from duma.errors import DumaError
    from duma.events import FastDone

    fast_rec, slow_rec = RecordingBackend(fast, "fast"), RecordingBackend(slow, "slow")
    agent = Agent(handwritten_agent_config(max_tokens, agent_settings), log=False, fast_backend=fast_rec,  # type: ignore[arg-type]
                  slow_backend=slow_rec, tools=tools)  # type: ignore[arg-type]
    results: list[HandwrittenTurnResult] = []
    slow_steps_cut = 0
    for dialogue in dialogues:
        cid = agent.new_conversation(name=f"handwritten {dialogue.id}")
        for index, turn in enumerate(dialogue.turns, 1):
            fast_start, slow_start = len(fast_rec.records), len(slow_rec.records)
            result = HandwrittenTurnResult(id=f"{dialogue.id}#{index}", lang=dialogue.lang,
                                           category=dialogue.turn_category(turn), user=turn.user, slow_label=turn.slow)
            started = time.perf_counter()
            try:
                reply = agent.chat(turn.user, cid)
            except DumaError as exc:  # a failed turn is a wrong one, not the end of the run
                result.error = str(exc)
                result.total_s = time.perf_counter() - started
            else:
                result.slow_ran, result.reply, result.interim = reply.slow_ran, reply.text, reply.interim
                result.first_token_s, result.total_s = reply.first_token_s, reply.total_s
                result.promise_kept = any(isinstance(e, FastDone) and e.promise_kept for e in reply.events)
            result.runaway = runaway_reason(fast_rec.records[fast_start:])
            slow_steps_cut += sum(r.at_cap or r.repeated for r in slow_rec.records[slow_start:])
            results.append(judge_turn(result, turn))
            if progress is not None:
                status = "ok" if not result.problems else "; ".join(result.problems)
                if result.problems and result.error is None:
                    shown = " ".join(result.reply.split())
                    status += f": {shown if len(shown) <= 80 else shown[:77] + '...'!r}"
                route = {True: "slow", False: "fast", None: "error"}[result.slow_ran]
                progress(f"{result.id} [{route}, {result.total_s or 0:.1f} s] {status}")
    return summarise_handwritten(results, dialogues, file, max_tokens, today, slow_steps_cut)


def routing_figures(turns: list[dict[str, Any]], invoke_rows: list[dict[str, Any]], slow_correct: list[bool],
                    router_train: Path) -> tuple[dict[str, RouterFigures], RoutingQuality]:
    """APGR and CPT(50%) of the duma router (Invoke), the classifier and random scores.
    Per turn: fast_score = the fast-only answer is correct; slow_score = the slow mind's
    answer is correct."""
    from duma.plugins.builtin_routers import LabelledTurn, load_classifier, train_classifier
    from duma.plugins.evaluation.routing import RoutingRecord, routing_metrics

    figures: dict[str, RouterFigures] = {}
    rng = random.Random(0)
    labelled = [LabelledTurn.model_validate(r) for r in _read_jsonl(router_train)]
    with tempfile.TemporaryDirectory() as tmp:
        classifier = load_classifier(train_classifier(labelled, Path(tmp) / "classifier.npz").out)
        classifier_scores = [float(p) for p in classifier.predict_proba([t["text"] for t in turns])]
    scorers = {"duma": [1.0 if r["invoke"] else 0.0 for r in invoke_rows], "classifier": classifier_scores,
               "random": [rng.random() for _ in turns]}
    for name, scores in scorers.items():
        records = [RoutingRecord(id=t["id"], fast_score=float(r["fast_correct"]), slow_score=float(ok),
                                 router_score=s)
                   for t, r, ok, s in zip(turns, invoke_rows, slow_correct, scores)]
        report = routing_metrics(records, slow_share=None)
        figures[name] = RouterFigures(apgr=report.apgr, cpt50=report.cpt50, problem=report.problem)
    # The fast-only and slow-only qualities are the same for every router (the last report's).
    return figures, RoutingQuality(fast_only=report.quality_fast_only, slow_only=report.quality_slow_only)


def balanced(turns: list[dict[str, Any]], limit: int | None) -> list[dict[str, Any]]:
    """At most ``limit`` turns, alternating slow and fast ones (file order otherwise), so a
    small ``--limit`` still measures both decisions."""
    if not limit or limit >= len(turns):
        return turns
    slow = [t for t in turns if t["slow"]]
    fast = [t for t in turns if not t["slow"]]
    picked: list[dict[str, Any]] = []
    while len(picked) < limit and (slow or fast):
        for pool in (slow, fast):
            if pool and len(picked) < limit:
                picked.append(pool.pop(0))
    return picked


def measure(data: Path | None = None, *, model: str = "embedded", fast_adapter: str | None = None,
            slow_adapter: str | None = None, limit: int | None = None, max_tokens: int | None = None,
            today: str = DEFAULT_TODAY, device: str = "auto", backend: str = "auto",
            handwritten: Path | None = None, progress: Callable[[str], None] | None = None) -> MeasureReport:
    """Measure the minds on the held-out data (``data``, a folder of 'duma minds generate'),
    on the hand-written set (``handwritten``, a JSONL file), or on both with the same loaded
    backends. ``max_tokens``: the reply cap, by default 96 on the held-out data and 256
    (``duma chat``'s) on the hand-written set."""
    from duma.agents.agent import load_tools
    from duma.config import DumaConfig
    from duma.errors import DumaError
    from duma.models import load_backend
    from duma.types import ModelSpec

    if data is None and handwritten is None:
        raise DumaError("nothing to measure", "give the held-out data (--data), a hand-written set "
                        "(--handwritten) or both")
    dialogues = read_handwritten(handwritten) if handwritten is not None else []
    report = MeasureReport(model=model, fast_adapter=fast_adapter, slow_adapter=slow_adapter, limit=limit,
                           backend=backend)
    with fixed_today(today):
        fast = load_backend(ModelSpec(backend=backend, model=model, adapter=fast_adapter, device=device))
        slow = load_backend(ModelSpec(backend=backend, model=model, adapter=slow_adapter, device=device))
        tools = load_tools(DumaConfig(agent={"knowledge_dir": KNOWLEDGE_DIR}))
        if data is not None:
            measure_heldout(report, data, fast, slow, tools, limit, max_tokens or HELDOUT_MAX_TOKENS)
        if handwritten is not None:
            report.handwritten = measure_handwritten(
                fast, slow, tools, dialogues, max_tokens or HANDWRITTEN_MAX_TOKENS, file=str(handwritten),
                today=today, progress=progress)
    return report


def measure_heldout(report: MeasureReport, data: Path, fast: Any, slow: Any, tools: dict[str, Any],
                    limit: int | None, max_tokens: int) -> None:
    """The held-out-template measurements (invoke, slow, routing, end to end) into ``report``."""
    turns = balanced(_read_jsonl(data / "routing_eval.jsonl"), limit)
    slow_eval = _read_jsonl(data / "slow_eval.jsonl")
    expected = {r["id"]: r["expected"] for r in _read_jsonl(data / "slow_expected.jsonl")}
    slow_eval = slow_eval[:limit] if limit else slow_eval
    report.invoke, invoke_rows = measure_invoke(fast, turns, max_tokens)
    report.slow, _ = measure_slow(slow, tools, [(r["messages"][1]["content"], expected[r["id"]])
                                                 for r in slow_eval], max_tokens)
    # Per routing turn, the slow mind's answer on the same turn (its retrospect).
    from duma.agents import fast_mind

    retrospects = [(fast_mind.retrospect(_logged_history(t["history"]), t["text"], MEMORY_TURNS), t["expected"])
                   for t in turns]
    _, slow_correct = measure_slow(slow, tools, retrospects, max_tokens)
    report.routing, report.routing_quality = routing_figures(turns, invoke_rows, slow_correct,
                                                             data / "router_train.jsonl")
    report.end_to_end = measure_end_to_end(fast, slow, tools, turns, max_tokens)


def _format_value(value: float | int | str | None) -> str:
    if value is None:
        return "n/a"
    return f"{value:.3f}" if isinstance(value, float) else str(value)


def _heldout_rows(report: MeasureReport) -> list[tuple[str, float | int | str | None]]:
    """The held-out-template rows of the report table."""
    e2e = report.end_to_end
    rows: list[tuple[str, float | int | str | None]] = [
        ("invoke accuracy", report.invoke.accuracy),
        ("invoke precision (slow-mind calls)", report.invoke.precision),
        ("invoke recall (slow-mind calls)", report.invoke.recall),
        ("fast output follows the protocol", report.invoke.parse_ok),
        ("slow: valid Act steps", report.slow.valid_act_share),
        ("slow: episodes reaching Finish", report.slow.finish_share),
        ("slow: answers with the correct tool result", report.slow.correct_share),
        ("end to end: correct final answers", e2e.correct_share),
        ("end to end: share of turns sent to the slow mind", e2e.slow_share),
        ("routing turns: correct with the fast mind alone", report.routing_quality.fast_only),
        ("routing turns: correct with the slow mind alone", report.routing_quality.slow_only)]
    for name, fig in report.routing.items():
        rows.append((f"router {name}: APGR", fig.apgr))
        rows.append((f"router {name}: CPT(50%) (share sent to the slow mind)", fig.cpt50))
    rows += [("median time to first token, fast-path turns, same contexts (s)",
              report.invoke.median_first_token_s_fast_turns),
             ("end to end: median time to first token, turns the router kept fast (s)",
              e2e.median_first_token_s_fast_path),
             ("end to end: turns ended by an agent error", e2e.errors),
             ("items: fast turns / slow episodes / end-to-end turns",
              f"{report.invoke.n} / {report.slow.episodes} / {e2e.turns}")]
    return rows


def has_heldout(report: MeasureReport) -> bool:
    """Whether the report measured the held-out data (reports from before --handwritten did)."""
    return bool(report.invoke.n or report.slow.episodes or report.end_to_end.turns or report.handwritten is None)


def _handwritten_rows(hw: HandwrittenMetrics) -> list[tuple[str, float | int | str | None]]:
    rows: list[tuple[str, float | int | str | None]] = [
        ("hand-written: routing accuracy (goal >= 0.95)", hw.routing_accuracy),
        ("hand-written: slow turns answered correctly (goal >= 0.85)", hw.slow_correct_share),
        ("hand-written: fast turns kept fast (goal >= 0.95)", hw.fast_kept_fast_share),
        ("hand-written: fast turns with an expected answer: correct", hw.fast_correct_share),
        ("hand-written: all turns with an expected answer: correct", hw.correct_share),
        ("hand-written: share of turns sent to the slow mind", hw.slow_share),
        ("hand-written: promises without an invoke (goal 0)", hw.promises_without_invoke),
        ("hand-written: the fast mind's promises with Invoke[False] the agent kept", hw.promises_kept),
        ("hand-written: final replies that only promise", hw.promise_only_finals),
        ("hand-written: runaway replies (goal 0)", hw.runaway_replies),
        ("hand-written: slow-mind steps cut (token cap or repetition)", hw.slow_steps_cut),
        ("hand-written: median time to first token, fast path (s)", hw.median_first_token_s_fast_path),
        ("hand-written: median time per turn, fast path (s)", hw.median_total_s_fast_path),
        ("hand-written: median time per turn, slow path (s)", hw.median_total_s_slow_path),
        ("hand-written: turns ended by an agent error", hw.errors)]
    for group, figures in [*hw.by_category.items(), *hw.by_language.items()]:
        rows.append((f"hand-written {group}: routing accuracy / correct / failing of turns",
                     f"{_format_value(figures.routing_accuracy)} / {_format_value(figures.correct_share)} / "
                     f"{figures.failing} of {figures.turns}"))
    rows.append(("hand-written: turns (slow / fast) in dialogues (multi-turn)",
                 f"{hw.turns} ({hw.slow_turns} / {hw.fast_turns}) in {hw.dialogues} ({hw.multi_turn_dialogues})"))
    return rows


def _report_rows(report: MeasureReport) -> list[tuple[str, float | int | str | None]]:
    """(measure, value): the one list both the report table and the comparison print."""
    rows = _heldout_rows(report) if has_heldout(report) else []
    if report.handwritten is not None:
        rows += _handwritten_rows(report.handwritten)
    return rows


def to_markdown(report: MeasureReport) -> str:
    adapters = f"fast adapter {report.fast_adapter or 'none'}, slow adapter {report.slow_adapter or 'none'}"
    head = f"Model {report.model}; {adapters}; limit {report.limit or 'none'}"
    if report.handwritten is not None:
        hw = report.handwritten
        head += f"; hand-written set {hw.file} (today {hw.today}, max_tokens {hw.max_tokens})"
    lines = [head, "", "| measure | value |", "|---|---|"]
    lines += [f"| {name} | {_format_value(value)} |" for name, value in _report_rows(report)]
    if report.handwritten is not None and report.handwritten.failures:
        lines += ["", failures_markdown(report.handwritten)]
    return "\n".join(lines)


def failures_markdown(hw: HandwrittenMetrics, width: int = 100) -> str:
    """The failing hand-written turns: id, user text, reply, why."""

    def cell(text: str | None, width: int = width) -> str:
        text = " ".join((text or "").split()).replace("|", "\\|")
        return text if len(text) <= width else text[: width - 3] + "..."

    lines = [f"Failing turns ({len(hw.failures)} of {hw.turns}):", "", "| turn | user | reply | why |",
             "|---|---|---|---|"]
    lines += [f"| {r.id} | {cell(r.user)} | {cell(r.reply or r.error)} | {cell('; '.join(r.problems), 300)} |"
              for r in hw.failures]
    return "\n".join(lines)


def compare_markdown(before: MeasureReport, after: MeasureReport, before_name: str = "untrained",
                     after_name: str = "trained") -> str:
    """A side-by-side table of two reports (same data and limit); a row only one report has
    shows n/a for the other."""
    first, second = dict(_report_rows(before)), dict(_report_rows(after))
    names = list(first) + [name for name in second if name not in first]
    lines = [f"| measure | {before_name} | {after_name} |", "|---|---|---|"]
    for name in names:
        lines.append(f"| {name} | {_format_value(first.get(name))} | {_format_value(second.get(name))} |")
    return "\n".join(lines)
