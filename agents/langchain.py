"""LangChain adapter: a duma :class:`~duma.agents.Agent` as a LangChain chat model.

    from duma.agents import Agent
    from duma.agents.langchain import DumaChatModel

    model = DumaChatModel(agent=Agent.from_config())
    model.invoke("What is 17% of 2,340?")
    model.invoke(messages, config={"configurable": {"conversation_id": cid}})

The last ``HumanMessage`` is the turn; a ``SystemMessage`` becomes the turn's system prompt.
The conversation is the model's ``conversation_id`` field, else ``conversation_id`` in the
run's ``configurable``/``metadata`` or a keyword argument; without one, a new conversation is
started and seeded with the earlier messages of the list, so the agent sees them.
``invoke`` returns the final reply (interim reply and slow-mind details in
``response_metadata``); ``stream`` yields the interim reply, a blank line, then the final reply.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from typing import Any

from langchain_core.callbacks import AsyncCallbackManagerForLLMRun, CallbackManagerForLLMRun
from langchain_core.language_models import BaseChatModel
from langchain_core.messages import AIMessage, AIMessageChunk, BaseMessage, HumanMessage, SystemMessage
from langchain_core.outputs import ChatGeneration, ChatGenerationChunk, ChatResult
from pydantic import ConfigDict

from duma.errors import DumaError
from duma.events import FastToken, FinalToken
from duma.types import Message

from .agent import Agent, Reply

CONVERSATION_KEY = "conversation_id"


def _text(message: BaseMessage) -> str:
    content = message.content
    if isinstance(content, str):
        return content
    # Multimodal content blocks: keep the text parts.
    return "".join(part if isinstance(part, str) else str(part.get("text", "")) for part in content)


class DumaChatModel(BaseChatModel):
    """A duma agent behind LangChain's chat-model interface."""

    model_config = ConfigDict(arbitrary_types_allowed=True)

    agent: Agent
    conversation_id: str | None = None
    options: dict[str, Any] | None = None

    @property
    def _llm_type(self) -> str:
        return "duma"

    @property
    def _identifying_params(self) -> dict[str, Any]:
        return {"model": self.agent.fast_spec.model, "router": self.agent.router_name}

    # ------------------------------------------------------------------ run config
    # ``configurable`` is not handed to ``_generate``: carry its conversation id as a keyword.
    @staticmethod
    def _with_config(config: Any, kwargs: dict[str, Any]) -> dict[str, Any]:
        configurable = (config or {}).get("configurable") or {}
        if CONVERSATION_KEY in configurable and CONVERSATION_KEY not in kwargs:
            kwargs = {**kwargs, CONVERSATION_KEY: configurable[CONVERSATION_KEY]}
        return kwargs

    def invoke(self, input: Any, config: Any = None, **kwargs: Any) -> AIMessage:  # noqa: A002
        return super().invoke(input, config, **self._with_config(config, kwargs))

    async def ainvoke(self, input: Any, config: Any = None, **kwargs: Any) -> AIMessage:  # noqa: A002
        return await super().ainvoke(input, config, **self._with_config(config, kwargs))

    def stream(self, input: Any, config: Any = None, **kwargs: Any) -> Iterator[AIMessageChunk]:  # noqa: A002
        return super().stream(input, config, **self._with_config(config, kwargs))

    def astream(self, input: Any, config: Any = None, **kwargs: Any) -> AsyncIterator[AIMessageChunk]:  # noqa: A002
        return super().astream(input, config, **self._with_config(config, kwargs))

    # ------------------------------------------------------------------ mapping
    def _turn(self, messages: list[BaseMessage], run_manager: Any, kwargs: dict[str, Any]
              ) -> tuple[str, str, str | None]:
        """(text, conversation id, system prompt) for a LangChain message list."""
        last_human = max((i for i, m in enumerate(messages) if isinstance(m, HumanMessage)), default=None)
        if last_human is None:
            raise DumaError("no HumanMessage to answer", "end the message list with a HumanMessage")
        text = _text(messages[last_human])
        system = "\n\n".join(_text(m) for m in messages if isinstance(m, SystemMessage)) or None
        metadata = getattr(run_manager, "metadata", None) or {}
        cid = kwargs.get(CONVERSATION_KEY) or self.conversation_id or metadata.get(CONVERSATION_KEY)
        if cid is None:
            cid = self.agent.new_conversation()
            self._seed(cid, messages[:last_human])
        return text, cid, system

    def _seed(self, cid: str, earlier: list[BaseMessage]) -> None:
        """Log the earlier dialogue into a new conversation, so the agent remembers it."""
        for m in earlier:
            role = "user" if isinstance(m, HumanMessage) else "assistant" if isinstance(m, AIMessage) else None
            if role is not None:
                self.agent.log_store.add_message(
                    cid, Message(role=role, content=_text(m)), meta={"kind": "reply" if role == "assistant" else "user"})

    @staticmethod
    def _message(reply: Reply) -> AIMessage:
        return AIMessage(
            content=reply.text,
            response_metadata={
                CONVERSATION_KEY: reply.conversation_id, "interim": reply.interim,
                "slow_ran": reply.slow_ran, "slow_finished": reply.slow_finished,
                "router": reply.router, "router_score": reply.router_score,
                "slow_steps": len(reply.steps), "first_token_s": reply.first_token_s,
                "total_s": reply.total_s,
            },
            usage_metadata={
                "input_tokens": reply.usage.prompt_tokens,
                "output_tokens": reply.usage.completion_tokens,
                "total_tokens": reply.usage.prompt_tokens + reply.usage.completion_tokens,
            },
        )

    def _kw(self, kwargs: dict[str, Any]) -> dict[str, Any]:
        options = kwargs.get("options", self.options)
        return {"options": options}

    # ------------------------------------------------------------------ sync
    def _generate(self, messages: list[BaseMessage], stop: list[str] | None = None,
                  run_manager: CallbackManagerForLLMRun | None = None, **kwargs: Any) -> ChatResult:
        text, cid, system = self._turn(messages, run_manager, kwargs)
        reply = self.agent.chat(text, cid, system=system, **self._kw(kwargs))
        return ChatResult(generations=[ChatGeneration(message=self._message(reply))])

    def _stream(self, messages: list[BaseMessage], stop: list[str] | None = None,
                run_manager: CallbackManagerForLLMRun | None = None, **kwargs: Any
                ) -> Iterator[ChatGenerationChunk]:
        text, cid, system = self._turn(messages, run_manager, kwargs)
        state = _StreamState()
        for ev in self.agent.stream(text, cid, system=system, **self._kw(kwargs)):
            chunk = state.chunk(ev, cid)
            if chunk is not None:
                if run_manager and chunk.text:
                    run_manager.on_llm_new_token(chunk.text, chunk=chunk)
                yield chunk

    # ------------------------------------------------------------------ async
    async def _agenerate(self, messages: list[BaseMessage], stop: list[str] | None = None,
                         run_manager: AsyncCallbackManagerForLLMRun | None = None, **kwargs: Any
                         ) -> ChatResult:
        text, cid, system = self._turn(messages, run_manager, kwargs)
        reply = await self.agent.achat(text, cid, system=system, **self._kw(kwargs))
        return ChatResult(generations=[ChatGeneration(message=self._message(reply))])

    async def _astream(self, messages: list[BaseMessage], stop: list[str] | None = None,
                       run_manager: AsyncCallbackManagerForLLMRun | None = None, **kwargs: Any
                       ) -> AsyncIterator[ChatGenerationChunk]:
        text, cid, system = self._turn(messages, run_manager, kwargs)
        state = _StreamState()
        async for ev in self.agent.astream(text, cid, system=system, **self._kw(kwargs)):
            chunk = state.chunk(ev, cid)
            if chunk is not None:
                if run_manager and chunk.text:
                    await run_manager.on_llm_new_token(chunk.text, chunk=chunk)
                yield chunk


class _StreamState:
    """Turns agent events into LangChain chunks (a blank line between interim and final)."""

    def __init__(self) -> None:
        self.final_started = False

    def chunk(self, ev: Any, cid: str) -> ChatGenerationChunk | None:
        if ev.type == "error":
            raise DumaError(ev.message)
        if isinstance(ev, FastToken):
            return ChatGenerationChunk(message=AIMessageChunk(content=ev.text))
        if isinstance(ev, FinalToken):
            text = ev.text if self.final_started else "\n\n" + ev.text
            self.final_started = True
            return ChatGenerationChunk(message=AIMessageChunk(content=text))
        if ev.type == "final_done":
            return ChatGenerationChunk(message=AIMessageChunk(
                content="", response_metadata={CONVERSATION_KEY: cid, "slow_ran": ev.slow_ran},
                usage_metadata={"input_tokens": ev.usage.prompt_tokens,
                                "output_tokens": ev.usage.completion_tokens,
                                "total_tokens": ev.usage.prompt_tokens + ev.usage.completion_tokens}))
        return None


__all__ = ["DumaChatModel"]
