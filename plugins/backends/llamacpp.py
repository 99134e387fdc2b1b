"""The ``llamacpp`` backend: a GGUF model run by llama.cpp (llama-cpp-python, an optional extra
that builds from source: ``pip install 'duma[llamacpp]'``).

``spec.model`` may be a ``.gguf`` file, used as it is (``embedded`` is one: the shipped Q4_1
file); any other reference duma's loader takes (an HF folder, an adapter folder, or any model
with ``spec.adapter``) is converted once by the ``gguf`` quantizer, adapter merged in, into
``<model cache>/gguf/``: one GGUF per mind, as llama.cpp switches no adapters per call here.

Prompts are token ids from :func:`duma.rendering.render_prompt_ids` with the model's Hugging
Face tokenizer (the one rendering shared with training; llama.cpp's own chat formatting is not
used), and replies are decoded with that tokenizer too. Tokens come from llama.cpp's own
decode loop (``Llama.generate``), which keeps the KV cache of the previous call and reruns only
what follows the longest common token prefix, so a conversation's next turn costs only its new
tokens. One KV sequence is kept: two conversations taking turns share only their common prefix.

llama_cpp is imported when a model loads, never at module import.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import threading
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from duma.backend import (BackendCapabilities, TokenConstraint, TokenizedBackend, TokenStreamer, common_prefix_length,
                          eos_token_ids)
from duma.errors import DumaError, ModelLoadError, first_line
from duma.types import GenerationChunk, GenerationOptions, Message, ModelSpec

INSTALL_HINT = "install it: pip install 'duma[llamacpp]' (builds from source, about 7 minutes)"
# The context duma allocates by default: the KV cache is sized for all of it up front, and
# models train on far longer contexts than a chat needs.
DEFAULT_N_CTX = 4096



class LlamaCppOptions(BaseModel):
    """``backend_options`` of the llamacpp backend."""

    model_config = ConfigDict(extra="forbid")

    n_threads: int | None = Field(None, ge=1, description="CPU threads for decoding (default: one per CPU this "
                                  "process may use, as the onnxruntime backend; llama.cpp's own choice used half "
                                  "of 2 cores).")
    n_ctx: int = Field(DEFAULT_N_CTX, ge=64, description="Context length to allocate (at most the model's "
                       "own).")
    n_batch: int = Field(512, ge=1, description="Prompt tokens per llama.cpp batch.")
    n_gpu_layers: int | None = Field(None, ge=-1, description="Layers offloaded to a GPU (-1: all); default: "
                                     "all with device cuda, none otherwise.")
    quant_type: Literal["F32", "F16", "Q8_0", "Q4_0", "Q4_1", "Q4_K_M", "Q5_K_M", "Q6_K"] = Field(
        "Q8_0", description="GGUF type of models converted for llama.cpp (not of a .gguf given as the model). "
        "Q8_0 keeps a merged adapter almost exactly.")


class LlamaCppBackend(TokenizedBackend):
    """A GGUF model in-process through llama.cpp."""

    name = "llamacpp"
    Options = LlamaCppOptions
    capabilities = BackendCapabilities(prefill=True, adapters_per_call=False, kv_reuse=True, exact_token_count=True,
                                       constrained_decoding=True)

    def __init__(self, spec: ModelSpec) -> None:
        super().__init__(spec)
        try:
            import llama_cpp
        except ImportError:
            raise ModelLoadError("backend 'llamacpp' needs llama-cpp-python, which is not installed",
                                 INSTALL_HINT) from None
        if spec.dtype != "auto":
            raise ModelLoadError(f"backend 'llamacpp' takes no dtype '{spec.dtype}': a GGUF file has its own types",
                                 "leave dtype auto; backend_options.quant_type sets the type of converted models")
        from duma import models

        self._llama_cpp = llama_cpp
        options: LlamaCppOptions = self.backend_options  # type: ignore[assignment]
        self.gguf_path, tokenizer_source = self._resolve(spec, options.quant_type)
        self.llm = self._load(self.gguf_path, options, spec.device)
        # After the model: llama.cpp's error names a damaged file better than a tokenizer reader's.
        self.tokenizer = (_gguf_tokenizer(self.gguf_path) if tokenizer_source is None
                          else models.load_tokenizer(tokenizer_source))
        vocab = llama_cpp.llama_model_get_vocab(self.llm.model)
        # Every end-of-generation token llama.cpp knows (EOS, end of turn...), and the tokenizer's.
        self._eos_ids = eos_token_ids([t for t in range(int(self.llm.n_vocab()))
                                       if llama_cpp.llama_vocab_is_eog(vocab, t)], self.tokenizer)
        train_ctx = int(llama_cpp.llama_model_n_ctx_train(self.llm.model))
        self._context_length = min(int(self.llm.n_ctx()), train_ctx) if train_ctx > 0 else int(self.llm.n_ctx())
        self._lock = threading.Lock()
        # The token ids llama.cpp holds keys/values for (what the next call can reuse).
        self._context_ids: list[int] = []
        # Prompt tokens whose KV cache the last call reused (0: it ran the whole prompt).
        self.last_prefix_reused = 0

    # --- loading -------------------------------------------------------------------------

    @staticmethod
    def _resolve(spec: ModelSpec, quant_type: str) -> tuple[Path, str | None]:
        """The GGUF file to run, and the model reference whose HF tokenizer renders its prompts
        (None: the tokenizer inside the GGUF file)."""
        from duma import models

        model, adapter = models.split_adapter(spec.model, spec.adapter)
        if adapter is None:
            if model == models.EMBEDDED:
                return models.embedded_gguf_path(), None  # the shipped file is a GGUF already
            path = Path(model).expanduser()
            if path.suffix.lower() == ".gguf" and (path.is_file() or not path.exists()):
                return path, None
        return _converted_gguf(model, adapter, quant_type), adapter or model

    def _load(self, path: Path, options: LlamaCppOptions, device: str) -> Any:
        n_gpu_layers = options.n_gpu_layers
        if n_gpu_layers is None:
            # A llama.cpp built with GPU support offloads everything unless the spec says cpu.
            n_gpu_layers = -1 if device != "cpu" and self._llama_cpp.llama_supports_gpu_offload() else 0
        if not path.is_file():
            raise ModelLoadError(f"GGUF file {path} does not exist", "check the model path")
        try:
            # last_n_tokens_size: the repetition penalty covers every token of the reply (llama.cpp
            # reads -1 or 0 as "no penalty", and its default window is 64 tokens).
            return self._llama_cpp.Llama(model_path=str(path), n_ctx=options.n_ctx, n_batch=options.n_batch,
                                         n_threads=options.n_threads or len(os.sched_getaffinity(0)), n_gpu_layers=n_gpu_layers,
                                         last_n_tokens_size=options.n_ctx, verbose=bool(os.environ.get("DUMA_DEBUG")))
        except Exception as exc:  # llama.cpp says only "Failed to load model from file"
            raise ModelLoadError(f"llama.cpp cannot load GGUF file {path}: {first_line(exc, with_type=True)}",
                                 "check that the file is complete and of an architecture llama.cpp supports") from None

    # --- public API ----------------------------------------------------------------------

    @property
    def context_length(self) -> int:
        return self._context_length

    def clear_cache(self) -> None:
        """Forget the kept KV cache (the next call prefills its whole prompt)."""
        with self._lock:
            self.llm.reset()
            self._context_ids = []

    def close(self) -> None:
        with self._lock:
            self.llm.close()

    def stream(self, messages: Sequence[Message], options: GenerationOptions | None = None, *,
               adapter: str | None = None, cancel: threading.Event | None = None) -> Iterator[GenerationChunk]:
        if adapter is not None and adapter != self.spec.adapter:
            raise DumaError("backend 'llamacpp' runs one model per mind and cannot switch adapters per call",
                            "give the adapter in the mind's model spec (adapter: FOLDER)")
        options = options or self.spec.options
        prompt, max_new = self.prompt_and_budget(messages, options, ", or raise backend_options.n_ctx")
        with self._lock:
            yield from self._generate(prompt, options, max_new, cancel)

    # --- decoding ------------------------------------------------------------------------

    def _reusable(self, prompt: list[int]) -> int:
        """Prompt tokens llama.cpp's generate will not run again: the common prefix with what it
        holds, less the last prompt token when the whole prompt is held (its logits are rerun),
        unless the state ends exactly at the prompt."""
        common = common_prefix_length(self._context_ids, prompt)
        if common == len(prompt):
            return common if len(self._context_ids) == len(prompt) else common - 1
        return common

    def _generate(self, prompt: list[int], options: GenerationOptions, max_new: int,
                  cancel: threading.Event | None) -> Iterator[GenerationChunk]:
        llm = self.llm
        streamer = TokenStreamer(self.tokenizer, prompt, options, max_new, self._eos_ids, cancel)
        self.last_prefix_reused = self._reusable(prompt)
        greedy = options.temperature == 0
        llm.set_seed(options.seed if options.seed is not None else random.getrandbits(31))
        # llama.cpp's chain: penalties, top-k, top-p, temperature, draw (greedy: penalties, argmax);
        # its min-p and typical filters stay off, as they are not duma options. Unlike the
        # transformers backend, the repetition penalty counts the reply's tokens, not the prompt's.
        tokens = llm.generate(prompt, temp=0.0 if greedy else options.temperature, top_k=options.top_k,
                              top_p=options.top_p, min_p=0.0, typical_p=1.0,
                              repeat_penalty=options.repetition_penalty, reset=True,
                              logits_processor=mask_processor(streamer.constraint))
        try:
            for token in tokens:
                text = streamer.push(int(token))
                if text:
                    yield GenerationChunk(text=text)
                if streamer.finished:
                    break
        finally:
            tokens.close()
            # llama.cpp ran the prompt and every token but the last one sampled.
            self._context_ids = (prompt + streamer.generated)[: llm.n_tokens]
        yield from streamer.close()


def mask_processor(constraint: TokenConstraint | None) -> list[Any] | None:
    """``options.constraint`` as a llama.cpp logits processor: the tokens it rules out get
    -inf before llama.cpp's sampling chain. llama.cpp hands the processor every token's logit
    in id order (it runs first in the chain); the constraint advances as the streamer takes
    each token. None without a constraint (llama.cpp's own chain alone)."""
    if constraint is None:
        return None

    def process(input_ids: Any, scores: Any) -> Any:
        import numpy as np

        scores[~constraint.allowed(len(scores))] = -np.inf
        return scores

    return [process]


# --- files -----------------------------------------------------------------------------------

def _gguf_tokenizer(gguf: Path) -> Any:
    """The HF tokenizer stored in a GGUF file. transformers needs seconds to read it from the
    GGUF, so it is saved once as a tokenizer folder beside the converted models."""
    from transformers import AutoTokenizer

    from duma.models import model_cache_dir
    from duma.paths import temporary_path

    folder = model_cache_dir() / "gguf" / "tokenizers" / _file_key(gguf)
    try:
        if (folder / "tokenizer_config.json").is_file():
            return AutoTokenizer.from_pretrained(str(folder))
        tokenizer = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    except Exception as exc:
        raise ModelLoadError(f"cannot read the tokenizer of GGUF file {gguf}: {first_line(exc, with_type=True)}",
                             "check that the file is a complete GGUF model with its tokenizer") from None
    tmp = temporary_path(folder)
    try:
        tokenizer.save_pretrained(str(tmp))
        folder.parent.mkdir(parents=True, exist_ok=True)
        os.rename(tmp, folder)
    except OSError:
        pass  # a read-only cache or another process first: the tokenizer in hand is the same
    finally:
        if tmp.exists():
            import shutil

            shutil.rmtree(tmp, ignore_errors=True)
    return tokenizer


def _file_key(path: Path) -> str:
    """A cache name tied to one version of a file or folder (path, sizes, modification times)."""
    from duma.paths import version_stamp

    digest = hashlib.sha256(version_stamp(path).encode()).hexdigest()[:10]
    return f"{path.expanduser().resolve().stem.lower()}-{digest}"


def _converted_gguf(model: str, adapter: str | None, quant_type: str) -> Path:
    """``model`` (with ``adapter`` merged in) as a ``quant_type`` GGUF file in the model cache,
    written once by the gguf quantizer."""
    from duma import models
    from duma.quantizer import convert_once

    source = models.embedded_gguf_path() if model == models.EMBEDDED else Path(model)
    if not source.exists():
        models.resolve_model_path(model)  # its one-line error for a missing model
    key = json.dumps([_file_key(source), _file_key(Path(adapter)) if adapter else None, quant_type])
    label = Path(adapter).name if adapter else ("embedded" if model == models.EMBEDDED else source.stem)
    digest = hashlib.sha256(key.encode()).hexdigest()[:10]
    out = models.model_cache_dir() / "gguf" / f"{label}-{quant_type.lower()}-{digest}.gguf"
    return convert_once(model, "gguf", out, backend="llamacpp", adapter=adapter, options={"type": quant_type},
                        title=f"duma: converting {label} once to a {quant_type} GGUF file for llama.cpp")
