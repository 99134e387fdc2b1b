"""``duma eval agent``: run the DUMA agent on an evaluation set and measure its routing.

For every question three agents answer, each in a fresh conversation: the agent as
configured (its router decides; we record whether the slow mind ran, the router's score and
the latency), the fast mind alone (router ``always-fast``) and the slow path always (router
``always-slow``). The judge scores all three answers. Per-turn records go to
``agent_turns.jsonl`` as they come (a rerun resumes, skipping finished ids), and
``routing.jsonl`` gets the records ``duma eval routing`` reads: fast and slow quality, the
router's score (when the router leaves the decision to the fast mind's ``Invoke[...]`` and so
has no score, 1.0 when the slow mind ran and 0.0 when not) and both latencies.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Protocol

from pydantic import BaseModel, ValidationError

from duma.plugins.evaluation.dataset import EvalItem
from duma.plugins.evaluation.judging import FAILED_PREFIX, Judge, JudgeResult

TURNS_FILE = "agent_turns.jsonl"
ROUTING_FILE = "routing.jsonl"
ROUTED, FAST_ONLY, SLOW_ONLY = "routed", "fast", "slow"
ROUTER_OVERRIDES = {FAST_ONLY: "always-fast", SLOW_ONLY: "always-slow"}


class ChatAgent(Protocol):
    """What this module needs of :class:`duma.agents.Agent`."""

    def chat(self, text: str, conversation_id: str | None = None) -> Any: ...


class AgentAnswer(BaseModel):
    text: str | None = None
    error: str | None = None
    latency_s: float | None = None
    slow_ran: bool | None = None
    router_score: float | None = None
    score: float | None = None
    judge_raw: str = ""
    judge_error: str | None = None

    @property
    def done(self) -> bool:
        if self.text is None or self.error is not None:
            return False
        return self.score is not None or not (self.judge_error or "").startswith(FAILED_PREFIX)


class AgentTurnRecord(BaseModel):
    """One line of ``agent_turns.jsonl``: the three answers to one question."""

    id: str
    klass: str
    question: str
    std_answer: str = ""
    routed: AgentAnswer
    fast: AgentAnswer
    slow: AgentAnswer

    @property
    def done(self) -> bool:
        return self.routed.done and self.fast.done and self.slow.done

    def routing_record(self) -> dict[str, Any] | None:
        """The ``duma eval routing`` record of this turn (None without both scores)."""
        if self.fast.score is None or self.slow.score is None:
            return None
        score = self.routed.router_score
        if score is None:
            score = 1.0 if self.routed.slow_ran else 0.0
        return {"id": self.id, "fast_score": self.fast.score, "slow_score": self.slow.score,
                "router_score": score, "fast_latency_s": self.fast.latency_s,
                "slow_latency_s": self.slow.latency_s}


class AgentEvalSummary(BaseModel):
    n: int
    n_complete: int
    slow_share: float | None = None
    quality_routed: float | None = None
    quality_fast_only: float | None = None
    quality_slow_only: float | None = None
    latency_routed_s: float | None = None
    latency_fast_only_s: float | None = None
    latency_slow_only_s: float | None = None
    routing: dict[str, Any] | None = None


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip() or type(exc).__name__
    return f"{type(exc).__name__}: {text.splitlines()[0][:200]}"


def ask(agent: ChatAgent, question: str, retries: int = 1) -> AgentAnswer:
    """One turn in a fresh conversation; a failing turn is retried, then marked."""
    error = None
    for _ in range(retries + 1):
        start = time.perf_counter()
        try:
            reply = agent.chat(question)
        except KeyboardInterrupt:
            raise
        except Exception as exc:  # one failing turn marks the item; the run goes on
            error = _first_line(exc)
            continue
        measured = time.perf_counter() - start
        total = getattr(reply, "total_s", None)
        timings = getattr(reply, "timings", None)  # the API sketch had .timings.total_s
        if not total and timings is not None:
            total = getattr(timings, "total_s", None)
        score = getattr(reply, "router_score", None)
        return AgentAnswer(text=reply.text, latency_s=float(total) if total else measured,
                           slow_ran=bool(getattr(reply, "slow_ran", False)),
                           router_score=float(score) if score is not None else None)
    return AgentAnswer(error=f"{error} (after {retries + 1} attempts)")


def _judge(judge: Judge, item: EvalItem, answer: AgentAnswer) -> None:
    if answer.text is None or answer.error is not None:
        return
    try:
        result = judge.score(item.question, answer.text, item.std_answer, item.klass)
    except KeyboardInterrupt:
        raise
    except Exception as exc:
        result = JudgeResult(error=f"{FAILED_PREFIX}{_first_line(exc)}")
    answer.score, answer.judge_raw, answer.judge_error = result.score, result.raw, result.error


def read_turns(path: Path) -> dict[str, AgentTurnRecord]:
    records: dict[str, AgentTurnRecord] = {}
    if path.exists():
        for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
            try:
                record = AgentTurnRecord.model_validate_json(line)
            except (ValidationError, ValueError):
                continue  # a line cut short by an interruption: that item runs again
            records[record.id] = record
    return records


def _mean(values: Sequence[float | None]) -> float | None:
    present = [v for v in values if v is not None]
    return sum(present) / len(present) if present else None


def run_agent_eval(items: Sequence[EvalItem], agents: dict[str, ChatAgent], judge: Judge, out_dir: str | Path, *,
                   resume: bool = True, slow_share: float = 0.5, retries: int = 1,
                   on_item: Callable[[AgentTurnRecord], None] | None = None) -> AgentEvalSummary:
    """Answer with ``agents[ROUTED]``, ``agents[FAST_ONLY]`` and ``agents[SLOW_ONLY]``, judge,
    write ``agent_turns.jsonl``, ``routing.jsonl``, ``routing.json``, ``routing.png`` and
    ``agent_summary.json`` into ``out_dir``."""
    from duma.plugins.evaluation.routing import RoutingRecord, plot_pgr_curve, routing_metrics

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    path = out / TURNS_FILE
    previous = read_turns(path) if resume else {}
    results: dict[str, AgentTurnRecord] = {}
    try:
        with path.open("a" if resume else "w", encoding="utf-8") as fh:
            for item in items:
                old = previous.get(item.id)
                if old is not None and old.done:
                    results[item.id] = old
                    continue
                record = AgentTurnRecord(id=item.id, klass=item.klass, question=item.question,
                                         std_answer=item.std_answer, routed=AgentAnswer(), fast=AgentAnswer(),
                                         slow=AgentAnswer())
                for which in (ROUTED, FAST_ONLY, SLOW_ONLY):
                    kept = getattr(old, which) if old is not None else None
                    if kept is not None and kept.done:
                        setattr(record, which, kept)
                        continue
                    answer = ask(agents[which], item.question, retries)
                    _judge(judge, item, answer)
                    setattr(record, which, answer)
                fh.write(record.model_dump_json() + "\n")
                fh.flush()
                results[item.id] = record
                if on_item is not None:
                    on_item(record)
    finally:
        done = [results[i.id] for i in items if i.id in results]
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text("".join(r.model_dump_json() + "\n" for r in done), encoding="utf-8")
        os.replace(tmp, path)
    records = [results[i.id] for i in items if i.id in results]
    routing_rows = [row for row in (r.routing_record() for r in records) if row is not None]
    (out / ROUTING_FILE).write_text("".join(json.dumps(row) + "\n" for row in routing_rows), encoding="utf-8")
    summary = AgentEvalSummary(
        n=len(items), n_complete=len(routing_rows),
        slow_share=_mean([float(r.routed.slow_ran) for r in records if r.routed.slow_ran is not None]),
        quality_routed=_mean([r.routed.score for r in records]),
        quality_fast_only=_mean([r.fast.score for r in records]),
        quality_slow_only=_mean([r.slow.score for r in records]),
        latency_routed_s=_mean([r.routed.latency_s for r in records]),
        latency_fast_only_s=_mean([r.fast.latency_s for r in records]),
        latency_slow_only_s=_mean([r.slow.latency_s for r in records]),
    )
    if routing_rows:
        report = routing_metrics([RoutingRecord.model_validate(row) for row in routing_rows], slow_share)
        (out / "routing.json").write_text(json.dumps(report.model_dump(mode="json"), indent=2) + "\n",
                                          encoding="utf-8")
        plot_pgr_curve(report, out / "routing.png", title=f"agent routing: {report.n} turns")
        summary.routing = report.model_dump(mode="json", exclude={"curve"})
    (out / "agent_summary.json").write_text(json.dumps(summary.model_dump(mode="json"), indent=2) + "\n",
                                            encoding="utf-8")
    return summary


def build_agents(config: Any, only: str | None = None) -> dict[str, ChatAgent]:
    """The configured agent and its always-fast / always-slow twins (sharing loaded models:
    ``duma.models.load_backend`` caches backends per spec), or just ``only`` of them.
    Conversations stay in memory."""
    try:
        from duma.agents import Agent
    except ImportError as exc:
        from duma.errors import DumaError

        raise DumaError(f"the agent is not available ({_first_line(exc)})", "reinstall duma") from None
    agents: dict[str, ChatAgent] = {}
    if only in (None, ROUTED):
        agents[ROUTED] = Agent.from_config(config, log=False)
    for which, router in ROUTER_OVERRIDES.items():
        if only not in (None, which):
            continue
        twin = config.model_copy(update={"agent": config.agent.model_copy(update={"router": router})})
        agents[which] = Agent.from_config(twin, log=False)
    return agents
