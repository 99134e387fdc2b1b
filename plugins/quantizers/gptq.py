"""Placeholder: being written."""
from duma.quantizer import Quantizer


class GptqQuantizer(Quantizer):  # type: ignore[misc]
    name = "gptq"
    bits = (8,)
