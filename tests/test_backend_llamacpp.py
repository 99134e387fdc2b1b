"""The llamacpp backend: the shipped embedded GGUF through llama.cpp, prompts from the one
renderer, KV reuse across turns, stops, cancel; models converted once to GGUF; its errors."""

from __future__ import annotations

import importlib.util
import shutil
import subprocess
import sys
import threading

import pytest

from duma import models
from duma.errors import ConfigError, ModelLoadError
from duma.rendering import render_training
from duma.types import GenerationOptions, Message, ModelSpec

HAS_LLAMA_CPP = importlib.util.find_spec("llama_cpp") is not None
needs_llama_cpp = pytest.mark.skipif(not HAS_LLAMA_CPP, reason="llama-cpp-python is not installed "
                                     "(pip install 'duma[llamacpp]')")
QUESTION = [Message(role="user", content="What is the capital of France?")]
GREEDY = GenerationOptions(max_tokens=24, max_repeats=None)


def _backend(**spec):
    from duma.plugins.backends.llamacpp import LlamaCppBackend

    return LlamaCppBackend(ModelSpec(backend="llamacpp", **spec))


@pytest.fixture(scope="module")
def backend():
    if not HAS_LLAMA_CPP:
        pytest.skip("llama-cpp-python is not installed")
    backend = _backend(model="embedded", backend_options={"n_ctx": 2048})
    yield backend
    backend.close()


def test_the_backend_is_registered_and_its_module_imports_no_engine():
    from duma import host
    from duma.plugins.backends.llamacpp import LlamaCppBackend

    assert host.get("backend", "llamacpp") is LlamaCppBackend
    caps = LlamaCppBackend.capabilities
    assert caps.prefill and caps.kv_reuse and caps.exact_token_count and not caps.adapters_per_call
    code = "import sys, duma.plugins.backends.llamacpp; print('llama_cpp' in sys.modules, 'torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["False", "False"]


def test_a_bad_option_is_a_config_error_naming_the_key():
    with pytest.raises(ConfigError, match="n_threadz") as info:
        _backend(model="embedded", backend_options={"n_threadz": 2})
    assert "llamacpp" in info.value.hint and "n_threads" in info.value.hint
    with pytest.raises(ConfigError, match="quant_type"):
        _backend(model="embedded", backend_options={"quant_type": "Q3"})


def test_missing_llama_cpp_says_how_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "llama_cpp", None)  # makes `import llama_cpp` fail
    with pytest.raises(ModelLoadError, match="llama-cpp-python") as info:
        _backend(model="embedded")
    assert "pip install 'duma[llamacpp]'" in info.value.hint and "7 minutes" in info.value.hint


@needs_llama_cpp
def test_a_truncated_gguf_is_a_one_line_error(tmp_path):
    broken = tmp_path / "broken.gguf"
    with models.embedded_gguf_path().open("rb") as f:
        broken.write_bytes(f.read(1_000_000))
    with pytest.raises(ModelLoadError, match="broken.gguf") as info:
        _backend(model=str(broken))
    assert "\n" not in str(info.value)
    with pytest.raises(ModelLoadError, match="does not exist"):
        _backend(model=str(tmp_path / "missing.gguf"))


@needs_llama_cpp
def test_the_embedded_gguf_answers(backend):
    reply = backend.generate(QUESTION, GREEDY)
    assert reply.text.strip() and reply.finish_reason in ("stop", "length")
    assert reply.usage.prompt_tokens == len(backend.prompt_ids(QUESTION)) == backend.count_tokens(QUESTION)
    assert 0 < reply.usage.completion_tokens <= 24
    assert reply.timings.first_token_s is not None and reply.timings.total_s >= reply.timings.first_token_s
    assert backend.context_length == 2048


@needs_llama_cpp
def test_greedy_output_is_the_same_in_a_fresh_instance(backend):
    expected = backend.generate(QUESTION, GREEDY).text
    fresh = _backend(model="embedded", backend_options={"n_ctx": 2048})
    try:
        assert fresh.generate(QUESTION, GREEDY).text == expected
    finally:
        fresh.close()


@needs_llama_cpp
def test_prompt_ids_are_the_training_prefix_of_the_reply(backend):
    conversation = [Message(role="system", content="You are brief."), *QUESTION]
    reply = Message(role="assistant", content="Paris.")
    prompt = backend.prompt_ids(conversation)
    assert render_training(backend.tokenizer, [*conversation, reply]).input_ids[: len(prompt)] == prompt


@needs_llama_cpp
def test_the_second_turn_reuses_the_first_turns_kv_cache(backend):
    first = backend.generate(QUESTION, GREEDY)
    second_turn = [*QUESTION, Message(role="assistant", content=first.text),
                   Message(role="user", content="And of Germany?")]
    second = backend.generate(second_turn, GREEDY)
    assert backend.last_prefix_reused >= len(backend.prompt_ids(QUESTION))
    # Reusing the cache changes nothing in the output.
    backend.clear_cache()
    assert backend.generate(second_turn, GREEDY).text == second.text
    assert backend.last_prefix_reused == 0


@needs_llama_cpp
def test_stop_strings_never_show(backend):
    full = backend.generate(QUESTION, GREEDY).text
    stop = full.strip()[len(full.strip()) // 2:][:3]
    assert stop.strip()
    stopped = backend.generate(QUESTION, GREEDY.model_copy(update={"stop": [stop]}))
    assert stopped.text == full[: full.index(stop)] and stopped.finish_reason == "stop"
    assert stop not in stopped.text


@needs_llama_cpp
def test_cancel_ends_the_reply_within_one_token(backend):
    cancel = threading.Event()
    chunks = []
    for chunk in backend.stream(QUESTION, GenerationOptions(max_tokens=64, max_repeats=None), cancel=cancel):
        chunks.append(chunk)
        if not chunk.done:
            cancel.set()
    last = chunks[-1]
    assert last.done and last.finish_reason == "cancelled"
    assert len([c for c in chunks if c.text]) <= 2 and last.usage.completion_tokens <= 4


@needs_llama_cpp
def test_sampling_is_seeded(backend):
    options = GenerationOptions(max_tokens=16, temperature=0.9, top_k=40, top_p=0.9, seed=7, max_repeats=None)
    assert backend.generate(QUESTION, options).text == backend.generate(QUESTION, options).text


@needs_llama_cpp
def test_a_constraint_holds_the_reply_to_the_protocol(backend):
    import re

    import regex

    from duma.agents import grammar
    from duma.agents.agent import load_tools
    from duma.config import DumaConfig

    assert backend.capabilities.constrained_decoding
    pattern = grammar.slow_step_pattern(load_tools(DumaConfig()))
    slow = [Message(role="system", content="Write Reason[...] then Act[tool(args)]. Tools: calculator, today."),
            Message(role="user", content="Query 0: What is the square root of 2?")]
    for seed in range(3):
        options = GenerationOptions(max_tokens=48, temperature=1.0, seed=seed, constraint=pattern, max_repeats=None)
        done = backend.generate(slow, options)
        assert regex.fullmatch(pattern, done.text, partial=True), done.text
        assert done.finish_reason == "length" or re.fullmatch(pattern, done.text), done.text


@needs_llama_cpp
def test_the_repetition_penalty_covers_the_reply(backend):
    counting = [Message(role="user", content="List the numbers one to ten, in words, and then again.")]
    plain = backend.generate(counting, GenerationOptions(max_tokens=40, max_repeats=None))
    penalised = backend.generate(counting, GenerationOptions(max_tokens=40, max_repeats=None, repetition_penalty=1.5))
    assert penalised.text != plain.text


@needs_llama_cpp
def test_concurrent_calls_are_serialised(backend):
    results: list[str] = []
    threads = [threading.Thread(target=lambda: results.append(backend.generate(QUESTION, GREEDY).text))
               for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(results) == 2 and results[0] == results[1]


@needs_llama_cpp
@pytest.mark.skipif(importlib.util.find_spec("duma.plugins.quantizers.gguf") is None, reason="no gguf quantizer")
def test_an_hf_folder_and_an_adapter_are_converted_once(tiny_model, tmp_path, monkeypatch):
    from peft import LoraConfig, get_peft_model

    monkeypatch.setenv("DUMA_MODEL_CACHE", str(tmp_path / "cache"))
    plain = _backend(model=str(tiny_model), device="cpu", backend_options={"quant_type": "F32"})
    converted = sorted((tmp_path / "cache" / "gguf").glob("*.gguf"))
    assert [p.name for p in converted] == [plain.gguf_path.name] and plain.gguf_path.name.endswith(".gguf")
    mtime = plain.gguf_path.stat().st_mtime_ns
    text = plain.generate(QUESTION, GREEDY).text
    again = _backend(model=str(tiny_model), device="cpu", backend_options={"quant_type": "F32"})
    assert again.gguf_path == plain.gguf_path and plain.gguf_path.stat().st_mtime_ns == mtime
    assert again.generate(QUESTION, GREEDY).text == text
    # The same tokens as the transformers backend on the float weights.
    from duma.plugins.backends.transformers import TransformersBackend

    assert TransformersBackend(ModelSpec(model=str(tiny_model), device="cpu")).generate(QUESTION, GREEDY).text == text

    with models.quiet_peft():
        lora = get_peft_model(models.load_model(str(tiny_model), device="cpu", dtype="float32"),
                              LoraConfig(r=4, lora_alpha=16, target_modules=["q_proj", "v_proj"],
                                         init_lora_weights=False))
    lora.save_pretrained(str(tmp_path / "mind"))
    mind = _backend(model=str(tiny_model), adapter=str(tmp_path / "mind"), device="cpu",
                    backend_options={"quant_type": "F32"})
    assert mind.gguf_path != plain.gguf_path and mind.gguf_path.name.startswith("mind-f32-")
    mind_text = mind.generate(QUESTION, GREEDY).text
    assert mind_text != text
    assert TransformersBackend(ModelSpec(model=str(tiny_model), adapter=str(tmp_path / "mind"),
                                         device="cpu")).generate(QUESTION, GREEDY).text == mind_text
    for b in (plain, again, mind):
        b.close()
    shutil.rmtree(tmp_path / "cache", ignore_errors=True)
