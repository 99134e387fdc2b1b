"""The ``vllm`` backend: a Hugging Face model folder served in-process by vLLM on a CUDA GPU
(``pip install 'duma[vllm]'``), both minds as LoRA adapters of one loaded base.

vLLM batches concurrent requests and applies a LoRA adapter per request, so a fast and a slow
mind on one base share its weights and run side by side: ``stream(adapter=FOLDER)`` picks the
adapter of each call (``spec.adapter`` is the default). Prompts are token ids from
:func:`duma.rendering.render_prompt_ids` with the model folder's tokenizer, the one rendering
shared with training (vLLM's own chat formatting is not used); a trailing assistant message is
continued. vLLM's prefix cache keeps the KV cache of recent prompts, so a conversation's next
turn reuses its history.

vLLM's engine is asynchronous: it runs on one asyncio loop in a thread owned by the backend.
``stream`` (called from any thread) submits a request to that loop and reads its text deltas
from a queue; ``cancel``, or closing the stream early, aborts the request in vLLM.

``options.constraint`` goes to vLLM's structured outputs (a regex, enforced by its guidance or
xgrammar backend while decoding).

``backend_options``: gpu_memory_utilization, max_model_len, max_lora_rank, max_loras,
tensor_parallel_size, dtype. A GGUF file (``embedded`` is one) is not run here: give an HF
folder. vllm is imported when a model loads, never at module import.
"""

from __future__ import annotations

import asyncio
import importlib.util
import json
import queue
import threading
import time
import uuid
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from duma.backend import BackendCapabilities, StopFilter, TokenizedBackend
from duma.errors import DumaError, ModelLoadError, first_line
from duma.types import GenerationChunk, GenerationOptions, Message, ModelSpec, Timings, Usage

INSTALL_MESSAGE = "the vllm backend needs the vllm extra: pip install 'duma[vllm]' (a CUDA GPU)"
# How often a stream waiting for vLLM's next output looks at its cancel event.
CANCEL_POLL_S = 0.05
_END = object()


class VLLMOptions(BaseModel):
    """``backend_options`` of the vllm backend."""

    model_config = ConfigDict(extra="forbid")

    gpu_memory_utilization: float = Field(0.85, gt=0.0, le=1.0, description="Share of the GPU's memory vLLM "
                                          "takes for weights and KV cache.")
    max_model_len: int = Field(4096, ge=64, description="Context length (prompt plus reply) to allocate; at "
                               "most the model's own.")
    max_lora_rank: int = Field(64, ge=1, description="Largest LoRA rank an adapter may have.")
    max_loras: int = Field(2, ge=1, description="Adapters on the GPU at once (both minds: 2).")
    tensor_parallel_size: int = Field(1, ge=1, description="GPUs the model is split across.")
    dtype: Literal["auto", "bfloat16", "float16", "float32"] = Field(
        "auto", description="Weight type; auto: the model spec's dtype, else vLLM's choice (the model's).")


class VLLMBackend(TokenizedBackend):
    """An HF causal LM in-process through vLLM, LoRA adapters switched per request."""

    name = "vllm"
    Options = VLLMOptions
    capabilities = BackendCapabilities(prefill=True, adapters_per_call=True, kv_reuse=True, exact_token_count=True,
                                       constrained_decoding=True)

    def __init__(self, spec: ModelSpec) -> None:
        super().__init__(spec)
        options: VLLMOptions = self.backend_options  # type: ignore[assignment]
        if importlib.util.find_spec("vllm") is None:
            raise ModelLoadError(INSTALL_MESSAGE)
        import torch

        if spec.device == "cpu" or not torch.cuda.is_available():
            raise ModelLoadError("the vllm backend needs a CUDA GPU, and " +
                                 ("the model spec says device cpu" if spec.device == "cpu" else "none is available"),
                                 "use backend transformers or onnxruntime on this machine")
        if spec.dtype == "int8":
            raise ModelLoadError("the vllm backend takes no dtype 'int8'", "use auto, bfloat16, float16 or float32")
        from vllm import AsyncEngineArgs, AsyncLLMEngine

        from duma import models

        folder = self._model_folder(spec.model)
        self.tokenizer = models.load_tokenizer(str(folder))
        self._max_model_len = _context_length(folder, options.max_model_len)
        self._lock = threading.Lock()
        self._loras: dict[str, Any] = {}  # adapter folder -> its LoRARequest
        # The engine's own asyncio loop: every engine call runs there.
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="duma-vllm", daemon=True)
        self._thread.start()
        args = AsyncEngineArgs(
            model=str(folder), tokenizer=str(folder),
            dtype=options.dtype if options.dtype != "auto" else spec.dtype,
            max_model_len=self._max_model_len, gpu_memory_utilization=options.gpu_memory_utilization,
            tensor_parallel_size=options.tensor_parallel_size, enable_lora=True,
            max_lora_rank=options.max_lora_rank, max_loras=options.max_loras,
            enable_prefix_caching=True, disable_log_stats=True)

        async def start() -> Any:  # built on the loop, so its background tasks live there
            return AsyncLLMEngine.from_engine_args(args)

        try:
            self.engine = self._call(start())
        except Exception as exc:
            self._stop_loop()
            raise ModelLoadError(f"vLLM cannot load {folder}: {first_line(exc, with_type=True)}",
                                 "check the model folder, the GPU's free memory and backend_options "
                                 "gpu_memory_utilization and max_model_len") from None
        if spec.adapter:
            self.load_adapter(spec.adapter)

    @staticmethod
    def _model_folder(model: str) -> Path:
        from duma import models

        if model == models.EMBEDDED or Path(model).suffix.lower() == ".gguf":
            raise ModelLoadError(f"the vllm backend runs Hugging Face model folders, not '{model}' (a GGUF file)",
                                 "give an HF model folder, as save_pretrained writes it, as the model")
        return models.resolve_model_path(model)

    # --- public API ----------------------------------------------------------------------

    @property
    def context_length(self) -> int:
        return self._max_model_len

    def load_adapter(self, folder: str) -> None:
        """Load an adapter now (its errors surface at load time, not on the first turn)."""
        self._lora_request(folder)

    def close(self) -> None:
        engine = getattr(self, "engine", None)
        if engine is not None:
            engine.shutdown()
            self.engine = None
        self._stop_loop()

    def stream(self, messages: Sequence[Message], options: GenerationOptions | None = None, *,
               adapter: str | None = None, cancel: threading.Event | None = None) -> Iterator[GenerationChunk]:
        """``adapter``: a peft LoRA folder of this base model to generate with (default
        ``spec.adapter``; loaded on first use)."""
        options = options or self.spec.options
        lora = self._lora_request(adapter or self.spec.adapter)
        prompt, max_new = self.prompt_and_budget(messages, options, ", or raise backend_options.max_model_len")
        yield from self._generate(prompt, self._sampling_params(options, max_new), lora, options, cancel)

    # --- engine --------------------------------------------------------------------------

    def _call(self, coro: Any) -> Any:
        """Run a coroutine on the engine's loop and wait for its result."""
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result()

    def _stop_loop(self) -> None:
        if self._loop.is_running():
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(timeout=10)

    def _lora_request(self, folder: str | None) -> Any:
        """The LoRARequest of an adapter folder (registered with the engine on first use)."""
        if folder is None:
            return None
        from vllm.lora.request import LoRARequest

        path = str(Path(folder).expanduser().resolve())
        with self._lock:
            request = self._loras.get(path)
            if request is not None:
                return request
            rank = _adapter_rank(Path(path))
            limit = self.backend_options.max_lora_rank  # type: ignore[attr-defined]
            if rank > limit:
                raise ModelLoadError(f"adapter {path} has LoRA rank {rank}, above backend_options.max_lora_rank "
                                     f"{limit}", f"set backend_options.max_lora_rank to {rank} or more")
            # vLLM tells adapters apart by their integer id (from 1).
            request = LoRARequest(lora_name=Path(path).name, lora_int_id=len(self._loras) + 1, lora_path=path)
            try:
                added = self._call(self.engine.add_lora(request))
            except Exception as exc:
                raise ModelLoadError(f"vLLM cannot load adapter {path}: {first_line(exc, with_type=True)}",
                                     "check that it is a LoRA adapter of this base model") from None
            if added is False:
                raise ModelLoadError(f"vLLM did not load adapter {path}",
                                     "check that it is a LoRA adapter of this base model")
            self._loras[path] = request
            return request

    @staticmethod
    def _sampling_params(options: GenerationOptions, max_new: int) -> Any:
        from vllm import SamplingParams
        from vllm.sampling_params import RequestOutputKind

        extra: dict[str, Any] = {}
        if options.top_k > 0:  # vLLM's "no top-k" is 0 or -1 depending on the version: leave it unset
            extra["top_k"] = options.top_k
        if options.constraint is not None:
            extra.update(_regex_params(options.constraint))
        return SamplingParams(
            max_tokens=max_new, temperature=options.temperature, top_p=options.top_p,
            repetition_penalty=options.repetition_penalty, seed=options.seed,
            stop=[s for s in options.stop if s] or None, skip_special_tokens=True,
            output_kind=RequestOutputKind.DELTA,  # each output holds only the new text and tokens
            **extra)

    def _generate(self, prompt: list[int], params: Any, lora: Any, options: GenerationOptions,
                  cancel: threading.Event | None) -> Iterator[GenerationChunk]:
        from vllm import TokensPrompt

        outputs: queue.SimpleQueue[Any] = queue.SimpleQueue()
        request_id = uuid.uuid4().hex

        async def run() -> None:
            try:
                async for out in self.engine.generate(TokensPrompt(prompt_token_ids=prompt), params, request_id,
                                                      lora_request=lora):
                    outputs.put(out)
            except asyncio.CancelledError:
                raise  # our cancel: vLLM's generate() aborted the request on its way out
            except Exception as exc:
                outputs.put(exc)
            finally:
                outputs.put(_END)

        start = time.perf_counter()
        first_token_s: float | None = None
        generated = 0
        finish = "stop"
        stops = StopFilter(options.stop)  # vLLM applies the stops too; this keeps the contract exact
        future = asyncio.run_coroutine_threadsafe(run(), self._loop)
        try:
            while True:
                if cancel is not None and cancel.is_set():
                    finish = "cancelled"
                    break
                try:
                    item = outputs.get(timeout=CANCEL_POLL_S)
                except queue.Empty:
                    continue
                if item is _END:
                    break
                if isinstance(item, BaseException):
                    reason = item.__cause__ or item
                    raise DumaError(f"vLLM failed to generate: {first_line(reason, with_type=True)}",
                                    "see vLLM's log; a dead engine needs a restart of duma")
                out = item.outputs[0]
                if out.token_ids and first_token_s is None:
                    first_token_s = time.perf_counter() - start
                generated += len(out.token_ids)
                text = stops.push(out.text)
                if text:
                    yield GenerationChunk(text=text)
                if stops.stopped:
                    finish = "stop"
                    break
                if out.finish_reason:
                    finish = {"length": "length", "abort": "cancelled"}.get(out.finish_reason, "stop")
        finally:
            if not future.done():
                future.cancel()  # cancels run(): vLLM aborts the request
        tail = stops.flush()
        if tail:
            yield GenerationChunk(text=tail)
        yield GenerationChunk(
            done=True, finish_reason=finish,  # type: ignore[arg-type]
            usage=Usage(prompt_tokens=len(prompt), completion_tokens=generated),
            timings=Timings(first_token_s=first_token_s, total_s=time.perf_counter() - start))


def _regex_params(pattern: str) -> dict[str, Any]:
    """The SamplingParams keyword that holds the output to ``pattern``: ``structured_outputs``
    from vLLM 0.10.2 (``guided_decoding`` was removed in 0.12), ``guided_decoding`` before."""
    try:
        from vllm.sampling_params import StructuredOutputsParams
    except ImportError:
        from vllm.sampling_params import GuidedDecodingParams

        return {"guided_decoding": GuidedDecodingParams(regex=pattern)}
    return {"structured_outputs": StructuredOutputsParams(regex=pattern)}


def _context_length(folder: Path, wanted: int) -> int:
    """``wanted``, capped at the model's own maximum (vLLM refuses a longer one)."""
    try:
        config = json.loads((folder / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return wanted
    own = config.get("max_position_embeddings")
    return min(wanted, own) if isinstance(own, int) and own > 0 else wanted


def _adapter_rank(folder: Path) -> int:
    """The LoRA rank in a peft adapter folder's adapter_config.json (one-line errors)."""
    config_file = folder / "adapter_config.json"
    if not config_file.is_file():
        raise ModelLoadError(f"adapter folder {folder} has no adapter_config.json",
                             "give a peft LoRA adapter folder, as save_pretrained writes it")
    try:
        config = json.loads(config_file.read_text(encoding="utf-8"))
    except ValueError as exc:
        raise ModelLoadError(f"adapter folder {folder} has an unreadable adapter_config.json ({exc})",
                             "re-export the adapter") from None
    if config.get("peft_type", "LORA") != "LORA":
        raise ModelLoadError(f"adapter {folder} is a {config.get('peft_type')} adapter; vLLM runs LoRA adapters",
                             "train a LoRA adapter, or use backend transformers")
    ranks = [config.get("r", 0), *(config.get("rank_pattern") or {}).values()]
    return max(int(r) for r in ranks if isinstance(r, int | float))
