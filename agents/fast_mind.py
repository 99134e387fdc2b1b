"""The fast mind: the only mind that talks to the user.

Builds its context from the conversation log (``User[...]``, ``Response[...] Invoke[...]`` and
``SlowMind[...]`` messages), fits it into the model's context window, and streams its reply
through the lenient protocol parser.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Literal

from duma.backend import Backend, stream_guarded
from duma.logstore import LoggedMessage
from duma.types import GenerationOptions, Message, Usage

from . import grammar, protocol

# Short on purpose: an untrained small model must still answer plainly under it.
DEFAULT_FAST_PROMPT = (
    "You are a helpful assistant. Reply as Response[your reply] Invoke[False]. "
    "If you need to look something up or calculate, reply Response[a short note] Invoke[True]."
)
INTERIM_TEMPLATE = "Let me look into that."
# Phrases of a reply that announces a lookup or a calculation still to come: right with
# Invoke[True] (the interim), a promise never kept with Invoke[False]. Lower case.
PROMISE_PHRASES = (
    "let me look", "let me check", "let me find", "let me calculate", "let me compute", "let me work",
    "let me figure", "let me search", "let me get back", "let me convert", "let me verify", "let me see",
    "one moment", "just a moment", "just a sec", "a moment please", "give me a moment", "give me a second",
    "hold on", "please wait", "bear with me", "i'll check", "i will check", "i'll look", "i will look",
    "i'll find", "i will find", "i'll calculate", "i will calculate", "i'll work", "i'll get back",
    "i'll convert", "i'm checking", "i am checking", "looking it up", "look it up", "look that up",
    "looking that up", "looking into", "checking now",
    "稍等", "请稍候", "等一下", "等一等", "让我查", "我查一下", "我来查", "帮你查", "我去查", "马上查",
    "让我算", "我算一下", "我来算", "帮你算", "马上算", "让我看看", "我看一下",
)


def promises_lookup(reply: str) -> bool:
    """Whether ``reply`` promises to look something up or work something out."""
    text = reply.replace("\u2019", "'").casefold()
    return any(phrase in text for phrase in PROMISE_PHRASES)

# Message kinds stored in LogStore meta["kind"].
KIND_USER = "user"
KIND_INTERIM = "interim"
KIND_SLOW = "slow_mind"
KIND_REPLY = "reply"


def fast_system_prompt(configured: str | None, user_system: str | None) -> str:
    prompt = configured or DEFAULT_FAST_PROMPT
    return f"{prompt}\n\n{user_system}" if user_system else prompt


def logged_turns(history: Sequence[LoggedMessage]) -> list[list[LoggedMessage]]:
    """Group logged messages into turns, each starting at a user message."""
    turns: list[list[LoggedMessage]] = []
    for m in history:
        if m.role == "user" or not turns:
            turns.append([])
        turns[-1].append(m)
    return turns


def fast_view(m: LoggedMessage) -> Message | None:
    """How a logged message appears in the fast mind's context (None: not at all)."""
    kind = m.meta.get("kind")
    if m.role == "user":
        return Message(role="user", content=protocol.format_user(m.content))
    if kind == KIND_SLOW:
        return Message(role="user", content=protocol.format_slow_mind(m.content))
    if m.role == "assistant":
        return Message(role="assistant",
                       content=protocol.format_fast_output(m.content, kind == KIND_INTERIM))
    return None  # other system messages are not part of the dialogue


def build_context(system_prompt: str, history: Sequence[LoggedMessage], text: str,
                  memory_turns: int) -> list[Message]:
    """System prompt, the last ``memory_turns`` turns, then ``User[text]``."""
    messages = [Message(role="system", content=system_prompt)]
    for turn in logged_turns(history)[-memory_turns:] if memory_turns else []:
        for m in turn:
            view = fast_view(m)
            if view is not None:
                messages.append(view)
    messages.append(Message(role="user", content=protocol.format_user(text)))
    return messages


def visible_history(history: Sequence[LoggedMessage]) -> list[Message]:
    """What the user saw: their messages and the assistant's replies (interim ones included)."""
    return [m.as_message() for m in history if m.role in ("user", "assistant")]


def retrospect(history: Sequence[LoggedMessage], text: str, memory_turns: int) -> str:
    """The slow mind's view: earlier queries with their final answers, then the new query."""
    pairs: list[tuple[str, str]] = []
    for turn in logged_turns(history)[-memory_turns:]:
        query = next((m.content for m in turn if m.role == "user"), None)
        answers = [m.content for m in turn if m.role == "assistant"]
        if query is not None:
            pairs.append((query, answers[-1] if answers else ""))
    return protocol.format_retrospect(pairs, text)


# --------------------------------------------------------------------------- context fitting

@dataclass
class FittedPrompt:
    """Messages cut to fit a model's context, and what was cut (for a notice to the user)."""

    messages: list[Message]
    dropped_turns: int = 0
    truncated: bool = False

    def notice(self) -> str | None:
        parts = []
        if self.dropped_turns:
            parts.append(f"dropped the {self.dropped_turns} oldest turn(s) of the history")
        if self.truncated:
            parts.append("shortened a message")
        return ("to fit the model's context " + " and ".join(parts)) if parts else None


def fit_to_context(backend: Backend, messages: list[Message], max_tokens: int,
                   is_turn_start: Callable[[Message], bool],
                   keep: Literal["start", "end"] = "start") -> FittedPrompt:
    """Drop the oldest turns (never the system prompt or the last turn) until the prompt plus
    ``max_tokens`` fits the context; then shorten the longest message if still needed."""
    budget = max(backend.context_length - max_tokens, 16)
    msgs = list(messages)
    fitted = FittedPrompt(msgs)
    if backend.count_tokens(msgs) <= budget:
        return fitted
    starts = [i for i, m in enumerate(msgs) if i > 0 and is_turn_start(m)]
    while len(starts) > 1 and backend.count_tokens(msgs) > budget:
        first, second = starts[0], starts[1]
        del msgs[first:second]
        shift = second - first
        starts = [s - shift for s in starts[1:]]
        fitted.dropped_turns += 1
    # Still too long: shorten the longest message (the new one, typically).
    for _ in range(40):
        if backend.count_tokens(msgs) <= budget:
            break
        i = max(range(len(msgs)), key=lambda k: len(msgs[k].content))
        content = msgs[i].content
        if len(content) < 40:
            break
        cut = int(len(content) * 0.7)
        if keep == "start" or msgs[i].role == "system":
            short = content[:cut] + " ...]" if content.endswith("]") else content[:cut] + " ..."
        else:
            short = "... " + content[-cut:]
        msgs[i] = Message(role=msgs[i].role, content=short)
        fitted.truncated = True
    fitted.messages = msgs
    return fitted


def is_user_turn(m: Message) -> bool:
    return m.role == "user" and m.content.startswith("User[")


def cap_max_tokens(backend: Backend, options: GenerationOptions) -> GenerationOptions:
    """Leave at least half the context for the prompt."""
    cap = max(backend.context_length // 2, 1)
    return options if options.max_tokens <= cap else options.model_copy(update={"max_tokens": cap})


# --------------------------------------------------------------------------- streaming

def estimate_usage(backend: Backend, messages: list[Message], completion: str) -> Usage:
    """Token counts for a generation that was stopped before the backend reported them."""
    reply = [Message(role="assistant", content=completion)]
    empty = [Message(role="assistant", content="")]
    return Usage(prompt_tokens=backend.count_tokens(messages),
                 completion_tokens=max(backend.count_tokens(reply) - backend.count_tokens(empty), 1))


@dataclass
class FastPass:
    """The outcome of one fast-mind generation."""

    output: protocol.FastOutput | None = None
    usage: Usage = field(default_factory=Usage)
    first_token_s: float | None = None  # from the start of this pass to the first visible text
    streamed: str = ""
    held_back: bool = False  # raw (non-protocol) text was not streamed


def stream_fast(backend: Backend, messages: list[Message], options: GenerationOptions,
                result: FastPass, *, hold_raw: bool = False,
                cancel: threading.Event | None = None) -> Iterator[str]:
    """Yield the visible text deltas of one fast-mind generation; fill ``result``.
    ``cancel`` ends the generation at its next token.

    ``hold_raw``: when the output does not start with ``Response[``, stream nothing (the
    caller decides what to show: used for the final reply, which has a fallback).
    """
    start = time.perf_counter()
    parser = protocol.FastStreamParser()
    prompt = messages
    prefilled = backend.capabilities.prefill
    if prefilled:
        # Every protocol reply opens with Response[: write it for the model (two tokens of
        # SmolLM2 fewer to decode before the first visible one; the same tokens training saw).
        parser.feed(protocol.RESPONSE_OPEN)
        prompt = [*messages, Message(role="assistant", content=protocol.RESPONSE_OPEN)]
    # The reply is held to the protocol where the backend can (a backend that cannot is not
    # checked: the text is already shown, and the lenient parser reads it).
    options = options.model_copy(update={"constraint": grammar.fast_output_pattern(prefilled=prefilled)})
    stream = stream_guarded(backend, prompt, options, cancel=cancel)
    try:
        for chunk in stream:
            if chunk.text:
                delta = parser.feed(chunk.text)
                if hold_raw and not parser.raw.lstrip().startswith(protocol.RESPONSE_OPEN) \
                        and not protocol.RESPONSE_OPEN.startswith(parser.raw.lstrip()):
                    result.held_back = True
                    delta = ""
                if delta and not result.held_back:
                    if result.first_token_s is None:
                        result.first_token_s = time.perf_counter() - start
                    result.streamed += delta
                    yield delta
            if chunk.done and chunk.usage:
                result.usage = chunk.usage
            if parser.done:
                break  # Invoke[...] is closed: nothing more to read
    finally:
        close = getattr(stream, "close", None)
        if close:
            close()
    if result.usage.completion_tokens == 0 and parser.raw:
        result.usage = estimate_usage(backend, messages, parser.raw)  # stopped before the totals
    tail = parser.finish()
    result.output = parser.result()
    if tail and not result.held_back:
        if result.first_token_s is None:
            result.first_token_s = time.perf_counter() - start
        result.streamed += tail
        yield tail


__all__ = [
    "DEFAULT_FAST_PROMPT",
    "INTERIM_TEMPLATE",
    "promises_lookup",
    "FastPass",
    "build_context",
    "fast_system_prompt",
    "fit_to_context",
    "retrospect",
    "stream_fast",
    "visible_history",
]
