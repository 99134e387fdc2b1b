"""Placeholder: being written."""
from duma.backend import Backend


class OnnxRuntimeBackend(Backend):  # type: ignore[misc]
    name = "onnxruntime"
