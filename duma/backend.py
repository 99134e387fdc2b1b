"""The backend interface: what every inference backend plugin implements."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterator, Sequence
from typing import ClassVar

from duma.types import Completion, GenerationChunk, GenerationOptions, Message, ModelSpec


class Backend(ABC):
    """A loaded model that turns chat messages into text.

    A backend class is registered through ``register_backends``; duma constructs it with a
    :class:`ModelSpec` (loading weights in ``__init__``) and calls :meth:`stream` or
    :meth:`generate`. Implementations must be safe to call from several threads (serialising
    internally is fine).
    """

    name: ClassVar[str]

    def __init__(self, spec: ModelSpec) -> None:
        self.spec = spec

    @abstractmethod
    def stream(
        self, messages: Sequence[Message], options: GenerationOptions | None = None
    ) -> Iterator[GenerationChunk]:
        """Yield text deltas as they are decoded; the last chunk has ``done=True``, the
        finish reason, token counts and timings. Stop strings are never part of the text."""

    def generate(
        self, messages: Sequence[Message], options: GenerationOptions | None = None
    ) -> Completion:
        """Generate a whole reply (drains :meth:`stream`)."""
        parts: list[str] = []
        last = GenerationChunk(done=True)
        for chunk in self.stream(messages, options):
            parts.append(chunk.text)
            if chunk.done:
                last = chunk
        return Completion(
            text="".join(parts),
            finish_reason=last.finish_reason or "stop",
            usage=last.usage or Completion.model_fields["usage"].default_factory(),
            timings=last.timings or Completion.model_fields["timings"].default_factory(),
        )

    def count_tokens(self, messages: Sequence[Message]) -> int:
        """Prompt length in tokens (used to trim long histories). Default: a rough estimate."""
        return sum(len(m.content) // 4 + 4 for m in messages)

    @property
    def context_length(self) -> int:
        """Maximum prompt + completion tokens the model accepts."""
        return 2048

    def close(self) -> None:
        """Release resources (optional)."""
