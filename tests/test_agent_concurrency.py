"""One agent, many conversations at once: threads and asyncio tasks never mix them up."""

from __future__ import annotations

import asyncio
import re
import threading
import time
from collections.abc import Iterator, Sequence

from langchain_core.tools import tool

from duma.agents import Agent
from duma.backend import Backend
from duma.logstore import LogStore
from duma.types import GenerationChunk, GenerationOptions, Message, ModelSpec, Timings, Usage


class EchoFastBackend(Backend):
    """A fast mind whose reply depends only on its own conversation: it echoes the user's
    message, hands off when the message says 'calc', and repeats the slow mind's result."""

    name = "echo-fast"

    def __init__(self, delay_s: float = 0.002) -> None:
        super().__init__(ModelSpec(backend="echo-fast", model="echo"))
        self.delay_s = delay_s
        self._lock = threading.Lock()  # backends serialise internally

    def _reply(self, messages: Sequence[Message]) -> str:
        last = messages[-1].content
        if last.startswith("SlowMind["):
            return f"Response[result {last[len('SlowMind['):-1]}] Invoke[False]"
        text = last[len("User["):-1]
        return f"Response[working on {text}] Invoke[True]" if "calc" in text else f"Response[echo {text}] Invoke[False]"

    def stream(self, messages: Sequence[Message], options: GenerationOptions | None = None, *,
               adapter: str | None = None, cancel: object = None) -> Iterator[GenerationChunk]:
        reply = self._reply(messages)
        for word in reply.split(" "):
            with self._lock:
                time.sleep(self.delay_s)
            yield GenerationChunk(text=word + " ")
        yield GenerationChunk(done=True, finish_reason="stop", usage=Usage(prompt_tokens=5, completion_tokens=5),
                              timings=Timings(first_token_s=0.0, total_s=0.0))


class EchoSlowBackend(EchoFastBackend):
    """A slow mind that calls the tool on the last query, then finishes with the observation."""

    def _reply(self, messages: Sequence[Message]) -> str:
        last = messages[-1].content
        if last.startswith("Obs["):
            return f"Reason[done] Finish[{last[4:-1]}]"
        query = re.findall(r"Query \d+: (.*)", last)[-1]
        return f"Reason[look it up] Act[lookup({query})]"


@tool
def lookup(query: str) -> str:
    """Look up a query."""
    time.sleep(0.01)
    return f"found<{query}>"


def make_agent(tmp_path) -> Agent:
    return Agent({}, log_store=LogStore(tmp_path / "log.db"), fast_backend=EchoFastBackend(),
                 slow_backend=EchoSlowBackend(), tools={"lookup": lookup})


def run_conversation(agent: Agent, n: int, out: dict[int, list[str]], errors: list[BaseException]) -> None:
    try:
        cid = agent.new_conversation()
        replies = []
        for turn in range(3):
            text = f"c{n} t{turn}" + (" calc" if turn == 1 else "")
            events = list(agent.stream(text, cid))
            assert all(ev.conversation_id == cid for ev in events)
            replies.append(events[-1].text)
        out[n] = [cid, *replies]
    except BaseException as exc:  # reported by the main thread
        errors.append(exc)


def test_ten_conversations_in_parallel_threads(tmp_path):
    agent = make_agent(tmp_path)
    out: dict[int, list[str]] = {}
    errors: list[BaseException] = []
    threads = [threading.Thread(target=run_conversation, args=(agent, n, out, errors)) for n in range(10)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not errors, errors
    assert len(out) == 10
    for n, (cid, *replies) in out.items():
        assert replies == [f"echo c{n} t0", f"result found<c{n} t1 calc>", f"echo c{n} t2"]
        history = [m.content for m in agent.history(cid)]
        assert history == [f"c{n} t0", f"echo c{n} t0", f"c{n} t1 calc", f"working on c{n} t1 calc",
                           f"result found<c{n} t1 calc>", f"c{n} t2", f"echo c{n} t2"]


def test_two_threads_on_one_conversation_are_serialised(tmp_path):
    agent = make_agent(tmp_path)
    cid = agent.new_conversation()
    threads = [threading.Thread(target=agent.chat, args=(f"m{i}", cid)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    roles = [m.role for m in agent.log_store.messages(cid)]
    assert roles == ["user", "assistant"] * 4  # turns never interleave


def test_async_api(tmp_path):
    agent = make_agent(tmp_path)

    async def main():
        cids = [agent.new_conversation() for _ in range(5)]
        replies = await asyncio.gather(*(agent.achat(f"a{i} calc", cid) for i, cid in enumerate(cids)))
        events = [ev async for ev in agent.astream("hello", cids[0])]
        return cids, replies, events

    cids, replies, events = asyncio.run(main())
    for i, (cid, reply) in enumerate(zip(cids, replies)):
        assert reply.conversation_id == cid and reply.slow_ran
        assert reply.text == f"result found<a{i} calc>"
    assert [e.type for e in events][-2:] == ["fast_done", "final_done"]
    assert events[-1].text == "echo hello"


def test_async_errors_and_early_exit(tmp_path):
    agent = make_agent(tmp_path)

    async def main():
        try:
            await agent.achat("hi", "missing")
        except Exception as exc:  # noqa: BLE001 - the type is asserted below
            missing = exc
        stream = agent.astream("first calc")
        first = await stream.__anext__()
        await stream.aclose()  # the consumer leaves mid-turn
        again = await agent.achat("after")
        return missing, first, again

    missing, first, again = asyncio.run(main())
    assert "does not exist" in str(missing)
    assert first.type == "fast_token"
    assert again.text == "echo after"
