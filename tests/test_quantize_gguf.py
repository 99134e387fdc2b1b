"""The gguf quantizer: F16/Q8_0/Q4_0/Q4_1 files a tiny random Llama is written to, read back
with gguf's reader, transformers and (when installed) llama.cpp; the LoRA export; bad input."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from duma.quantizer import QuantizeError, manifest_path, quantize_model

try:
    import llama_cpp
except ImportError:
    llama_cpp = None

needs_llama_cpp = pytest.mark.skipif(llama_cpp is None, reason="llama-cpp-python is not installed")
PROMPT = "The capital of France is Paris. Hello! How can I help you today?"
# Relative error of the logits (||quantized - source|| / ||source||) each type must stay under.
TOLERANCE = {"F16": 0.003, "Q8_0": 0.04, "Q4_0": 0.25, "Q4_1": 0.25}


@pytest.fixture(autouse=True)
def model_cache(tmp_path, monkeypatch) -> Path:
    """GGUF files loaded through duma are converted into a per-test cache, not the shared one."""
    cache = tmp_path / "model-cache"
    monkeypatch.setenv("DUMA_MODEL_CACHE", str(cache))
    return cache


@pytest.fixture(scope="module")
def written(tmp_path_factory, tiny_model) -> dict[str, tuple[Path, object]]:
    """The tiny model quantized once per type (perplexity measured on the default text)."""
    folder = tmp_path_factory.mktemp("gguf")
    results = {}
    for kind in TOLERANCE:
        out = folder / f"tiny-{kind}.gguf"
        results[kind] = (out, quantize_model(str(tiny_model), "gguf", out, options={"type": kind}))
    return results


def reader(path: Path):
    import gguf

    return gguf.GGUFReader(str(path))


def field(r, key: str):
    f = r.get_field(key)
    return f.contents() if f is not None else None


def source_logits(folder: Path, ids: list[int]):
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(str(folder), dtype=torch.float32).eval()
    with torch.inference_mode():
        return model(torch.tensor([ids])).logits[0]


def gguf_model(path: Path):
    import torch
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(str(path.parent), gguf_file=path.name, dtype=torch.float32).eval()


def rel_error(a, b) -> float:
    import torch

    a, b = torch.as_tensor(a, dtype=torch.float32), torch.as_tensor(b, dtype=torch.float32)
    return float((a - b).norm() / b.norm())


def test_bits_pick_the_type(tiny_model, tmp_path):
    for bits, kind in ((16, "F16"), (8, "Q8_0"), (None, "Q4_1")):
        out = tmp_path / f"b{bits}.gguf"
        report = quantize_model(str(tiny_model), "gguf", out, bits=bits, ppl_text=None)
        assert report.details["type"] == kind
        assert field(reader(out), "general.file_type") == {"F16": 1, "Q8_0": 7, "Q4_1": 3}[kind]


@pytest.mark.parametrize("kind", list(TOLERANCE))
def test_file_metadata_and_tensor_types(written, tiny_model, kind):
    out, report = written[kind]
    config = json.loads((tiny_model / "config.json").read_text())
    r = reader(out)
    assert field(r, "general.architecture") == "llama"
    assert field(r, "llama.block_count") == config["num_hidden_layers"]
    assert field(r, "llama.embedding_length") == config["hidden_size"]
    assert field(r, "llama.feed_forward_length") == config["intermediate_size"]
    assert field(r, "llama.attention.head_count") == config["num_attention_heads"]
    assert field(r, "llama.attention.head_count_kv") == config["num_key_value_heads"]
    assert field(r, "llama.context_length") == config["max_position_embeddings"]
    assert field(r, "llama.rope.freq_base") == pytest.approx(config["rope_parameters"]["rope_theta"])
    assert field(r, "llama.vocab_size") == config["vocab_size"]
    assert field(r, "tokenizer.ggml.model") == "gpt2"
    assert field(r, "tokenizer.ggml.pre") == "gpt-2"  # the tiny tokenizer splits with GPT-2's regex
    assert len(r.get_field("tokenizer.ggml.tokens").data) == config["vocab_size"]
    assert len(r.get_field("tokenizer.ggml.merges").data) > 0
    assert field(r, "tokenizer.ggml.eos_token_id") == config["eos_token_id"]
    assert field(r, "tokenizer.ggml.bos_token_id") == config["bos_token_id"]
    assert field(r, "tokenizer.ggml.add_bos_token") is False
    assert "<|im_start|>" in field(r, "tokenizer.chat_template")
    types = {t.name: t.tensor_type.name for t in r.tensors}
    assert "output.weight" not in types  # tied embeddings
    assert types["blk.0.attn_norm.weight"] == "F32" and types["output_norm.weight"] == "F32"
    assert types["blk.0.attn_q.weight"] == kind and types["blk.1.ffn_down.weight"] == kind
    assert types["token_embd.weight"] == ("Q8_0" if kind.startswith("Q4") else kind)
    assert report.details["tensor_types"] == {k: sum(v == k for v in types.values()) for k in set(types.values())}
    manifest = json.loads(manifest_path(out).read_text())
    assert manifest_path(out).name == f"{out.name}.duma-quantized.json"
    assert manifest["method"] == "gguf" and manifest["details"]["type"] == kind
    assert manifest["size_after_bytes"] == out.stat().st_size < manifest["size_before_bytes"]


@pytest.mark.parametrize("kind", list(TOLERANCE))
def test_logits_close_to_the_source(written, tiny_model, kind):
    from transformers import AutoTokenizer

    out, report = written[kind]
    ids = AutoTokenizer.from_pretrained(str(tiny_model))(PROMPT)["input_ids"]
    import torch

    with torch.inference_mode():
        quantized = gguf_model(out)(torch.tensor([ids])).logits[0]
    assert rel_error(quantized, source_logits(tiny_model, ids)) < TOLERANCE[kind]
    # The perplexity after is measured on the written file.
    assert report.perplexity_before is not None and report.perplexity_after is not None
    assert abs(report.perplexity_after / report.perplexity_before - 1) < TOLERANCE[kind]


def test_q_and_k_are_permuted_for_ggml(written, tiny_model):
    """The F16 file holds q/k rows in GGML's rope layout: un-permuting gives back the source."""
    import numpy as np
    from safetensors.numpy import load_file

    from duma.plugins.quantizers.gguf import permute_rows, unpermute_rows

    source = load_file(str(tiny_model / "model.safetensors"))
    tensors = {t.name: t for t in reader(written["F16"][0]).tensors}
    for name, hf, heads in (("blk.0.attn_q.weight", "model.layers.0.self_attn.q_proj.weight", 4),
                            ("blk.0.attn_k.weight", "model.layers.0.self_attn.k_proj.weight", 2)):
        stored = np.asarray(tensors[name].data, dtype=np.float32)
        assert not np.allclose(stored, source[hf], atol=1e-3)
        assert np.allclose(unpermute_rows(stored, heads), source[hf], atol=1e-3)
    w = np.arange(48.0).reshape(12, 4)
    assert np.array_equal(unpermute_rows(permute_rows(w, 3), 3), w)


def test_f16_greedy_tokens_equal_the_source(written, tiny_model):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    ids = torch.tensor([AutoTokenizer.from_pretrained(str(tiny_model))(PROMPT)["input_ids"]])
    source = AutoModelForCausalLM.from_pretrained(str(tiny_model), dtype=torch.float32).eval()
    quantized = gguf_model(written["F16"][0])
    kwargs = {"max_new_tokens": 8, "do_sample": False, "pad_token_id": 0}
    with torch.inference_mode():
        assert quantized.generate(ids, **kwargs).tolist() == source.generate(ids, **kwargs).tolist()
        # A random model soon repeats itself: the next token after every prompt position
        # (all different here) is the sharper check.
        expected = source(ids).logits[0].argmax(-1)
        assert len(set(expected.tolist())) > ids.shape[1] // 2
        assert quantized(ids).logits[0].argmax(-1).tolist() == expected.tolist()


def test_duma_loads_the_file_with_its_tokenizer_and_template(written, tiny_model):
    from duma.models import load_model, load_tokenizer

    out = written["Q8_0"][0]
    tokenizer = load_tokenizer(str(out))
    source = load_tokenizer(str(tiny_model))
    assert tokenizer(PROMPT)["input_ids"] == source(PROMPT)["input_ids"]
    assert tokenizer.eos_token == "<|im_end|>"
    messages = [{"role": "user", "content": "hi"}]
    assert (tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
            == source.apply_chat_template(messages, tokenize=False, add_generation_prompt=True))
    model = load_model(str(out), device="cpu", dtype="float32")
    assert model.config.model_type == "llama"


def test_untied_model_writes_output_weight(tmp_path):
    from duma.testing import make_tiny_model

    folder = make_tiny_model(tmp_path / "untied")
    config = json.loads((folder / "config.json").read_text())
    config["tie_word_embeddings"] = False
    (folder / "config.json").write_text(json.dumps(config))
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(str(folder))
    with torch.no_grad():
        model.lm_head.weight.copy_(torch.randn_like(model.lm_head.weight) * 0.02)
    model.save_pretrained(str(folder))
    out = tmp_path / "untied.gguf"
    quantize_model(str(folder), "gguf", out, bits=4, ppl_text=None)
    types = {t.name: t.tensor_type.name for t in reader(out).tensors}
    assert types["output.weight"] == "Q8_0" and types["token_embd.weight"] == "Q4_1"


def test_rows_that_do_not_fill_blocks_fall_back_to_f16():
    from duma.plugins.quantizers.gguf import tensor_type

    assert tensor_type("blk.0.attn_q.weight", (64, 48), "Q4_1", tied=True) == "F16"
    assert tensor_type("blk.0.attn_q.weight", (64, 64), "Q4_0", tied=True) == "Q4_0"
    assert tensor_type("blk.0.attn_norm.weight", (64,), "Q8_0", tied=True) == "F32"
    assert tensor_type("token_embd.weight", (500, 64), "Q4_1", tied=True) == "Q8_0"
    assert tensor_type("token_embd.weight", (500, 64), "Q4_1", tied=False) == "Q4_1"


def test_qwen2_is_written_without_permutation(tmp_path):
    import torch
    from transformers import AutoTokenizer, Qwen2Config, Qwen2ForCausalLM

    from duma.testing import make_tiny_tokenizer

    folder = tmp_path / "qwen2"
    tokenizer = make_tiny_tokenizer(folder)
    config = Qwen2Config(vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=True,
                         eos_token_id=tokenizer.eos_token_id, bos_token_id=tokenizer.bos_token_id)
    torch.manual_seed(0)
    Qwen2ForCausalLM(config).save_pretrained(str(folder))
    out = tmp_path / "qwen2.gguf"
    quantize_model(str(folder), "gguf", out, bits=16, ppl_text=None)
    r = reader(out)
    assert field(r, "general.architecture") == "qwen2"
    assert "blk.0.attn_q.bias" in {t.name for t in r.tensors}
    ids = AutoTokenizer.from_pretrained(str(folder))(PROMPT)["input_ids"]
    with torch.inference_mode():
        quantized = gguf_model(out)(torch.tensor([ids])).logits[0]
    assert rel_error(quantized, source_logits(folder, ids)) < TOLERANCE["F16"]


# --- LoRA export ---------------------------------------------------------------------------

@pytest.fixture(scope="module")
def adapter(tmp_path_factory, tiny_model) -> Path:
    """A LoRA adapter on the tiny model with random (non-zero) B matrices."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(1)
    model = AutoModelForCausalLM.from_pretrained(str(tiny_model), dtype=torch.float32)
    config = LoraConfig(r=4, lora_alpha=8, init_lora_weights=False, task_type="CAUSAL_LM",
                        target_modules=["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"])
    peft_model = get_peft_model(model, config)
    with torch.no_grad():
        for name, param in peft_model.named_parameters():
            if "lora_B" in name:
                param.copy_(torch.randn_like(param) * 0.05)
    folder = tmp_path_factory.mktemp("adapter") / "lora"
    peft_model.save_pretrained(str(folder))
    return folder


@pytest.fixture(scope="module")
def lora_file(tmp_path_factory, tiny_model, adapter):
    out = tmp_path_factory.mktemp("lora-gguf") / "lora.gguf"
    report = quantize_model(str(tiny_model), "gguf", out, adapter=str(adapter), options={"lora": True})
    return out, report


def test_lora_gguf_follows_llama_cpp_conventions(lora_file):
    out, report = lora_file
    r = reader(out)
    assert field(r, "general.type") == "adapter"
    assert field(r, "adapter.type") == "lora"
    assert field(r, "adapter.lora.alpha") == pytest.approx(8.0)
    assert field(r, "general.architecture") == "llama"
    shapes = {t.name: [int(n) for n in t.shape] for t in r.tensors}
    assert shapes["blk.0.attn_q.weight.lora_a"] == [64, 4]  # GGUF order: (in, rank)
    assert shapes["blk.0.attn_q.weight.lora_b"] == [4, 64]  # (rank, out)
    assert shapes["blk.1.ffn_down.weight.lora_a"] == [128, 4]
    assert len(shapes) == 2 * 7 * 2
    assert report.details["kind"] == "lora adapter" and report.details["type"] == "F32"


def test_lora_gguf_applied_to_the_base_matches_the_merged_model(lora_file):
    """Perplexity after is measured on the base with the file's LoRA applied as llama.cpp
    applies it (alpha / rank, un-permuted q/k): it equals the merged model's."""
    _, report = lora_file
    assert report.perplexity_before == pytest.approx(report.perplexity_after, rel=1e-4)


def test_lora_needs_an_adapter_and_a_float_type(tiny_model, adapter, tmp_path):
    with pytest.raises(QuantizeError, match="-o lora true: no adapter"):
        quantize_model(str(tiny_model), "gguf", tmp_path / "a.gguf", options={"lora": True}, ppl_text=None)
    with pytest.raises(QuantizeError, match="-o type Q4_1"):
        quantize_model(str(tiny_model), "gguf", tmp_path / "b.gguf", adapter=str(adapter),
                       options={"lora": True, "type": "Q4_1"}, ppl_text=None)
    assert list(tmp_path.iterdir()) == []


def test_merged_adapter_differs_from_the_base(tiny_model, adapter, tmp_path):
    base = quantize_model(str(tiny_model), "gguf", tmp_path / "base.gguf", bits=16)
    merged = quantize_model(str(tiny_model), "gguf", tmp_path / "merged.gguf", adapter=str(adapter), bits=16)
    assert merged.details["type"] == "F16"
    assert merged.perplexity_before != pytest.approx(base.perplexity_before, rel=1e-6)
    assert merged.perplexity_after == pytest.approx(merged.perplexity_before, rel=1e-2)


# --- bad input -----------------------------------------------------------------------------

def test_bits_3_is_refused(tiny_model, tmp_path):
    with pytest.raises(QuantizeError, match="--bits 3") as err:
        quantize_model(str(tiny_model), "gguf", tmp_path / "m.gguf", bits=3, ppl_text=None)
    assert "\n" not in str(err.value)


def test_unknown_option_and_type_are_refused(tiny_model, tmp_path):
    from duma.errors import ConfigError

    with pytest.raises(ConfigError, match="type"):
        quantize_model(str(tiny_model), "gguf", tmp_path / "m.gguf", options={"type": "Q3_0"}, ppl_text=None)
    with pytest.raises(ConfigError):
        quantize_model(str(tiny_model), "gguf", tmp_path / "m.gguf", options={"group": 32}, ppl_text=None)


def test_unsupported_model_type_is_one_line(tmp_path):
    import torch
    from transformers import GPT2Config, GPT2LMHeadModel

    from duma.testing import make_tiny_tokenizer

    folder = tmp_path / "gpt2"
    tokenizer = make_tiny_tokenizer(folder)
    torch.manual_seed(0)
    GPT2LMHeadModel(GPT2Config(vocab_size=len(tokenizer), n_embd=64, n_layer=1, n_head=2)).save_pretrained(str(folder))
    with pytest.raises(QuantizeError, match="model type 'gpt2'") as err:
        quantize_model(str(folder), "gguf", tmp_path / "gpt2.gguf", ppl_text=None)
    assert "\n" not in str(err.value)
    assert not (tmp_path / "gpt2.gguf").exists()


def test_existing_output_is_refused_and_untouched(tiny_model, tmp_path):
    out = tmp_path / "m.gguf"
    out.write_bytes(b"keep me")
    with pytest.raises(QuantizeError, match="already exists"):
        quantize_model(str(tiny_model), "gguf", out, ppl_text=None)
    assert out.read_bytes() == b"keep me"


def test_failure_leaves_nothing_behind(tiny_model, tmp_path, monkeypatch):
    import gguf

    def fail(self, *args, **kwargs):
        self.fout[0].write(b"partial")  # a half-written file exists when it fails
        raise OSError("disk full")

    monkeypatch.setattr(gguf.GGUFWriter, "write_tensors_to_file", fail)
    out = tmp_path / "out" / "m.gguf"
    with pytest.raises(QuantizeError, match="disk full"):
        quantize_model(str(tiny_model), "gguf", out, ppl_text=None)
    assert list(out.parent.iterdir()) == []


def test_k_quant_without_llama_cpp_names_the_install(tiny_model, tmp_path, monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "llama_cpp", None)  # import fails as if not installed
    with pytest.raises(QuantizeError, match=r"pip install 'duma\[llamacpp\]'"):
        quantize_model(str(tiny_model), "gguf", tmp_path / "k.gguf", options={"type": "Q4_K_M"}, ppl_text=None)
    assert list(tmp_path.iterdir()) == []


# --- llama.cpp (when llama-cpp-python is installed) ---------------------------------------------

def llama_logits(path: Path, ids: list[int], lora: Path | None = None):
    import numpy as np

    llm = llama_cpp.Llama(model_path=str(path), lora_path=str(lora) if lora else None, n_ctx=128,
                          logits_all=True, verbose=False, n_threads=2)
    try:
        llm.eval(ids)
        return np.array(llm.scores[: len(ids)])
    finally:
        llm.close()


@needs_llama_cpp
def test_llama_cpp_greedy_tokens_match_the_source(written, tiny_model):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    ids = AutoTokenizer.from_pretrained(str(tiny_model))(PROMPT)["input_ids"]
    source = AutoModelForCausalLM.from_pretrained(str(tiny_model), dtype=torch.float32).eval()
    with torch.inference_mode():
        expected = source.generate(torch.tensor([ids]), max_new_tokens=5, do_sample=False,
                                   pad_token_id=0)[0, len(ids):].tolist()
    llm = llama_cpp.Llama(model_path=str(written["Q8_0"][0]), n_ctx=128, verbose=False, n_threads=2)
    try:
        got = []
        for token in llm.generate(ids, temp=0.0, top_k=1, reset=True):
            got.append(token)
            if len(got) == len(expected):
                break
        assert llm.tokenize(PROMPT.encode(), add_bos=False, special=True) == ids
    finally:
        llm.close()
    assert got == expected
    # The next token after every prompt position, as above.
    assert llama_logits(written["Q8_0"][0], ids).argmax(-1).tolist() == source_logits(tiny_model, ids).argmax(-1).tolist()


@needs_llama_cpp
def test_llama_cpp_logits_close_to_the_source(written, tiny_model):
    from transformers import AutoTokenizer

    ids = AutoTokenizer.from_pretrained(str(tiny_model))(PROMPT)["input_ids"]
    expected = source_logits(tiny_model, ids)
    for kind in ("F16", "Q8_0", "Q4_1"):
        assert rel_error(llama_logits(written[kind][0], ids), expected) < TOLERANCE[kind], kind


@needs_llama_cpp
def test_k_quant_with_llama_cpp(tiny_model, tmp_path):
    out = tmp_path / "k.gguf"
    report = quantize_model(str(tiny_model), "gguf", out, options={"type": "Q4_K_M"})
    assert field(reader(out), "general.file_type") == 15
    assert field(reader(out), "tokenizer.chat_template")
    assert report.details["type"] == "Q4_K_M"
    assert abs(report.perplexity_after / report.perplexity_before - 1) < TOLERANCE["Q4_1"]


@needs_llama_cpp
def test_llama_cpp_applies_the_lora_gguf(written, lora_file, tiny_model, adapter, tmp_path):
    from transformers import AutoTokenizer

    from duma.models import load_model

    ids = AutoTokenizer.from_pretrained(str(tiny_model))(PROMPT)["input_ids"]
    import torch

    merged = load_model(str(tiny_model), device="cpu", dtype="float32", adapter=str(adapter), merge_adapter=True)
    with torch.inference_mode():
        expected = merged(torch.tensor([ids])).logits[0]
    base = llama_logits(written["F16"][0], ids)
    with_lora = llama_logits(written["F16"][0], ids, lora=lora_file[0])
    assert rel_error(with_lora, expected) < TOLERANCE["F16"]
    assert rel_error(base, expected) > 10 * rel_error(with_lora, expected)


# --- the embedded model against the shipped reference file ----------------------------------------

@pytest.mark.slow
def test_embedded_q4_1_matches_the_shipped_file(tmp_path, monkeypatch):
    from duma.models import embedded_gguf_path

    # The embedded model's converted folder is shared across tests (see conftest).
    monkeypatch.setenv("DUMA_MODEL_CACHE", str(Path(__file__).resolve().parents[1] / ".test-cache" / "models"))
    out = tmp_path / "smollm2-q4_1.gguf"
    report = quantize_model("embedded", "gguf", out, bits=4, ppl_text=None)
    ours, ref = reader(out), reader(embedded_gguf_path())
    for key in ("general.architecture", "llama.block_count", "llama.context_length", "llama.embedding_length",
                "llama.feed_forward_length", "llama.attention.head_count", "llama.attention.head_count_kv",
                "llama.rope.freq_base", "llama.rope.dimension_count", "llama.vocab_size", "general.file_type",
                "tokenizer.ggml.model", "tokenizer.ggml.pre", "tokenizer.ggml.bos_token_id",
                "tokenizer.ggml.eos_token_id", "tokenizer.ggml.unknown_token_id", "tokenizer.ggml.padding_token_id",
                "tokenizer.ggml.add_bos_token", "tokenizer.chat_template", "general.name"):
        assert field(ours, key) == pytest.approx(field(ref, key)) if isinstance(field(ref, key), float) \
            else field(ours, key) == field(ref, key), key
    assert field(ours, "llama.attention.layer_norm_rms_epsilon") == pytest.approx(
        field(ref, "llama.attention.layer_norm_rms_epsilon"))
    for key in ("tokenizer.ggml.tokens", "tokenizer.ggml.merges", "tokenizer.ggml.token_type"):
        assert field(ours, key) == field(ref, key), key
    ours_types = {t.name: t.tensor_type.name for t in ours.tensors}
    assert ours_types == {t.name: t.tensor_type.name for t in ref.tensors}
    assert report.details["tensor_types"] == {"Q4_1": 210, "F32": 61, "Q8_0": 1}
    assert abs(out.stat().st_size - embedded_gguf_path().stat().st_size) < 0.01 * out.stat().st_size
