"""Placeholder: being written."""
from duma.quantizer import Quantizer


class GgufQuantizer(Quantizer):  # type: ignore[misc]
    name = "gguf"
    bits = (8,)
