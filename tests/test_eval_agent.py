"""`duma eval agent`: the agent, its fast mind alone and its slow path alone on a set; per-turn
records, resume, and the routing file `duma eval routing` reads."""

from __future__ import annotations

import json
from collections.abc import Iterator

import pytest
from click.testing import CliRunner

import duma
from duma import host
from duma.backend import Backend
from duma.cli import cli, load_plugin_commands
from duma.plugins.evaluation.agent_eval import (FAST_ONLY, ROUTED, ROUTING_FILE, SLOW_ONLY, TURNS_FILE,
                                                run_agent_eval)
from duma.plugins.evaluation.builtin_judges import ContainsJudge
from duma.plugins.evaluation.dataset import EvalItem
from duma.types import GenerationChunk

ITEMS = [EvalItem(id="sum", question="What is 2 + 3?", std_answer="5", klass="math"),
         EvalItem(id="paris", question="Where is Paris?", std_answer="Paris is in France.", klass="closed qa")]


class FakeReply:
    def __init__(self, text: str, slow_ran: bool, router_score: float | None) -> None:
        self.text, self.slow_ran, self.router_score, self.total_s = text, slow_ran, router_score, 0.5


class FakeAgent:
    """Answers from a table; ``slow`` agents know everything, fast ones only about Paris."""

    def __init__(self, mode: str, fail_on: str | None = None) -> None:
        self.mode, self.fail_on, self.questions = mode, fail_on, []

    def chat(self, text: str, conversation_id: str | None = None) -> FakeReply:
        self.questions.append(text)
        if text == self.fail_on:
            raise RuntimeError("model crashed")
        slow = self.mode == SLOW_ONLY or (self.mode == ROUTED and "+" in text)
        answer = "The answer is 5; Paris is in France." if slow else "Maybe 4. Paris is in France."
        score = None if self.mode != ROUTED else (0.9 if "+" in text else 0.1)
        return FakeReply(answer, slow, score)


def test_agent_eval_records_and_routing_file(tmp_path):
    agents = {ROUTED: FakeAgent(ROUTED), FAST_ONLY: FakeAgent(FAST_ONLY), SLOW_ONLY: FakeAgent(SLOW_ONLY)}
    summary = run_agent_eval(ITEMS, agents, ContainsJudge(), tmp_path, slow_share=0.5)
    turns = [json.loads(line) for line in (tmp_path / TURNS_FILE).read_text().splitlines()]
    assert [t["id"] for t in turns] == ["sum", "paris"]
    assert turns[0]["routed"]["slow_ran"] is True and turns[0]["routed"]["router_score"] == 0.9
    assert turns[0]["fast"]["score"] == 0.0 and turns[0]["slow"]["score"] == 1.0
    rows = [json.loads(line) for line in (tmp_path / ROUTING_FILE).read_text().splitlines()]
    assert rows == [
        {"id": "sum", "fast_score": 0.0, "slow_score": 1.0, "router_score": 0.9, "fast_latency_s": 0.5,
         "slow_latency_s": 0.5},
        {"id": "paris", "fast_score": 1.0, "slow_score": 1.0, "router_score": 0.1, "fast_latency_s": 0.5,
         "slow_latency_s": 0.5},
    ]
    # gains d = [1, 0], the router sends "sum" first: PGR 0, 1, 1 -> APGR (0.5 + 1) / 2 = 0.75
    assert summary.routing["apgr"] == pytest.approx(0.75) and summary.routing["cpt80"] == 0.5
    assert summary.slow_share == 0.5 and summary.quality_routed == 1.0
    assert summary.quality_fast_only == 0.5 and summary.quality_slow_only == 1.0
    assert json.loads((tmp_path / "agent_summary.json").read_text())["n_complete"] == 2
    assert (tmp_path / "routing.png").exists() and (tmp_path / "routing.json").exists()


def test_agent_eval_resumes_and_retries_failures(tmp_path):
    flaky = FakeAgent(SLOW_ONLY, fail_on="Where is Paris?")
    agents = {ROUTED: FakeAgent(ROUTED), FAST_ONLY: FakeAgent(FAST_ONLY), SLOW_ONLY: flaky}
    first = run_agent_eval(ITEMS, agents, ContainsJudge(), tmp_path, retries=1)
    assert first.n_complete == 1 and flaky.questions.count("Where is Paris?") == 2  # tried twice
    turns = [json.loads(line) for line in (tmp_path / TURNS_FILE).read_text().splitlines()]
    assert "model crashed" in turns[1]["slow"]["answer_error"]
    again = {ROUTED: FakeAgent(ROUTED), FAST_ONLY: FakeAgent(FAST_ONLY), SLOW_ONLY: FakeAgent(SLOW_ONLY)}
    second = run_agent_eval(ITEMS, again, ContainsJudge(), tmp_path)
    # only the failed answer is asked again
    assert again[SLOW_ONLY].questions == ["Where is Paris?"] and again[ROUTED].questions == []
    assert second.n_complete == 2
    assert len((tmp_path / TURNS_FILE).read_text().splitlines()) == 2


# --- the real agent, with scripted minds ---------------------------------------------------

class MindsBackend(Backend):
    """``model: slow`` finishes with 5; ``model: fast`` drafts "Maybe 4. Paris is in France."
    or, given the slow mind's result, answers everything."""

    name = "eval-minds"

    def stream(self, messages, options=None, *, adapter=None, cancel=None) -> Iterator[GenerationChunk]:
        if self.spec.model == "slow":
            reply = "Finish[5]"
        elif any("SlowMind[" in m.content for m in messages):
            reply = "Response[The answer is 5; Paris is in France.] Invoke[False]"
        else:
            reply = "Response[Maybe 4. Paris is in France.] Invoke[False]"
        yield GenerationChunk(text=reply)
        yield GenerationChunk(done=True, finish_reason="stop")


class MindsPlugin:
    @staticmethod
    @duma.hookimpl
    def register_backends(register) -> None:
        register(MindsBackend)


@pytest.fixture
def minds() -> Iterator[None]:
    from duma.models import clear_backends

    load_plugin_commands()
    host.register_plugin(MindsPlugin, "eval-minds-test")
    clear_backends()
    yield
    clear_backends()


def test_duma_eval_agent_with_the_real_agent(minds, tmp_path):
    pytest.importorskip("duma.agents", reason="the agent module is not importable")
    eval_set = tmp_path / "set.jsonl"
    eval_set.write_text("".join(json.dumps({"id": i.id, "question": i.question, "std_answer": i.std_answer,
                                            "class": i.klass}) + "\n" for i in ITEMS))
    settings = ["-S", "agent.fast.backend=eval-minds", "-S", "agent.fast.model=fast",
                "-S", "agent.slow.backend=eval-minds", "-S", "agent.slow.model=slow",
                "-S", "agent.router=rules", "-S", "logging.enabled=false"]
    out = tmp_path / "out"
    result = CliRunner().invoke(cli, [*settings, "eval", "agent", str(eval_set), "--judge", "contains",
                                      "--out", str(out)])
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert summary["n_complete"] == 2 and summary["slow_share"] == 0.5  # the rules router catches 2 + 3
    assert summary["quality_fast_only"] == 0.5 and summary["quality_slow_only"] == 1.0
    assert summary["routing"]["apgr"] == pytest.approx(0.75)
    turns = [json.loads(line) for line in (out / TURNS_FILE).read_text().splitlines()]
    assert [t["routed"]["slow_ran"] for t in turns] == [True, False]
    assert turns[0]["routed"]["router_score"] == 1.0 and turns[1]["routed"]["router_score"] == 0.0
    routing = CliRunner().invoke(cli, ["eval", "routing", str(out / ROUTING_FILE)])
    assert routing.exit_code == 0 and json.loads(routing.stdout)["apgr"] == pytest.approx(0.75)


def test_eval_run_with_the_agent(minds, tmp_path):
    pytest.importorskip("duma.agents", reason="the agent module is not importable")
    eval_set = tmp_path / "set.jsonl"
    eval_set.write_text(json.dumps({"question": "What is 2 + 3?", "std_answer": "5", "class": "math"}) + "\n")
    settings = ["-S", "agent.fast.backend=eval-minds", "-S", "agent.fast.model=fast",
                "-S", "agent.slow.backend=eval-minds", "-S", "agent.slow.model=slow",
                "-S", "agent.router=always-slow", "-S", "logging.enabled=false"]
    result = CliRunner().invoke(cli, [*settings, "eval", "run", "--set", str(eval_set), "--agent",
                                      "--judge", "numeric", "--out", str(tmp_path / "o"), "--bootstrap", "0"])
    assert result.exit_code == 0, result.output
    [record] = [json.loads(line) for line in (tmp_path / "o" / "answers.jsonl").read_text().splitlines()]
    assert record["answer"] == "The answer is 5; Paris is in France." and record["score"] == 1.0
    assert record["slow_ran"] is True
    assert "always-slow" in json.loads((tmp_path / "o" / "report.json").read_text())["model"]
