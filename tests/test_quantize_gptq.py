"""The gptq quantizer: its refusals through quantize_model (one line each, before any heavy
work, nothing written), and a real quantization of the tiny model where gptqmodel is
installed."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from duma.errors import ConfigError, DumaError
from duma.quantizer import MANIFEST, QuantizeError, quantize_model
from duma.testing import run_cli

gptq = pytest.importorskip("duma.plugins.quantizers.gptq")

TEXTS = [
    "The capital of France is Paris. Paris is a city in Europe, on the river Seine, with many museums.",
    "Hello! How can I help you today? I am a helpful assistant and I answer questions about many things.",
    "What is 17% of 2,340? It is 397.8, because 2,340 times 0.17 is 397.8 exactly, as a calculator shows.",
]


@pytest.fixture
def calibration(tmp_path) -> Path:
    path = tmp_path / "calibration.jsonl"
    path.write_text("".join(json.dumps({"text": t}) + "\n" for t in TEXTS * 6), encoding="utf-8")
    return path


@pytest.fixture
def library_present(monkeypatch) -> None:
    """Pretend gptqmodel is installed: the checks that come before it are what is tested."""
    monkeypatch.setattr(gptq, "gptqmodel_available", lambda: True)


def _refused(tiny_model, out: Path, match: str, **kwargs) -> QuantizeError:
    kwargs.setdefault("options", {"group_size": 32})  # the tiny model's layers are 64 and 128 wide
    with pytest.raises(QuantizeError, match=match) as info:
        quantize_model(str(tiny_model), "gptq", out, ppl_text=None, **kwargs)
    assert "\n" not in str(info.value)
    assert not out.exists() and [p.name for p in out.parent.iterdir() if not p.name.startswith("calibration.")] == []
    return info.value


def test_gptq_is_registered_with_its_recipe():
    from duma import host

    cls = host.get("quantizer", "gptq")
    assert cls is gptq.GptqQuantizer and cls.bits == (4, 8) and cls.calibration and cls.output == "folder"
    options = cls().options
    assert (options.group_size, options.desc_act, options.damp_percent, options.sym) == (128, False, 0.01, True)


def test_missing_calibration_is_refused(library_present, tiny_model, tmp_path):
    error = _refused(tiny_model, tmp_path / "out", "--calibration is required")
    assert "--calibration" in error.hint


def test_missing_calibration_file_is_refused(library_present, tiny_model, tmp_path):
    _refused(tiny_model, tmp_path / "out", "no such file", calibration=tmp_path / "nope.jsonl")


def test_empty_calibration_file_is_refused(library_present, tiny_model, tmp_path):
    blank = tmp_path / "calibration.txt"
    blank.write_text("\n  \n\n", encoding="utf-8")
    _refused(tiny_model, tmp_path / "out", "no usable text", calibration=blank)
    # An empty .jsonl: no data source can even tell its format.
    blank.unlink()
    blank = tmp_path / "calibration.jsonl"
    blank.write_text("", encoding="utf-8")
    with pytest.raises(DumaError, match="calibration.jsonl") as info:
        quantize_model(str(tiny_model), "gptq", tmp_path / "out", calibration=blank, ppl_text=None)
    assert "\n" not in str(info.value) and not (tmp_path / "out").exists()


def test_too_short_calibration_texts_are_refused(library_present, tiny_model, tmp_path):
    short = tmp_path / "calibration.jsonl"
    short.write_text(json.dumps({"text": "Hi"}) + "\n", encoding="utf-8")
    _refused(tiny_model, tmp_path / "out", "shorter than 10 tokens", calibration=short)


def test_bits_3_is_refused(tiny_model, tmp_path, calibration):
    error = _refused(tiny_model, tmp_path / "out", "--bits 3: method 'gptq' does not support it",
                     bits=3, calibration=calibration)
    assert error.hint == "use --bits 4 or 8"


def test_a_group_size_that_does_not_divide_the_layers_is_refused(library_present, tiny_model, tmp_path,
                                                                  calibration):
    error = _refused(tiny_model, tmp_path / "out", r"-o group_size 128: this model's layer input widths \(64, 128\)",
                     calibration=calibration, options={})
    assert error.hint == "use -o group_size 64"


def test_bad_options_name_the_key(tiny_model, tmp_path, calibration):
    for options, key in (({"group": 64}, "group"), ({"group_size": 0}, "group_size"),
                         ({"damp_percent": 2}, "damp_percent")):
        with pytest.raises(ConfigError, match=key):
            quantize_model(str(tiny_model), "gptq", tmp_path / "out", calibration=calibration, options=options)


def test_missing_library_says_what_to_install(monkeypatch, tiny_model, tmp_path, calibration):
    monkeypatch.setattr(gptq, "gptqmodel_available", lambda: False)
    error = _refused(tiny_model, tmp_path / "out", "needs the gptqmodel library, which is not installed",
                     calibration=calibration)
    assert "duma[gptq]" in error.hint and "GPU" in error.hint


def test_missing_library_through_the_cli(monkeypatch, tiny_model, tmp_path, calibration):
    monkeypatch.setattr(gptq, "gptqmodel_available", lambda: False)
    code, _out, err = run_cli(["quantize", str(tiny_model), "--method", "gptq", "--calibration", str(calibration),
                               "--out", str(tmp_path / "out"), "--no-ppl"])
    assert code != 0 and "gptqmodel" in err and "duma[gptq]" in err
    assert not (tmp_path / "out").exists()


def _gptqmodel_runs() -> bool:
    if not gptq.gptqmodel_available():
        return False
    import shutil

    import torch

    # Without a GPU gptqmodel compiles its CPU kernels on first use.
    return torch.cuda.is_available() or shutil.which("c++") is not None


@pytest.mark.slow
@pytest.mark.skipif(not _gptqmodel_runs(), reason="needs gptqmodel (pip install 'duma[gptq]') and a GPU or a C++ "
                    "compiler")
def test_real_quantization_of_the_tiny_model(tiny_model, tmp_path, calibration):
    out = tmp_path / "tiny-gptq"
    # The tiny model's layers are 64 wide: groups of 32.
    report = quantize_model(str(tiny_model), "gptq", out, bits=4, calibration=calibration,
                            options={"group_size": 32})
    config = json.loads((out / "config.json").read_text())["quantization_config"]
    assert config["quant_method"] == "gptq" and config["bits"] == 4 and config["group_size"] == 32
    assert config["sym"] is True and config["desc_act"] is False
    assert json.loads((out / MANIFEST).read_text())["method"] == "gptq"
    assert report.details["calibration_samples"] == len(TEXTS) * 6
    assert report.size_after_bytes < 0.5 * report.size_before_bytes
    # Random weights: 4 bits move the perplexity, but not wildly.
    assert report.perplexity_after == pytest.approx(report.perplexity_before, rel=0.2)
    assert (out / "generation_config.json").read_text() == (tiny_model / "generation_config.json").read_text()
