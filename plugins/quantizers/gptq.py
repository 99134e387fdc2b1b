"""``gptq``: GPTQ through the maintained ``gptqmodel`` library (an optional extra,
``pip install 'duma[gptq]'``), BELLE's recipe by default: 4 or 8 bits, group size 128,
calibrated on (at most) 128 samples of the ``--calibration`` data.

The output is a Hugging Face folder with ``quantization_config`` in its ``config.json`` (GPTQ
checkpoint format), which transformers (with optimum and gptqmodel) and vLLM load as they
are; duma's loader reads it through transformers. gptqmodel is imported only when this method
runs: it patches transformers and safetensors when imported.

gptqmodel calibrates on a CUDA GPU, or on the CPU (slowly; it compiles its CPU packing and
inference kernels on first use, which needs a C++ compiler).
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import shutil
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator

from duma.quantizer import MANIFEST, QuantizeError, QuantizeSource, Quantizer

INSTALL_HINT = "install it: pip install 'duma[gptq]' (best on a machine with a CUDA GPU; on CPU it is slow)"
# Calibration samples longer than this are cut: GPTQ's Hessians need a few thousand tokens
# per sample at most, and a long document would otherwise run at the model's full context.
CALIBRATION_MAX_TOKENS = 2048
# gptqmodel drops calibration samples shorter than this (its calibration_data_min_length).
CALIBRATION_MIN_TOKENS = 10


class GptqOptions(BaseModel):
    """``-o`` settings of the gptq method (BELLE's recipe by default)."""

    model_config = ConfigDict(extra="forbid")

    group_size: int = Field(128, description="Weights per quantization group along the input dimension; "
                            "-1: one group per output channel.")
    desc_act: bool = Field(False, description="Quantize columns in order of decreasing activation "
                           "(act-order): slightly better quality, slower kernels.")
    damp_percent: float = Field(0.01, gt=0.0, lt=1.0, description="Dampening added to the Hessian "
                                "diagonal, as a fraction of its mean.")
    sym: bool = Field(True, description="Symmetric quantization (no zero points).")

    @field_validator("group_size")
    @classmethod
    def _group_size(cls, value: int) -> int:
        if value != -1 and value <= 0:
            raise ValueError("must be -1 or a positive number of weights")
        return value


def gptqmodel_available() -> bool:
    """Whether the gptqmodel library is installed (found, not imported)."""
    return importlib.util.find_spec("gptqmodel") is not None


def _device() -> str:
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def _import_gptqmodel() -> Any:
    # gptqmodel gives its model-loading pool 2 CPU workers but the CPU pool only
    # (cores + 1) // 2, and refuses to start when that is smaller (2-core machines).
    if (os.cpu_count() or 1) < 4:
        os.environ.setdefault("GPTQMODEL_CPU_WORKERS", "2")
    with _on_stderr():
        import gptqmodel

    return gptqmodel


def _on_stderr() -> contextlib.AbstractContextManager[Any]:
    """gptqmodel logs and draws its progress bars on stdout, where ``duma quantize --json``
    writes its report: send them to stderr."""
    return contextlib.redirect_stdout(sys.stderr)


class GptqQuantizer(Quantizer):
    """GPTQ with gptqmodel: an HF folder transformers and vLLM load."""

    name = "gptq"
    description = ("GPTQ (gptqmodel, BELLE's recipe: group size 128, 128 calibration samples); needs "
                   "--calibration; an HF folder transformers and vLLM load")
    bits = (4, 8)
    output = "folder"
    calibration = True
    Options = GptqOptions

    def __init__(self, options: dict[str, Any] | None = None) -> None:
        super().__init__(options)
        self._loaded: Any = None

    def check(self, source: QuantizeSource, bits: int) -> None:
        super().check(source, bits)
        if not gptqmodel_available():
            raise QuantizeError("method 'gptq' needs the gptqmodel library, which is not installed", INSTALL_HINT)
        folder = source.base_folder
        if (folder / MANIFEST).is_file() or "quantization_config" in source.config:
            raise QuantizeError(f"{folder} is already a quantized model", "quantize the float model it came from")
        group = self.options.group_size  # type: ignore[attr-defined]
        widths = _input_widths(source.config)
        if group != -1 and any(width % group for width in widths):
            # GPTQ kernels (gptqmodel's CPU ones, Marlin in vLLM) need whole groups per row.
            fits = [g for g in (128, 64, 32) if g < group and all(width % g == 0 for width in widths)]
            raise QuantizeError(f"-o group_size {group}: this model's layer input widths "
                                f"({', '.join(str(w) for w in sorted(widths))}) are not all multiples of it",
                                f"use -o group_size {fits[0] if fits else -1}")

    def quantize(self, source: QuantizeSource, out: Path, bits: int, calibration: list[str] | None) -> dict[str, Any]:
        if not calibration:
            raise QuantizeError("method 'gptq' needs calibration data",
                                "pass --calibration FILE (any data file duma reads; 128 samples are used)")
        from duma.models import load_tokenizer

        # Absolute paths: gptqmodel reads weights lazily while the working directory is the scratch.
        folder, scratch, out = source.merged_folder().resolve(), source.scratch.resolve(), out.resolve()
        tokenizer = load_tokenizer(str(folder))
        samples = _calibration_samples(tokenizer, calibration)
        options: GptqOptions = self.options  # type: ignore[assignment]
        device = _device()
        gptqmodel = _import_gptqmodel()
        model_type = source.config.get("model_type", "?")
        supported = _supported_model_types()
        if supported is not None and model_type not in supported:
            raise QuantizeError(f"gptqmodel cannot quantize model type '{model_type}'",
                                "see gptqmodel's list of supported models")
        config = gptqmodel.QuantizeConfig(bits=bits, group_size=options.group_size, desc_act=options.desc_act,
                                          damp_percent=options.damp_percent, sym=options.sym,
                                          offload_to_disk_path=str(scratch / "gptq-offload"))
        where = "on the GPU" if device == "cuda" else "on the CPU (slow; kernels compile on first use)"
        source.progress(f"loading {folder.name} into gptqmodel")
        with _on_stderr():
            model = gptqmodel.GPTQModel.load(str(folder), config, device=device)
        source.progress(f"calibrating on {len(samples)} samples {where}")
        # gptqmodel writes per-layer logs into ./logs: keep them in the scratch folder.
        with _on_stderr(), contextlib.chdir(scratch):
            model.quantize(samples, batch_size=1, tokenizer=tokenizer)
        source.progress("writing the GPTQ folder")
        with _on_stderr():
            model.save(str(out))
        del model
        tokenizer.save_pretrained(str(out))
        # gptqmodel rewrites the generation config (it turns sampling on); keep the model's own.
        if (folder / "generation_config.json").is_file():
            shutil.copyfile(folder / "generation_config.json", out / "generation_config.json")
        return {"group_size": options.group_size, "desc_act": options.desc_act, "sym": options.sym,
                "damp_percent": options.damp_percent, "calibration_samples": len(samples),
                "device": device, "library": f"gptqmodel {_version()}"}

    def logits_function(self, out: Path, source: QuantizeSource) -> Callable[[Sequence[int]], Any]:
        import torch

        gptqmodel = _import_gptqmodel()
        with _on_stderr():
            self._loaded = gptqmodel.GPTQModel.load(str(out), device=_device())
        model = self._loaded.model
        device = next(model.parameters()).device

        def logits(ids: Sequence[int]) -> Any:
            with torch.inference_mode(), _on_stderr():
                return model(torch.tensor([list(ids)], dtype=torch.long, device=device)).logits[0].float().cpu()

        return logits

    def close_logits(self) -> None:
        self._loaded = None
        import torch

        if torch.cuda.is_available():
            torch.cuda.empty_cache()


def _calibration_samples(tokenizer: Any, texts: list[str]) -> list[dict[str, list[int]]]:
    """Token ids of the calibration texts (already rendered as the model sees them, special
    tokens included), cut to ``CALIBRATION_MAX_TOKENS``; too short ones are left out."""
    samples = []
    for text in texts:
        ids = tokenizer(text, add_special_tokens=False)["input_ids"][:CALIBRATION_MAX_TOKENS]
        if len(ids) >= CALIBRATION_MIN_TOKENS:
            samples.append({"input_ids": ids, "attention_mask": [1] * len(ids)})
    if not samples:
        raise QuantizeError(f"--calibration: every sample is shorter than {CALIBRATION_MIN_TOKENS} tokens",
                            "give longer texts (GPTQ calibrates on whole passages)")
    return samples


def _input_widths(config: dict[str, Any]) -> set[int]:
    """The input widths of a decoder's Linear layers, from its ``config.json`` (attention,
    attention output and MLP down projection); empty when the config does not say."""
    hidden = config.get("hidden_size")
    heads = config.get("num_attention_heads")
    head_dim = config.get("head_dim") or (hidden // heads if hidden and heads else None)
    widths = {hidden, config.get("intermediate_size"), heads * head_dim if heads and head_dim else None}
    return {w for w in widths if isinstance(w, int) and w > 0}


def _supported_model_types() -> set[str] | None:
    """The model types gptqmodel has definitions for (None when this version does not say)."""
    try:
        from gptqmodel.models.auto import MODEL_MAP
    except ImportError:
        return None
    return set(MODEL_MAP)


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("gptqmodel")
    except PackageNotFoundError:
        return "?"
