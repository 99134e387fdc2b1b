"""The vllm backend. Most of it needs the vllm extra and a CUDA GPU, and is skipped elsewhere:
there it runs a tiny random Llama with two random LoRA adapters (made here with peft)."""

from __future__ import annotations

import importlib.util
import threading

import pytest

from duma.errors import ConfigError, ModelLoadError
from duma.plugins.backends.vllm import VLLMBackend
from duma.types import GenerationOptions, Message, ModelSpec

HAS_VLLM = importlib.util.find_spec("vllm") is not None
PROMPT = [Message(role="user", content="What is the capital of France?")]
GREEDY = GenerationOptions(max_tokens=16, temperature=0.0, max_repeats=None)


def _has_cuda() -> bool:
    import torch

    return torch.cuda.is_available()


needs_gpu = pytest.mark.skipif(not (HAS_VLLM and _has_cuda()),
                               reason="needs the vllm extra (pip install 'duma[vllm]') and a CUDA GPU")


# --- anywhere --------------------------------------------------------------------------------

def test_registered():
    from duma import host

    assert host.get("backend", "vllm") is VLLMBackend
    assert VLLMBackend.capabilities.adapters_per_call


def test_backend_options_are_checked_before_loading():
    with pytest.raises(ConfigError, match="backend_options.nope: unknown key"):
        VLLMBackend(ModelSpec(backend="vllm", model="m", backend_options={"nope": 1}))


@pytest.mark.skipif(HAS_VLLM, reason="vllm is installed")
def test_without_vllm_a_one_line_error():
    with pytest.raises(ModelLoadError) as info:
        VLLMBackend(ModelSpec(backend="vllm", model="m"))
    assert "pip install 'duma[vllm]'" in str(info.value) and "\n" not in str(info.value)


def test_a_constraint_goes_to_structured_outputs_or_to_guided_decoding_before_it(monkeypatch):
    import sys
    import types

    from duma.plugins.backends.vllm import _regex_params

    def params(**names):  # a stand-in for vllm.sampling_params of one vLLM version
        module = types.ModuleType("vllm.sampling_params")
        for name, kind in names.items():
            setattr(module, name, lambda regex, kind=kind: (kind, regex))
        return module

    monkeypatch.setitem(sys.modules, "vllm", types.ModuleType("vllm"))
    monkeypatch.setitem(sys.modules, "vllm.sampling_params", params(StructuredOutputsParams="new",
                                                                    GuidedDecodingParams="old"))
    assert _regex_params("a+") == {"structured_outputs": ("new", "a+")}
    monkeypatch.setitem(sys.modules, "vllm.sampling_params", params(GuidedDecodingParams="old"))
    assert _regex_params("a+") == {"guided_decoding": ("old", "a+")}


# --- on a GPU --------------------------------------------------------------------------------

def _lora(base, out, seed: int) -> str:
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_pretrained(str(base))
    # Random (not zero) B matrices: the adapter changes what the model writes.
    config = LoraConfig(r=8, lora_alpha=16, target_modules=["q_proj", "v_proj"], init_lora_weights=False)
    get_peft_model(model, config).save_pretrained(str(out))
    return str(out)


@pytest.fixture(scope="module")
def vllm_setup(tmp_path_factory):
    from duma.testing import make_tiny_model

    root = tmp_path_factory.mktemp("vllm")
    # hidden 256 with 4 heads: head size 64, one that vLLM's attention kernels take.
    base = make_tiny_model(root / "base", hidden=256)
    adapters = [_lora(base, root / "lora-a", seed=1), _lora(base, root / "lora-b", seed=2)]
    backend = VLLMBackend(ModelSpec(backend="vllm", model=str(base), backend_options={
        "max_model_len": 512, "gpu_memory_utilization": 0.3, "max_lora_rank": 8}))
    yield backend, adapters
    backend.close()


def _text(backend, adapter=None, options=GREEDY) -> str:
    return backend.generate(PROMPT, options, adapter=adapter).text


@needs_gpu
def test_streams_deltas_and_a_last_chunk_with_usage(vllm_setup):
    backend, _ = vllm_setup
    chunks = list(backend.stream(PROMPT, GREEDY))
    last = chunks[-1]
    assert last.done and last.finish_reason in ("stop", "length")
    assert all(not c.done for c in chunks[:-1]) and any(c.text for c in chunks[:-1])
    assert last.usage.prompt_tokens == backend.count_tokens(PROMPT)
    assert 1 <= last.usage.completion_tokens <= 16
    assert last.timings.first_token_s is not None
    assert backend.context_length == 512


@needs_gpu
def test_adapters_per_request(vllm_setup):
    backend, (a, b) = vllm_setup
    base, with_a, with_b = _text(backend), _text(backend, a), _text(backend, b)
    assert _text(backend, a) == with_a  # greedy: the same text again
    assert len({base, with_a, with_b}) > 1  # the adapters are applied
    # Both adapters at once, from two threads: vLLM batches the two requests. (Their texts are
    # not compared with the ones above: half-precision kernels may differ with the batch.)
    results: dict[str, str] = {}
    threads = [threading.Thread(target=lambda n=n: results.__setitem__(n, _text(backend, n))) for n in (a, b)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert set(results) == {a, b}


@needs_gpu
def test_cancel_and_max_tokens(vllm_setup):
    backend, (a, _) = vllm_setup
    options = GenerationOptions(max_tokens=200, temperature=0.0, max_repeats=None)
    cancel = threading.Event()
    chunks = []
    for chunk in backend.stream(PROMPT, options, adapter=a, cancel=cancel):
        chunks.append(chunk)
        cancel.set()
    assert chunks[-1].done and chunks[-1].finish_reason == "cancelled"
    assert chunks[-1].usage.completion_tokens < 200
    # The engine goes on serving after an abort; max_tokens caps the reply.
    done = list(backend.stream(PROMPT, GenerationOptions(max_tokens=3, max_repeats=None)))[-1]
    assert done.usage.completion_tokens <= 3


@needs_gpu
def test_a_constraint_holds_the_reply_to_its_pattern(vllm_setup):
    import re

    backend, (a, _) = vllm_setup
    assert backend.capabilities.constrained_decoding
    pattern = r"Response\[[^\[\]]*\]\nInvoke\[(True|False)\]"
    for seed in range(3):
        options = GenerationOptions(max_tokens=48, temperature=1.0, seed=seed, constraint=pattern, max_repeats=None)
        done = backend.generate(PROMPT, options, adapter=a)
        assert done.text.startswith("Response[") and "[" not in done.text[len("Response["):].split("]")[0]
        assert done.finish_reason == "length" or re.fullmatch(pattern, done.text), done.text


@needs_gpu
def test_a_gguf_model_is_refused():
    with pytest.raises(ModelLoadError, match="HF model folder"):
        VLLMBackend(ModelSpec(backend="vllm", model="embedded"))
