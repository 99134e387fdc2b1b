"""The onnxruntime backend: a tiny random Llama converted once (float32, so its tokens equal
the transformers backend's), prompts through the one renderer, KV reuse across turns, stops,
cancel, options, broken folders, adapters merged and switched per call; and the real
embedded model (slow)."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from duma import models
from duma.errors import ConfigError, DumaError, ModelLoadError
from duma.rendering import render_prompt_ids, render_training
from duma.types import GenerationOptions, Message, ModelSpec

pytest.importorskip("onnxruntime_genai")

REPO = Path(__file__).resolve().parents[1]
QUESTION = [Message(role="user", content="What is the capital of France?")]
FOLLOW_UP = "And Germany?"
# Float32 conversions: greedy tokens equal the transformers backend's.
FP32 = {"bits": 32}


def make_untied_tiny_model(path: Path) -> Path:
    """duma.testing's tiny Llama with untied embeddings: with tied random embeddings the tiny
    model only ever repeats the last prompt token ("\\n"), which would make every greedy
    comparison a comparison of newlines."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from duma.testing import make_tiny_tokenizer

    path.mkdir(parents=True, exist_ok=True)
    tokenizer = make_tiny_tokenizer(path)
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=1024,
                         bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                         pad_token_id=tokenizer.pad_token_id, tie_word_embeddings=False)
    torch.manual_seed(0)
    model = LlamaForCausalLM(config)
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.save_pretrained(str(path))
    return path


def make_adapter(base: Path, target: Path, modules: list[str], rank: int, seed: int) -> Path:
    """A random peft LoRA adapter of ``base`` (non-zero B, so it changes the output)."""
    import torch
    from peft import LoraConfig, get_peft_model

    torch.manual_seed(seed)
    with models.quiet_peft():
        lora = get_peft_model(models.load_model(str(base), device="cpu"),
                              LoraConfig(r=rank, lora_alpha=rank, target_modules=modules, init_lora_weights=False))
    lora.save_pretrained(str(target))
    return target


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory) -> Path:
    """The model cache of this module: conversions of the tiny models, kept across its tests."""
    return tmp_path_factory.mktemp("model-cache")


@pytest.fixture(autouse=True)
def model_cache(duma_home, cache_dir, monkeypatch) -> Path:
    monkeypatch.setenv("DUMA_MODEL_CACHE", str(cache_dir))
    yield cache_dir
    models.clear_backends()


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> Path:
    return make_untied_tiny_model(tmp_path_factory.mktemp("untied") / "tiny")


@pytest.fixture(scope="module")
def adapters(tiny, tmp_path_factory) -> tuple[Path, Path]:
    folder = tmp_path_factory.mktemp("adapters")
    return (make_adapter(tiny, folder / "one", ["q_proj", "v_proj", "up_proj", "down_proj"], rank=4, seed=1),
            make_adapter(tiny, folder / "two", ["k_proj", "o_proj", "gate_proj"], rank=8, seed=2))


def _onnx_backend(cache_dir: Path, spec: ModelSpec):
    from duma.plugins.backends.onnxruntime import OnnxRuntimeBackend

    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("DUMA_MODEL_CACHE", str(cache_dir))
        return OnnxRuntimeBackend(spec)


@pytest.fixture(scope="module")
def backend(tiny, cache_dir):
    return _onnx_backend(cache_dir, ModelSpec(backend="onnxruntime", model=str(tiny), backend_options=FP32))


@pytest.fixture(scope="module")
def reference(tiny):
    from duma.plugins.backends.transformers import TransformersBackend

    return TransformersBackend(ModelSpec(model=str(tiny), device="cpu"))


def fresh(backend, **options):
    """Another backend on the same ONNX folder (no conversion), keeping no KV caches."""
    from duma.plugins.backends.onnxruntime import OnnxRuntimeBackend

    return OnnxRuntimeBackend(ModelSpec(backend="onnxruntime", model=str(backend.folder),
                                        backend_options={"cache_slots": 0, **options}))


def test_registered_and_importing_it_is_light():
    from duma import host
    from duma.plugins.backends.onnxruntime import OnnxRuntimeBackend

    assert host.get("backend", "onnxruntime") is OnnxRuntimeBackend
    code = ("import sys, duma.plugins.backends.onnxruntime; "
            "print(any(m in sys.modules for m in ('torch', 'onnxruntime_genai', 'transformers')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_capabilities_follow_the_adapters_option(tiny):
    from duma.plugins.backends.onnxruntime import OnnxRuntimeBackend

    merged = OnnxRuntimeBackend.capabilities_for(ModelSpec(model=str(tiny)))
    per_call = OnnxRuntimeBackend.capabilities_for(ModelSpec(model=str(tiny), backend_options={"adapters": "per_call"}))
    assert merged.prefill and merged.kv_reuse and merged.exact_token_count and not merged.adapters_per_call
    assert per_call.adapters_per_call


def test_converted_once_into_the_model_cache(backend, tiny, cache_dir, capsys):
    assert backend.folder.parent == cache_dir / "onnx"
    assert (backend.folder / "genai_config.json").is_file() and (backend.folder / "duma-quantized.json").is_file()
    again = _onnx_backend(cache_dir, ModelSpec(backend="onnxruntime", model=str(tiny), backend_options=FP32))
    assert again.folder == backend.folder
    assert "converting" not in capsys.readouterr().err


def test_cache_name_changes_with_the_adapter_bits_and_options(tiny, adapters, tmp_path):
    from duma.plugins.backends.onnxruntime import converted_folder_name

    adapter = shutil.copytree(adapters[0], tmp_path / "adapter")
    options = {"block_size": 32}
    name = converted_folder_name(str(tiny), str(adapter), 4, options)
    assert name == converted_folder_name(str(tiny), str(adapter), 4, dict(options))
    assert name.startswith("tiny-adapter-int4-")
    assert converted_folder_name(str(tiny), None, 4, options) != name
    assert converted_folder_name(str(tiny), str(adapter), 8, options) != name
    assert converted_folder_name(str(tiny), str(adapter), 4, {"block_size": 64}) != name
    weights = adapter / "adapter_model.safetensors"
    weights.write_bytes(weights.read_bytes() + b" ")  # retrained: other size and time
    assert converted_folder_name(str(tiny), str(adapter), 4, options) != name


@pytest.mark.parametrize("options", [GenerationOptions(max_tokens=24), GenerationOptions(max_tokens=24,
                                                                                           repetition_penalty=1.3)])
def test_greedy_tokens_equal_the_transformers_backend(backend, reference, options):
    got = backend.generate(QUESTION, options)
    expected = reference.generate(QUESTION, options)
    assert got.usage.completion_tokens >= 16
    assert got.text == expected.text and got.usage == expected.usage and got.finish_reason == expected.finish_reason


def test_prefill_continues_the_assistant_message(backend, reference):
    messages = [*QUESTION, Message(role="assistant", content="The capital")]
    options = GenerationOptions(max_tokens=16)
    assert backend.generate(messages, options).text == reference.generate(messages, options).text


def test_seeded_sampling_is_reproducible_and_matches_transformers(backend, reference):
    options = GenerationOptions(max_tokens=20, temperature=0.9, top_k=40, top_p=0.9, seed=7)
    first = backend.generate(QUESTION, options).text
    assert backend.generate(QUESTION, options).text == first
    assert reference.generate(QUESTION, options).text == first


def test_a_constraint_masks_tokens_as_the_transformers_backend_does(backend, reference):
    import regex

    from duma.agents import grammar

    pattern = grammar.fast_output_pattern(prefilled=True)
    messages = [*QUESTION, Message(role="assistant", content="Response[")]
    assert backend.capabilities.constrained_decoding
    greedy = GenerationOptions(max_tokens=24, constraint=pattern, max_repeats=None)
    got = backend.generate(messages, greedy)
    assert got.text == reference.generate(messages, greedy).text
    assert regex.fullmatch(pattern, got.text, partial=True)
    for seed in range(2):
        sampled = backend.generate(messages, greedy.model_copy(update={"temperature": 1.0, "seed": seed}))
        assert regex.fullmatch(pattern, sampled.text, partial=True), sampled.text
        assert sampled.finish_reason == "length" or regex.fullmatch(pattern, sampled.text)


def test_prompt_ids_are_the_renderers_and_the_training_prefix(backend, tiny):
    source = models.load_tokenizer(str(tiny))
    conversation = [Message(role="system", content="Be brief."), *QUESTION]
    prompt = backend.prompt_ids(conversation)
    assert prompt == render_prompt_ids(source, conversation)
    reply = Message(role="assistant", content="Paris.")
    assert render_training(source, [*conversation, reply]).input_ids[: len(prompt)] == prompt
    assert backend.count_tokens(conversation) == len(prompt)


def test_second_turn_reuses_the_kv_prefix_and_matches_a_fresh_backend(backend):
    backend.clear_cache()
    options = GenerationOptions(max_tokens=20)
    no_reuse = fresh(backend)
    first = backend.generate(QUESTION, options)
    assert backend.last_prefix_reused == 0
    follow = [*QUESTION, Message(role="assistant", content=first.text), Message(role="user", content=FOLLOW_UP)]
    second = backend.generate(follow, options)
    assert backend.last_prefix_reused >= len(backend.prompt_ids(QUESTION)) > 0
    assert second.text == no_reuse.generate(follow, options).text
    assert no_reuse.last_prefix_reused == 0
    # A third turn continues the kept generator again.
    third = [*follow, Message(role="assistant", content=second.text), Message(role="user", content="Why?")]
    backend.generate(third, options)
    assert backend.last_prefix_reused >= len(backend.prompt_ids(follow))


def test_interleaved_conversations_keep_their_own_caches(backend):
    backend.clear_cache()
    options = GenerationOptions(max_tokens=12)
    other = [Message(role="user", content="Tell me about the quick brown fox.")]
    a1 = backend.generate(QUESTION, options)
    backend.generate(other, options)  # shares only the template's first tokens: a slot of its own
    follow = [*QUESTION, Message(role="assistant", content=a1.text), Message(role="user", content=FOLLOW_UP)]
    backend.generate(follow, options)
    assert backend.last_prefix_reused >= len(backend.prompt_ids(QUESTION))


def test_regenerating_the_same_prompt_rewinds_and_repeats(backend):
    backend.clear_cache()
    long_system = [Message(role="system", content="You answer questions about Europe. " * 8), *QUESTION]
    options = GenerationOptions(max_tokens=8)
    first = backend.generate(long_system, options)
    again = backend.generate(long_system, options)
    assert again.text == first.text and backend.last_prefix_reused == len(backend.prompt_ids(long_system)) - 1


def _ascii_stop(text: str) -> str:
    for i in range(4, len(text) - 2):
        piece = text[i:i + 2]
        if piece.isascii() and piece.isprintable() and piece.strip() == piece and text.find(piece) >= 4:
            return piece
    raise AssertionError(f"no usable stop string in {text!r}")


def test_stop_strings_are_hidden_and_end_the_generation(backend):
    options = GenerationOptions(max_tokens=40)
    full = backend.generate(QUESTION, options).text
    stop = _ascii_stop(full)
    stopped = backend.generate(QUESTION, GenerationOptions(max_tokens=40, stop=[stop]))
    assert stopped.text == full[: full.find(stop)] and stop not in stopped.text
    assert stopped.finish_reason == "stop"


def test_max_tokens_gives_length_and_usage(backend):
    completion = backend.generate(QUESTION, GenerationOptions(max_tokens=5))
    assert completion.finish_reason == "length" and completion.usage.completion_tokens == 5
    assert completion.usage.prompt_tokens == len(backend.prompt_ids(QUESTION))
    timings = completion.timings
    assert timings.first_token_s is not None and timings.total_s >= timings.first_token_s


def test_cancel_stops_within_one_token(backend):
    cancel = threading.Event()
    options = GenerationOptions(max_tokens=40)
    full = backend.generate(QUESTION, options)
    chunks = []
    for chunk in backend.stream(QUESTION, options, cancel=cancel):
        chunks.append(chunk)
        if chunk.text and not cancel.is_set():
            cancel.set()
    last = chunks[-1]
    assert last.done and last.finish_reason == "cancelled"
    assert last.usage.completion_tokens <= 2 < full.usage.completion_tokens


def test_context_length_eos_and_long_prompts(backend):
    assert backend.context_length == backend.genai_config["model"]["context_length"] == 1024
    assert backend.tokenizer.eos_token_id in backend._eos_ids
    with pytest.raises(DumaError, match="at most 1024"):
        list(backend.stream([Message(role="user", content="Paris " * 3000)]))


def test_abandoned_stream_releases_the_lock_and_calls_are_serialised(backend):
    stream = backend.stream(QUESTION, GenerationOptions(max_tokens=30))
    next(stream)
    stream.close()
    options = GenerationOptions(max_tokens=10)
    expected = backend.generate(QUESTION, options).text
    results: list[str] = []
    threads = [threading.Thread(target=lambda: results.append(backend.generate(QUESTION, options).text))
               for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert results == [expected] * 3


def test_bad_backend_options_are_config_errors(tiny):
    from duma.plugins.backends.onnxruntime import OnnxRuntimeBackend

    for options, text in (({"bits": 5}, "backend_options.bits: must be one of"),
                          ({"slots": 2}, "backend_options.slots: unknown key"),
                          ({"adapters": "both"}, "backend_options.adapters")):
        with pytest.raises(ConfigError) as info:
            OnnxRuntimeBackend(ModelSpec(backend="onnxruntime", model=str(tiny), backend_options=options))
        assert text in str(info.value) and "backend 'onnxruntime' takes" in str(info.value)
        assert "\n" not in str(info.value)
    with pytest.raises(ConfigError, match="dtype 'bfloat16'"):
        OnnxRuntimeBackend(ModelSpec(backend="onnxruntime", model=str(tiny), dtype="bfloat16"))


def test_broken_onnx_folders_are_one_line_model_load_errors(backend, tmp_path):
    from duma.plugins.backends.onnxruntime import OnnxRuntimeBackend

    no_model = shutil.copytree(backend.folder, tmp_path / "no-model")
    (no_model / "model.onnx").unlink()
    bad_config = shutil.copytree(backend.folder, tmp_path / "bad-config")
    (bad_config / "genai_config.json").write_text("{ not json")
    bad_graph = shutil.copytree(backend.folder, tmp_path / "bad-graph")
    (bad_graph / "model.onnx").write_bytes(b"garbage")
    for folder, text in ((no_model, "model.onnx is missing"), (bad_config, "genai_config.json is unreadable"),
                         (bad_graph, "cannot load the ONNX model")):
        with pytest.raises(ModelLoadError) as info:
            OnnxRuntimeBackend(ModelSpec(backend="onnxruntime", model=str(folder)))
        message = str(info.value)
        assert str(folder) in message and text in message and "duma quantize" in message and "\n" not in message


def test_a_damaged_cached_conversion_says_to_delete_it(tiny, cache_dir):
    from duma.plugins.backends.onnxruntime import OnnxRuntimeBackend, converted_folder_name

    options = {"adapter": "merge", "prune_lm_head": True, "block_size": 32, "accuracy_level": None}
    target = cache_dir / "onnx" / converted_folder_name(str(tiny), None, 8, options)
    target.mkdir(parents=True)
    (target / "genai_config.json").write_text(json.dumps({"model": {"decoder": {"filename": "model.onnx"}}}))
    with pytest.raises(ModelLoadError) as info:
        OnnxRuntimeBackend(ModelSpec(backend="onnxruntime", model=str(tiny), dtype="int8"))
    assert f"delete {target}" in str(info.value)


def test_gpu_devices_missing_models_and_adapters_are_refused(tiny, tmp_path):
    from duma.plugins.backends.onnxruntime import OnnxRuntimeBackend

    with pytest.raises(ModelLoadError, match="runs on the CPU"):
        OnnxRuntimeBackend(ModelSpec(backend="onnxruntime", model=str(tiny), device="cuda"))
    with pytest.raises(ModelLoadError, match="not found"):
        OnnxRuntimeBackend(ModelSpec(backend="onnxruntime", model=str(tmp_path / "nowhere")))
    with pytest.raises(ModelLoadError, match="no adapter_config.json"):
        OnnxRuntimeBackend(ModelSpec(backend="onnxruntime", model=str(tiny), adapter=str(tmp_path)))


def test_a_closed_backend_says_so(backend):
    closed = fresh(backend)
    closed.close()
    with pytest.raises(DumaError, match="closed"):
        closed.generate(QUESTION)


def test_merged_adapter_equals_transformers_with_it_merged(tiny, adapters, cache_dir):
    from duma.plugins.backends.transformers import TransformersBackend

    one = str(adapters[0])
    merged = _onnx_backend(cache_dir, ModelSpec(backend="onnxruntime", model=str(tiny), adapter=one,
                                                backend_options=FP32))
    expected = TransformersBackend(ModelSpec(model=str(tiny), adapter=one, device="cpu"))
    options = GenerationOptions(max_tokens=20)
    assert merged.generate(QUESTION, options).text == expected.generate(QUESTION, options).text
    assert "-one-fp32-" in merged.folder.name
    with pytest.raises(DumaError, match="per_call"):
        list(merged.stream(QUESTION, options, adapter=str(adapters[1])))


def test_adapters_switched_per_call_match_each_merged_model(tiny, adapters, reference):
    from duma.backend import AdapterView
    from duma.plugins.backends.transformers import TransformersBackend

    spec = ModelSpec(backend="onnxruntime", model=str(tiny), backend_options={**FP32, "adapters": "per_call"})
    base = models.load_backend(spec)
    one = models.load_backend(spec.model_copy(update={"adapter": str(adapters[0])}))
    two = models.load_backend(spec.model_copy(update={"adapter": str(adapters[1])}))
    assert isinstance(one, AdapterView) and one.base is base and two.base is base
    options = GenerationOptions(max_tokens=16)
    texts = {name: b.generate(QUESTION, options).text for name, b in (("base", base), ("one", one), ("two", two))}
    assert len(set(texts.values())) == 3
    assert texts["base"] == reference.generate(QUESTION, options).text
    for name, folder in (("one", adapters[0]), ("two", adapters[1])):
        merged = TransformersBackend(ModelSpec(model=str(tiny), adapter=str(folder), device="cpu"))
        assert texts[name] == merged.generate(QUESTION, options).text, name
    # Back and forth: each adapter keeps its own KV caches and its own output.
    assert one.generate(QUESTION, options).text == texts["one"] and base.last_prefix_reused > 0
    assert base.generate(QUESTION, options).text == texts["base"]
    with pytest.raises(ModelLoadError, match="adapter_config.json"):
        base.load_adapter(str(tiny))


@pytest.mark.slow
def test_embedded_model_knows_the_capital_of_france(monkeypatch):
    # The shared test cache: the embedded model is converted once, then reused by later runs.
    monkeypatch.setenv("DUMA_MODEL_CACHE", str(REPO / ".test-cache" / "models"))
    # float32: the plain model's int8 build answers this one prompt in French (greedy flips on
    # a near tie); the default path's minds answer it (tests/test_default_minds.py).
    backend = models.load_backend(ModelSpec(backend="onnxruntime", model="embedded", backend_options={"bits": 32}))
    completion = backend.generate([Message(role="user", content="What is the capital of France?")],
                                  GenerationOptions(max_tokens=32, temperature=0))
    assert "Paris" in completion.text
    assert completion.usage.completion_tokens > 0 and backend.context_length == 8192


def test_a_folder_quantized_with_an_adapter_file_runs_with_it(tiny, adapters, tmp_path):
    from duma.plugins.backends.onnxruntime import OnnxRuntimeBackend
    from duma.plugins.backends.transformers import TransformersBackend
    from duma.quantizer import quantize_model

    one, two = (str(a) for a in adapters)
    out = tmp_path / "tiny-one-file"
    quantize_model(str(tiny), "onnx", out, adapter=one, bits=32, options={"adapter": "file"}, ppl_text=None)
    options = GenerationOptions(max_tokens=16)
    expected = TransformersBackend(ModelSpec(model=str(tiny), adapter=one, device="cpu")).generate(QUESTION, options)
    as_written = OnnxRuntimeBackend(ModelSpec(backend="onnxruntime", model=str(out)))
    assert as_written.generate(QUESTION, options).text == expected.text
    switching = OnnxRuntimeBackend(ModelSpec(backend="onnxruntime", model=str(out),
                                             backend_options={"adapters": "per_call"}))
    assert switching.generate(QUESTION, options).text == expected.text
    other = TransformersBackend(ModelSpec(model=str(tiny), adapter=two, device="cpu")).generate(QUESTION, options)
    assert switching.generate(QUESTION, options, adapter=two).text == other.text
