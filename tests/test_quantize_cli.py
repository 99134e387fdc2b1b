"""``duma quantize`` and ``quantize_model``: what the host does around every quantizer (checks
before work, nothing half-written, figures and the manifest), with a small quantizer plugin
registered the way a third-party one would be."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, ClassVar

import pytest
from pydantic import BaseModel, ConfigDict

import duma
from duma import host
from duma.quantizer import MANIFEST, QuantizeError, Quantizer, QuantizeSource, quantize_model


class HalfOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")

    fail: bool = False  # fail after writing part of the output


class HalfQuantizer(Quantizer):
    """float16 copy of an HF folder: small, exact enough, and a real plugin."""

    name = "half"
    bits = (16,)
    architectures = ("llama",)
    Options: ClassVar[type[BaseModel]] = HalfOptions

    def quantize(self, source: QuantizeSource, out: Path, bits: int, calibration: list[str] | None) -> dict[str, Any]:
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        folder = source.merged_folder()
        source.progress("writing float16 weights")
        model = AutoModelForCausalLM.from_pretrained(str(folder), dtype=torch.float16)
        model.save_pretrained(str(out))
        AutoTokenizer.from_pretrained(str(folder)).save_pretrained(str(out))
        if self.options.fail:
            raise RuntimeError("disk full")
        return {"dtype": "float16", "calibration_texts": len(calibration or [])}


class CalibratedQuantizer(HalfQuantizer):
    name = "half-calibrated"
    calibration = True


class QuantizerPlugin:
    @duma.hookimpl
    def register_quantizers(self, register) -> None:
        register(HalfQuantizer)
        register(CalibratedQuantizer)


@pytest.fixture
def half() -> None:
    host.register_plugin(QuantizerPlugin(), "quantizer-test")
    yield
    host.unregister_plugin("quantizer-test")


def run_cli(args: list[str], capsys) -> tuple[int, str, str]:
    from duma.cli import main

    with pytest.raises(SystemExit) as exit_info:
        main(args)
        raise SystemExit(0)
    captured = capsys.readouterr()
    return int(exit_info.value.code or 0), captured.out, captured.err


def leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.startswith(".") or p.name.startswith("duma-quantize-"))


def test_quantize_writes_the_output_with_figures_and_manifest(half, tiny_model, tmp_path, capsys):
    out = tmp_path / "half"
    code, stdout, err = run_cli(["quantize", str(tiny_model), "--method", "half", "--out", str(out), "--json"], capsys)
    assert code == 0, err
    report = json.loads(stdout)
    assert report["method"] == "half" and report["bits"] == 16 and report["details"]["dtype"] == "float16"
    assert 0.4 < report["size_after_bytes"] / report["size_before_bytes"] < 0.6
    # Random weights: float16 barely changes the perplexity of a text.
    assert report["perplexity_before"] == pytest.approx(report["perplexity_after"], rel=0.01)
    assert json.loads((out / MANIFEST).read_text()) == report
    assert leftovers(tmp_path) == []
    # The output is a model duma loads.
    from duma.models import load_model

    assert load_model(str(out), device="cpu") is not None


def test_quantize_prints_a_summary(half, tiny_model, tmp_path, capsys):
    code, stdout, err = run_cli(["quantize", str(tiny_model), "--method", "half", "--out", str(tmp_path / "o")], capsys)
    assert code == 0, err
    assert "size:" in stdout and "perplexity" in stdout and "->" in stdout


def test_an_adapter_folder_is_merged_into_its_base_first(half, tiny_model, tmp_path):
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    base = AutoModelForCausalLM.from_pretrained(str(tiny_model))
    peft_model = get_peft_model(base, LoraConfig(r=4, target_modules=["q_proj", "v_proj"], init_lora_weights=False))
    adapter = tmp_path / "adapter"
    peft_model.save_pretrained(str(adapter))
    plain = quantize_model(str(tiny_model), "half", tmp_path / "plain")
    merged = quantize_model(str(tiny_model), "half", tmp_path / "merged", adapter=str(adapter))
    assert merged.adapter == str(adapter) and plain.adapter is None
    assert merged.perplexity_before != pytest.approx(plain.perplexity_before, rel=1e-6)
    weights = [AutoModelForCausalLM.from_pretrained(str(tmp_path / name)).model.layers[0].self_attn.q_proj.weight
               for name in ("plain", "merged")]
    assert not torch.equal(weights[0], weights[1])


@pytest.mark.parametrize("args, expected", [
    (["--bits", "3"], "--bits 3: method 'half' does not support it"),
    (["-o", "nosuch", "1"], "nosuch"),
    (["--calibration", "data.jsonl"], "--calibration: method 'half' takes no calibration data"),
])
def test_bad_input_is_one_line_before_any_work(half, tiny_model, tmp_path, capsys, args, expected):
    out = tmp_path / "out"
    code, stdout, err = run_cli(["quantize", str(tiny_model), "--method", "half", "--out", str(out), *args], capsys)
    assert code != 0 and expected in err
    assert len(err.strip().splitlines()) <= 2  # the error and its hint
    assert not out.exists() and leftovers(tmp_path) == []


def test_unknown_method_names_the_installed_ones(half, tiny_model, tmp_path, capsys):
    code, _, err = run_cli(["quantize", str(tiny_model), "--method", "nosuch", "--out", str(tmp_path / "o")], capsys)
    assert code != 0 and "nosuch" in err and "half" in err


def test_existing_output_is_refused_without_overwrite_and_replaced_with_it(half, tiny_model, tmp_path, capsys):
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    code, _, err = run_cli(["quantize", str(tiny_model), "--method", "half", "--out", str(out)], capsys)
    assert code != 0 and "already exists" in err and "--overwrite" in err
    assert (out / "keep.txt").read_text() == "mine"
    code, _, err = run_cli(["quantize", str(tiny_model), "--method", "half", "--out", str(out), "--overwrite",
                            "--no-ppl"], capsys)
    assert code == 0, err
    assert not (out / "keep.txt").exists() and (out / MANIFEST).is_file()
    assert leftovers(tmp_path) == []


def test_a_failing_quantizer_leaves_nothing_behind_and_keeps_the_old_output(half, tiny_model, tmp_path, capsys):
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    code, _, err = run_cli(["quantize", str(tiny_model), "--method", "half", "--out", str(out), "--overwrite",
                            "-o", "fail", "true"], capsys)
    assert code != 0 and "disk full" in err.strip().splitlines()[-1] \
        and sum(line.startswith("Error:") for line in err.splitlines()) == 1
    assert (out / "keep.txt").read_text() == "mine"
    assert leftovers(tmp_path) == []


def test_an_unsupported_architecture_is_refused(half, tmp_path, capsys):
    from transformers import GPT2Config, GPT2LMHeadModel

    folder = tmp_path / "gpt2"
    GPT2LMHeadModel(GPT2Config(n_layer=1, n_embd=32, n_head=2, vocab_size=64)).save_pretrained(str(folder))
    from duma.testing import make_tiny_tokenizer

    make_tiny_tokenizer(folder)
    code, _, err = run_cli(["quantize", str(folder), "--method", "half", "--out", str(tmp_path / "o")], capsys)
    assert code != 0 and "model type 'gpt2'" in err and "config.json" in err


def test_calibration_data_is_checked_and_read(half, tiny_model, tmp_path, capsys):
    base = ["quantize", str(tiny_model), "--method", "half-calibrated", "--no-ppl"]
    code, _, err = run_cli([*base, "--out", str(tmp_path / "a"), "--calibration", str(tmp_path / "missing.jsonl")],
                           capsys)
    assert code != 0 and "missing.jsonl" in err and "no such file" in err
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    code, _, err = run_cli([*base, "--out", str(tmp_path / "b"), "--calibration", str(empty)], capsys)
    assert code != 0 and "empty.jsonl" in err and "no usable text" in err
    data = tmp_path / "data.jsonl"
    data.write_text("".join(json.dumps({"instruction": f"say {i}", "output": f"{i}"}) + "\n" for i in range(200)))
    code, stdout, err = run_cli([*base, "--out", str(tmp_path / "c"), "--calibration", str(data), "--json"], capsys)
    assert code == 0, err
    assert json.loads(stdout)["details"]["calibration_texts"] == 128  # BELLE's 128 samples


def test_duma_plugins_lists_the_quantizers(capsys):
    code, stdout, err = run_cli(["plugins", "--json"], capsys)
    assert code == 0, err
    listed = {name for plugin in json.loads(stdout)
              for name in plugin["components"].get("quantizer", [])}
    assert {"gguf", "onnx", "gptq", "int8"} <= listed
