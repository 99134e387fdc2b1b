"""The backend interface: what every inference backend plugin implements."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterator, Sequence
from typing import Any, ClassVar

from duma.types import Completion, GenerationChunk, GenerationOptions, Message, ModelSpec


class Backend(ABC):
    """A loaded model that turns chat messages into text.

    A backend class is registered through ``register_backends``; duma constructs it with a
    :class:`ModelSpec` (loading weights in ``__init__``) and calls :meth:`stream` or
    :meth:`generate`. Implementations must be safe to call from several threads (serialising
    internally is fine).
    """

    name: ClassVar[str]
    #: True when a trailing assistant message in ``messages`` is continued (the reply begins
    #: with its text, which is not repeated in the output). The fast mind then writes the
    #: protocol's ``Response[`` for the model, so its first decoded token is visible text.
    supports_prefill: ClassVar[bool] = False

    def __init__(self, spec: ModelSpec) -> None:
        self.spec = spec

    @classmethod
    def switches_adapters(cls, spec: ModelSpec) -> bool:
        """True when one loaded instance of ``spec`` (without its adapter) can run any peft
        adapter of that base per call: :meth:`stream` then takes ``adapter=FOLDER``, and
        minds on one base model with different adapters share its weights (an
        :class:`AdapterView` each)."""
        return False

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


class AdapterView(Backend):
    """One adapter of a backend that switches adapters per call: what a mind holds when
    both minds share one base model. Everything but the adapter is the base backend's."""

    def __init__(self, base: Backend, adapter: str) -> None:
        super().__init__(base.spec.model_copy(update={"adapter": adapter}))
        self.base = base
        self.adapter = adapter
        self.name = base.name  # type: ignore[misc]  # the backend's name, per instance

    def stream(
        self, messages: Sequence[Message], options: GenerationOptions | None = None
    ) -> Iterator[GenerationChunk]:
        return self.base.stream(messages, options, adapter=self.adapter)  # type: ignore[call-arg]

    def count_tokens(self, messages: Sequence[Message]) -> int:
        return self.base.count_tokens(messages)

    @property
    def context_length(self) -> int:
        return self.base.context_length

    @property  # type: ignore[override]
    def supports_prefill(self) -> bool:  # type: ignore[override]
        return self.base.supports_prefill

    def __getattr__(self, name: str) -> Any:
        # The base's tokenizer, model, caches... (only reached for names not set here).
        if name == "base":
            raise AttributeError(name)
        return getattr(self.base, name)


class RepetitionGuard:
    """Spots a model caught in a loop: the end of its text is one stretch of 8 to 300
    characters repeated ``max_repeats`` times in a row (a line written over and over, or
    "I checked: I checked: ..."). Shorter repeats ("ha ha ha") are left alone."""

    MIN_PERIOD = 8
    MAX_PERIOD = 300

    def __init__(self, max_repeats: int | None) -> None:
        self.max_repeats = max_repeats
        self.text = ""

    def feed(self, delta: str) -> bool:
        """Add decoded text; True once the text has started looping."""
        if not self.max_repeats or not delta:
            return False
        self.text += delta
        return self._loop_period() is not None

    def loop_start(self) -> int:
        """Where the repeated part begins beyond its first occurrence (the text to keep)."""
        period = self._loop_period()
        k = self.max_repeats or 1
        return len(self.text) if period is None else len(self.text) - (k - 1) * period

    def _loop_period(self) -> int | None:
        k = self.max_repeats or 1
        tail = self.text[-k * self.MAX_PERIOD:]
        for period in range(self.MIN_PERIOD, len(tail) // k + 1):
            unit = tail[-period:]
            # A unit that is itself a short repeat ("----", "ha ha ") is a rule line or
            # laughter, not a loop.
            if unit.strip() and (unit + unit).find(unit, 1) == period and tail.endswith(unit * k):
                return period
        return None


def stream_guarded(backend: Backend, messages: Sequence[Message], options: GenerationOptions,
                   **kwargs: Any) -> Iterator[GenerationChunk]:
    """``backend.stream`` with the repetition guard of ``options.max_repeats``: a looping
    generation ends early with ``finish_reason="length"``; the repeats beyond the first are
    not passed on where they can still be held back (the text of the current chunk)."""
    guard = RepetitionGuard(options.max_repeats)
    stream = backend.stream(messages, options, **kwargs)
    try:
        for chunk in stream:
            if chunk.text and guard.feed(chunk.text):
                keep = guard.loop_start() - (len(guard.text) - len(chunk.text))
                if keep > 0:
                    yield GenerationChunk(text=chunk.text[:keep])
                yield GenerationChunk(done=True, finish_reason="length")
                return
            yield chunk
    finally:
        close = getattr(stream, "close", None)
        if close is not None:
            close()
