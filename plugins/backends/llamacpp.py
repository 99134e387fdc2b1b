"""Placeholder: being written."""
from duma.backend import Backend


class LlamaCppBackend(Backend):  # type: ignore[misc]
    name = "llamacpp"
