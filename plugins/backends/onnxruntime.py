"""The ``onnxruntime`` backend: onnxruntime-genai on the CPU, several times the decode speed
of transformers there.

``spec.model`` is an onnxruntime-genai folder (``genai_config.json``, ``model.onnx``), used as
it is, or any model reference duma's loader takes (``embedded``, an HF folder, a ``.gguf``
file, with ``spec.adapter``), converted once by the ``onnx`` quantizer into the model cache
(``<model cache>/onnx/<name>``; the name changes with the model files, the adapter, the bits
and the conversion options, so a changed input is converted again).

Prompts are rendered by duma's one renderer with the HF tokenizer of the ONNX folder, tokens
are picked in Python from the model's logits (the same sampler as the transformers backend,
so options can change per call on a kept KV cache, and ``options.constraint`` masks them the
same way: onnxruntime-genai's own guidance would need its sampler), and the generators of
recent conversations are kept: a follow-up turn rewinds the one with the longest common
token prefix and runs only the new tokens.

onnxruntime-genai, torch and transformers are imported when a backend is constructed, not
when this module is imported.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import threading
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from duma.backend import BackendCapabilities, Sampler, TokenizedBackend, TokenStreamer, common_prefix_length, eos_token_ids
from duma.errors import ConfigError, DumaError, ModelLoadError, first_line
from duma.paths import version_stamp
from duma.plugins.quantizers.onnx import Int4Algo
from duma.types import GenerationChunk, GenerationOptions, Message, ModelSpec

DEFAULT_CACHE_SLOTS = 4
# spec.dtype -> bits, when backend_options does not name the bits itself.
DTYPE_BITS = {"float32": 32, "int8": 8}


class OnnxRuntimeOptions(BaseModel):
    """``backend_options`` of the onnxruntime backend."""

    model_config = ConfigDict(extra="forbid")

    bits: Literal[4, 8, 32] = Field(8, description="Weights of the converted model (default from dtype: "
                                    "float32 -> 32, else 8). Ignored for an ONNX folder. int8 keeps the minds' "
                                    "answers; int4 decodes faster but breaks the shipped 135M minds.")
    block_size: Literal[16, 32, 64, 128, 256] = Field(32, description="Weights per quantization block (4/8 bits).")
    accuracy_level: int | None = Field(None, ge=0, le=4, description="MatMulNBits compute precision: "
                                       "4 = int8 activations (the builder's CPU default), 1 = float32.")
    int4_algo: Int4Algo = Field("k_quant_last", description="int4 method (see the onnx quantizer): "
                                "k_quant_last keeps the LM head int8 (+18% perplexity on SmolLM2 instead of "
                                "+29% for 'default', ~10% slower decoding, a 1 min conversion instead of 20 s).")
    threads: int = Field(0, ge=0, description="Intra-op threads; 0 = one per CPU this process may use "
                         "(onnxruntime-genai's own default ran at half the speed on 2 cores).")
    cache_slots: int = Field(DEFAULT_CACHE_SLOTS, ge=0, description="Conversations whose KV cache is kept.")
    adapters: Literal["merged", "per_call"] = Field(
        "merged", description="merged: the adapter folded into a model of its own; per_call: one base "
        "model runs any adapter of it per call (.onnx_adapter files; every projection carries a LoRA "
        "MatMul pair, about half the decode speed of a merged model).")


@dataclass(eq=False)
class _Slot:
    """An onnxruntime-genai generator, the token ids whose KV cache it holds, and the
    adapter it runs with (keys and values differ per adapter)."""

    generator: Any
    adapter: str | None
    capacity: int  # max_length: prompt and reply tokens its KV buffer holds
    ids: list[int] = field(default_factory=list)


def is_onnx_folder(path: Path) -> bool:
    """An onnxruntime-genai model folder (complete or not), as opposed to an HF folder."""
    return path.is_dir() and ((path / "genai_config.json").exists() or
                              ((path / "model.onnx").exists() and not (path / "config.json").exists()))


def read_genai_config(folder: Path, hint: str) -> dict[str, Any]:
    """``genai_config.json`` of a complete ONNX folder; a missing or broken one, or a missing
    model file, is a one-line :class:`ModelLoadError` with ``hint``."""
    path = folder / "genai_config.json"
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
        filename = config["model"]["decoder"].get("filename", "model.onnx")
    except FileNotFoundError:
        raise ModelLoadError(f"{folder} is not a complete ONNX model folder: genai_config.json is missing",
                             hint) from None
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
        raise ModelLoadError(f"{path} is unreadable ({first_line(exc, with_type=True)})", hint) from None
    if not (folder / filename).is_file():
        raise ModelLoadError(f"{folder} is not a complete ONNX model folder: {filename} is missing", hint)
    return config


def _round_up(n: int, step: int) -> int:
    return -(-n // step) * step


def _slug(text: str) -> str:
    return re.sub(r"[^a-z0-9._-]+", "-", text.lower()).strip("-") or "model"


def converted_folder_name(model: str, adapter: str | None, bits: int, options: dict[str, Any]) -> str:
    """The model cache entry of a conversion: readable parts and a digest of everything the
    result depends on (model files, adapter files, bits, options, builder version)."""
    from duma.models import EMBEDDED, embedded_gguf_path
    from duma.plugins.quantizers.onnx import builder_version

    if model == EMBEDDED:
        gguf = embedded_gguf_path()
        stem, identity = gguf.stem, f"{EMBEDDED}:{gguf.name}"
    else:
        path = Path(model).expanduser()
        stem = path.stem if path.is_file() else path.resolve().name
        identity = version_stamp(path)
    parts = [_slug(stem)]
    if adapter is not None:
        parts.append(_slug(Path(adapter).expanduser().resolve().name))
        identity += "\nadapter:" + version_stamp(Path(adapter))
    identity += f"\nbits:{bits}\noptions:{json.dumps(options, sort_keys=True)}\nbuilder:{builder_version()}"
    parts.append("fp32" if bits == 32 else f"int{bits}")
    return "-".join(parts) + "-" + hashlib.sha256(identity.encode()).hexdigest()[:10]


class OnnxRuntimeBackend(TokenizedBackend):
    """onnxruntime-genai on the CPU (an ONNX folder, or any model converted once)."""

    name = "onnxruntime"
    Options = OnnxRuntimeOptions
    capabilities = BackendCapabilities(prefill=True, adapters_per_call=False, kv_reuse=True, exact_token_count=True,
                                       constrained_decoding=True)

    @classmethod
    def capabilities_for(cls, spec: ModelSpec) -> BackendCapabilities:
        per_call = isinstance(spec.backend_options, dict) and spec.backend_options.get("adapters") == "per_call"
        return cls.capabilities.model_copy(update={"adapters_per_call": per_call})

    def __init__(self, spec: ModelSpec) -> None:
        super().__init__(spec)
        from duma.models import split_adapter

        options: OnnxRuntimeOptions = self.backend_options  # type: ignore[assignment]
        if spec.device not in ("auto", "cpu"):
            raise ModelLoadError(f"backend 'onnxruntime' runs on the CPU, not device '{spec.device}'",
                                 "use device auto or cpu, or backend transformers on a GPU")
        self.bits = self._bits(spec, options)
        self.per_call = options.adapters == "per_call"
        model, adapter = split_adapter(spec.model, spec.adapter)
        if adapter is not None and not (Path(adapter).expanduser() / "adapter_config.json").is_file():
            raise ModelLoadError(f"adapter folder {adapter} has no adapter_config.json",
                                 "give a folder saved by peft (save_pretrained of a PeftModel)")
        self.adapter = str(Path(adapter).expanduser().resolve()) if adapter else None
        path = Path(model).expanduser()
        if is_onnx_folder(path):
            if self.adapter is not None and not self.per_call:
                raise ModelLoadError(f"{path} is an ONNX model; an adapter cannot be merged into it",
                                     "convert the model with the adapter (duma quantize --method onnx --adapter), "
                                     "or build it with -o adapter file and use backend_options adapters: per_call")
            self.folder, self.cached = path, False
        else:
            self.folder, self.cached = self._convert(model, None if self.per_call else self.adapter, options), True
        self._load(options)
        self._lock = threading.Lock()
        self._cache_slots = options.cache_slots
        self._slots: list[_Slot] = []  # most recently used last
        # Prompt tokens whose KV cache the last call reused (0: it ran the whole prompt).
        self.last_prefix_reused = 0
        # Adapters switched per call: onnxruntime-genai's registry and the name of each folder.
        self._adapters: Any = None
        self._adapter_names: dict[str, str] = {}
        if self.per_call and self.adapter is not None:
            self.load_adapter(self.adapter)  # the default adapter of calls that name none

    # --- loading -------------------------------------------------------------------------

    @staticmethod
    def _bits(spec: ModelSpec, options: OnnxRuntimeOptions) -> int:
        if "bits" in options.model_fields_set or spec.dtype == "auto":
            return options.bits
        if spec.dtype not in DTYPE_BITS:
            raise ConfigError(f"dtype '{spec.dtype}': backend 'onnxruntime' runs int4, int8 or float32 on the CPU",
                              "use dtype auto, int8 or float32, or set backend_options bits")
        return DTYPE_BITS[spec.dtype]

    def _hint(self) -> str:
        if self.cached:
            return f"the converted copy is damaged: delete {self.folder} and duma converts it again on the next run"
        return "re-run duma quantize --method onnx to write the folder again"

    def _convert(self, model: str, adapter: str | None, options: OnnxRuntimeOptions) -> Path:
        """The cached ONNX folder of ``model`` (+ ``adapter``), converting it on first use."""
        from duma.models import EMBEDDED, model_cache_dir, resolve_model_path
        from duma.quantizer import convert_once

        if model != EMBEDDED and not Path(model).expanduser().exists():
            resolve_model_path(model)  # the loader's one-line error for a missing model
        # The LM head pruned to the last position: prompts run ~20% faster and a long one
        # does not hold [prompt, vocab] logits (177 MB for 900 tokens of SmolLM2).
        quantizer_options: dict[str, Any] = {"adapter": "file" if self.per_call else "merge", "prune_lm_head": True}
        if self.bits != 32:  # what the quantization takes (and only that names the cache entry)
            quantizer_options.update(block_size=options.block_size, accuracy_level=options.accuracy_level)
        if self.bits == 4:
            quantizer_options["int4_algo"] = options.int4_algo
        target = model_cache_dir() / "onnx" / converted_folder_name(model, adapter, self.bits, quantizer_options)
        label = model if adapter is None else f"{model} with adapter {Path(adapter).name}"
        # k-quant searches each block's scales: about 3x the builder's 20 s on SmolLM2 here.
        takes = "about 1 min" if self.bits == 4 and options.int4_algo.startswith("k_quant") else "about 20 s"
        return convert_once(model, "onnx", target, backend="onnxruntime", adapter=adapter, bits=self.bits,
                            options=quantizer_options,
                            title=f"duma: converting {label} once for onnxruntime ({takes})")

    def _load(self, options: OnnxRuntimeOptions) -> None:
        import onnxruntime_genai as og
        from transformers import AutoTokenizer

        from duma.models import _quiet_loading

        hint = self._hint()
        self.genai_config = read_genai_config(self.folder, hint)
        try:
            config = og.Config(str(self.folder))
            threads = options.threads or len(os.sched_getaffinity(0))
            config.overlay(json.dumps({"model": {"decoder": {"session_options": {"intra_op_num_threads": threads}}}}))
            self._og = og
            self._model: Any = og.Model(config)
        except Exception as exc:
            raise ModelLoadError(f"cannot load the ONNX model from {self.folder}: {first_line(exc, with_type=True)}",
                                 hint) from None
        try:
            with _quiet_loading():
                self.tokenizer = AutoTokenizer.from_pretrained(str(self.folder))
        except Exception as exc:
            raise ModelLoadError(f"cannot load the tokenizer from {self.folder}: {first_line(exc, with_type=True)}",
                                 hint) from None
        self._eos_ids = self._find_eos_ids()

    def _find_eos_ids(self) -> set[int]:
        return eos_token_ids(self.genai_config["model"].get("eos_token_id"), self.tokenizer)

    # --- public API ----------------------------------------------------------------------

    @property
    def context_length(self) -> int:
        value = self.genai_config["model"].get("context_length")
        return value if isinstance(value, int) and value > 0 else super().context_length

    def close(self) -> None:
        """Release the model and its kept generators (the backend cannot run afterwards)."""
        with self._lock:
            self._slots.clear()
            self._adapters = None
            self._adapter_names.clear()
            self._model = None

    def clear_cache(self) -> None:
        """Forget the kept KV caches (the next call prefills its whole prompt)."""
        with self._lock:
            self._slots.clear()

    def load_adapter(self, folder: str) -> None:
        """Load an adapter now (its errors surface at load time, not on the first turn)."""
        with self._lock:
            self._adapter_name(folder)

    def stream(self, messages: Sequence[Message], options: GenerationOptions | None = None, *,
               adapter: str | None = None, cancel: threading.Event | None = None) -> Iterator[GenerationChunk]:
        """``adapter``: a peft adapter folder of the base model to generate with (with
        ``backend_options adapters: per_call``); None runs the model as loaded."""
        options = options or self.spec.options
        prompt, max_new = self.prompt_and_budget(messages, options)
        with self._lock:
            if self._model is None:
                raise DumaError("this onnxruntime backend was closed", "load the model again")
            active = self._active(adapter)
            yield from self._generate(prompt, options, max_new, cancel, active)

    # --- adapters ------------------------------------------------------------------------

    def _active(self, adapter: str | None) -> str | None:
        """The onnxruntime-genai adapter name a call runs with (None: the bare model)."""
        folder = str(Path(adapter).expanduser().resolve()) if adapter else None
        if not self.per_call:
            if folder is not None and folder != self.adapter:
                loaded = f"with adapter {self.adapter} merged in" if self.adapter else "without adapters"
                raise DumaError(f"this onnxruntime backend was loaded {loaded}",
                                "set backend_options adapters: per_call to switch adapters per call")
            return self._own_adapter()
        folder = folder or self.adapter
        return self._adapter_name(folder) if folder is not None else self._own_adapter()

    def _own_adapter(self) -> str | None:
        """The adapter file a folder was quantized with (``-o adapter file``): the model as
        it was written, so calls that name no adapter run with it. Called under the lock."""
        from duma.plugins.quantizers.onnx import ADAPTER_FILE

        path = self.folder / ADAPTER_FILE
        if "" in self._adapter_names or not path.is_file():
            return self._adapter_names.get("")
        try:
            if self._adapters is None:
                self._adapters = self._og.Adapters(self._model)
            self._adapters.load(str(path), "own")
        except Exception as exc:
            raise ModelLoadError(f"cannot load {path}: {first_line(exc, with_type=True)}", self._hint()) from None
        self._adapter_names[""] = "own"
        return "own"

    def _adapter_name(self, folder: str) -> str:
        """Convert (once, cached) and register an adapter folder. Called under the lock."""
        from duma.models import model_cache_dir
        from duma.plugins.quantizers.onnx import write_adapter_file
        from duma.quantizer import QuantizeError

        folder = str(Path(folder).expanduser().resolve())
        if folder in self._adapter_names:
            return self._adapter_names[folder]
        if not self.per_call:
            raise DumaError("this onnxruntime backend does not switch adapters per call",
                            "set backend_options adapters: per_call")
        if not (Path(folder) / "adapter_config.json").is_file():
            raise ModelLoadError(f"adapter folder {folder} has no adapter_config.json",
                                 "give a folder saved by peft (save_pretrained of a PeftModel)")
        digest = hashlib.sha256(f"{version_stamp(Path(folder))}\nmodel:{self.folder.resolve()}".encode()).hexdigest()[:10]
        path = model_cache_dir() / "onnx" / "adapters" / f"{_slug(Path(folder).name)}-{digest}.onnx_adapter"
        try:
            if not path.is_file():
                write_adapter_file(Path(folder), self.folder, path)
            if self._adapters is None:
                self._adapters = self._og.Adapters(self._model)
            name = f"adapter{len(self._adapter_names)}"
            self._adapters.load(str(path), name)
        except QuantizeError as exc:
            raise ModelLoadError(f"cannot load the adapter from {folder}: {exc.message}", exc.hint) from None
        except Exception as exc:
            raise ModelLoadError(f"cannot load the adapter from {folder}: {first_line(exc, with_type=True)}",
                                 "check that the adapter was trained on this base model") from None
        self._adapter_names[folder] = name
        return name

    # --- decoding ------------------------------------------------------------------------

    def _new_slot(self, adapter: str | None, needed: int) -> _Slot:
        og = self._og
        # The KV buffer is allocated for max_length up front (past and present share it:
        # about 1.4x the decode speed of a buffer grown per token at 1000 tokens of context
        # here), at 46 KB per position of SmolLM2 in float32, so 8192 would be ~380 MB per
        # kept conversation. Room for twice what this call needs (at most 2048 more) lets
        # the next turns reuse it; a conversation that outgrows it moves to a larger one.
        capacity = min(self.context_length, _round_up(needed + min(max(needed, 512), 2048), 256))
        params = og.GeneratorParams(self._model)
        params.set_search_options(max_length=capacity, past_present_share_buffer=True)
        generator = og.Generator(self._model, params)
        if adapter is not None:
            generator.set_active_adapter(self._adapters, adapter)
        return _Slot(generator, adapter, capacity)

    def _take_slot(self, prompt: list[int], adapter: str | None, needed: int) -> tuple[_Slot, int]:
        """A generator holding the longest available prefix of ``prompt``, and that length.

        A kept conversation that ``prompt`` continues is taken over and extended. One that
        shares only a beginning is rewound to it when that saves more than it throws away
        (or no slot is free); otherwise a new generator leaves it intact for its own
        conversation (generators cannot be copied). At least the last prompt token is always
        run, for its logits. ``needed``: the prompt and reply tokens the generator must hold.
        """
        best, best_len = None, 0
        for slot in self._slots:
            if slot.adapter != adapter:
                continue
            common = min(common_prefix_length(slot.ids, prompt), len(prompt) - 1)
            if common > best_len or (common == best_len and best is not None and common == len(slot.ids)):
                best, best_len = slot, common
        if best is None:
            return self._new_slot(adapter, needed), 0
        if best.capacity < needed:
            self._slots.remove(best)  # its conversation goes on in a larger generator
            return self._new_slot(adapter, needed), 0
        lost = len(best.ids) - best_len
        room = len(self._slots) < self._cache_slots
        if lost and room and lost > best_len:
            return self._new_slot(adapter, needed), 0
        self._slots.remove(best)
        if lost:
            best.generator.rewind_to(best_len)
            del best.ids[best_len:]
        return best, best_len

    def _keep_slot(self, slot: _Slot) -> None:
        if self._cache_slots == 0:
            return
        if slot in self._slots:
            self._slots.remove(slot)
        self._slots.append(slot)
        del self._slots[:-self._cache_slots]

    def _generate(self, prompt: list[int], options: GenerationOptions, max_new: int,
                  cancel: threading.Event | None, adapter: str | None) -> Iterator[GenerationChunk]:
        import torch


        streamer = TokenStreamer(self.tokenizer, prompt, options, max_new, self._eos_ids, cancel)
        slot, reused = self._take_slot(prompt, adapter, len(prompt) + max_new)
        self.last_prefix_reused = reused
        sampler = Sampler(torch, options, "cpu", streamer.constraint)
        # Every token fed so far (prompt and reply), for the repetition penalty.
        history = torch.tensor(prompt[:reused], dtype=torch.long) if sampler.needs_history else None
        # False while tokens are being appended: a call that raised may have left the KV
        # cache part-way, and such a generator must not be kept.
        consistent = True
        try:
            fed = prompt[reused:]
            while True:
                consistent = False
                slot.generator.append_tokens(fed)
                slot.ids.extend(fed)
                consistent = True
                logits = torch.from_numpy(slot.generator.get_logits()[0, -1])
                if history is not None:
                    history = torch.cat([history, torch.tensor(fed, dtype=torch.long)])
                token = int(sampler.pick(logits, history))
                text = streamer.push(token)
                if text:
                    yield GenerationChunk(text=text)
                if streamer.finished:
                    break
                fed = [token]
        finally:
            if consistent:
                self._keep_slot(slot)
        yield from streamer.close()
