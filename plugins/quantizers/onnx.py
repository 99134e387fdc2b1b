"""The ``onnx`` quantizer: an onnxruntime-genai model folder (``genai_config.json``,
``model.onnx`` and its weights, tokenizer and chat template) written by onnxruntime-genai's
model builder, for the ``onnxruntime`` backend.

``--bits 4`` and ``8`` store MatMul weights block-quantized (MatMulNBits), ``32`` keeps
float32. An adapter is merged into its base first (``-o adapter merge``, one model per
mind), or kept apart (``-o adapter file``): the base model is built with a zero LoRA on every
projection whose weights are inputs that an ``.onnx_adapter`` file overrides at run time, so
one loaded base switches adapters per request.

The builder runs as a subprocess (``python -m onnxruntime_genai.models.builder``): it
prints freely, and a crash in it cannot take duma down. onnx, onnxruntime(-genai), torch and
transformers are imported inside functions only.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from duma.errors import first_line
from duma.quantizer import QuantizeError, QuantizeSource, Quantizer

# Where ``-o adapter file`` puts the converted adapter inside the output folder.
ADAPTER_FILE = "adapter.onnx_adapter"
# The symbolic rank axes of the LoRA inputs: adapters of any rank fit one base model.
RANK_AXIS = "lora_rank"
PRECISION = {4: "int4", 8: "int8", 32: "fp32"}
# int4 weight quantization methods of the builder (``algo_config``): ``default`` and ``rtn``
# are round-to-nearest; ``k_quant`` is llama.cpp's k-quant search; ``*_last`` keeps the LM head
# in int8, ``k_quant_mixed`` also the most sensitive layers (llama.cpp's mixed strategy).
Int4Algo = Literal["default", "rtn", "rtn_last", "k_quant", "k_quant_last", "k_quant_mixed"]
# Model types whose projections the builder names like Llama's (q/k/v/o, gate/up/down):
# where ``-o adapter file`` maps peft weights onto the graph's LoRA inputs.
FILE_ADAPTER_TYPES = ("llama", "mistral", "qwen2", "qwen3")


class OnnxOptions(BaseModel):
    """``-o`` settings of the ``onnx`` method (block_size, accuracy_level and int4_algo do not
    apply to ``--bits 32``)."""

    model_config = ConfigDict(extra="forbid")

    block_size: Literal[16, 32, 64, 128, 256] = Field(32, description="Weights per quantization block.")
    accuracy_level: int | None = Field(None, ge=0, le=4, description="Lowest precision MatMulNBits may compute "
                                       "in: 4 = int8 activations (the builder's CPU default, fast), 1 = float32 "
                                       "(20x slower decoding of SmolLM2 here, for 0.4% perplexity).")
    # k_quant_last: on SmolLM2 it recovers over a third of RTN's perplexity loss (+18% instead
    # of +29%) for 17 MB and no decode speed measurable here; k_quant_mixed (+14%) keeps a
    # third of the layers int8, which measured 15-25% slower than this on a quiet machine.
    int4_algo: Int4Algo = Field("k_quant_last", description="int4 method; *_last keeps the LM head int8.")
    adapter: Literal["merge", "file"] = Field("merge", description="merge: the adapter folded into the "
                                              "weights; file: base model + .onnx_adapter, switched at run time.")
    prune_lm_head: bool = Field(False, description="Logits of the last position only: prompts run ~20% faster "
                                "with less memory (what the onnxruntime backend converts with); perplexity "
                                "is then measured token by token.")


class OnnxQuantizer(Quantizer):
    """onnxruntime-genai model builder: an ONNX folder for the onnxruntime backend (CPU)."""

    name = "onnx"
    description = "onnxruntime-genai model folder (int4/int8 MatMulNBits or float32), for the onnxruntime backend"
    bits = (4, 8, 32)
    output = "folder"
    # Causal LMs the builder (0.18) exports for the CPU provider, by config.json model_type.
    architectures = ("chatglm", "ernie4_5", "gemma", "gemma2", "gemma3_text", "granite", "hunyuan_v1_dense",
                     "internlm2", "lfm2", "llama", "mistral", "nemotron", "olmo", "phi", "phi3", "qwen2", "qwen3",
                     "smollm3")
    Options = OnnxOptions

    def __init__(self, options: dict[str, Any] | None = None) -> None:
        super().__init__(options)
        self._logits_model: Any = None

    def check(self, source: QuantizeSource, bits: int) -> None:
        super().check(source, bits)
        model_type = source.config.get("model_type", "?")
        if self.options.adapter == "file" and model_type not in FILE_ADAPTER_TYPES:
            raise QuantizeError(f"-o adapter file: not supported for model type '{model_type}'",
                                f"it works for {', '.join(FILE_ADAPTER_TYPES)}; use -o adapter merge")
        if self.options.adapter == "file" and source.adapter is not None:
            check_adapter_config(source.adapter)

    def quantize(self, source: QuantizeSource, out: Path, bits: int, calibration: list[str] | None) -> dict[str, Any]:
        options = self.options
        extra = ["hf_token=false"]  # never look for Hugging Face credentials: the input is local
        if bits in (4, 8):
            extra.append(f"block_size={options.block_size}")
            if options.accuracy_level is not None:
                extra.append(f"accuracy_level={options.accuracy_level}")
        if bits == 4:
            extra.append(f"algo_config={options.int4_algo}")
        if options.prune_lm_head:
            extra.append("prune_lm_head=true")
        if options.adapter == "file":
            folder = source.base_folder
            source.progress("writing an empty LoRA on every projection of the base model")
            template, modules = _lora_template(source.base_folder, source.scratch / "lora-template")
            extra.append(f"adapter_path={template}")
            if bits in (4, 8):
                # The LoRA MatMuls stay float: their weights are what an adapter file replaces.
                extra.append("nodes_to_exclude=" + ",".join(_lora_node_names(source.config, modules)))
        else:
            folder = source.merged_folder()
        source.progress(f"building the {PRECISION[bits]} ONNX model (onnxruntime-genai model builder)")
        run_builder(folder, out, PRECISION[bits], extra, source.scratch / "builder-cache")
        details: dict[str, Any] = {"precision": PRECISION[bits], "builder": builder_version(),
                                   "extra_options": [e for e in extra if not e.startswith(("nodes_to_exclude=",
                                                                                           "adapter_path="))]}
        if options.adapter == "file":
            details["lora_inputs"] = expose_lora_inputs(out)
            if source.adapter is not None:
                source.progress(f"converting adapter {source.adapter.name} to {ADAPTER_FILE}")
                write_adapter_file(source.adapter, out, out / ADAPTER_FILE)
                details["adapter_file"] = ADAPTER_FILE
        _check_tokenizer(folder, out)
        return details

    def logits_function(self, out: Path, source: QuantizeSource) -> Callable[[Sequence[int]], Any]:
        import onnxruntime_genai as og

        self._logits_model = model = og.Model(str(out))
        adapters = None
        if (out / ADAPTER_FILE).is_file():
            adapters = og.Adapters(model)
            adapters.load(str(out / ADAPTER_FILE), "adapter")

        def generator(length: int) -> Any:
            params = og.GeneratorParams(model)
            params.set_search_options(max_length=length + 1, past_present_share_buffer=False)
            made = og.Generator(model, params)
            if adapters is not None:
                made.set_active_adapter(adapters, "adapter")
            return made

        def logits(ids: Sequence[int]) -> Any:
            import numpy as np

            # One pass over the whole text: the logits output holds every position...
            whole = generator(len(ids))
            whole.append_tokens(list(ids))
            out = whole.get_output("logits")[0]
            if out.shape[0] == len(ids):
                return out
            # ...unless the LM head was pruned to the last position: then token by token.
            stepwise = generator(len(ids))
            rows = []
            for token in ids:
                stepwise.append_tokens([int(token)])
                rows.append(stepwise.get_logits()[0, -1])
            return np.stack(rows)

        return logits

    def close_logits(self) -> None:
        self._logits_model = None


# --- the builder ----------------------------------------------------------------------------

def run_builder(folder: Path, out: Path, precision: str, extra: list[str], cache: Path) -> None:
    """Run onnxruntime-genai's model builder on an HF folder; a failure is a one-line
    :class:`QuantizeError` with the builder's own error line."""
    command = [sys.executable, "-m", "onnxruntime_genai.models.builder", "-i", str(folder), "-o", str(out),
               "-p", precision, "-e", "cpu", "-c", str(cache)]
    if extra:
        command += ["--extra_options", *extra]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "TQDM_DISABLE": "1"}
    try:
        done = subprocess.run(command, capture_output=True, text=True, errors="replace", env=env, check=False)
    except OSError as exc:
        raise QuantizeError(f"cannot start the onnxruntime-genai model builder: {first_line(exc)}",
                            "pip install onnxruntime-genai onnx onnx_ir") from None
    if done.returncode != 0 or not (out / "genai_config.json").is_file():
        if os.environ.get("DUMA_DEBUG", "") not in ("", "0"):
            print(done.stdout + done.stderr, file=sys.stderr)
        raise QuantizeError(f"the onnxruntime-genai model builder failed on {folder}: "
                            f"{builder_error(done.stdout + done.stderr)}",
                            "DUMA_DEBUG=1 shows its whole output; nothing was written")


_ERROR_LINE = re.compile(r"^[\w.]*(Error|Exception|Exit)\b.*|^(Error|error|ERROR)\b.*|.*\[ONNXRuntimeError\].*")


def builder_error(output: str) -> str:
    """The builder's last meaningful line: the exception line of its traceback, else the
    last line that is not a progress bar."""
    lines = [line.strip() for line in re.split(r"[\r\n]+", output)]
    lines = [line for line in lines if line and not re.search(r"\d+%\||it/s\]|^Saving |^Reading |^Loading ", line)]
    for line in reversed(lines):
        if _ERROR_LINE.match(line):
            return line[:300]
    return lines[-1][:300] if lines else "no output (was it killed?)"


def builder_version() -> str:
    """The installed onnxruntime-genai version (part of the backend's cache key: a new
    builder converts again)."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("onnxruntime-genai")
    except PackageNotFoundError:
        return "?"


def _check_tokenizer(source: Path, out: Path) -> None:
    """The backend renders prompts with the HF tokenizer of the output folder: it must load
    from there, with the source's chat template."""
    from transformers import AutoTokenizer

    from duma.models import _quiet_loading

    try:
        with _quiet_loading():
            written = AutoTokenizer.from_pretrained(str(out))
            template = getattr(AutoTokenizer.from_pretrained(str(source)), "chat_template", None)
    except Exception as exc:
        raise QuantizeError(f"the builder's tokenizer files in {out.name} do not load: {first_line(exc)}",
                            "report this with the model's tokenizer files") from None
    if getattr(written, "chat_template", None) != template:
        raise QuantizeError(f"the builder did not keep the chat template in {out.name}",
                            "report this with the model's tokenizer files")


# --- adapters kept apart (-o adapter file) --------------------------------------------------

def _lora_template(base: Path, target: Path) -> tuple[Path, list[str]]:
    """A peft folder with a rank-1 zero LoRA on every Linear layer of the decoder blocks,
    written from the config alone (the weights are never loaded); returns it and the module
    names it targets. The builder turns each into a LoRA MatMul pair of the graph."""
    import torch
    from peft import LoraConfig
    from safetensors.torch import save_file
    from transformers import AutoConfig, AutoModelForCausalLM

    config = AutoConfig.from_pretrained(str(base))
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config)
    tensors: dict[str, Any] = {}
    modules: set[str] = set()
    for name, module in model.named_modules():
        if isinstance(module, torch.nn.Linear) and ".layers." in f".{name}.":
            modules.add(name.rsplit(".", 1)[-1])
            tensors[f"base_model.model.{name}.lora_A.weight"] = torch.zeros(1, module.in_features)
            tensors[f"base_model.model.{name}.lora_B.weight"] = torch.zeros(module.out_features, 1)
    if not tensors:
        raise QuantizeError(f"{base}: no Linear layers found in its decoder blocks", "use -o adapter merge")
    target.mkdir(parents=True, exist_ok=True)
    LoraConfig(r=1, lora_alpha=1, target_modules=sorted(modules), lora_dropout=0.0,
               task_type="CAUSAL_LM").save_pretrained(str(target))
    save_file(tensors, str(target / "adapter_model.safetensors"))
    return target, sorted(modules)


def _lora_node_names(config: dict[str, Any], modules: list[str]) -> list[str]:
    """The builder's node names of the LoRA MatMuls (``/model/layers.3/attn/q_proj/lora_A/MatMul``);
    names of modules a model lacks are harmless in the exclusion list."""
    blocks = ("attn", "mlp")
    return [f"/model/layers.{layer}/{block}/{module}/lora_{ab}/MatMul"
            for layer in range(int(config.get("num_hidden_layers", 0))) for block in blocks
            for module in modules for ab in "AB"]


def _is_lora_name(name: str) -> bool:
    return ".lora_A." in name or ".lora_B." in name


def expose_lora_inputs(folder: Path) -> int:
    """Turn the builder's LoRA weights into overridable graph inputs (zero by default, the
    rank axis symbolic), rewriting only ``model.onnx``; returns how many there are."""
    import onnx
    from onnx import helper, numpy_helper

    path = folder / "model.onnx"
    model = onnx.load(str(path), load_external_data=False)
    existing = {i.name for i in model.graph.input}
    count = 0
    for init in model.graph.initializer:
        if not _is_lora_name(init.name):
            continue
        if init.data_type != onnx.TensorProto.FLOAT or len(init.dims) != 2:
            raise QuantizeError(f"LoRA weight {init.name} was quantized or reshaped by the builder",
                                "use -o adapter merge for this model")
        rows, cols = init.dims
        is_a = ".lora_A." in init.name
        # One rank axis per module (its A and B share it): modules an adapter leaves out keep
        # their rank-1 zeros while the others take the adapter's rank.
        axis = init.name.replace(".lora_A.", ".").replace(".lora_B.", ".") + "." + RANK_AXIS
        shape = [rows, axis] if is_a else [axis, cols]
        if init.name not in existing:
            model.graph.input.append(helper.make_tensor_value_info(init.name, onnx.TensorProto.FLOAT, shape))
        import numpy as np

        zero = np.zeros((rows, 1) if is_a else (1, cols), dtype=np.float32)
        init.CopyFrom(numpy_helper.from_array(zero, init.name))  # inline; the old bytes stay unused
        count += 1
    if not count:
        raise QuantizeError(f"the builder wrote no LoRA weights into {path}", "use -o adapter merge for this model")
    # The builder recorded the LoRA activations with the template's rank: drop those shapes so
    # onnxruntime plans their buffers from the adapter actually fed.
    kept = [v for v in model.graph.value_info if not re.search(r"/lora(_A|_B)?/", v.name)]
    del model.graph.value_info[:]
    model.graph.value_info.extend(kept)
    onnx.save(model, str(path))
    return count


def lora_inputs(folder: Path) -> dict[str, tuple[int | str, ...]]:
    """The LoRA inputs of an ONNX model built with ``-o adapter file``: name -> shape."""
    import onnx

    model = onnx.load(str(folder / "model.onnx"), load_external_data=False)
    return {i.name: tuple(d.dim_param or d.dim_value for d in i.type.tensor_type.shape.dim)
            for i in model.graph.input if _is_lora_name(i.name)}


def check_adapter_config(adapter: Path) -> dict[str, Any]:
    """The peft config of an adapter an ``.onnx_adapter`` can hold: plain LoRA on Linear
    layers (no DoRA, per-module ranks, biases or fully trained modules)."""
    try:
        config = json.loads((adapter / "adapter_config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise QuantizeError(f"{adapter}/adapter_config.json is unreadable: {first_line(exc)}",
                            "give a peft adapter folder") from None
    problems = []
    if config.get("peft_type", "LORA") != "LORA":
        problems.append(f"peft_type {config.get('peft_type')}")
    for key in ("use_dora", "lora_bias"):
        if config.get(key):
            problems.append(key)
    for key in ("rank_pattern", "alpha_pattern", "modules_to_save", "trainable_token_indices"):
        if config.get(key):
            problems.append(key)
    if problems:
        raise QuantizeError(f"adapter {adapter} cannot be kept as a file ({', '.join(problems)})",
                            "use -o adapter merge (or backend_options adapters: merged)")
    return config


def _lora_key(name: str) -> tuple[str, str, str] | None:
    """(layer, module, A|B) of a peft or ONNX LoRA weight name."""
    parts = name.split(".")
    if "layers" not in parts:
        return None
    layer = parts[parts.index("layers") + 1]
    for ab in ("A", "B"):
        if f"lora_{ab}" in parts:
            index = parts.index(f"lora_{ab}")
            return layer, parts[index - 1], ab
    return None


def write_adapter_file(adapter: Path, folder: Path, target: Path) -> Path:
    """Convert a peft LoRA folder into an ``.onnx_adapter`` for the base model at ``folder``
    (built with ``-o adapter file``): its weights transposed to the graph's layout, the LoRA
    scaling folded into B. Written atomically; returns ``target``."""
    import math

    import numpy as np
    import onnxruntime as ort

    from duma.paths import write_atomically

    config = check_adapter_config(adapter)
    rank = int(config.get("r", 8))
    alpha = float(config.get("lora_alpha", rank))
    scale = alpha / math.sqrt(rank) if config.get("use_rslora") else alpha / rank
    inputs = lora_inputs(folder)
    if not inputs:
        raise QuantizeError(f"{folder} takes no adapter files (it was built with -o adapter merge)",
                            "convert the base model with -o adapter file")
    by_key = {_lora_key(name): name for name in inputs}
    parameters: dict[str, Any] = {}
    for key, weight in _adapter_weights(adapter).items():
        lora = _lora_key(key)
        name = by_key.get(lora) if lora else None
        if name is None:
            raise QuantizeError(f"adapter {adapter}: weight {key} has no place in the ONNX model",
                                "only LoRA on the decoder's projections can be kept as a file; use adapter merge")
        array = weight.T * (scale if lora[2] == "B" else 1.0)
        shape = inputs[name]
        fixed = shape[0] if lora[2] == "A" else shape[1]
        if array.shape[0 if lora[2] == "A" else 1] != fixed:
            raise QuantizeError(f"adapter {adapter}: weight {key} has shape {tuple(weight.shape)}, which does not "
                                f"fit this base model", "check that the adapter was trained on this base model")
        parameters[name] = ort.OrtValue.ortvalue_from_numpy(np.ascontiguousarray(array, dtype=np.float32))
    if not parameters:
        raise QuantizeError(f"adapter {adapter} holds no LoRA weights", "give a peft LoRA adapter folder")
    adapter_format = ort.AdapterFormat()
    adapter_format.set_adapter_version(1)
    adapter_format.set_model_version(1)
    adapter_format.set_parameters(parameters)
    return write_atomically(target, lambda tmp: adapter_format.export_adapter(str(tmp)))


def _adapter_weights(adapter: Path) -> dict[str, Any]:
    """The peft weights of an adapter folder as float32 numpy arrays, by name."""
    import torch

    safetensors = adapter / "adapter_model.safetensors"
    try:
        if safetensors.is_file():
            from safetensors.torch import load_file

            tensors = load_file(str(safetensors))
        else:
            tensors = torch.load(str(adapter / "adapter_model.bin"), map_location="cpu", weights_only=True)
    except Exception as exc:
        raise QuantizeError(f"cannot read the weights of adapter {adapter}: {first_line(exc, with_type=True)}",
                            "give a folder saved by peft (save_pretrained)") from None
    return {name: tensor.float().numpy() for name, tensor in tensors.items()}
