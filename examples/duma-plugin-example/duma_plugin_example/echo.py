"""A backend that needs no model: it streams the last user message back, word by word."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator, Sequence

from duma import Backend
from duma.types import GenerationChunk, GenerationOptions, Message, ModelSpec, Timings, Usage


class EchoBackend(Backend):
    """``backend: echo`` in a model spec. ``model`` is ignored (use any text, e.g. ``echo``)."""

    name = "echo"

    def __init__(self, spec: ModelSpec) -> None:
        super().__init__(spec)  # a real backend loads its weights here

    def stream(self, messages: Sequence[Message], options: GenerationOptions | None = None, *,
               adapter: str | None = None, cancel: threading.Event | None = None) -> Iterator[GenerationChunk]:
        options = options or GenerationOptions()
        start = time.perf_counter()
        reply = next((m.content for m in reversed(messages) if m.role == "user"), "")
        for stop in options.stop:  # stop strings are never part of the output
            if stop and stop in reply:
                reply = reply[: reply.index(stop)]
        words = reply.split()
        kept = words[: options.max_tokens]  # one "token" per word
        first_token_s = None
        for i, word in enumerate(kept):
            if cancel is not None and cancel.is_set():  # checked between tokens
                break
            if first_token_s is None:
                first_token_s = time.perf_counter() - start
            yield GenerationChunk(text=word if i == 0 else " " + word)
        yield GenerationChunk(
            done=True,
            finish_reason="length" if len(words) > len(kept) else "stop",
            usage=Usage(prompt_tokens=self.count_tokens(messages), completion_tokens=len(kept)),
            timings=Timings(first_token_s=first_token_s, total_s=time.perf_counter() - start),
        )

    def count_tokens(self, messages: Sequence[Message]) -> int:
        return sum(len(m.content.split()) for m in messages)

    @property
    def context_length(self) -> int:
        return 1_000_000
