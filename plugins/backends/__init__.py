"""Built-in inference backends, one module each. A new backend is one more module here and
one line in :func:`register_backends`.

The modules are imported when a backend is first looked up, not when the CLI starts (they
need pydantic and, when a model loads, torch or an inference engine).
"""

from __future__ import annotations

from typing import Any

from duma import hookimpl


@hookimpl
def register_backends(register: Any) -> None:
    from duma.plugins.backends.llamacpp import LlamaCppBackend
    from duma.plugins.backends.onnxruntime import OnnxRuntimeBackend
    from duma.plugins.backends.openai import OpenAIBackend
    from duma.plugins.backends.transformers import TransformersBackend
    from duma.plugins.backends.vllm import VLLMBackend

    for backend in (TransformersBackend, OnnxRuntimeBackend, LlamaCppBackend, OpenAIBackend, VLLMBackend):
        register(backend)
