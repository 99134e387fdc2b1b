"""The ``transformers`` backend: runs a Hugging Face causal LM in-process (CPU or CUDA).

Generation is a hand-written decode loop over the model's forward pass with a KV cache,
not ``model.generate``: no per-step logits-processor and stopping-criteria machinery, logits
for the last position only, and the KV cache of recent conversations is kept so that a
follow-up turn only runs the new tokens through the model (its longest common token prefix
with a cached conversation is reused). Greedy output equals ``model.generate(do_sample=False)``.
``options.constraint`` masks the logits before each pick (:class:`duma.backend.Sampler`).

torch and transformers are imported inside methods: the module is imported the first time a
backend is looked up.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from duma.backend import BackendCapabilities, Sampler, TokenizedBackend, TokenStreamer, common_prefix_length, eos_token_ids
from duma.errors import DumaError
from duma.types import GenerationChunk, GenerationOptions, Message, ModelSpec

# Conversations whose KV cache is kept for reuse (fast and slow minds share one backend).
DEFAULT_CACHE_SLOTS = 4


@dataclass(eq=False)
class _CacheSlot:
    """A KV cache, the token ids whose keys/values it holds, and the adapter they were
    computed with (keys and values differ per adapter)."""

    cache: Any
    ids: list[int] = field(default_factory=list)
    adapter: str | None = None


def _is_plain_dynamic(cache: Any) -> bool:
    """Only full-attention layers can be cut at any length (not sliding windows)."""
    return all(type(layer).__name__ == "DynamicLayer" for layer in getattr(cache, "layers", [None]))


def _new_cache(config: Any) -> Any:
    """A KV cache for one conversation. (A pre-allocated buffer instead of transformers'
    concatenating layers measured slower at chat lengths: attention over strided views
    costs more than the concatenation saves.)"""
    from transformers import DynamicCache

    return DynamicCache(config=config)


class TransformersBackend(TokenizedBackend):
    """A transformers causal LM (``embedded``, an HF folder or a .gguf file) in-process."""

    name = "transformers"
    capabilities = BackendCapabilities(prefill=True, adapters_per_call=True, kv_reuse=True,
                                       exact_token_count=True, constrained_decoding=True)

    @classmethod
    def capabilities_for(cls, spec: ModelSpec) -> BackendCapabilities:
        # int8 weights cannot take a merged adapter back out: one copy per adapter then (and a
        # folder duma quantize wrote takes none).
        if spec.dtype == "int8" or (Path(spec.model).expanduser() / "duma-quantized.json").is_file():
            return cls.capabilities.model_copy(update={"adapters_per_call": False})
        return cls.capabilities

    def __init__(self, spec: ModelSpec, *, cache_slots: int = DEFAULT_CACHE_SLOTS) -> None:
        super().__init__(spec)
        import torch

        from duma import models

        self._torch = torch
        self.device = models.pick_device(spec.device)
        self.tokenizer = models.load_tokenizer(spec.model)
        self.model = models.load_model(spec.model, device=self.device, dtype=spec.dtype,
                                       adapter=spec.adapter, merge_adapter=True)
        self._lock = threading.Lock()
        self._cache_slots = max(0, cache_slots)
        self._slots: list[_CacheSlot] = []  # most recently used last
        self._eos_ids = self._find_eos_ids()
        # Prompt tokens whose KV cache the last call reused (0: it ran the whole prompt).
        self.last_prefix_reused = 0
        # Adapters switched per call (``stream(adapter=...)``): the peft wrapper, once the
        # first adapter is loaded, the adapter names by folder, and the active folder.
        self._peft: Any = None
        self._adapter_names: dict[str, str] = {}
        self._active_adapter: str | None = None
        # float32 weights take the active adapter merged in (no per-token adapter cost, and
        # W + d - d is exact to within an ulp); lower precisions run it unmerged instead.
        self._merge_adapters = str(self.model.dtype) == "torch.float32"
        # peft's layer wrappers taken out of the model while they would only call their base
        # layer (parent module, attribute, wrapper): put back before peft touches them.
        self._unwrapped: list[tuple[Any, str, Any]] = []

    # --- loading -------------------------------------------------------------------------

    def _find_eos_ids(self) -> set[int]:
        configured = getattr(getattr(self.model, "generation_config", None), "eos_token_id", None)
        if configured is None:
            configured = getattr(self.model.config, "eos_token_id", None)
        return eos_token_ids(configured, self.tokenizer)

    # --- public API ----------------------------------------------------------------------

    @property
    def context_length(self) -> int:
        config = self.model.config
        for key in ("max_position_embeddings", "n_positions", "max_sequence_length", "seq_length"):
            value = getattr(config, key, None)
            if isinstance(value, int) and value > 0:
                return value
        return super().context_length

    def close(self) -> None:
        with self._lock:
            self._slots.clear()

    def clear_cache(self) -> None:
        """Forget the kept KV caches (the next call prefills its whole prompt)."""
        with self._lock:
            self._slots.clear()

    def stream(self, messages: Sequence[Message], options: GenerationOptions | None = None, *,
               adapter: str | None = None, cancel: threading.Event | None = None) -> Iterator[GenerationChunk]:
        """``adapter``: a peft adapter folder of this base model to generate with (loaded on
        first use, then switched per call); None runs the base model."""
        options = options or self.spec.options
        prompt, max_new = self.prompt_and_budget(messages, options)
        with self._lock:
            self._activate(adapter)
            yield from self._generate(prompt, options, max_new, cancel)

    # --- adapters ------------------------------------------------------------------------

    def load_adapter(self, folder: str) -> None:
        """Load an adapter now (its errors surface at load time, not on the first turn)."""
        with self._lock, self._peft_layers():
            self._load_adapter(folder)

    def _activate(self, adapter: str | None) -> None:
        """Make ``adapter`` (a folder, or None for the base model) the one the next forward
        passes use. Called under the lock."""
        if adapter == self._active_adapter:
            return
        if adapter is not None and self.spec.adapter is not None:
            raise DumaError(f"this backend was loaded with adapter {self.spec.adapter} merged in",
                            "load the base model (no adapter) to switch adapters per call")
        with self._peft_layers():
            if adapter is not None:
                self._load_adapter(adapter)
            self._use_base()
            self._use(adapter)

    @contextmanager
    def _peft_layers(self) -> Iterator[None]:
        """peft's wrappers in the model while peft loads, merges or switches adapters; out of
        it afterwards wherever they would only call their base layer (the active adapter is
        merged, or none is active). Each wrapper costs a few microseconds per call, and a
        forward pass makes hundreds of them."""
        for parent, name, wrapper in self._unwrapped:
            setattr(parent, name, wrapper)
        self._unwrapped = []
        try:
            yield
        finally:
            if self._peft is not None and (self._merge_adapters or self._active_adapter is None):
                from peft.tuners.tuners_utils import BaseTunerLayer

                self._unwrapped = [(parent, name, child) for parent in self.model.modules()
                                   for name, child in parent.named_children() if isinstance(child, BaseTunerLayer)]
                for parent, name, wrapper in self._unwrapped:
                    setattr(parent, name, wrapper.base_layer)

    def _use_base(self) -> None:
        if self._peft is None:
            return
        if self._merge_adapters and self._active_adapter is not None:
            self._peft.unmerge_adapter()
        self._peft.base_model.disable_adapter_layers()
        self._active_adapter = None

    def _use(self, adapter: str | None) -> None:
        if adapter is not None:
            self._peft.base_model.enable_adapter_layers()
            self._peft.set_adapter(self._adapter_names[adapter])
            if self._merge_adapters:
                self._peft.merge_adapter()
        self._active_adapter = adapter

    def _load_adapter(self, folder: str) -> str:
        from duma import models

        if folder not in self._adapter_names:
            active = self._active_adapter
            self._use_base()  # the new adapter goes into unmerged layers
            name = f"adapter{len(self._adapter_names)}"
            self._peft = models.attach_adapter(self.model, folder, name=name, peft_model=self._peft)
            self._peft.eval()
            self._adapter_names[folder] = name
            self._use_base()  # peft activates what it loads: back to the plain base model
            self._use(active)
        return self._adapter_names[folder]

    # --- decoding ------------------------------------------------------------------------

    def _take_slot(self, prompt: list[int]) -> tuple[_CacheSlot, int]:
        """A cache holding the longest available prefix of ``prompt``, and that length.

        A kept conversation that ``prompt`` continues is taken over and extended. One that
        only shares a beginning (a system prompt, an earlier turn) is forked: the new slot
        starts from a copy of its prefix and the kept one stays intact for its own
        conversation. At least the last prompt token is always run, for its logits.
        """
        best, best_len = None, 0
        for slot in self._slots:
            if slot.adapter != self._active_adapter:
                continue
            common = min(common_prefix_length(slot.ids, prompt), len(prompt) - 1)
            if common > best_len:
                best, best_len = slot, common
        if best is None or not _is_plain_dynamic(best.cache):
            return _CacheSlot(_new_cache(self.model.config), adapter=self._active_adapter), 0
        if best_len == len(best.ids):
            self._slots.remove(best)
            return best, best_len
        forked = _new_cache(self.model.config)
        for index, layer in enumerate(best.cache.layers):
            if layer.is_initialized:
                forked.update(layer.keys[..., :best_len, :], layer.values[..., :best_len, :], index)
        return _CacheSlot(forked, best.ids[:best_len], adapter=self._active_adapter), best_len

    def _keep_slot(self, slot: _CacheSlot) -> None:
        if self._cache_slots == 0:
            return
        if slot in self._slots:
            self._slots.remove(slot)
        self._slots.append(slot)
        del self._slots[:-self._cache_slots]

    def _step(self, step_input: Any, cache: Any, sampler: Sampler, history: Any) -> tuple[Any, Any]:
        """One forward pass over the new tokens and the pick of the next token. Inference
        mode is entered here, not around the whole stream, so it never leaks into the
        caller's code between chunks."""
        torch = self._torch
        with torch.inference_mode():
            out = self.model(input_ids=step_input, cache=cache, use_cache=True, logits_to_keep=1)
            if history is not None:
                history = torch.cat([history, step_input[0]]) if history.numel() else step_input[0]
            next_id = sampler.pick(out.logits[0, -1], history)
        return next_id, history

    def _generate(self, prompt: list[int], options: GenerationOptions, max_new: int,
                  cancel: threading.Event | None) -> Iterator[GenerationChunk]:
        torch = self._torch
        streamer = TokenStreamer(self.tokenizer, prompt, options, max_new, self._eos_ids, cancel)
        slot, reused = self._take_slot(prompt)
        self.last_prefix_reused = reused
        sampler = Sampler(torch, options, self.device, streamer.constraint)
        # Every token fed so far (prompt and reply) as one tensor, for the repetition penalty.
        history = torch.tensor(prompt[:reused], dtype=torch.long, device=self.device) if sampler.needs_history else None
        # False while a forward pass runs: a pass that raised may have updated only some
        # layers, and such a cache must not be kept.
        consistent = True
        try:
            step_input = torch.tensor([prompt[reused:]], dtype=torch.long, device=self.device)
            fed = prompt[reused:]
            while True:
                consistent = False
                next_id, history = self._step(step_input, slot.cache, sampler, history)
                slot.ids.extend(fed)
                consistent = True
                token = int(next_id)  # the one host sync per token
                text = streamer.push(token)
                if text:
                    yield GenerationChunk(text=text)
                if streamer.finished:
                    break
                step_input = next_id.view(1, 1)
                fed = [token]
        finally:
            if consistent:
                self._keep_slot(slot)
        yield from streamer.close()
