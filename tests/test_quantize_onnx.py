"""The onnx quantizer: onnxruntime-genai folders of the tiny random Llama (float32 and int4,
an adapter merged or kept as an .onnx_adapter file), their tokenizer, perplexity figures and
logits; bad options and builder failures as one-line errors.

Each build runs onnxruntime-genai's model builder in a subprocess (about 10-15 s, mostly
imports), so the module builds each folder once.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from duma.errors import ConfigError
from duma.quantizer import MANIFEST, QuantizeError, quantize_model

pytest.importorskip("onnxruntime_genai")

PPL_TOKENS = 128


@pytest.fixture(autouse=True)
def model_cache(tmp_path, monkeypatch) -> Path:
    cache = tmp_path / "model-cache"
    monkeypatch.setenv("DUMA_MODEL_CACHE", str(cache))
    return cache


def make_adapter(base: Path, target: Path, *, modules: tuple[str, ...] = ("q_proj", "v_proj", "up_proj"),
                 rank: int = 4, seed: int = 1) -> Path:
    """A random peft LoRA adapter of ``base`` (non-zero B, so it changes the model)."""
    import torch
    from peft import LoraConfig, get_peft_model

    from duma import models

    torch.manual_seed(seed)
    with models.quiet_peft():
        lora = get_peft_model(models.load_model(str(base), device="cpu"),
                              LoraConfig(r=rank, lora_alpha=2 * rank, target_modules=list(modules),
                                         init_lora_weights=False))
    lora.save_pretrained(str(target))
    return target


@pytest.fixture(scope="module")
def builds(tiny_model, tmp_path_factory) -> dict[str, tuple[Path, object]]:
    folder = tmp_path_factory.mktemp("onnx")
    results = {}
    for name, bits in (("fp32", 32), ("int4", 4)):
        out = folder / f"tiny-{name}"
        results[name] = (out, quantize_model(str(tiny_model), "onnx", out, bits=bits, ppl_tokens=PPL_TOKENS))
    return results


def test_registered_with_its_bits_and_options():
    from duma import host
    from duma.plugins.quantizers.onnx import OnnxQuantizer

    assert host.get("quantizer", "onnx") is OnnxQuantizer
    assert OnnxQuantizer.bits == (4, 8, 32) and OnnxQuantizer.output == "folder"
    assert {"llama", "mistral", "qwen2", "qwen3", "phi3", "gemma"} <= set(OnnxQuantizer.architectures)
    assert set(OnnxQuantizer.Options.model_fields) == {"block_size", "accuracy_level", "int4_algo", "adapter",
                                                       "prune_lm_head"}


@pytest.mark.parametrize("name", ["fp32", "int4"])
def test_folder_has_model_manifest_and_figures(builds, name):
    out, report = builds[name]
    for file in ("genai_config.json", "model.onnx", "model.onnx.data", MANIFEST):
        assert (out / file).is_file(), file
    manifest = json.loads((out / MANIFEST).read_text())
    assert manifest["method"] == "onnx" and manifest["bits"] == report.bits
    assert manifest["details"]["precision"] == name
    assert report.size_after_bytes > 0 and report.perplexity_tokens == PPL_TOKENS
    assert report.perplexity_before and report.perplexity_after
    assert not list(out.parent.glob(".tiny-*")), "temporary folders left behind"


def test_float32_scores_like_the_source_and_int4_is_smaller(builds):
    _, fp32 = builds["fp32"]
    _, int4 = builds["int4"]
    assert fp32.perplexity_after == pytest.approx(fp32.perplexity_before, rel=1e-4)
    assert int4.perplexity_after == pytest.approx(int4.perplexity_before, rel=0.1)
    assert int4.size_after_bytes < fp32.size_after_bytes / 2


def test_logits_of_every_position_match_transformers(builds, tiny_model):
    import torch
    from transformers import AutoModelForCausalLM

    from duma.plugins.quantizers.onnx import OnnxQuantizer

    out, _ = builds["fp32"]
    ids = [1, 5, 60, 7, 100, 200, 300, 2]
    quantizer = OnnxQuantizer()
    logits = quantizer.logits_function(out, None)(ids)  # type: ignore[arg-type]
    quantizer.close_logits()
    model = AutoModelForCausalLM.from_pretrained(str(tiny_model), dtype=torch.float32).eval()
    with torch.inference_mode():
        expected = model(torch.tensor([ids])).logits[0].numpy()
    assert logits.shape == expected.shape
    assert np.abs(logits - expected).max() < 1e-4


def test_pruned_lm_head_is_scored_token_by_token(tiny_model, builds, tmp_path):
    _, full = builds["fp32"]
    pruned = quantize_model(str(tiny_model), "onnx", tmp_path / "pruned", bits=32,
                            options={"prune_lm_head": True}, ppl_tokens=PPL_TOKENS)
    assert "prune_lm_head=true" in pruned.details["extra_options"]
    assert pruned.perplexity_after == pytest.approx(full.perplexity_after, rel=1e-4)


def test_tokenizer_and_chat_template_load_from_the_folder(builds, tiny_model):
    from transformers import AutoTokenizer

    from duma.rendering import render_prompt_ids
    from duma.types import Message

    out, _ = builds["int4"]
    source = AutoTokenizer.from_pretrained(str(tiny_model))
    copied = AutoTokenizer.from_pretrained(str(out))
    assert copied.chat_template == source.chat_template
    messages = [Message(role="system", content="Be brief."), Message(role="user", content="Hello! 你好")]
    assert render_prompt_ids(copied, messages) == render_prompt_ids(source, messages)
    assert copied.eos_token_id == source.eos_token_id


def test_bad_options_are_config_errors_before_any_work(tiny_model, tmp_path):
    for options, key in (({"block_size": 48}, "block_size: must be one of"), ({"group": 32}, "group: unknown key"),
                         ({"int4_algo": "gptq"}, "int4_algo: must be one of"), ({"adapter": "both"}, "adapter")):
        with pytest.raises(ConfigError) as info:
            quantize_model(str(tiny_model), "onnx", tmp_path / "out", options=options)
        assert key in str(info.value) and "method 'onnx' takes" in str(info.value)
        assert "\n" not in str(info.value)
    with pytest.raises(QuantizeError, match="--bits 16"):
        quantize_model(str(tiny_model), "onnx", tmp_path / "out", bits=16)
    assert not (tmp_path / "out").exists()


def test_unsupported_model_type_is_refused_before_the_builder_runs(tiny_model, tmp_path):
    folder = tmp_path / "gpt2ish"
    shutil.copytree(tiny_model, folder)
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**config, "model_type": "gpt2"}))
    with pytest.raises(QuantizeError, match="cannot handle model type 'gpt2'"):
        quantize_model(str(folder), "onnx", tmp_path / "out", ppl_text=None)


def test_builder_failure_is_one_line_with_the_builders_error(tiny_model, tmp_path):
    folder = tmp_path / "broken"
    shutil.copytree(tiny_model, folder)
    (folder / "model.safetensors").write_bytes(b"\x00" * 64)
    with pytest.raises(QuantizeError) as info:
        quantize_model(str(folder), "onnx", tmp_path / "out", bits=32, ppl_text=None)
    message = str(info.value)
    assert "model builder failed" in message and "Error" in message and "\n" not in message
    assert not (tmp_path / "out").exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith((".out", "duma-quantize-"))]


def test_builder_error_picks_the_exception_line_over_progress_bars():
    from duma.plugins.quantizers.onnx import builder_error

    output = ("Extra options: {}\nReading layer 0\rSaving x:  10%|#  | 1/10 [00:00<00:00, 9.1it/s]\n"
              "Traceback (most recent call last):\n  File \"builder.py\", line 1, in <module>\n"
              "NotImplementedError: The foo model is not currently supported.\n\r50%|###| 5/10\n")
    assert builder_error(output) == "NotImplementedError: The foo model is not currently supported."
    assert builder_error("") == "no output (was it killed?)"


@pytest.fixture(scope="module")
def adapter(tiny_model, tmp_path_factory) -> Path:
    return make_adapter(tiny_model, tmp_path_factory.mktemp("lora") / "adapter")


def test_adapter_kept_as_a_file_scores_like_the_merged_model(tiny_model, adapter, tmp_path):
    out = tmp_path / "tiny-lora-file"
    report = quantize_model(str(tiny_model), "onnx", out, adapter=str(adapter), bits=32,
                            options={"adapter": "file"}, ppl_tokens=PPL_TOKENS)
    assert (out / "adapter.onnx_adapter").is_file()
    assert report.details["lora_inputs"] == 2 * 7 * 2  # A and B of 7 projections in 2 layers
    # perplexity_before is the merged float model; after, the base with the adapter file active.
    assert report.perplexity_after == pytest.approx(report.perplexity_before, rel=1e-4)

    from duma.plugins.quantizers.onnx import lora_inputs

    shapes = lora_inputs(out)
    assert all(isinstance(shape[1 if ".lora_A." in name else 0], str) for name, shape in shapes.items())


def test_adapters_that_a_file_cannot_hold_are_refused(tmp_path):
    from duma.plugins.quantizers.onnx import check_adapter_config

    folder = tmp_path / "dora"
    folder.mkdir()
    (folder / "adapter_config.json").write_text(json.dumps({"peft_type": "LORA", "r": 4, "use_dora": True}))
    with pytest.raises(QuantizeError, match="use_dora"):
        check_adapter_config(folder)
