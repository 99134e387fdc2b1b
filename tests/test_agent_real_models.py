"""The agent on real (transformers) backends: the tiny random model for every turn shape,
and the embedded model for a sensible plain answer."""

from __future__ import annotations

import os

import pytest

from duma import host
from duma.agents import Agent
from duma.errors import DumaError


def _transformers_backend_available() -> bool:
    try:
        host.get("backend", "transformers")
    except DumaError:
        return False
    return True


pytestmark = pytest.mark.skipif(not _transformers_backend_available(),
                                reason="the transformers backend plugin is not available")

EVENT_TYPES = {"fast_token", "fast_done", "slow_step", "slow_done", "final_token", "final_done", "notice"}


def _config(model: str, router: str = "duma", **agent) -> dict:
    return {"model": {"model": str(model), "device": "cpu",
                      "options": {"max_tokens": 12, "temperature": 0.0}},
            "agent": {"mode": "duma", "router": router, "max_slow_steps": 2, **agent}}


def _check(events, cid):
    types = [e.type for e in events]
    assert set(types) <= EVENT_TYPES, types
    assert types[-1] == "final_done" and types.count("fast_done") == 1
    assert all(e.conversation_id == cid for e in events)


def test_tiny_model_fast_path(tiny_model):
    agent = Agent.from_config(_config(tiny_model), log=False)
    cid = agent.new_conversation()
    events = list(agent.stream("What is the capital of France?", cid))
    _check(events, cid)
    assert events[-1].usage.completion_tokens > 0 and events[-1].first_token_s is not None
    second = list(agent.stream("And of Italy?", cid))
    _check(second, cid)
    assert len(agent.history(cid)) == 4


def test_tiny_model_slow_path(tiny_model):
    agent = Agent.from_config(_config(tiny_model, router="always-slow", slow_timeout_s=30), log=False)
    assert agent.fast_backend is agent.slow_backend  # one copy of the weights for both minds
    reply = agent.chat("What is 17% of 2,340?")
    _check(reply.events, reply.conversation_id)
    assert reply.slow_ran and reply.text
    types = [e.type for e in reply.events]
    assert types.index("fast_done") < types.index("slow_done") < types.index("final_done")


@pytest.mark.skipif(os.environ.get("DUMA_SKIP_EMBEDDED") == "1", reason="DUMA_SKIP_EMBEDDED=1")
def test_embedded_model_answers_plainly_with_the_default_router():
    try:
        from duma.models import embedded_gguf_path

        embedded_gguf_path()
    except DumaError as exc:
        pytest.skip(str(exc))
    agent = Agent.from_config({"model": {"options": {"max_tokens": 40}}}, log=False)
    reply = agent.chat("What is the capital of France?")
    assert "Paris" in reply.text and "Response[" not in reply.text
