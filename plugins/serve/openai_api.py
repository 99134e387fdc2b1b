"""The OpenAI chat-completions wire format: the request duma accepts, the error body, and
the translation of a turn's events (or a bare mind's chunks) into completion chunks.

How a DUMA turn maps onto it: the fast mind's tokens and the final reply's go to
``delta.content`` (the final reply after a blank line, following the interim reply); each
slow-mind step goes to ``delta.reasoning_content``, the field reasoning models use, so clients
show it as collapsible "thinking"; the route, the router's score, the steps and the
conversation id travel in a ``duma`` extension object.
"""

from __future__ import annotations

import time
import uuid
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from duma.errors import validation_problems
from duma.events import Event
from duma.types import GenerationChunk, GenerationOptions, Message, Usage

CONVERSATION_HEADER = "X-Duma-Conversation-Id"


class ApiError(Exception):
    """An error answered in OpenAI's shape: ``{"error": {"message", "type", "param", "code"}}``."""

    def __init__(self, status: int, message: str, *, kind: str = "invalid_request_error",
                 param: str | None = None, code: str | None = None, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.kind = kind
        self.param = param
        self.code = code
        self.headers = headers or {}

    def body(self) -> dict[str, Any]:
        return error_body(self.message, kind=self.kind, param=self.param, code=self.code)


def error_body(message: str, *, kind: str = "invalid_request_error", param: str | None = None,
               code: str | None = None) -> dict[str, Any]:
    return {"error": {"message": message, "type": kind, "param": param, "code": code}}


# --------------------------------------------------------------------------- the request


class _Lenient(BaseModel):
    """Unknown fields are ignored (clients send many), never echoed back."""

    model_config = ConfigDict(extra="ignore")


class ContentPart(_Lenient):
    type: str
    text: str | None = None


class ChatMessage(_Lenient):
    role: Literal["system", "developer", "user", "assistant", "tool", "function"]
    content: str | list[ContentPart] | None = None

    def text(self) -> str:
        if self.content is None:
            return ""
        if isinstance(self.content, str):
            return self.content
        kinds = sorted({p.type for p in self.content if p.type != "text"})
        if kinds:
            raise ApiError(400, f"content parts of type {kinds[0]} are not supported; send text",
                           param="messages")
        return "".join(p.text or "" for p in self.content)


class StreamOptions(_Lenient):
    include_usage: bool = False


class DumaExtension(_Lenient):
    conversation_id: str | None = Field(None, description="Continue this duma conversation: only the last "
                                        "user message is used, the history comes from duma's log.")


class ChatCompletionRequest(_Lenient):
    model: str
    messages: list[ChatMessage] = Field(min_length=1)
    stream: bool = False
    stream_options: StreamOptions | None = None
    max_tokens: int | None = None
    max_completion_tokens: int | None = None
    temperature: float | None = None
    top_p: float | None = None
    stop: str | list[str] | None = None
    seed: int | None = None
    n: int | None = None
    duma: DumaExtension | None = None


def parse_request(data: Any) -> ChatCompletionRequest:
    """The request body, or a 400 naming the first bad field (its value is never echoed)."""
    try:
        return ChatCompletionRequest.model_validate(data)
    except ValidationError as exc:
        key, problem = validation_problems(exc, show_input=False)[0]
        raise ApiError(400, f"{key}: {problem}", param=key) from None


def generation_options(request: ChatCompletionRequest, base: GenerationOptions, max_tokens_cap: int) -> GenerationOptions:
    """The request's sampling parameters over a mind's configured options."""
    given: dict[str, Any] = {}
    max_tokens = request.max_completion_tokens if request.max_completion_tokens is not None else request.max_tokens
    param = "max_completion_tokens" if request.max_completion_tokens is not None else "max_tokens"
    if max_tokens is not None:
        if max_tokens > max_tokens_cap:
            raise ApiError(400, f"{param} is {max_tokens}; this server allows at most {max_tokens_cap}",
                           param=param)
        given["max_tokens"] = max_tokens
    for key in ("temperature", "top_p", "seed"):
        value = getattr(request, key)
        if value is not None:
            given[key] = value
    if request.stop is not None:
        given["stop"] = [request.stop] if isinstance(request.stop, str) else request.stop
    try:
        return GenerationOptions.model_validate({**base.model_dump(), **given})
    except ValidationError as exc:
        key, problem = validation_problems(exc, show_input=False)[0]
        name = param if key == "max_tokens" else key
        raise ApiError(400, f"{name}: {problem}", param=name) from None


class Dialogue(BaseModel):
    """A request's messages as a turn takes them."""

    system: str | None
    history: list[Message]
    text: str


def split_messages(request: ChatCompletionRequest, max_messages: int) -> Dialogue:
    """System prompts (joined), the history before the last message, and that message, which
    must be the user's."""
    if len(request.messages) > max_messages:
        raise ApiError(400, f"{len(request.messages)} messages; this server takes at most {max_messages}",
                       param="messages")
    system: list[str] = []
    dialogue: list[Message] = []
    for message in request.messages:
        if message.role in ("system", "developer"):
            system.append(message.text())
        elif message.role in ("user", "assistant"):
            dialogue.append(Message(role=message.role, content=message.text()))
        else:
            raise ApiError(400, f"messages with role '{message.role}' are not supported: duma's slow mind "
                           "calls its own tools", param="messages")
    if not dialogue or dialogue[-1].role != "user":
        raise ApiError(400, "the last message must be the user's", param="messages")
    if not dialogue[-1].content.strip():
        raise ApiError(400, "the last user message is empty", param="messages")
    return Dialogue(system="\n\n".join(s for s in system if s) or None, history=dialogue[:-1],
                    text=dialogue[-1].content)


# --------------------------------------------------------------------------- the response


def usage_body(usage: Usage) -> dict[str, int]:
    return {"prompt_tokens": usage.prompt_tokens, "completion_tokens": usage.completion_tokens,
            "total_tokens": usage.prompt_tokens + usage.completion_tokens}


class Completion:
    """Builds one completion's chunks (streaming) or its whole response, from a turn's
    events or a bare mind's chunks, keeping what the non-streaming body needs."""

    def __init__(self, model: str, conversation_id: str | None = None) -> None:
        self.id = "chatcmpl-" + uuid.uuid4().hex[:24]
        self.created = int(time.time())
        self.model = model
        self.content: list[str] = []
        self.reasoning: list[str] = []
        self.usage = Usage()
        self.finish_reason: str = "stop"
        self.error: str | None = None
        self.first_output_at: float | None = None
        self.slow_ran = False
        self.summary: dict[str, Any] = {"conversation_id": conversation_id} if conversation_id else {}
        self._steps: list[dict[str, Any]] = []
        self._final_started = False

    # chunks ---------------------------------------------------------------
    def chunk(self, delta: dict[str, Any], *, finish_reason: str | None = None,
              duma: dict[str, Any] | None = None) -> dict[str, Any]:
        body: dict[str, Any] = {"id": self.id, "object": "chat.completion.chunk", "created": self.created,
                                "model": self.model,
                                "choices": [{"index": 0, "delta": delta, "finish_reason": finish_reason}]}
        if duma:
            body["duma"] = duma
        return body

    def first_chunk(self) -> dict[str, Any]:
        return self.chunk({"role": "assistant", "content": ""}, duma=dict(self.summary) or None)

    def usage_chunk(self) -> dict[str, Any]:
        return {"id": self.id, "object": "chat.completion.chunk", "created": self.created, "model": self.model,
                "choices": [], "usage": usage_body(self.usage)}

    def _text(self, field: str, text: str, duma: dict[str, Any] | None = None) -> dict[str, Any]:
        if self.first_output_at is None:
            self.first_output_at = time.perf_counter()
        (self.content if field == "content" else self.reasoning).append(text)
        return self.chunk({field: text}, duma=duma)

    def from_event(self, event: Event) -> list[dict[str, Any]]:
        """The chunks one agent event becomes (an ``error`` event sets ``self.error``)."""
        kind = event.type
        if kind == "fast_token":
            return [self._text("content", event.text)]
        if kind == "final_token":
            text = event.text if self._final_started else "\n\n" + event.text.lstrip()
            self._final_started = True
            return [self._text("content", text)]
        if kind == "fast_done":
            self.summary.update(route="slow" if event.invoke else "fast", router=event.router,
                                router_score=event.router_score)
            if event.invoke:
                self.summary["interim"] = event.text
            return [self.chunk({}, duma=dict(self.summary))]
        if kind == "slow_step":
            step = event.model_dump(include={"index", "reason", "action", "observation"})
            self._steps.append(step)
            if not (event.reason or event.action or event.observation is not None):
                return [self.chunk({}, duma={"step": step})]  # a bare Finish: its result follows
            return [self._text("reasoning_content", "\n".join(event.describe()) + "\n\n", duma={"step": step})]
        if kind == "slow_done":
            self.summary.update(slow_finished=event.finished)
            return [self._text("reasoning_content", f"Result: {event.result}\n")]
        if kind == "notice":
            return [self.chunk({}, duma={"notice": event.message})]
        if kind == "final_done":
            self.slow_ran = event.slow_ran
            self.usage = event.usage
            self.summary.update(slow_ran=event.slow_ran, steps=list(self._steps),
                                first_token_s=event.first_token_s, total_s=round(event.total_s, 4))
            return [self.chunk({}, finish_reason=self.finish_reason, duma=dict(self.summary))]
        if kind == "error":
            self.error = event.message
        return []

    def from_generation(self, chunk: GenerationChunk) -> list[dict[str, Any]]:
        """The chunks of a bare mind's generation chunk."""
        out = [self._text("content", chunk.text)] if chunk.text else []
        if chunk.done:
            if chunk.finish_reason == "error":
                self.error = "the model failed while generating"
                return out
            self.finish_reason = "length" if chunk.finish_reason == "length" else "stop"
            self.usage = chunk.usage or Usage()
            out.append(self.chunk({}, finish_reason=self.finish_reason))
        return out

    def error_chunk(self) -> dict[str, Any]:
        return error_body(self.error or "the turn failed", kind="server_error")

    # the whole response -------------------------------------------------
    def response(self) -> dict[str, Any]:
        message: dict[str, Any] = {"role": "assistant", "content": "".join(self.content)}
        if self.reasoning:
            message["reasoning_content"] = "".join(self.reasoning)
        body: dict[str, Any] = {
            "id": self.id, "object": "chat.completion", "created": self.created, "model": self.model,
            "choices": [{"index": 0, "message": message, "finish_reason": self.finish_reason}],
            "usage": usage_body(self.usage)}
        if self.summary:
            body["duma"] = dict(self.summary)
        return body
