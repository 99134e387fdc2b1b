"""Built-in quantizers, one module each, and the ``duma quantize`` command. A new method is
one more module here and one line in :func:`register_quantizers`.
"""

from __future__ import annotations

from typing import Any

from duma import hookimpl


@hookimpl
def register_quantizers(register: Any) -> None:
    from duma.plugins.quantizers.gguf import GgufQuantizer
    from duma.plugins.quantizers.gptq import GptqQuantizer
    from duma.plugins.quantizers.int8 import Int8Quantizer
    from duma.plugins.quantizers.onnx import OnnxQuantizer

    for quantizer in (GgufQuantizer, OnnxQuantizer, GptqQuantizer, Int8Quantizer):
        register(quantizer)


@hookimpl
def register_commands(cli: Any) -> None:
    from duma.plugins.quantizers.command import quantize

    cli.add_command(quantize)
