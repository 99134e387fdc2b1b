"""Placeholder: being written."""
from duma.quantizer import Quantizer


class OnnxQuantizer(Quantizer):  # type: ignore[misc]
    name = "onnx"
    bits = (8,)
