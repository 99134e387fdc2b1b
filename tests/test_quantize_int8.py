"""The int8 quantizer: torch's dynamic int8 quantization written as a smaller folder that
duma's loader (and so every transformers-backed command) reads back, on the tiny model."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from duma import models
from duma.errors import ModelLoadError
from duma.quantizer import MANIFEST, QuantizeError, quantize_model
from duma.types import GenerationOptions, Message, ModelSpec

QUESTION = [Message(role="user", content="What is the capital of France?")]


@pytest.fixture(scope="module")
def int8_folder(tiny_model, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("int8") / "tiny-int8"
    quantize_model(str(tiny_model), "int8", out)
    return out


@pytest.fixture(autouse=True)
def _forget_backends():
    yield
    models.clear_backends()


def _logits(model, ids):
    import torch

    with torch.inference_mode():
        return model(torch.tensor([ids])).logits[0]


def test_quantize_writes_a_folder_and_its_manifest(int8_folder, tiny_model):
    names = {p.name for p in int8_folder.iterdir()}
    assert {"config.json", "generation_config.json", "tokenizer_config.json", MANIFEST,
            "model-int8.safetensors"} <= names
    manifest = json.loads((int8_folder / MANIFEST).read_text())
    assert manifest["method"] == "int8" and manifest["bits"] == 8 and manifest["source"] == str(tiny_model)
    assert manifest["size_after_bytes"] < manifest["size_before_bytes"]
    assert manifest["perplexity_after"] == pytest.approx(manifest["perplexity_before"], rel=0.02)
    # No leftovers beside the output: the temporary folder and the scratch are gone.
    assert [p.name for p in int8_folder.parent.iterdir()] == [int8_folder.name]


def test_linear_weights_are_int8_and_less_than_half_their_float_size(int8_folder, tiny_model):
    import torch
    from safetensors import safe_open

    float_model = models.load_model(str(tiny_model), device="cpu", dtype="float32")
    linears = [name for name, m in float_model.named_modules() if isinstance(m, torch.nn.Linear)
               and name.rsplit(".", 1)[-1] not in models.INT8_KEEP_FLOAT]
    assert linears
    float_bytes = sum(float_model.get_submodule(n).weight.numel() * 4 for n in linears)
    stored = 0
    with safe_open(str(int8_folder / "model-int8.safetensors"), "pt") as f:
        keys = set(f.keys())
        for name in linears:
            weight = f.get_tensor(f"{name}.weight")
            assert weight.dtype == torch.int8
            stored += weight.numel() + f.get_tensor(f"{name}.weight_scale").numel() * 4
        assert f.get_tensor("model.embed_tokens.weight").dtype == torch.float32
    assert all(f"{n}.weight_scale" in keys for n in linears)
    assert stored < 0.5 * float_bytes


def test_logits_are_close_to_the_float_source_and_equal_to_dtype_int8(int8_folder, tiny_model):
    import torch

    ids = [1, 5, 9, 20, 33, 7, 100, 42]
    loaded = models.load_model(str(int8_folder), device="cpu")  # through the quantizer's own loader
    float_logits = _logits(models.load_model(str(tiny_model), device="cpu", dtype="float32"), ids)
    int8_logits = _logits(loaded, ids)
    assert torch.allclose(int8_logits, float_logits, atol=0.05)
    # The very quantization `dtype: int8` applies to the float source, bit for bit.
    assert torch.equal(int8_logits, _logits(models.load_model(str(tiny_model), device="cpu", dtype="int8"), ids))


def test_transformers_backend_on_the_folder_matches_dtype_int8(int8_folder, tiny_model):
    from duma.plugins.backends.transformers import TransformersBackend

    options = GenerationOptions(max_tokens=24, max_repeats=None)
    on_folder = TransformersBackend(ModelSpec(model=str(int8_folder), device="cpu")).generate(QUESTION, options)
    on_source = TransformersBackend(ModelSpec(model=str(tiny_model), device="cpu", dtype="int8")).generate(
        QUESTION, options)
    assert on_folder.text == on_source.text and on_folder.usage == on_source.usage


def test_an_adapter_is_merged_before_quantizing(tiny_model, int8_folder, tmp_path):
    import torch
    from peft import LoraConfig, get_peft_model

    with models.quiet_peft():
        lora = get_peft_model(models.load_model(str(tiny_model), device="cpu", dtype="float32"),
                              LoraConfig(r=4, lora_alpha=16, target_modules=["q_proj", "v_proj"],
                                         init_lora_weights=False))
    lora.save_pretrained(str(tmp_path / "adapter"))
    report = quantize_model(str(tiny_model), "int8", tmp_path / "merged", adapter=str(tmp_path / "adapter"),
                            ppl_text=None)
    assert report.adapter == str(tmp_path / "adapter")
    ids = [1, 5, 9, 20, 33]
    merged = _logits(models.load_model(str(tmp_path / "merged"), device="cpu"), ids)
    assert not torch.allclose(merged, _logits(models.load_model(str(int8_folder), device="cpu"), ids), atol=1e-3)
    with_adapter = _logits(models.load_model(str(tiny_model), device="cpu", dtype="int8",
                                             adapter=str(tmp_path / "adapter")), ids)
    assert torch.equal(merged, with_adapter)


def test_int8_is_cpu_only_and_refuses_adapters_and_requantizing(int8_folder, tmp_path):
    from duma.plugins.quantizers.int8 import Int8Quantizer

    with pytest.raises(ModelLoadError, match="only runs on CPU") as info:
        Int8Quantizer.load_model(int8_folder, "cuda")
    assert "\n" not in str(info.value)
    with pytest.raises(ModelLoadError, match="adapter cannot be applied"):
        models.load_model(str(int8_folder), device="cpu", adapter=str(tmp_path))
    with pytest.raises(QuantizeError, match="already a quantized model"):
        quantize_model(str(int8_folder), "int8", tmp_path / "again", ppl_text=None)
    assert not (tmp_path / "again").exists()


def test_a_damaged_folder_is_a_one_line_error(int8_folder, tmp_path):
    import shutil

    broken = tmp_path / "broken"
    shutil.copytree(int8_folder, broken)
    (broken / "model-int8.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(ModelLoadError, match="cannot load the int8 model") as info:
        models.load_model(str(broken), device="cpu")
    assert "\n" not in str(info.value)


def test_layers_left_in_float_by_the_int8_loader_stay_float(tiny_model, tmp_path, monkeypatch):
    """Should ``_quantize_int8`` keep some Linear layers in float (e.g. those whose activations
    have outliers), the folder follows it: same model as ``dtype: int8``, bit for bit."""
    import warnings

    import torch

    def some_layers(model):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # torch.ao's notice about moving to torchao
            from torch.ao.quantization import per_channel_dynamic_qconfig, quantize_dynamic

            names = {n for n, m in model.named_modules() if isinstance(m, torch.nn.Linear)
                     and "down_proj" not in n and n != "lm_head"}
            return quantize_dynamic(model, {n: per_channel_dynamic_qconfig for n in names}, dtype=torch.qint8,
                                    inplace=True)

    monkeypatch.setattr(models, "_quantize_int8", some_layers)
    report = quantize_model(str(tiny_model), "int8", tmp_path / "partial", ppl_text=None)
    assert report.details["int8_layers"] == report.details["linear_layers"] - 3  # 2 down_proj + lm_head
    loaded = models.load_model(str(tmp_path / "partial"), device="cpu")
    assert isinstance(loaded.model.layers[0].mlp.down_proj, torch.nn.Linear)
    ids = [1, 5, 9, 20, 33]
    assert torch.equal(_logits(loaded, ids), _logits(models.load_model(str(tiny_model), device="cpu", dtype="int8"),
                                                     ids))
