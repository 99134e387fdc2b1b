"""``gguf``: a GGUF file for llama.cpp and Ollama, written in pure Python with the ``gguf`` package.

F16, Q8_0, Q4_0 and Q4_1 are quantized here in numpy (``--bits 16/8/4``, or ``-o type``); the
K-quants (Q4_K_M, Q6_K, ...) need llama.cpp's own quantizer, so an F16 file is written to the
scratch folder and handed to ``llama_cpp.llama_model_quantize`` (llama-cpp-python). With an
adapter and ``-o lora true`` the adapter itself is written as a LoRA GGUF that llama.cpp loads
on top of the base (``--lora``) instead of being merged in.

The file follows what llama.cpp's converter writes for a Llama (or Qwen2): architecture
metadata, q/k rows permuted into GGML's rope layout, a byte-level BPE tokenizer with its
pre-tokenizer name, the chat template, tied embeddings without ``output.weight``; 1-D tensors
stay F32 and rows that do not fill whole quantization blocks fall back to F16.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from pydantic import BaseModel, ConfigDict, field_validator

from duma.quantizer import QuantizeError, QuantizeSource, Quantizer, hf_logits_function

if TYPE_CHECKING:
    import numpy as np

LLAMACPP_HINT = "install llama-cpp-python: pip install 'duma[llamacpp]'"
# What --bits means when no -o type is given.
BITS_TYPES = {4: "Q4_1", 8: "Q8_0", 16: "F16"}
# Written here in numpy (gguf.quants) and read back by transformers.
PURE_TYPES = ("F32", "F16", "Q8_0", "Q4_0", "Q4_1")
# Made by llama.cpp's quantizer from an F16 file (their llama_ftype is gguf.LlamaFileType).
K_QUANTS = ("Q2_K", "Q3_K_S", "Q3_K_M", "Q3_K_L", "Q4_K_S", "Q4_K_M", "Q5_K_S", "Q5_K_M", "Q6_K")
# Types llama.cpp applies a LoRA adapter in (what its own converter writes).
LORA_TYPES = ("F32", "F16", "Q8_0")
GgufType = Literal["F32", "F16", "Q8_0", "Q4_0", "Q4_1", "Q2_K", "Q3_K_S", "Q3_K_M", "Q3_K_L", "Q4_K_S",
                   "Q4_K_M", "Q5_K_S", "Q5_K_M", "Q6_K"]
# peft module names a LoRA GGUF can carry (linear layers of the attention and MLP blocks).
LORA_MODULES = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


@dataclass(frozen=True)
class _Arch:
    """How one ``config.json`` model type is written: its GGUF architecture name and whether its
    q/k rows are permuted (Llama checkpoints use the rotate-half rope layout, GGML pairs)."""

    gguf_name: str
    permute_qk: bool


ARCHS = {"llama": _Arch("llama", True), "qwen2": _Arch("qwen2", False)}


class GgufOptions(BaseModel):
    """``-o`` settings of the gguf method."""

    model_config = ConfigDict(extra="forbid")

    # The GGUF type, overriding --bits (K-quants need llama-cpp-python).
    type: GgufType | None = None
    # With an adapter: write the adapter itself as a LoRA GGUF (llama.cpp --lora) instead of merging it.
    lora: bool = False

    @field_validator("type", mode="before")
    @classmethod
    def _upper(cls, value: Any) -> Any:
        return value.upper() if isinstance(value, str) else value


class GgufQuantizer(Quantizer):
    """A GGUF file (llama.cpp, Ollama, LM Studio): 4 -> Q4_1, 8 -> Q8_0, 16 -> F16; ``-o type``
    for Q4_0 or K-quants (Q4_K_M, Q5_K_M, Q6_K ... through llama-cpp-python); ``-o lora true``
    exports an adapter as a LoRA GGUF."""

    name = "gguf"
    description = "GGUF file for llama.cpp/Ollama (F16, Q8_0, Q4_0, Q4_1; K-quants via llama-cpp-python; LoRA)"
    bits = (4, 8, 16)
    output = "file"
    suffix = ".gguf"
    architectures = tuple(ARCHS)
    Options = GgufOptions

    def __init__(self, options: dict[str, Any] | None = None) -> None:
        super().__init__(options)
        self._close: Callable[[], None] | None = None

    @property
    def opts(self) -> GgufOptions:
        return self.options  # type: ignore[return-value]

    def gguf_type(self, bits: int) -> str:
        """The GGUF type this run writes."""
        if self.opts.lora:
            return self.opts.type or "F32"  # adapters are small: full precision unless asked
        return self.opts.type or BITS_TYPES[bits]

    def check(self, source: QuantizeSource, bits: int) -> None:
        super().check(source, bits)
        kind = self.gguf_type(bits)
        if self.opts.lora:
            if source.adapter is None:
                raise QuantizeError("-o lora true: no adapter to export",
                                    "give --adapter DIR (or an adapter folder as the model), or leave -o lora out")
            if kind not in LORA_TYPES:
                raise QuantizeError(f"-o type {kind}: a LoRA GGUF is written as {', '.join(LORA_TYPES)}",
                                    "use -o type F16 or leave -o type out (F32)")
            check_lora_config(source.adapter)
        elif kind in K_QUANTS and not llama_cpp_available():
            raise QuantizeError(f"-o type {kind}: K-quants are made by llama.cpp's quantizer, which is not installed",
                                LLAMACPP_HINT)
        rope = rope_scaling(source.config)
        if rope not in (None, "default"):
            raise QuantizeError(f"{source.base_folder / 'config.json'}: rope scaling '{rope}' is not written to GGUF "
                                "by duma yet", "export a model without rope_scaling, or convert with llama.cpp's "
                                "convert_hf_to_gguf.py")

    def quantize(self, source: QuantizeSource, out: Path, bits: int, calibration: list[str] | None) -> dict[str, Any]:
        kind = self.gguf_type(bits)
        if self.opts.lora:
            assert source.adapter is not None
            source.progress(f"writing adapter {source.adapter.name} as a {kind} LoRA GGUF")
            return write_lora_gguf(source.adapter, source.base_folder, out, kind)
        folder = source.merged_folder()
        if kind in K_QUANTS:
            f16 = source.scratch / "model-f16.gguf"
            source.progress("writing an F16 GGUF for llama.cpp's quantizer")
            details = write_model_gguf(folder, f16, "F16", reference=source.reference, adapter=source.adapter)
            source.progress(f"quantizing to {kind} with llama.cpp")
            llama_cpp_quantize(f16, out, kind)
            return {**details, "type": kind, "tensor_types": tensor_type_counts(out)}
        source.progress(f"writing a {kind} GGUF")
        return write_model_gguf(folder, out, kind, reference=source.reference, adapter=source.adapter)

    def logits_function(self, out: Path, source: QuantizeSource) -> Callable[[Sequence[int]], Any]:
        if self.opts.lora:
            assert source.adapter is not None
            return lora_logits_function(out, source.base_folder)
        if self.opts.type in K_QUANTS:
            # llama.cpp puts Q5_0/Q5_1 fallbacks into K-quant files, which transformers cannot read.
            logits, self._close = llama_cpp_logits_function(out)
            return logits
        return hf_logits_function(out.parent, gguf_file=out.name)

    def close_logits(self) -> None:
        if self._close is not None:
            self._close()
            self._close = None


# --- model files ----------------------------------------------------------------------------

def write_model_gguf(folder: Path, out: Path, kind: str, *, reference: str | None = None,
                     adapter: Path | None = None) -> dict[str, Any]:
    """Write the HF model ``folder`` (safetensors or .bin) as a ``kind`` GGUF at ``out``;
    returns facts for the manifest. ``reference`` (the model as the user named it) lets a model
    that came from a GGUF file keep that file's pre-tokenizer name."""
    import gguf

    config = json.loads((folder / "config.json").read_text(encoding="utf-8"))
    arch = ARCHS.get(config.get("model_type", ""))
    if arch is None:
        raise QuantizeError(f"{folder / 'config.json'}: model type '{config.get('model_type')}' is not written "
                            "to GGUF", f"it handles: {', '.join(ARCHS)}")
    hp = Hyper.of(config, folder)
    source_gguf = source_gguf_file(reference) if reference else None
    writer = gguf.GGUFWriter(out, arch.gguf_name)
    try:
        name = gguf_field(source_gguf, "general.name") if source_gguf else None
        name = name or folder.name
        writer.add_type(gguf.GGUFType.MODEL)
        writer.add_name(f"{name} + {adapter.name}" if adapter is not None else name)
        writer.add_block_count(hp.layers)
        writer.add_context_length(hp.context)
        writer.add_embedding_length(hp.hidden)
        writer.add_feed_forward_length(hp.ffn)
        writer.add_head_count(hp.heads)
        writer.add_head_count_kv(hp.kv_heads)
        writer.add_rope_freq_base(hp.rope_theta)
        writer.add_layer_norm_rms_eps(hp.rms_eps)
        writer.add_rope_dimension_count(hp.head_dim)
        if hp.head_dim * hp.heads != hp.hidden:  # llama.cpp assumes hidden / heads otherwise
            writer.add_key_length(hp.head_dim)
            writer.add_value_length(hp.head_dim)
        writer.add_vocab_size(hp.vocab)
        writer.add_file_type(file_type(kind))
        writer.add_quantization_version(gguf.GGML_QUANT_VERSION)
        tokenizer_facts = add_tokenizer(writer, folder, hp.vocab, source_gguf)
        counts = add_model_tensors(writer, folder, arch, hp, kind)
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
    finally:
        writer.close()
    return {"type": kind, "architecture": arch.gguf_name, "tied_embeddings": hp.tied, **tokenizer_facts,
            "tensor_types": counts}


@dataclass
class Hyper:
    """The hyperparameters a GGUF header carries, read from ``config.json``."""

    layers: int
    context: int
    hidden: int
    ffn: int
    heads: int
    kv_heads: int
    head_dim: int
    rope_theta: float
    rms_eps: float
    vocab: int
    tied: bool

    @classmethod
    def of(cls, config: dict[str, Any], folder: Path) -> Hyper:
        try:
            heads = int(config["num_attention_heads"])
            hidden = int(config["hidden_size"])
            rope = config.get("rope_parameters") or {}  # transformers 5 moved rope_theta here
            return cls(
                layers=int(config["num_hidden_layers"]),
                context=int(config.get("max_position_embeddings") or 2048),
                hidden=hidden,
                ffn=int(config["intermediate_size"]),
                heads=heads,
                kv_heads=int(config.get("num_key_value_heads") or heads),
                head_dim=int(config.get("head_dim") or hidden // heads),
                rope_theta=float(rope.get("rope_theta") or config.get("rope_theta") or 10000.0),
                rms_eps=float(config.get("rms_norm_eps") or 1e-6),
                vocab=int(config["vocab_size"]),
                tied=bool(config.get("tie_word_embeddings", False)) or not has_lm_head(folder),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise QuantizeError(f"{folder / 'config.json'}: cannot read {exc}",
                                "give a complete Hugging Face model folder") from None


def rope_scaling(config: dict[str, Any]) -> str | None:
    """The rope scaling type of a config (``None`` or ``default``: plain rope)."""
    rope = config.get("rope_parameters") or config.get("rope_scaling") or {}
    kind = rope.get("rope_type") or rope.get("type") if isinstance(rope, dict) else None
    return str(kind) if kind else None


def file_type(kind: str) -> int:
    import gguf

    return int(gguf.LlamaFileType.ALL_F32 if kind == "F32" else gguf.LlamaFileType[f"MOSTLY_{kind}"])


def weight_files(folder: Path) -> list[Path]:
    files = sorted(folder.glob("*.safetensors")) or sorted(folder.glob("pytorch_model*.bin"))
    if not files:
        raise QuantizeError(f"{folder}: no model weights (*.safetensors or pytorch_model*.bin)",
                            "give a Hugging Face model folder saved with save_pretrained")
    return files


def iter_weights(folder: Path) -> Iterator[tuple[str, Any]]:
    """``(name, torch tensor)`` of every weight in the folder, one file at a time."""
    import torch

    for path in weight_files(folder):
        if path.suffix == ".safetensors":
            from safetensors import safe_open

            with safe_open(str(path), framework="pt") as handle:
                for key in handle.keys():
                    yield key, handle.get_tensor(key)
        else:
            yield from torch.load(str(path), map_location="cpu", weights_only=True).items()


def has_lm_head(folder: Path) -> bool:
    """Whether the checkpoint stores its own ``lm_head.weight`` (else the embeddings are tied)."""
    index = next(iter(folder.glob("*.safetensors.index.json")), None)
    if index is not None:
        return "lm_head.weight" in json.loads(index.read_text(encoding="utf-8")).get("weight_map", {})
    files = weight_files(folder)
    if files[0].suffix == ".safetensors":
        from safetensors import safe_open

        for path in files:
            with safe_open(str(path), framework="pt") as handle:
                if "lm_head.weight" in handle.keys():
                    return True
        return False
    return any(key == "lm_head.weight" for key, _ in iter_weights(folder))


def permute_rows(w: np.ndarray, n_head: int) -> np.ndarray:
    """HF's rotate-half rope layout -> GGML's adjacent pairs, per head (q with the attention
    head count, k with the KV head count); also for biases and LoRA B matrices."""
    rows = w.shape[0]
    return w.reshape(n_head, 2, rows // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def unpermute_rows(w: np.ndarray, n_head: int) -> np.ndarray:
    """The inverse of :func:`permute_rows`."""
    rows = w.shape[0]
    return w.reshape(n_head, rows // n_head // 2, 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def qk_heads(gguf_name: str, hp: Hyper) -> int | None:
    """The head count q/k rows are permuted with, None for other tensors."""
    if ".attn_q." in gguf_name:
        return hp.heads
    if ".attn_k." in gguf_name:
        return hp.kv_heads
    return None


def tensor_type(gguf_name: str, shape: Sequence[int], kind: str, tied: bool) -> str:
    """The type of one tensor in a ``kind`` file, following llama.cpp: 1-D tensors (norms,
    biases) F32; the output matrix (the token embeddings when tied) at least Q8_0 in a 4-bit
    file, since it alone shapes every logit; rows that do not fill whole quantization blocks
    F16."""
    import gguf

    if len(shape) < 2 or kind == "F32":
        return "F32"
    if kind == "F16":
        return "F16"
    chosen = kind
    is_output = gguf_name == "output.weight" or (tied and gguf_name == "token_embd.weight")
    if is_output and kind in ("Q4_0", "Q4_1"):
        chosen = "Q8_0"  # llama.cpp: Q6_K, or Q8_0 when rows do not fit 256-blocks; Q6_K needs llama.cpp
    block = gguf.GGML_QUANT_SIZES[gguf.GGMLQuantizationType[chosen]][0]
    return chosen if shape[-1] % block == 0 else "F16"


def add_model_tensors(writer: Any, folder: Path, arch: _Arch, hp: Hyper, kind: str) -> dict[str, int]:
    """Convert, permute and quantize every weight into ``writer``; returns tensors per type."""
    import gguf
    import numpy as np

    names = gguf.get_tensor_name_map(gguf.MODEL_ARCH[arch.gguf_name.upper()], hp.layers)
    counts: dict[str, int] = {}
    for key, tensor in iter_weights(folder):
        if key.endswith("rotary_emb.inv_freq"):
            continue  # recomputed from rope.freq_base
        if key == "lm_head.weight" and hp.tied:
            continue  # llama.cpp reuses token_embd when output.weight is absent
        gguf_name = names.get_name(key, try_suffixes=(".weight", ".bias"))
        if gguf_name is None:
            raise QuantizeError(f"{folder}: weight '{key}' has no GGUF name for {arch.gguf_name}",
                                "this checkpoint has layers duma's GGUF writer does not know")
        data = tensor.float().numpy()
        heads = qk_heads(gguf_name, hp) if arch.permute_qk else None
        if heads is not None:
            data = permute_rows(data, heads)
        chosen = tensor_type(gguf_name, data.shape, kind, hp.tied)
        qtype = gguf.GGMLQuantizationType[chosen]
        if chosen in ("F32", "F16"):
            writer.add_tensor(gguf_name, np.ascontiguousarray(data.astype(np.float32 if chosen == "F32" else np.float16)))
        else:
            writer.add_tensor(gguf_name, gguf.quants.quantize(np.ascontiguousarray(data), qtype), raw_dtype=qtype)
        counts[chosen] = counts.get(chosen, 0) + 1
    return counts


def tensor_type_counts(path: Path) -> dict[str, int]:
    import gguf

    counts: dict[str, int] = {}
    for tensor in gguf.GGUFReader(str(path)).tensors:
        counts[tensor.tensor_type.name] = counts.get(tensor.tensor_type.name, 0) + 1
    return counts


# --- tokenizer ------------------------------------------------------------------------------

def source_gguf_file(reference: str) -> Path | None:
    """The GGUF file a model reference was converted from (``embedded`` or a ``.gguf`` path), or
    None for an HF folder: its metadata knows things the converted folder has lost."""
    from duma.errors import DumaError
    from duma.models import EMBEDDED, embedded_gguf_path, split_adapter

    try:
        base, _ = split_adapter(reference)
        if base == EMBEDDED:
            return embedded_gguf_path()
    except DumaError:
        return None
    path = Path(base).expanduser()
    return path if path.is_file() and path.suffix.lower() == ".gguf" else None


def gguf_field(path: Path, key: str) -> Any:
    """One metadata value of a GGUF file (None when absent or unreadable)."""
    import gguf

    try:
        field = gguf.GGUFReader(str(path)).get_field(key)
        return field.contents() if field is not None else None
    except Exception:  # a damaged source file only loses a name here, never the export
        return None


def pre_tokenizer_name(tokenizer_json: dict[str, Any]) -> str | None:
    """llama.cpp's name for how this byte-level BPE tokenizer splits text, read from the
    structure of its ``pre_tokenizer`` (llama.cpp's converter instead hashes the ids of a test
    text against known tokenizers). None when not recognised."""
    pre = tokenizer_json.get("pre_tokenizer") or {}
    steps = pre.get("pretokenizers", []) if pre.get("type") == "Sequence" else [pre]
    kinds = [step.get("type") for step in steps]
    if kinds == ["ByteLevel"] and steps[0].get("use_regex", True):
        return "gpt-2"
    if (kinds == ["Digits", "ByteLevel"] and steps[0].get("individual_digits")
            and steps[1].get("use_regex", True)):
        return "smollm"  # single digits, then GPT-2's regex (SmolLM, StarCoder)
    if kinds == ["Split", "ByteLevel"] and not steps[1].get("use_regex", True):
        pattern = (steps[0].get("pattern") or {}).get("Regex")
        return known_split_names().get(pattern) if pattern else None
    return None


def known_split_names() -> dict[str, str]:
    """Split regexes -> llama.cpp pre-tokenizer names, from the table transformers reads GGUF
    files with (preferring the names llama.cpp's converter writes)."""
    try:
        from transformers.integrations.gguf.gguf_tokenizer_mapping import GGUF_PRE_TOKENIZER_SPLITS
    except ImportError:
        return {}
    preferred = ("llama-bpe", "qwen2", "tekken", "gpt-4o", "qwen35")
    names: dict[str, str] = {}
    for name in (*preferred, *GGUF_PRE_TOKENIZER_SPLITS):
        pattern = GGUF_PRE_TOKENIZER_SPLITS.get(name)
        if pattern is not None:
            names.setdefault(pattern, name)
    return names


def add_tokenizer(writer: Any, folder: Path, vocab_size: int, source_gguf: Path | None) -> dict[str, Any]:
    """The tokenizer as llama.cpp's ``gpt2`` (byte-level BPE) vocabulary: tokens padded to the
    embedding rows, types, merges, special ids, add-BOS/EOS flags, pre-tokenizer, chat template."""
    import gguf
    from transformers import AutoTokenizer

    from duma.models import _quiet_loading

    try:
        with _quiet_loading():
            tokenizer = AutoTokenizer.from_pretrained(str(folder))
        data = json.loads(tokenizer.backend_tokenizer.to_str())
    except Exception as exc:
        raise QuantizeError(f"{folder}: cannot read the tokenizer ({type(exc).__name__})",
                            "the folder needs a fast tokenizer (tokenizer.json)") from None
    model = data.get("model") or {}
    if model.get("type") != "BPE" or model.get("byte_fallback"):
        raise QuantizeError(f"{folder / 'tokenizer.json'}: only byte-level BPE tokenizers are written to GGUF "
                            "by duma", "sentencepiece-style tokenizers (Llama 2, Mistral) need llama.cpp's "
                            "convert_hf_to_gguf.py")
    added = {int(i): token for i, token in tokenizer.added_tokens_decoder.items()}
    n_vocab = max(vocab_size, len(tokenizer))
    if len(tokenizer) > vocab_size:
        raise QuantizeError(f"{folder}: the tokenizer has {len(tokenizer)} tokens but the model {vocab_size} rows",
                            "resize the model's embeddings to the tokenizer before exporting")
    tokens = [f"[PAD{i}]" for i in range(n_vocab)]  # rows no token uses (llama.cpp's converter names them so)
    types = [int(gguf.TokenType.UNUSED)] * n_vocab
    for text, index in model.get("vocab", {}).items():
        tokens[index], types[index] = text, int(gguf.TokenType.NORMAL)
    for index, token in added.items():
        tokens[index] = token.content
        types[index] = int(gguf.TokenType.CONTROL if token.special else gguf.TokenType.USER_DEFINED)
    merges = [m if isinstance(m, str) else " ".join(m) for m in model.get("merges", [])]

    pre = gguf_field(source_gguf, "tokenizer.ggml.pre") if source_gguf else None
    guessed = False
    if not pre:
        pre = pre_tokenizer_name(data)
    if not pre:
        pre, guessed = "default", True  # llama.cpp then uses its generic BPE split (and warns)
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre(pre)
    writer.add_token_list(tokens)
    writer.add_token_types(types)
    writer.add_token_merges(merges)
    special = {"bos": tokenizer.bos_token_id, "eos": tokenizer.eos_token_id, "unk": tokenizer.unk_token_id,
               "pad": tokenizer.pad_token_id}
    for kind, adder in (("bos", writer.add_bos_token_id), ("eos", writer.add_eos_token_id),
                        ("unk", writer.add_unk_token_id), ("pad", writer.add_pad_token_id)):
        if special[kind] is not None:
            adder(int(special[kind]))
    # Whether the tokenizer itself adds BOS/EOS; llama.cpp's BPE default is to add BOS.
    plain = tokenizer("a", add_special_tokens=False)["input_ids"]
    full = tokenizer("a")["input_ids"]
    add_bos = special["bos"] is not None and len(full) > len(plain) and full[0] == special["bos"]
    add_eos = special["eos"] is not None and len(full) > len(plain) and full[-1] == special["eos"]
    writer.add_add_bos_token(bool(add_bos))
    writer.add_add_eos_token(bool(add_eos))
    writer.add_add_space_prefix(False)
    template = tokenizer.chat_template
    if template:
        # Without it llama.cpp and Ollama fall back to a generic format: garbled chat.
        writer.add_chat_template(template if isinstance(template, str)
                                 else [{"name": k, "template": v} for k, v in template.items()])
    return {"pre_tokenizer": pre, "pre_tokenizer_guessed": guessed, "tokens": n_vocab,
            "chat_template": bool(template), "bos_token_id": special["bos"], "eos_token_id": special["eos"]}


# --- LoRA adapters ----------------------------------------------------------------------------

def check_lora_config(adapter: Path) -> dict[str, Any]:
    """Refuse adapters a LoRA GGUF cannot express (before any work); returns the config."""
    path = adapter / "adapter_config.json"
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise QuantizeError(f"{path}: unreadable ({type(exc).__name__})", "re-export the adapter") from None
    merge_hint = "leave -o lora out to merge the adapter into the model instead"
    if config.get("peft_type", "LORA") != "LORA":
        raise QuantizeError(f"{path}: peft type {config.get('peft_type')} is not LoRA", merge_hint)
    for flag, what in (("use_dora", "DoRA"), ("modules_to_save", "modules_to_save"),
                       ("trainable_token_indices", "trained token rows"), ("lora_bias", "LoRA biases"),
                       ("fan_in_fan_out", "fan_in_fan_out")):
        if config.get(flag):
            raise QuantizeError(f"{path}: {what} cannot be written to a LoRA GGUF", merge_hint)
    return config


def lora_scale(config: dict[str, Any], module: str, rank: int) -> float:
    """peft's scale for one module: alpha / r (or alpha / sqrt(r) with rsLoRA), where
    ``alpha_pattern`` may override alpha per module."""
    alpha = float(config.get("lora_alpha") or rank)
    for pattern, value in (config.get("alpha_pattern") or {}).items():
        if re.fullmatch(rf"(.*\.)?{pattern}", module):
            alpha = float(value)
            break
    return alpha / (rank ** 0.5) if config.get("use_rslora") else alpha / rank


def write_lora_gguf(adapter: Path, base_folder: Path, out: Path, kind: str) -> dict[str, Any]:
    """The peft adapter as a llama.cpp LoRA GGUF: ``general.type=adapter``, ``adapter.type=lora``,
    ``adapter.lora.alpha``, and ``<base tensor>.lora_a`` (rank x in) / ``.lora_b`` (out x rank)
    pairs, q/k ``lora_b`` rows permuted like the base weights. llama.cpp scales each pair by
    alpha / rank; a module whose peft scale differs (rsLoRA, alpha_pattern) has it folded into B."""
    import gguf
    import numpy as np

    config = check_lora_config(adapter)
    base_config = json.loads((base_folder / "config.json").read_text(encoding="utf-8"))
    arch = ARCHS[base_config.get("model_type", "")]
    hp = Hyper.of(base_config, base_folder)
    names = gguf.get_tensor_name_map(gguf.MODEL_ARCH[arch.gguf_name.upper()], hp.layers)
    pairs: dict[str, dict[str, Any]] = {}
    for key, tensor in iter_adapter_weights(adapter):
        match = re.fullmatch(r"(?:base_model\.model\.)?(.+)\.lora_([AB])(?:\.[^.]+)?\.weight", key)
        if match is None or match.group(1).rsplit(".", 1)[-1] not in LORA_MODULES:
            raise QuantizeError(f"{adapter}: adapter tensor '{key}' cannot be written to a LoRA GGUF",
                                "only q/k/v/o and gate/up/down projections can; leave -o lora out to merge")
        pairs.setdefault(match.group(1), {})[match.group(2)] = tensor.float().numpy()
    if not pairs:
        raise QuantizeError(f"{adapter}: no LoRA weights found", "give a peft LoRA adapter folder")
    alpha = float(config.get("lora_alpha") or 0) or None
    writer = gguf.GGUFWriter(out, arch.gguf_name)
    counts: dict[str, int] = {}
    try:
        writer.add_type(gguf.GGUFType.ADAPTER)
        writer.add_string(gguf.Keys.Adapter.TYPE, "lora")
        ranks = {pair["A"].shape[0] for pair in pairs.values() if "A" in pair}
        file_alpha = alpha if alpha is not None else float(max(ranks))
        writer.add_float32(gguf.Keys.Adapter.LORA_ALPHA, file_alpha)
        writer.add_file_type(file_type(kind))
        writer.add_quantization_version(gguf.GGML_QUANT_VERSION)
        for module, pair in sorted(pairs.items()):
            if set(pair) != {"A", "B"}:
                raise QuantizeError(f"{adapter}: module '{module}' lacks its lora_A or lora_B",
                                    "re-export the adapter")
            gguf_name = names.get_name(module + ".weight", try_suffixes=(".weight",))
            if gguf_name is None:
                raise QuantizeError(f"{adapter}: module '{module}' has no GGUF name", "leave -o lora out to merge")
            a, b = pair["A"], pair["B"]
            rank = a.shape[0]
            b = b * (lora_scale(config, module, rank) / (file_alpha / rank))
            heads = qk_heads(gguf_name, hp) if arch.permute_qk else None
            if heads is not None:
                b = permute_rows(b, heads)
            for suffix, data in ((".lora_a", a), (".lora_b", b)):
                chosen = tensor_type(gguf_name + suffix, data.shape, kind, tied=False)
                qtype = gguf.GGMLQuantizationType[chosen]
                if chosen in ("F32", "F16"):
                    writer.add_tensor(gguf_name + suffix,
                                      np.ascontiguousarray(data.astype(np.float32 if chosen == "F32" else np.float16)))
                else:
                    writer.add_tensor(gguf_name + suffix, gguf.quants.quantize(np.ascontiguousarray(data), qtype),
                                      raw_dtype=qtype)
                counts[chosen] = counts.get(chosen, 0) + 1
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
    finally:
        writer.close()
    return {"type": kind, "kind": "lora adapter", "architecture": arch.gguf_name, "lora_alpha": file_alpha,
            "lora_rank": sorted(ranks), "modules": len(pairs), "tensor_types": counts}


def iter_adapter_weights(adapter: Path) -> Iterator[tuple[str, Any]]:
    import torch

    path = adapter / "adapter_model.safetensors"
    if path.is_file():
        from safetensors import safe_open

        with safe_open(str(path), framework="pt") as handle:
            for key in handle.keys():
                yield key, handle.get_tensor(key)
        return
    path = adapter / "adapter_model.bin"
    if not path.is_file():
        raise QuantizeError(f"{adapter}: no adapter_model.safetensors or adapter_model.bin", "give a peft adapter folder")
    yield from torch.load(str(path), map_location="cpu", weights_only=True).items()


def lora_logits_function(path: Path, base_folder: Path) -> Callable[[Sequence[int]], Any]:
    """Logits of the base model with the LoRA GGUF at ``path`` folded in, as llama.cpp applies
    it (read back from the file: its alpha, ranks, types and q/k layout)."""
    import gguf
    import numpy as np
    import torch
    from transformers import AutoModelForCausalLM

    from duma.models import _quiet_loading

    config = json.loads((base_folder / "config.json").read_text(encoding="utf-8"))
    arch = ARCHS[config["model_type"]]
    hp = Hyper.of(config, base_folder)
    names = gguf.get_tensor_name_map(gguf.MODEL_ARCH[arch.gguf_name.upper()], hp.layers)
    with _quiet_loading():
        model = AutoModelForCausalLM.from_pretrained(str(base_folder), dtype=torch.float32)
    model.eval()
    params = {names.get_name(key, try_suffixes=(".weight",)): param for key, param in model.named_parameters()
              if key.endswith(".weight")}
    reader = gguf.GGUFReader(str(path))
    alpha = float(reader.get_field(gguf.Keys.Adapter.LORA_ALPHA).contents())
    tensors = {t.name: gguf.quants.dequantize(t.data, t.tensor_type).reshape([int(n) for n in reversed(t.shape)])
               for t in reader.tensors}
    with torch.no_grad():
        for name, a in tensors.items():
            if not name.endswith(".lora_a"):
                continue
            base = name[: -len(".lora_a")]
            b = tensors[base + ".lora_b"]
            heads = qk_heads(base, hp) if arch.permute_qk else None
            if heads is not None:
                b = unpermute_rows(b, heads)
            delta = (alpha / a.shape[0]) * (np.asarray(b, dtype=np.float32) @ np.asarray(a, dtype=np.float32))
            params[base] += torch.from_numpy(delta)

    def logits(ids: Sequence[int]) -> Any:
        with torch.inference_mode():
            return model(torch.tensor([list(ids)], dtype=torch.long)).logits[0].float()

    return logits


# --- llama.cpp (llama-cpp-python) ---------------------------------------------------------------

def llama_cpp_available() -> bool:
    """Whether llama-cpp-python is installed (found, not imported: that loads the library)."""
    import importlib.util

    try:
        return importlib.util.find_spec("llama_cpp") is not None
    except (ImportError, ValueError):  # ValueError: a module entry set to None (as in tests)
        return False


def llama_cpp_quantize(source: Path, out: Path, kind: str) -> None:
    """Quantize the GGUF ``source`` to ``kind`` with llama.cpp's quantizer (its own per-tensor
    choices: e.g. Q6_K for the output, fallbacks for rows that do not fill 256-blocks)."""
    import ctypes

    import gguf

    try:
        import llama_cpp
    except ImportError:
        raise QuantizeError(f"-o type {kind}: llama.cpp's quantizer is not installed", LLAMACPP_HINT) from None
    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = int(gguf.LlamaFileType[f"MOSTLY_{kind}"])
    params.nthread = os.cpu_count() or 1
    with _quiet_native():
        status = llama_cpp.llama_model_quantize(str(source).encode(), str(out).encode(), ctypes.byref(params))
    if status != 0:
        raise QuantizeError(f"llama.cpp could not quantize {source.name} to {kind} (status {status})",
                            "run with DUMA_DEBUG=1 and check the model is supported by this llama.cpp")


def llama_cpp_logits_function(path: Path) -> tuple[Callable[[Sequence[int]], Any], Callable[[], None]]:
    """Logits of a GGUF file run by llama.cpp, and a function releasing the model."""
    import numpy as np

    try:
        from llama_cpp import Llama
    except ImportError:
        raise QuantizeError(f"{path.name}: reading this GGUF back needs llama.cpp", LLAMACPP_HINT) from None
    held: list[Any] = []

    def logits(ids: Sequence[int]) -> Any:
        n = len(ids)
        while held:
            held.pop().close()
        with _quiet_native():
            llm = Llama(model_path=str(path), n_ctx=max(n, 64), n_batch=max(n, 64), logits_all=True,
                        verbose=False, n_threads=os.cpu_count() or 1)
        held.append(llm)
        llm.eval(list(ids))
        return np.array(llm.scores[:n], dtype=np.float32)

    def close() -> None:
        while held:
            held.pop().close()

    return logits, close


@contextmanager
def _quiet_native() -> Iterator[None]:
    """Silence llama.cpp's C-level logging on stderr (a page per load) unless DUMA_DEBUG is set."""
    saved: int | None = None
    if not os.environ.get("DUMA_DEBUG"):
        try:
            saved = os.dup(2)
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, 2)
            os.close(devnull)
        except OSError:
            saved = None
    try:
        yield
    finally:
        if saved is not None:
            os.dup2(saved, 2)
            os.close(saved)
