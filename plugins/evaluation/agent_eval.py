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
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Self

from pydantic import BaseModel

from duma.judge import Judge
from duma.plugins.evaluation.dataset import EvalItem
from duma.plugins.evaluation.runner import Answer, ChatAgent, ItemRecord, agent_answerer, answer_and_judge

if TYPE_CHECKING:
    from duma.config import DumaConfig

TURNS_FILE = "agent_turns.jsonl"
ROUTING_FILE = "routing.jsonl"
ROUTED, FAST_ONLY, SLOW_ONLY = "routed", "fast", "slow"
ROUTER_OVERRIDES = {FAST_ONLY: "always-fast", SLOW_ONLY: "always-slow"}


class AgentTurnRecord(ItemRecord):
    """One line of ``agent_turns.jsonl``: the three answers to one question."""

    routed: Answer
    fast: Answer
    slow: Answer

    def answers(self) -> dict[str, Answer]:
        return {ROUTED: self.routed, FAST_ONLY: self.fast, SLOW_ONLY: self.slow}

    @classmethod
    def from_answers(cls, item: EvalItem, answers: dict[str, Answer]) -> Self:
        return cls(**cls.item_fields(item), routed=answers[ROUTED], fast=answers[FAST_ONLY],
                   slow=answers[SLOW_ONLY])

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


def _mean(values: Sequence[float | None]) -> float | None:
    present = [v for v in values if v is not None]
    return sum(present) / len(present) if present else None


def run_agent_eval(items: Sequence[EvalItem], agents: dict[str, ChatAgent], judge: Judge, out_dir: str | Path, *,
                   resume: bool = True, slow_share: float = 0.5, retries: int = 2,
                   on_record: Callable[[AgentTurnRecord, int], None] | None = None) -> AgentEvalSummary:
    """Answer with ``agents[ROUTED]``, ``agents[FAST_ONLY]`` and ``agents[SLOW_ONLY]``, judge,
    write ``agent_turns.jsonl``, ``routing.jsonl``, ``routing.json``, ``routing.png`` and
    ``agent_summary.json`` into ``out_dir``."""
    from duma.paths import write_atomically
    from duma.plugins.evaluation.routing import RoutingRecord, routing_metrics, write_routing_report

    out = Path(out_dir)
    answerers = {which: agent_answerer(agents[which]) for which in (ROUTED, FAST_ONLY, SLOW_ONLY)}
    records = answer_and_judge(items, answerers, judge, out / TURNS_FILE, AgentTurnRecord, resume=resume,
                               retries=retries, on_record=on_record)
    routing_rows = [row for row in (r.routing_record() for r in records) if row is not None]
    routing_text = "".join(json.dumps(row) + "\n" for row in routing_rows)
    write_atomically(out / ROUTING_FILE, lambda tmp: tmp.write_text(routing_text, encoding="utf-8"))
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
        write_routing_report(report, out, title=f"agent routing: {report.n} turns")
        summary.routing = report.model_dump(mode="json", exclude={"curve"})
    summary_text = json.dumps(summary.model_dump(mode="json"), indent=2) + "\n"
    write_atomically(out / "agent_summary.json", lambda tmp: tmp.write_text(summary_text, encoding="utf-8"))
    return summary


def build_agents(config: DumaConfig, only: str | None = None) -> dict[str, ChatAgent]:
    """The configured agent and its always-fast / always-slow twins (sharing loaded models:
    ``duma.models.load_backend`` caches backends per spec), or just ``only`` of them.
    Conversations stay in memory."""
    from duma.agents import Agent

    if config.agent.mode == "auto":  # this evaluates the agent: the minds' protocol, whatever the model
        config = config.model_copy(update={"agent": config.agent.model_copy(update={"mode": "duma"})})
    agents: dict[str, ChatAgent] = {}
    if only in (None, ROUTED):
        agents[ROUTED] = Agent.from_config(config, log=False)
    for which, router in ROUTER_OVERRIDES.items():
        if only not in (None, which):
            continue
        twin = config.model_copy(update={"agent": config.agent.model_copy(update={"router": router})})
        agents[which] = Agent.from_config(twin, log=False)
    return agents
