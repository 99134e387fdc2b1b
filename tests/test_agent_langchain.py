"""The LangChain adapter: an Agent used where LangChain expects a chat model."""

from __future__ import annotations

import asyncio

import pytest
from langchain_core.messages import AIMessage, HumanMessage, SystemMessage

from duma.agents import Agent
from duma.agents.langchain import DumaChatModel
from duma.errors import DumaError
from duma.logstore import LogStore
from duma.testing import ScriptedBackend


def make_model(tmp_path, fast: list[str], slow: list[str] | None = None, **fields) -> tuple[DumaChatModel, ScriptedBackend]:
    fast_backend = ScriptedBackend(replies=fast)
    agent = Agent({}, log_store=LogStore(tmp_path / "log.db"), fast_backend=fast_backend,
                  slow_backend=ScriptedBackend(replies=slow or ["Finish[397.8]"]), tools={})
    return DumaChatModel(agent=agent, **fields), fast_backend


def test_invoke_returns_the_final_reply(tmp_path):
    model, _ = make_model(tmp_path, ["Response[One moment.] Invoke[True]", "Response[It is 397.8.] Invoke[False]"])
    message = model.invoke("What is 17% of 2,340?")
    assert isinstance(message, AIMessage) and message.content == "It is 397.8."
    meta = message.response_metadata
    assert meta["slow_ran"] and meta["interim"] == "One moment." and meta["conversation_id"]
    assert message.usage_metadata["output_tokens"] > 0


def test_stream_yields_interim_then_final(tmp_path):
    model, _ = make_model(tmp_path, ["Response[One moment.] Invoke[True]", "Response[It is 397.8.] Invoke[False]"])
    text = "".join(chunk.content for chunk in model.stream([HumanMessage("17% of 2,340?")]))
    assert text == "One moment.\n\nIt is 397.8."


def test_messages_map_onto_the_turn(tmp_path):
    model, fast = make_model(tmp_path, ["Response[Ada.] Invoke[False]"])
    model.invoke([SystemMessage("Be brief."), HumanMessage("My name is Ada."), AIMessage("Hello Ada."),
                  HumanMessage("What is my name?")])
    context = [m.content for m in fast.calls[0]]
    assert "Be brief." in context[0]
    assert context[1:] == ["User[My name is Ada.]", "Response[Hello Ada.]\nInvoke[False]", "User[What is my name?]"]


def test_conversation_id_from_field_and_config(tmp_path):
    model, fast = make_model(tmp_path, ["Response[ok] Invoke[False]"])
    cid = model.agent.new_conversation()
    model.invoke("first", config={"configurable": {"conversation_id": cid}})
    model.invoke("second", config={"metadata": {"conversation_id": cid}})
    assert [m.content for m in model.agent.history(cid)] == ["first", "ok", "second", "ok"]
    pinned = DumaChatModel(agent=model.agent, conversation_id=cid)
    pinned.invoke("third")
    assert len(model.agent.history(cid)) == 6
    with pytest.raises(DumaError):
        model.invoke([AIMessage("no human here")])


def test_async_invoke_and_stream(tmp_path):
    model, _ = make_model(tmp_path, ["Response[Hi there.] Invoke[False]"])

    async def main():
        message = await model.ainvoke("hello")
        chunks = [c.content async for c in model.astream("hello again")]
        return message, "".join(chunks)

    message, streamed = asyncio.run(main())
    assert message.content == "Hi there." and streamed == "Hi there."
