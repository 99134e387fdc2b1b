"""``int8``: torch's dynamic int8 quantization (what ``dtype: int8`` does at load time) as a
folder that is really smaller on disk.

Every ``nn.Linear`` weight is stored as int8 with one float32 scale per output channel, exactly
the values torch's ``per_channel_dynamic_qconfig`` computes (symmetric, zero point 0, scale
``max|w| / 127.5``, range -128..127); every other tensor stays float32. The folder has
``config.json``, the generation config and the tokenizer, and one ``model-int8.safetensors``
(not ``model.safetensors``: plain transformers would read the int8 tensors as numbers and
run a garbage model; this way it refuses the folder instead).

duma's loader sees ``duma-quantized.json`` and calls :meth:`Int8Quantizer.load_model`: the
model is rebuilt from its config, the dequantized weights are loaded, ``_quantize_int8`` is
applied and the stored int8 values and scales are put back exactly (torch would otherwise
recompute each scale from the dequantized weights, off by up to 0.4%). The result is the
same model ``dtype: int8`` gives on the float source, bit for bit, on CPU.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from duma.errors import ModelLoadError, first_line
from duma.quantizer import MANIFEST, QuantizeError, QuantizeSource, Quantizer

WEIGHTS_FILE = "model-int8.safetensors"
SCALE_SUFFIX = ".weight_scale"
# Written into the safetensors metadata: what a reader needs to know about the int8 tensors.
SCHEME = "duma-int8: int8 Linear weights with per-output-channel float32 scales (symmetric), torch dynamic int8"


class Int8Quantizer(Quantizer):
    """Int8 Linear weights (per output channel) for CPU inference with torch."""

    name = "int8"
    description = ("torch dynamic int8 (CPU): int8 Linear weights with per-channel scales, about 1/4 of "
                   "their float32 size; loaded by duma's transformers backend")
    bits = (8,)
    output = "folder"

    def check(self, source: QuantizeSource, bits: int) -> None:
        super().check(source, bits)
        folder = source.base_folder
        # Re-quantizing a quantized model would quantize its rounding errors again.
        if (folder / MANIFEST).is_file() or "quantization_config" in source.config:
            raise QuantizeError(f"{folder} is already a quantized model", "quantize the float model it came from")

    def quantize(self, source: QuantizeSource, out: Path, bits: int, calibration: list[str] | None) -> dict[str, Any]:
        import torch
        from safetensors.torch import save_file

        from duma.models import _quantize_int8, load_model, load_tokenizer

        folder = source.merged_folder()
        source.progress(f"loading {folder.name} (float32)")
        model = load_model(str(folder), device="cpu", dtype="float32")
        linear_names = [name for name, module in model.named_modules() if isinstance(module, torch.nn.Linear)]
        # Everything that is not a Linear's weight or bias keeps its float32 value (embeddings,
        # norms); taken before quantizing, which replaces the Linear modules.
        linear_params = {f"{name}.{p}" for name in linear_names for p in ("weight", "bias")}
        tensors: dict[str, Any] = {key: value.detach().to(torch.float32).contiguous()
                                   for key, value in model.state_dict().items()
                                   if key not in linear_params and value.is_floating_point()}
        output = model.get_output_embeddings()
        tied = output is not None and output.weight is model.get_input_embeddings().weight
        source.progress(f"quantizing {len(linear_names)} Linear layers to int8")
        _quantize_int8(model)
        quantized = 0
        for name in linear_names:
            module = model.get_submodule(name)
            if isinstance(module, torch.nn.Linear):
                # A layer _quantize_int8 left in float stays float here too (a tied output
                # layer is the embedding, already stored).
                if not (tied and module is output):
                    tensors.update({f"{name}.{key}": value.detach().to(torch.float32).contiguous()
                                    for key, value in module.state_dict().items()})
                continue
            weight, bias = module._weight_bias()
            tensors[f"{name}.weight"] = weight.int_repr().contiguous()
            tensors[f"{name}{SCALE_SUFFIX}"] = weight.q_per_channel_scales().to(torch.float32).contiguous()
            if bias is not None:
                tensors[f"{name}.bias"] = bias.detach().to(torch.float32).contiguous()
            quantized += 1
        source.progress("writing the int8 folder")
        out.mkdir(parents=True)
        save_file(tensors, str(out / WEIGHTS_FILE), metadata={"format": "pt", "duma": SCHEME})
        model.config.save_pretrained(str(out))
        if getattr(model, "generation_config", None) is not None:
            model.generation_config.save_pretrained(str(out))
        load_tokenizer(str(folder)).save_pretrained(str(out))
        return {"linear_layers": len(linear_names), "int8_layers": quantized, "weights_file": WEIGHTS_FILE,
                "scheme": "per-output-channel symmetric int8 weights, dynamic int8 activations (torch, CPU)"}

    @classmethod
    def load_model(cls, folder: Path, device: str) -> Any:  # type: ignore[override]
        """The model an int8 folder holds, ready for CPU inference (eval mode)."""
        if device != "cpu":
            raise ModelLoadError(f"{folder} is an int8 model (torch dynamic quantization), which only runs on CPU",
                                 "use device 'cpu', or quantize with another method for a GPU")
        try:
            return _load_int8(Path(folder))
        except ModelLoadError:
            raise
        except Exception as exc:
            raise ModelLoadError(f"cannot load the int8 model from {folder}: {first_line(exc, with_type=True)}",
                                 "re-run duma quantize --method int8 for it") from None

    def logits_function(self, out: Path, source: QuantizeSource) -> Callable[[Sequence[int]], Any]:
        import torch

        model = type(self).load_model(out, "cpu")

        def logits(ids: Sequence[int]) -> Any:
            with torch.inference_mode():
                return model(torch.tensor([list(ids)], dtype=torch.long)).logits[0].float()

        return logits


def _load_int8(folder: Path) -> Any:
    import torch
    from safetensors.torch import load_file
    from transformers import AutoConfig, AutoModelForCausalLM

    from duma.models import _quantize_int8, _quiet_loading

    weights = folder / WEIGHTS_FILE
    if not weights.is_file():
        raise ModelLoadError(f"int8 model folder {folder} has no {WEIGHTS_FILE}", "re-run duma quantize --method int8")
    stored = load_file(str(weights))
    scales = {key[: -len(SCALE_SUFFIX)]: stored.pop(key) for key in list(stored) if key.endswith(SCALE_SUFFIX)}
    with _quiet_loading():
        config = AutoConfig.from_pretrained(str(folder))
        model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    # A tied output layer shares the input embedding's parameter: loading its dequantized
    # copy would overwrite the float embedding. Its int8 values are put back below.
    output = model.get_output_embeddings()
    tied = output is not None and output.weight is model.get_input_embeddings().weight
    state = {}
    for key, value in stored.items():
        module = key.rsplit(".", 1)[0]
        if module in scales and key.endswith(".weight"):
            if tied and model.get_submodule(module) is output:
                continue
            value = value.to(torch.float32) * scales[module].unsqueeze(1)
        state[key] = value
    missing, unexpected = model.load_state_dict(state, strict=False)
    if tied:  # the output layer's weight is the embedding's
        shared = {k for k, v in model.state_dict(keep_vars=True).items() if v is output.weight}
        missing = [k for k in missing if k not in shared]
    if missing or unexpected:
        raise ModelLoadError(f"int8 model folder {folder} does not match its config.json "
                             f"(missing {missing[:3]}, unexpected {unexpected[:3]})", "re-run duma quantize --method int8")
    model.eval()
    _quantize_int8(model)
    # The exact stored values: quantizing the dequantized weights again would recompute each
    # scale as max|q * s| / 127.5, which is not s.
    zero = torch.zeros(1, dtype=torch.long)
    for module_name, scale in scales.items():
        module = model.get_submodule(module_name)
        q = stored[f"{module_name}.weight"]
        packed = torch.quantize_per_channel(q.to(torch.float32) * scale.unsqueeze(1), scale.to(torch.float64),
                                            zero.expand(scale.numel()).contiguous(), 0, torch.qint8)
        module.set_weight_bias(packed, module.bias())
    return model
