"""Measure the two minds on held-out templates (``duma minds measure``).

- invoke decisions: the fast mind on each held-out turn's context (the agent's own
  ``build_context``), parsed with ``protocol.parse_fast``: accuracy, precision, recall;
- slow mind: the real ``SlowMind`` loop on held-out traces: share of valid ``Act[...]`` steps,
  of episodes that reach ``Finish[...]``, of answers containing the correct tool result;
- end to end: the real ``Agent`` with the ``duma`` router on held-out dialogues: share of
  correct final answers, median time to first token on fast-path turns; routing APGR/CPT(50%)
  of the ``duma`` router (the fast mind's Invoke) against ``classifier`` (trained on
  router_train.jsonl) and random scores, via ``plugins/evaluation/routing.routing_metrics``.
"""

from __future__ import annotations

import json
import random
import statistics
import tempfile
from pathlib import Path
from typing import Any

from pydantic import BaseModel, Field

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


def measure(data: Path, *, model: str = "embedded", fast_adapter: str | None = None,
            slow_adapter: str | None = None, limit: int | None = None, max_tokens: int = 96,
            today: str = DEFAULT_TODAY, device: str = "auto", backend: str = "auto") -> MeasureReport:
    from duma.agents.agent import load_tools
    from duma.config import DumaConfig
    from duma.models import load_backend
    from duma.types import ModelSpec

    report = MeasureReport(model=model, fast_adapter=fast_adapter, slow_adapter=slow_adapter, limit=limit,
                           backend=backend)
    turns = balanced(_read_jsonl(data / "routing_eval.jsonl"), limit)
    slow_eval = _read_jsonl(data / "slow_eval.jsonl")
    expected = {r["id"]: r["expected"] for r in _read_jsonl(data / "slow_expected.jsonl")}
    slow_eval = slow_eval[:limit] if limit else slow_eval
    with fixed_today(today):
        fast = load_backend(ModelSpec(backend=backend, model=model, adapter=fast_adapter, device=device))
        slow = load_backend(ModelSpec(backend=backend, model=model, adapter=slow_adapter, device=device))
        tools = load_tools(DumaConfig(agent={"knowledge_dir": KNOWLEDGE_DIR}))
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
    return report


def _format_value(value: float | int | str | None) -> str:
    if value is None:
        return "n/a"
    return f"{value:.3f}" if isinstance(value, float) else str(value)


def _report_rows(report: MeasureReport) -> list[tuple[str, float | int | str | None]]:
    """(measure, value): the one list both the report table and the comparison print."""
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


def to_markdown(report: MeasureReport) -> str:
    adapters = f"fast adapter {report.fast_adapter or 'none'}, slow adapter {report.slow_adapter or 'none'}"
    lines = [f"Model {report.model}; {adapters}; limit {report.limit or 'none'}", "",
             "| measure | value |", "|---|---|"]
    lines += [f"| {name} | {_format_value(value)} |" for name, value in _report_rows(report)]
    return "\n".join(lines)


def compare_markdown(before: MeasureReport, after: MeasureReport, before_name: str = "untrained",
                     after_name: str = "trained") -> str:
    """A side-by-side table of two reports (same data and limit)."""
    lines = [f"| measure | {before_name} | {after_name} |", "|---|---|---|"]
    for (name, a), (_, b) in zip(_report_rows(before), _report_rows(after)):
        lines.append(f"| {name} | {_format_value(a)} | {_format_value(b)} |")
    return "\n".join(lines)
