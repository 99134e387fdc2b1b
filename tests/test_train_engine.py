"""Trainers in this process on the tiny random model: loss goes down, outputs load, LoRA only
moves adapter weights and merges exactly, vocabulary expansion, ZeRO-3 with offload, masking
and packing, and the checks that stop bad input before DeepSpeed starts."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
BELLE = REPO / "configs" / "examples" / "data" / "belle_tiny.jsonl"
TEXT = REPO / "configs" / "examples" / "data" / "text_tiny.jsonl"


@pytest.fixture(autouse=True)
def _shared_extension_cache(monkeypatch):
    # DeepSpeed JIT-builds a comm op once per machine; every test shares the build.
    monkeypatch.setenv("TORCH_EXTENSIONS_DIR", os.environ.get(
        "TORCH_EXTENSIONS_DIR", str(REPO / ".test-cache" / "torch_extensions")))


def run_config(tiny_model: Path, out: Path, method: str = "sft", **sections) -> dict:
    cfg = {
        "method": method,
        "model": str(tiny_model),
        "output_dir": str(out),
        "data": {"source": "belle", "files": [str(BELLE)], "max_length": 96, "limit": 48},
        "training": {"max_steps": 4, "batch_size": 4, "lr": 3e-3, "warmup_ratio": 0.0, "progress": False,
                     "zero_stage": 2, "seed": 1},
    }
    for key, value in sections.items():
        cfg.setdefault(key, {}).update(value) if isinstance(value, dict) else cfg.__setitem__(key, value)
    return cfg


def train(cfg: dict, **kwargs):
    from duma.trainers import runner

    trainer = runner.build_trainer(data=cfg, **kwargs)
    trainer.prepare()
    summary = trainer.run()
    return trainer, summary


def steps(out: Path) -> list[dict]:
    from duma.trainers.base import read_log

    return [r for r in read_log(out / "train_log.jsonl") if r["event"] == "step"]


def test_sft_loss_goes_down_and_outputs_load(tiny_model, tmp_path):
    out = tmp_path / "sft"
    cfg = run_config(tiny_model, out, data={"eval_ratio": 0.1}, training={"max_steps": 24, "packing": True})
    _, summary = train(cfg)
    losses = [r["loss"] for r in steps(out)]
    assert [r["step"] for r in steps(out)] == list(range(1, 25))
    assert sum(losses[-4:]) / 4 < sum(losses[:4]) / 4 - 0.3
    assert summary["eval_loss"] is not None and summary["eval_loss"] < losses[0]
    rec = steps(out)[-1]
    assert rec["tokens_per_s"] > 0 and "lr" in rec
    assert (out / "loss.png").stat().st_size > 1000
    from transformers import AutoModelForCausalLM, AutoTokenizer

    assert "duma_packed" not in (out / "config.json").read_text()  # training's attention is not saved
    model = AutoModelForCausalLM.from_pretrained(str(out))
    assert AutoTokenizer.from_pretrained(str(out)).chat_template
    assert model.config.vocab_size > 0
    # The output folder is a run: the same config again needs --resume or --overwrite.
    from duma.errors import DumaError

    with pytest.raises(DumaError, match="already holds this run"):
        train(cfg)


def test_multi_turn_masking(tiny_model):
    from duma.rendering import IGNORE_INDEX, render_training
    from duma.trainers.base import load_padded_tokenizer

    tok = load_padded_tokenizer(tiny_model)
    msgs = [{"role": "system", "content": "Be brief."},
            {"role": "user", "content": "Hello!"}, {"role": "assistant", "content": "Hi there."},
            {"role": "user", "content": "What is 2+2?"}, {"role": "assistant", "content": "It is 4."}]
    full = render_training(tok, msgs)
    trained = tok.decode([t for t, lab in zip(full.input_ids, full.labels) if lab != IGNORE_INDEX])
    assert "Hi there." in trained and "It is 4." in trained
    assert "Hello!" not in trained and "2+2" not in trained and "Be brief" not in trained
    assert trained.count("<|im_end|>") == 2
    assert all(lab in (IGNORE_INDEX, t) for t, lab in zip(full.input_ids, full.labels))
    last = render_training(tok, msgs, last_turn_only=True)
    trained_last = tok.decode([t for t, lab in zip(last.input_ids, last.labels) if lab != IGNORE_INDEX])
    assert "It is 4." in trained_last and "Hi there." not in trained_last


def test_packing_and_blocks():
    from duma.trainers.base import Sample, pack_rows
    from duma.trainers.pt import pack_blocks

    samples = [Sample([1] * n, [1] * n, [i]) for i, n in enumerate([5, 3, 7, 2, 6])]
    rows = pack_rows(samples, 8)
    assert all(len(r) <= 8 for r in rows)
    assert sorted(i for r in rows for i in r.ids) == [0, 1, 2, 3, 4]
    assert len(rows) == 3
    blocks = pack_blocks([[5, 6, 7], [8, 9], [10, 11, 12, 13]], eos_id=0, block=4)
    assert [b.input_ids for b in blocks] == [[5, 6, 7, 0], [8, 9, 0, 10], [11, 12, 13, 0]]
    assert blocks[1].ids == [1, 2]


@pytest.mark.parametrize("attention", ["sdpa", "duma_packed"])
def test_packed_samples_do_not_attend_to_each_other(tiny_model, attention):
    """A packed row computes, for each sample in it, the logits and loss that sample gets
    alone; batches of packed and unpacked rows (with padding) too: with transformers' block
    mask and with the sample-by-sample attention that packed training runs use."""
    import torch

    from duma.trainers.base import Sample, collate, load_causal_lm, pack_rows
    from duma.trainers.packed_attention import use_packed_attention

    model = load_causal_lm(tiny_model).eval()
    if attention == "duma_packed":
        assert use_packed_attention(model) == "sdpa"
    first = Sample(list(range(5, 12)), list(range(5, 12)), [0])
    second = Sample(list(range(20, 25)), [-100] * 2 + list(range(22, 25)), [1])
    (row,) = pack_rows([first, second], 16)
    assert row.segments == [7, 5]
    lonely = Sample(list(range(30, 34)), list(range(30, 34)), [2])
    with torch.inference_mode():
        packed = model(**collate([row, lonely], 0))
        alone = {s.ids[0]: model(**collate([s], 0)).logits[0] for s in (first, second, lonely)}
    start = 0
    for sample_id, n in zip(row.ids, row.segments):
        torch.testing.assert_close(packed.logits[0, start:start + n], alone[sample_id], atol=1e-5, rtol=1e-4)
        start += n
    torch.testing.assert_close(packed.logits[1, :4], alone[2], atol=1e-5, rtol=1e-4)


def test_lora_changes_only_adapter_and_merge_is_exact(tiny_model, tmp_path):
    import torch
    from safetensors.torch import load_file

    out = tmp_path / "lora"
    train(run_config(tiny_model, out, "lora", training={"max_steps": 4, "lr": 2e-2, "zero_stage": 0},
                     lora={"dropout": 0.0}))
    adapter = load_file(str(out / "adapter_model.safetensors"))
    assert adapter and all("lora_" in k for k in adapter)
    assert any(float(v.abs().max()) > 0 for k, v in adapter.items() if "lora_B" in k)  # the adapter trained
    cfg = json.loads((out / "adapter_config.json").read_text())
    assert Path(cfg["base_model_name_or_path"]) == Path(tiny_model).resolve()
    assert cfg["r"] == 16 and cfg["lora_alpha"] == 32
    assert set(cfg["target_modules"]) == {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"}

    from peft import PeftModel

    from duma.trainers.base import load_causal_lm
    from duma.trainers.lora import merge_adapter

    base = load_causal_lm(tiny_model)
    base_state = {k: v.clone() for k, v in base.state_dict().items()}
    with_adapter = PeftModel.from_pretrained(base, str(out)).eval()
    # Training left every base weight as it was.
    for name, value in with_adapter.get_base_model().state_dict().items():
        clean = name.replace(".base_layer", "")
        if "lora_" not in name:
            assert torch.equal(value, base_state[clean]), name
    merged_dir = merge_adapter(out, tmp_path / "merged")
    from transformers import AutoModelForCausalLM

    merged = AutoModelForCausalLM.from_pretrained(str(merged_dir)).eval()
    ids = torch.tensor([[1, 40, 41, 42, 43, 44, 45, 46]])
    with torch.no_grad():
        a, b = with_adapter(input_ids=ids).logits, merged(input_ids=ids).logits
    assert torch.allclose(a, b, atol=1e-4)
    with torch.no_grad():
        plain = load_causal_lm(tiny_model)(input_ids=ids).logits
    assert not torch.allclose(plain, b, atol=1e-4)


def test_vocab_expansion_adds_tokens_and_model_loads(tiny_model, tmp_path):
    out = tmp_path / "vocab"
    cfg = run_config(tiny_model, out, "vocab", data={"source": "text", "files": [str(TEXT)], "limit": 200,
                                                    "max_length": 64},
                     vocab={"vocab_size": 800}, training={"max_steps": 3, "lr": 1e-2})
    trainer, _ = train(cfg)
    report = json.loads((out / "vocab_report.json").read_text())
    assert report["added_pieces"] > 50
    assert report["tokens_per_line_after"] < report["tokens_per_line_before"] / 2
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(out))
    model = AutoModelForCausalLM.from_pretrained(str(out))
    assert len(tok) == report["new_vocab"] == model.get_input_embeddings().weight.shape[0]
    text = "北京是中国的首都。"
    assert tok.decode(tok(text, add_special_tokens=False)["input_ids"]) == text
    # Only the embeddings trained: a transformer layer is unchanged.
    import torch

    from duma.trainers.base import load_causal_lm

    base = load_causal_lm(tiny_model)
    assert torch.equal(base.model.layers[0].mlp.up_proj.weight, model.model.layers[0].mlp.up_proj.weight)


def test_pt_zero3_offload_bf16(tiny_model, tmp_path):
    out = tmp_path / "pt"
    cfg = run_config(tiny_model, out, "pt", data={"source": "text", "files": [str(TEXT)], "max_length": 64},
                     training={"max_steps": 4, "zero_stage": 3, "offload_optimizer": True,
                               "offload_params": True, "grad_accum": 2, "schedule": "linear", "bf16": True,
                               "warmup_ratio": 0.5})
    _, summary = train(cfg)
    recs = steps(out)
    assert [r["step"] for r in recs] == [1, 2, 3, 4]
    assert recs[0]["lr"] < recs[1]["lr"] > recs[3]["lr"]  # warm-up, then decay
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(str(out))
    assert model.get_input_embeddings().weight.numel() > 0  # gathered, not a ZeRO-3 stub


# --- bad input: one-line errors before any training


def _prepare(cfg: dict, **kwargs):
    from duma.trainers import runner

    trainer = runner.build_trainer(data=cfg, **kwargs)
    trainer.prepare()
    return trainer


def test_bad_inputs_fail_before_training(tiny_model, tmp_path):
    from duma.errors import ConfigError, DumaError

    out = tmp_path / "bad"
    with pytest.raises(ConfigError) as err:
        _prepare(run_config(tiny_model, out, training={"lrr": 1}))
    assert "training.lrr: unknown key" in str(err.value) and "allowed keys:" in str(err.value)
    assert "lr" in err.value.hint
    with pytest.raises(ConfigError, match="lora: unknown key"):
        _prepare(run_config(tiny_model, out, lora={"r": 4}))  # sft has no lora section
    with pytest.raises(DumaError, match="unknown trainer 'no-such-method'"):
        _prepare(run_config(tiny_model, out, "no-such-method"))
    with pytest.raises(DumaError, match="does not exist"):
        _prepare(run_config(tiny_model, out, data={"files": [str(tmp_path / "missing.jsonl")]}))
    with pytest.raises(DumaError, match=r"text_tiny.jsonl:1"):
        _prepare(run_config(tiny_model, out, data={"files": [str(TEXT)]}))  # text file read as belle
    with pytest.raises(ConfigError, match="offload_params needs zero_stage 3"):
        _prepare(run_config(tiny_model, out, training={"offload_params": True}))
    with pytest.raises(DumaError, match="not found|not an HF model folder"):
        _prepare(run_config(tiny_model, out) | {"model": str(tmp_path / "nope")})
    mixed = tmp_path / "mixed.jsonl"
    mixed.write_text(BELLE.read_text(encoding="utf-8").splitlines()[0] + "\n" + '{"conversations": 3}\n'
                     + "\n".join(BELLE.read_text(encoding="utf-8").splitlines()[1:20]) + "\n", encoding="utf-8")
    with pytest.raises(DumaError, match=r"mixed.jsonl:2"):
        _prepare(run_config(tiny_model, out, data={"files": [str(mixed)]}))
    skipping = _prepare(run_config(tiny_model, out, data={"files": [str(mixed)], "skip_invalid": True,
                                                          "rejects_path": str(tmp_path / "rejects.jsonl")}))
    assert skipping.data_counts.invalid == 1 and len(skipping.train_rows) == 20
    assert (tmp_path / "rejects.jsonl").read_text().count("\n") == 1
    for e in (ConfigError, DumaError):
        assert "\n" not in str(e("x", "y"))
    # An output folder holding another run.
    out.mkdir()
    (out / "duma_run.json").write_text(json.dumps({"config_hash": "0123"}))
    with pytest.raises(DumaError, match="holds another run"):
        _prepare(run_config(tiny_model, out))
    _prepare(run_config(tiny_model, out), overwrite=True)
    (out / "duma_run.json").unlink()
    (out / "notes.txt").write_text("mine")
    with pytest.raises(DumaError, match="holds no duma run"):
        _prepare(run_config(tiny_model, out))


def test_cli_start_does_not_import_torch():
    code = ("import sys; from duma.cli import load_plugin_commands; load_plugin_commands(); "
            "from duma import host; host.components('trainer'); "
            "import duma.trainers.runner; assert 'torch' not in sys.modules, 'torch imported'")
    subprocess.run([sys.executable, "-c", code], check=True, cwd=REPO)


def test_overlong_samples_truncated_or_skipped_and_counted(tiny_model, tmp_path):
    cut = _prepare(run_config(tiny_model, tmp_path / "a", data={"max_length": 40, "overlong": "truncate"}))
    skip = _prepare(run_config(tiny_model, tmp_path / "b", data={"max_length": 40, "overlong": "skip"}))
    assert cut.data_counts.truncated > 0 and all(len(r) <= 40 for r in cut.train_rows)
    assert skip.data_counts.skipped_overlong == cut.data_counts.truncated
    assert len(skip.train_rows) == len(cut.train_rows) - cut.data_counts.truncated + cut.data_counts.skipped_all_masked


def test_skipped_invalid_records_go_beside_the_data_not_into_the_cwd(tiny_model, tmp_path, monkeypatch):
    cwd, data = tmp_path / "cwd", tmp_path / "data"
    cwd.mkdir()
    data.mkdir()
    monkeypatch.chdir(cwd)
    mixed = data / "mixed.jsonl"
    lines = BELLE.read_text(encoding="utf-8").splitlines()
    mixed.write_text("\n".join([lines[0], '{"conversations": 3}', *lines[1:20]]) + "\n", encoding="utf-8")
    trainer = _prepare(run_config(tiny_model, tmp_path / "out", data={"files": [str(mixed)], "skip_invalid": True}))
    rejects = data / "mixed.rejects.jsonl"
    assert trainer.data_counts.invalid == 1 and trainer.data_counts.summary()["rejects"] == str(rejects)
    assert json.loads(rejects.read_text(encoding="utf-8"))["line"] == 2
    assert list(cwd.iterdir()) == []


def test_summary_lines_name_what_was_written():
    from duma.plugins.training import summary_lines

    summary = {"method": "lora", "result": "adapter", "steps": 30, "resumed_from": 20, "final_loss": 1.23456,
               "eval_loss": None, "tokens_per_s": 101.4, "elapsed_s": 3725.2, "output_dir": "runs/x",
               "world_size": 2, "data": {"records": 126, "invalid_skipped": 2, "truncated": 3, "train_rows": 40,
                                         "eval_rows": 0, "rejects": "data/d.rejects.jsonl"}}
    lines = summary_lines(summary)
    assert lines[0] == "lora run done: 30 steps in 1h 02m on 2 processes, resumed at step 20"
    assert lines[1:] == [
        "  loss        1.2346 at the last step",
        "  speed       101 tokens/s",
        "  data        126 records: 40 train rows, 0 eval rows (2 invalid skipped, 3 truncated)",
        "  rejects     data/d.rejects.jsonl",
        "  adapter     runs/x",
        f"  log         {Path('runs/x/train_log.jsonl')} (loss curve: {Path('runs/x/loss.png')})",
        "  try it      duma chat -m runs/x",
    ]
