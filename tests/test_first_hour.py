"""What a new user meets first: a model that is not a mind chats plainly, continuing a
conversation keeps its model, and a model caught in a loop stops."""

from __future__ import annotations

import json
from pathlib import Path

from duma.agents import Agent
from duma.config import DumaConfig
from duma.testing import ScriptedBackend, run_cli


def plain_agent(tmp_path: Path, replies: list[str], **agent: object) -> tuple[Agent, ScriptedBackend]:
    backend = ScriptedBackend(replies=replies)
    config = {"model": {"model": str(tmp_path / "my-sft-model")}, "agent": agent,
              "logging": {"database": str(tmp_path / "logs.db")}}
    return Agent(config, fast_backend=backend, slow_backend=backend), backend


def test_a_model_that_is_not_a_mind_chats_plainly(tmp_path):
    agent, backend = plain_agent(tmp_path, ["Paris is the capital of France.", "Rome."])
    assert not agent.runs_minds
    reply = agent.chat("What is the capital of France?")
    assert reply.text == "Paris is the capital of France." and not reply.slow_ran
    second = agent.chat("And of Italy?", reply.conversation_id)
    assert second.text == "Rome."
    sent = backend.calls[1]
    assert [(m.role, m.content) for m in sent] == [
        ("user", "What is the capital of France?"), ("assistant", "Paris is the capital of France."),
        ("user", "And of Italy?")]  # the model's own chat layout: no protocol, no protocol prompt


def test_when_the_minds_run(tmp_path):
    assert DumaConfig().runs_minds()  # the embedded model with the shipped minds
    other = {"model": {"model": str(tmp_path / "m")}}
    assert not DumaConfig(**other).runs_minds()
    assert DumaConfig(**other, agent={"mode": "duma"}).runs_minds()  # --agent
    assert DumaConfig(**other, agent={"router": "always-slow"}).runs_minds()  # asked for a router
    assert DumaConfig(**other, agent={"fast": {"model": str(tmp_path / "m")}}).runs_minds()
    assert not DumaConfig(agent={"mode": "plain"}).runs_minds()
    agent, backend = plain_agent(tmp_path, ["Response[hi] Invoke[False]"], mode="duma")
    assert agent.chat("hello").text == "hi"
    assert backend.calls[0][-1].content == "User[hello]"


def test_chat_flags_choose_the_mode_and_continuing_keeps_the_model(tmp_path, duma_home):
    from types import SimpleNamespace

    from duma import hookimpl, host

    class Registered(ScriptedBackend):
        name = "scripted"

    plugin = SimpleNamespace(register_backends=hookimpl(lambda register: register(Registered)))
    host.register_plugin(plugin, "scripted-for-test")
    first_model = json.dumps(["plain answer"])
    code, out, err = run_cli(["-S", "model.backend=scripted", "chat", "-m", first_model], input="hello\n")
    assert code == 0, err
    assert out.strip() == "plain answer"
    code, out, err = run_cli(["-S", "model.backend=scripted", "chat", "-m", json.dumps(["Response[mind] Invoke[False]"]),
                              "--agent"], input="hello\n")
    assert code == 0 and out.strip() == "mind", err
    # -c without -m continues with the model the conversation started with.
    code, out, err = run_cli(["-S", "model.backend=scripted", "-S", f"model.model={json.dumps(['other'])}",
                              "chat", "-c"], input="again\n")
    assert code == 0 and out.strip() == "mind", err
    code, out, err = run_cli(["-S", "model.backend=scripted", "chat", "-c", "-m", json.dumps(["switched"]), "--plain"],
                             input="again\n")
    assert code == 0 and out.strip() == "switched", err


def test_a_reply_caught_in_a_loop_stops(tmp_path):
    looping = "Response[" + "I checked: " * 40 + "] Invoke[False]"
    agent, backend = plain_agent(tmp_path, [looping], mode="duma")
    reply = agent.chat("Okay.")
    assert reply.text.count("I checked:") <= 4  # stopped at the 4th repeat (max_repeats)
    assert reply.usage.completion_tokens < 15
    unguarded, _ = plain_agent(tmp_path, [looping], mode="duma")
    full = unguarded.chat("Okay.", options={"max_repeats": None})
    assert full.text.count("I checked:") == 40
    plain, _ = plain_agent(tmp_path, ["The sky is blue.\n" * 30])
    assert plain.chat("Describe the sky.").text.count("The sky is blue.") <= 4
