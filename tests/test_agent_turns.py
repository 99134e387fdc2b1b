"""Agent turns with scripted minds: the fast path, the handoff, memory, routers, the slow
mind's limits and bad input."""

from __future__ import annotations

import time
from typing import Any

import pytest
from langchain_core.tools import tool

import duma
from duma import host
from duma.agents import Agent, Reply
from duma.errors import DumaError
from duma.logstore import LogStore
from duma.routing import RouteInput, Router
from duma.testing import ScriptedBackend


@tool
def calculator(expression: str) -> str:
    """Evaluate an arithmetic expression."""
    return "397.8" if "17%" in expression else "42"


@tool
def convert(value: float, from_unit: str, to_unit: str) -> str:
    """Convert a value between units."""
    return f"{value * 1.609:.3f} {to_unit}" if from_unit == "mi" else f"{value} {to_unit}"


@tool
def broken(query: str) -> str:
    """Always fails."""
    raise RuntimeError("database is down")


@tool
def hangs(query: str) -> str:
    """Never returns in time."""
    time.sleep(5)
    return "too late"


TOOLS = {t.name: t for t in (calculator, convert, broken, hangs)}


def make_agent(tmp_path, fast: list[str], slow: list[str] | None = None, *, config: dict | None = None,
               router: Router | None = None, fast_backend=None, slow_backend=None) -> Agent:
    return Agent(config or {}, log_store=LogStore(tmp_path / "log.db"),
                 fast_backend=fast_backend or ScriptedBackend(replies=fast),
                 slow_backend=slow_backend or ScriptedBackend(replies=slow or ["Finish[nothing]"]),
                 router=router, tools=TOOLS)


def types(events: list[Any]) -> list[str]:
    """Event types with runs of tokens collapsed: ['fast_token*', 'fast_done', ...]."""
    out: list[str] = []
    for ev in events:
        name = ev.type + "*" if ev.type.endswith("_token") else ev.type
        if not (out and out[-1] == name and name.endswith("*")):
            out.append(name)
    return out


# ------------------------------------------------------------------ fast path

def test_fast_path_turn(tmp_path):
    agent = make_agent(tmp_path, ["Response[Paris is the capital of France.] Invoke[False]"])
    events = list(agent.stream("What is the capital of France?"))
    assert types(events) == ["fast_token*", "fast_done", "final_done"]
    cid = events[0].conversation_id
    assert cid and all(ev.conversation_id == cid for ev in events)
    shown = "".join(ev.text for ev in events if ev.type == "fast_token")
    assert shown == "Paris is the capital of France."
    fast_done = events[-2]
    assert fast_done.invoke is False and fast_done.parse_ok and fast_done.router == "duma"
    assert events[-1].text == shown and events[-1].slow_ran is False
    logged = agent.log_store.messages(cid)
    assert [(m.role, m.content) for m in logged] == [
        ("user", "What is the capital of France?"), ("assistant", "Paris is the capital of France.")]
    reply = logged[-1]
    assert reply.model in ("embedded", "embedded+duma-fast-mind") and reply.options["max_tokens"] == 256
    assert reply.completion_tokens and reply.prompt_tokens and reply.total_s is not None
    assert reply.meta["kind"] == "reply" and reply.meta["router"] == "duma" and reply.meta["slow_ran"] is False


def test_fast_mind_context_uses_protocol(tmp_path):
    fast = ScriptedBackend(replies=["Response[Hi!] Invoke[False]"])
    agent = make_agent(tmp_path, [], fast_backend=fast)
    reply = agent.chat("Hello", system="Be brief.")
    agent.chat("Again", reply.conversation_id)
    system, *rest = fast.calls[-1]
    assert system.role == "system" and "Invoke[" in system.content and system.content.endswith("Be brief.") is False
    assert [m.content for m in rest] == ["User[Hello]", "Response[Hi!]\nInvoke[False]", "User[Again]"]
    assert "Be brief." in fast.calls[0][0].content


def test_untrained_model_output_is_the_reply(tmp_path):
    agent = make_agent(tmp_path, ["The capital of France is Paris."])
    reply = agent.chat("What is the capital of France?")
    assert reply.text == "The capital of France is Paris." and not reply.slow_ran
    fast_done = next(e for e in reply.events if e.type == "fast_done")
    assert fast_done.parse_ok is False and fast_done.invoke is False
    assert fast_done.raw == "The capital of France is Paris."


def test_garbled_invoke_does_not_hand_off(tmp_path):
    slow = ScriptedBackend(replies=["Finish[x]"])
    agent = make_agent(tmp_path, ["Response[Paris.] Invoke[perhaps]"], slow_backend=slow)
    reply = agent.chat("Capital of France?")
    assert reply.text == "Paris." and not reply.slow_ran and slow.calls == []


def test_options_merge_and_bad_options(tmp_path):
    fast = ScriptedBackend(replies=["Response[one two three four] Invoke[False]"])
    agent = make_agent(tmp_path, [], fast_backend=fast)
    reply = agent.chat("hi", options={"max_tokens": 2})
    assert reply.text == "one two"  # cut by max_tokens
    with pytest.raises(DumaError, match="bad generation options"):
        agent.stream("hi", options={"max_tokens": -1})
    with pytest.raises(DumaError, match="bad generation options"):
        agent.stream("hi", options={"nonsense": 1})


# ------------------------------------------------------------------ handoff

HANDOFF_FAST = ["Response[Let me calculate that.] Invoke[True]", "Response[17% of 2,340 is 397.8.] Invoke[False]"]
HANDOFF_SLOW = ["Reason[I need 17% of 2,340.] Act[calculator(17% of 2,340)]",
                "Reason[The calculator answered.] Finish[17% of 2,340 = 397.8]"]


def test_full_handoff_event_order_and_contents(tmp_path):
    fast = ScriptedBackend(replies=HANDOFF_FAST)
    slow = ScriptedBackend(replies=HANDOFF_SLOW)
    agent = make_agent(tmp_path, [], fast_backend=fast, slow_backend=slow)
    events = list(agent.stream("What is 17% of 2,340?"))
    assert types(events) == ["fast_token*", "fast_done", "slow_step", "slow_step", "slow_done",
                             "final_token*", "final_done"]
    cid = events[0].conversation_id
    assert all(ev.conversation_id == cid for ev in events)
    by_type = {ev.type: ev for ev in events}
    assert "".join(e.text for e in events if e.type == "fast_token") == "Let me calculate that."
    assert by_type["fast_done"].invoke is True and by_type["fast_done"].text == "Let me calculate that."
    step0 = [e for e in events if e.type == "slow_step"][0]
    assert step0.action == "calculator(17% of 2,340)" and step0.observation == "397.8"
    assert by_type["slow_done"].finished and by_type["slow_done"].result == "17% of 2,340 = 397.8"
    final_text = "".join(e.text for e in events if e.type == "final_token")
    assert final_text == by_type["final_done"].text == "17% of 2,340 is 397.8."
    assert by_type["final_done"].slow_ran
    # The slow mind saw the tool list and the retrospect; the observation came from duma.
    slow_system, slow_query = slow.calls[0][:2]
    assert "calculator(expression): Evaluate an arithmetic expression." in slow_system.content
    assert "convert(value, from_unit, to_unit)" in slow_system.content
    assert slow_query.content == "Query 0: What is 17% of 2,340?"
    assert slow.calls[1][-1].content == "Obs[397.8]"
    # The fast mind got the result back as SlowMind[...].
    assert fast.calls[1][-1].content == "SlowMind[17% of 2,340 = 397.8]"
    assert fast.calls[1][-2].content == "Response[Let me calculate that.]\nInvoke[True]"
    # Logged: user, interim, slow-mind result, final reply.
    logged = agent.log_store.messages(cid)
    assert [(m.role, m.meta["kind"]) for m in logged] == [
        ("user", "user"), ("assistant", "interim"), ("system", "slow_mind"), ("assistant", "reply")]
    assert logged[-1].meta["slow_ran"] and logged[-1].meta["slow_steps"] == 2
    assert [m.content for m in agent.history(cid)] == [
        "What is 17% of 2,340?", "Let me calculate that.", "17% of 2,340 is 397.8."]


def test_chat_reply_fields(tmp_path):
    agent = make_agent(tmp_path, HANDOFF_FAST, HANDOFF_SLOW)
    reply = agent.chat("What is 17% of 2,340?")
    assert isinstance(reply, Reply)
    assert reply.text == "17% of 2,340 is 397.8." and reply.interim == "Let me calculate that."
    assert reply.slow_ran and reply.slow_finished and reply.router == "duma"
    assert len(reply.steps) == 2 and reply.steps[0].observation == "397.8"
    assert reply.usage.completion_tokens > 0 and reply.first_token_s is not None
    assert reply.total_s >= reply.first_token_s


def test_memory_answers_follow_up_without_slow_mind(tmp_path):
    fast = ScriptedBackend(replies=[*HANDOFF_FAST, "Response[Yes, it is 397.8.] Invoke[False]"])
    slow = ScriptedBackend(replies=HANDOFF_SLOW)
    agent = make_agent(tmp_path, [], fast_backend=fast, slow_backend=slow)
    first = agent.chat("What is 17% of 2,340?")
    calls = len(slow.calls)
    second = agent.chat("So it was 397.8?", first.conversation_id)
    assert not second.slow_ran and len(slow.calls) == calls
    context = [m.content for m in fast.calls[-1]]
    assert "SlowMind[17% of 2,340 = 397.8]" in context
    assert context[-1] == "User[So it was 397.8?]"
    # A later slow run sees the earlier turn in its retrospect.
    fast.replies.append("Response[Checking.] Invoke[True]")
    fast.replies.append("Response[Done.] Invoke[False]")
    slow.replies[:] = ["Finish[ok]"]
    slow.calls.clear()
    agent.chat("And 18%?", first.conversation_id)
    assert slow.calls[0][1].content.startswith("Query 0: What is 17% of 2,340?\nAnswer 0: 17% of 2,340 is 397.8.")


def test_garbled_final_reply_falls_back_to_slow_result(tmp_path):
    agent = make_agent(tmp_path, ["Response[One moment.] Invoke[True]", "asdf qwer"],
                       ["Finish[The answer is 42.]"])
    reply = agent.chat("What is six times seven?")
    assert "The answer is 42." in reply.text
    final_tokens = "".join(e.text for e in reply.events if e.type == "final_token")
    assert final_tokens == reply.text and "asdf" not in final_tokens
    assert agent.log_store.messages(reply.conversation_id)[-1].meta["fallback"] is True


def test_empty_interim_gets_a_template(tmp_path):
    agent = make_agent(tmp_path, ["Response[] Invoke[True]", "Response[Done.] Invoke[False]"], ["Finish[x]"])
    reply = agent.chat("look it up")
    assert reply.interim == "Let me look into that." and reply.text == "Done."


def test_a_promise_with_invoke_false_is_kept(tmp_path):
    """"Let me check." then Invoke[False]: the slow mind runs anyway (agent.keep_promises),
    and the log says so; with keep_promises off the turn ends on the promise."""
    fast = ["Response[Let me check that.] Invoke[False]", "Response[It is 42.] Invoke[False]"]
    agent = make_agent(tmp_path, fast, ["Reason[Multiply.] Act[calculator(6*7)]", "Finish[42]"])
    reply = agent.chat("What is six times seven?")
    assert reply.slow_ran and reply.interim == "Let me check that." and reply.text == "It is 42."
    interim = agent.log_store.messages(reply.conversation_id)[1]
    assert interim.meta["kind"] == "interim" and interim.meta["promise_kept"] is True
    assert interim.meta["raw"] == "Response[Let me check that.] Invoke[False]"
    assert next(e for e in reply.events if e.type == "fast_done").promise_kept
    (tmp_path / "off").mkdir()
    (tmp_path / "plain").mkdir()
    kept_fast = make_agent(tmp_path / "off", fast, config={"agent": {"keep_promises": False}})
    reply = kept_fast.chat("What is six times seven?")
    assert not reply.slow_ran and reply.text == "Let me check that."
    # A reply that promises nothing stays fast.
    plain = make_agent(tmp_path / "plain", ["Response[Hello!] Invoke[False]"])
    assert not plain.chat("hi").slow_ran


# ------------------------------------------------------------------ routers

class _TestRouter(Router):
    decision = True

    def score(self, turn: RouteInput) -> float:
        return 0.9 if self.decision else 0.1


class AlwaysSlowRouter(_TestRouter):
    name = "test-always-slow"


class AlwaysFastRouter(_TestRouter):
    name = "test-always-fast"
    decision = False


class RulesRouter(Router):
    name = "test-rules"

    def score(self, turn: RouteInput) -> float:
        return 1.0 if "%" in turn.text else 0.0


class AgentTestPlugin:
    @duma.hookimpl
    def register_routers(self, register):
        register(AlwaysSlowRouter)
        register(AlwaysFastRouter)
        register(RulesRouter)

    @duma.hookimpl
    def register_tools(self, register):
        register(calculator, name="test_calculator")


@pytest.fixture
def test_plugin():
    host.register_plugin(AgentTestPlugin(), "test-agent-plugin")
    yield
    host.unregister_plugin("test-agent-plugin")


def test_slow_router_decides_before_the_fast_mind(tmp_path, test_plugin):
    fast = ScriptedBackend(replies=["Response[It is 397.8.] Invoke[False]"])
    slow = ScriptedBackend(replies=HANDOFF_SLOW)
    agent = Agent({"agent": {"router": "test-always-slow", "router_options": {"threshold": 0.5}}},
                  log_store=LogStore(tmp_path / "l.db"), fast_backend=fast, slow_backend=slow)
    reply = agent.chat("What is 17% of 2,340?")
    assert agent.tools.keys() >= {"test_calculator"}
    assert reply.slow_ran and reply.router == "test-always-slow" and reply.router_score == 0.9
    assert reply.interim == "Let me look into that."
    assert len(fast.calls) == 1  # only the final reply needed the fast mind
    assert types(reply.events) == ["fast_token*", "fast_done", "slow_step", "slow_step", "slow_done",
                                   "final_token*", "final_done"]


def test_fast_router_overrides_invoke(tmp_path, test_plugin):
    slow = ScriptedBackend(replies=["Finish[x]"])
    agent = Agent({"agent": {"router": "test-always-fast"}}, log_store=LogStore(tmp_path / "l.db"),
                  fast_backend=ScriptedBackend(replies=["Response[Paris.] Invoke[True]"]), slow_backend=slow)
    reply = agent.chat("Capital of France?")
    assert reply.text == "Paris." and not reply.slow_ran and slow.calls == []
    fast_done = next(e for e in reply.events if e.type == "fast_done")
    assert fast_done.invoke is False and fast_done.router == "test-always-fast" and fast_done.router_score == 0.1


def test_rules_router_sees_the_text(tmp_path, test_plugin):
    agent = Agent({"agent": {"router": "test-rules", "tools": ["test_calculator"]}},
                  log_store=LogStore(tmp_path / "l.db"),
                  fast_backend=ScriptedBackend(replies=["Response[Fine.] Invoke[False]"]),
                  slow_backend=ScriptedBackend(replies=["Finish[397.8]"]))
    assert list(agent.tools) == ["test_calculator"]
    assert agent.chat("17% of 2,340").slow_ran
    assert not agent.chat("hello").slow_ran


def test_unknown_router_and_tool_are_one_line_errors(tmp_path):
    with pytest.raises(DumaError, match="unknown router 'nope'"):
        Agent({"agent": {"router": "nope"}}, log=False)
    with pytest.raises(DumaError, match="unknown tool"):
        Agent({"agent": {"tools": ["no_such_tool"]}}, log=False)


# ------------------------------------------------------------------ slow mind limits

def _slow_turn(tmp_path, slow_replies: list[str], **agent_cfg) -> Reply:
    agent = make_agent(tmp_path, ["Response[Checking.] Invoke[True]", "Response[Here you go.] Invoke[False]"],
                       slow_replies, config={"agent": agent_cfg} if agent_cfg else None)
    return agent.chat("question")


def test_tool_errors_become_observations(tmp_path):
    # A scripted backend cannot constrain decoding: a step outside the protocol's pattern (an
    # unknown tool, arguments that do not parse for the tool) is sampled once more, and the
    # second is kept whatever it is. Each such step comes twice here.
    reply = _slow_turn(tmp_path, [
        "Reason[try] Act[broken(x)]",
        *["Reason[try] Act[nonexistent(1)]"] * 2,
        *["Reason[try] Act[convert(1, 2, 3, 4)]"] * 2,
        *["Reason[try] Act[convert(abc, mi, km)]"] * 2,
        "Reason[try] Act[convert(2, mi, km)]",
        "Finish[2 mi is 3.218 km]",
    ], max_slow_steps=10)
    obs = [s.observation for s in reply.steps]
    assert obs[0].startswith("Error: broken failed") or obs[0].startswith("Error:")
    assert "database is down" in obs[0]
    assert obs[1].startswith("Error: unknown tool 'nonexistent'") and "calculator" in obs[1]
    assert obs[2].startswith("Error: convert takes 3 argument(s)")
    assert obs[3].startswith("Error")
    assert obs[4] == "3.218 km"
    assert reply.slow_finished and reply.text == "Here you go."


def test_hanging_tool_times_out(tmp_path):
    started = time.perf_counter()
    reply = _slow_turn(tmp_path, ["Reason[wait] Act[hangs(x)]", "Finish[gave up]"], tool_timeout_s=0.3)
    assert reply.steps[0].observation == "Error: hangs timed out after 0.3 s"
    assert time.perf_counter() - started < 3


def test_looping_slow_mind_is_stopped(tmp_path):
    reply = _slow_turn(tmp_path, ["Reason[again] Act[calculator(6*7)]"], max_slow_steps=10)
    assert reply.slow_finished is False and len(reply.steps) == 2
    slow_done = next(e for e in reply.events if e.type == "slow_done")
    assert "repeated the same action" in slow_done.result and "42" in slow_done.result
    assert reply.text == "Here you go."  # the fast mind still answers


def test_step_limit_reports_what_was_found(tmp_path):
    reply = _slow_turn(tmp_path, ["Reason[a] Act[calculator(1)]", "Reason[b] Act[calculator(2)]",
                                  "Reason[c] Act[calculator(3)]"], max_slow_steps=2)
    slow_done = next(e for e in reply.events if e.type == "slow_done")
    assert not slow_done.finished and slow_done.steps == 2
    assert "stopped after 2 steps" in slow_done.result and "calculator(1) -> 42" in slow_done.result


def test_garbage_slow_mind_stops(tmp_path):
    reply = _slow_turn(tmp_path, ["blah blah", "more blah"], max_slow_steps=10)
    assert reply.slow_finished is False and len(reply.steps) == 2
    assert reply.steps[0].observation.startswith("Error: write Act[")


def test_slow_timeout(tmp_path):
    agent = make_agent(tmp_path, ["Response[Checking.] Invoke[True]", "Response[Sorry.] Invoke[False]"],
                       config={"agent": {"slow_timeout_s": 0.3}},
                       slow_backend=ScriptedBackend(replies=["Reason[slow thinking here] Act[calculator(1)]",
                                                             "Reason[more] Act[calculator(2)]"], delay_s=0.1))
    reply = agent.chat("question")
    assert reply.slow_finished is False and reply.text == "Sorry."
    slow_done = next(e for e in reply.events if e.type == "slow_done")
    assert "stopped after 0.3 s" in slow_done.result


def test_fast_mind_tells_user_about_unfinished_work(tmp_path):
    fast = ScriptedBackend(replies=["Response[Checking.] Invoke[True]", "Response[Partial answer.] Invoke[False]"])
    agent = make_agent(tmp_path, [], ["Reason[a] Act[calculator(1)]"], fast_backend=fast,
                       config={"agent": {"max_slow_steps": 1}})
    agent.chat("question")
    assert fast.calls[1][-1].content.startswith("SlowMind[(unfinished: stopped after 1 steps)")


# ------------------------------------------------------------------ bad input

def test_empty_message(tmp_path):
    agent = make_agent(tmp_path, ["Response[x] Invoke[False]"])
    events = list(agent.stream("   "))
    assert [e.type for e in events] == ["error"] and events[0].message == "empty message"
    assert events[0].conversation_id is None
    with pytest.raises(DumaError, match="empty message"):
        agent.chat("")
    assert agent.log_store.conversations(include_empty=True) == []  # no empty conversation left
    cid = agent.new_conversation()
    [error] = agent.stream("", conversation_id=cid)
    assert error.conversation_id == cid and agent.log_store.messages(cid) == []


def test_unknown_conversation(tmp_path):
    agent = make_agent(tmp_path, ["Response[x] Invoke[False]"])
    with pytest.raises(DumaError, match="conversation nope does not exist") as info:
        agent.chat("hi", "nope")
    assert "duma logs list" in str(info.value)
    with pytest.raises(DumaError):
        agent.history("nope")


class SmallContextBackend(ScriptedBackend):
    @property
    def context_length(self) -> int:
        return 120


def test_long_history_is_trimmed_with_a_notice(tmp_path):
    fast = SmallContextBackend(replies=["Response[" + "word " * 20 + "] Invoke[False]"])
    agent = make_agent(tmp_path, [], fast_backend=fast, config={"model": {"options": {"max_tokens": 30}}})
    cid = agent.new_conversation()
    for i in range(6):
        events = list(agent.stream(f"question number {i} " + "blah " * 10, cid))
        assert events[-1].type == "final_done"
    notices = [e for e in events if e.type == "notice"]
    assert notices and "dropped" in notices[0].message
    assert fast.count_tokens(fast.calls[-1]) <= 120 - 30
    assert fast.calls[-1][-1].content.startswith("User[question number 5")


def test_overlong_message_is_shortened(tmp_path):
    fast = SmallContextBackend(replies=["Response[ok] Invoke[False]"])
    agent = make_agent(tmp_path, [], fast_backend=fast, config={"model": {"options": {"max_tokens": 30}}})
    events = list(agent.stream("long " * 500))
    assert events[-1].type == "final_done" and events[-1].text == "ok"
    assert any(e.type == "notice" and "shortened" in e.message for e in events)
    # The whole message is still logged.
    assert agent.log_store.messages(events[0].conversation_id)[0].content == "long " * 500


class FailingBackend(ScriptedBackend):
    def stream(self, messages, options=None, *, adapter=None, cancel=None):
        yield from super().stream(messages, options, cancel=cancel)
        raise RuntimeError("CUDA out of memory")


def test_backend_failure_is_an_error_event(tmp_path):
    agent = make_agent(tmp_path, [], fast_backend=FailingBackend(replies=["The answer"]))
    events = list(agent.stream("hi"))
    assert events[-1].type == "error" and "CUDA out of memory" in events[-1].message
    # The user's message was logged before generation started.
    assert agent.log_store.messages(events[0].conversation_id)[0].content == "hi"


# ------------------------------------------------------------------ logging

def test_default_log_path_and_no_log(tmp_path, duma_home):
    agent = Agent.from_config(None, log=False)
    agent._fast_backend = ScriptedBackend(replies=["Response[x] Invoke[False]"])
    agent._slow_backend = agent._fast_backend
    agent.chat("hi")
    assert not (duma_home / "logs.db").exists()
    logged = Agent.from_config({"logging": {"database": str(tmp_path / "custom.db")}})
    assert logged.log_store.path == tmp_path / "custom.db"
    default = Agent.from_config()
    assert default.log_store.path == duma_home / "logs.db"


def test_conversation_survives_a_new_agent(tmp_path):
    first = make_agent(tmp_path, ["Response[Nice to meet you, Ada.] Invoke[False]"])
    cid = first.chat("My name is Ada.").conversation_id
    fast = ScriptedBackend(replies=["Response[Ada.] Invoke[False]"])
    second = make_agent(tmp_path, [], fast_backend=fast)
    assert second.chat("What is my name?", cid).text == "Ada."
    assert "User[My name is Ada.]" in [m.content for m in fast.calls[0]]
