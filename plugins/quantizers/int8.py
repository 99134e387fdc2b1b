"""Placeholder: being written."""
from duma.quantizer import Quantizer


class Int8Quantizer(Quantizer):  # type: ignore[misc]
    name = "int8"
    bits = (8,)
