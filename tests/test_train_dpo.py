"""The ``dpo`` trainer on the tiny random model: sequence log-probs agree with the model's own
cross-entropy, the loss starts at ln 2, prompts get no gradient, the reference stays fixed,
held-out preferences are learnt, a SIGKILLed run resumes to the same losses, and bad
preference records stop the run with ``file:line`` errors."""

from __future__ import annotations

import json
import math
import os
import subprocess
from pathlib import Path

import pytest
import yaml

from test_train_cli import DUMA, child_env, log_records, train_until_killed
from test_train_engine import _prepare, steps, train

REPO = Path(__file__).resolve().parents[1]
EXAMPLE = REPO / "configs" / "examples" / "data" / "preference_tiny.jsonl"
TOPICS = ["the weather", "Paris", "a cat", "the sea", "music", "bread", "a train", "the moon", "tea", "a garden",
          "winter", "a river", "chess", "the city", "a book", "coffee", "a song", "rain", "a bridge", "snow"]
ASKS = ["Tell me about {t}.", "Can you describe {t}?", "What do you know about {t}?", "Say something on {t}."]


@pytest.fixture(autouse=True)
def _shared_extension_cache(monkeypatch):
    monkeypatch.setenv("TORCH_EXTENSIONS_DIR", os.environ.get(
        "TORCH_EXTENSIONS_DIR", str(REPO / ".test-cache" / "torch_extensions")))


def synthetic_pairs(path: Path) -> Path:
    """A preference task with one right answer: a fixed polite reply chosen over a fixed curt
    one, for 80 different prompts (half in BELLE's {prompt} form)."""
    with path.open("w", encoding="utf-8") as fh:
        for i, (topic, ask) in enumerate((t, a) for t in TOPICS for a in ASKS):
            question = ask.format(t=topic)
            context = ({"prompt": f"Human: \n{question}\n\nAssistant: \n"} if i % 2 else
                       {"messages": [{"role": "user", "content": question}]})
            fh.write(json.dumps({**context, "chosen": "Gladly, here you are.", "rejected": "No."}) + "\n")
    return path


def dpo_config(tiny_model: Path, out: Path, data_file: Path, **sections) -> dict:
    cfg = {
        "method": "dpo", "model": str(tiny_model), "output_dir": str(out),
        "data": {"source": "preference", "files": [str(data_file)], "max_length": 64},
        "training": {"max_steps": 4, "batch_size": 4, "lr": 1e-3, "warmup_ratio": 0.0, "progress": False,
                     "zero_stage": 0, "seed": 1},
    }
    for key, value in sections.items():
        cfg.setdefault(key, {}).update(value)
    return cfg


def model_logps(model, trainer, rows):
    """Summed reply log-probs of each pair's chosen and rejected sequence under ``model``."""
    import torch

    from duma.trainers.logps import sequence_logps

    batch = trainer.collate(rows, trainer.tokenizer.pad_token_id)
    with torch.no_grad():
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    logps = sequence_logps(logits, batch["labels"])
    return logps[:len(rows)], logps[len(rows):]


# --- sequence log-probs


def test_sequence_logps_equal_cross_entropy_times_tokens_also_packed(tiny_model):
    import torch

    from duma.rendering import render_training
    from duma.trainers.base import Sample, collate, load_causal_lm, load_padded_tokenizer, pack_rows
    from duma.trainers.logps import sequence_logps

    tok = load_padded_tokenizer(tiny_model)
    model = load_causal_lm(tiny_model).eval()
    samples = []
    for i, (q, a) in enumerate([("Hello!", "Hi there, how can I help?"), ("What is 2+2?", "It is 4."),
                                ("Name a city.", "Paris is a city in Europe.")]):
        r = render_training(tok, [{"role": "user", "content": q}, {"role": "assistant", "content": a}])
        samples.append(Sample(r.input_ids, r.labels, [i]))
    batch = collate(samples, tok.pad_token_id)
    with torch.no_grad():
        logits = model(**batch).logits
        logps = sequence_logps(logits, batch["labels"])
        for i, sample in enumerate(samples):  # per row: -(mean CE of that row alone) x its tokens
            alone = collate([sample], tok.pad_token_id)
            n = int((alone["labels"][:, 1:] != -100).sum())
            assert float(logps[i]) == pytest.approx(-float(model(**alone).loss) * n, rel=1e-5)
        n_all = int((batch["labels"][:, 1:] != -100).sum())
        assert float(logps.sum()) == pytest.approx(-float(model(**batch).loss) * n_all, rel=1e-5)
        averaged = sequence_logps(logits, batch["labels"], average=True)
        n_rows = (batch["labels"][:, 1:] != -100).sum(-1)
        torch.testing.assert_close(averaged, logps / n_rows)
        # Packed rows: one sum per packed sample, equal to the sample's own.
        rows = pack_rows(samples, 64)
        assert any(len(r.segments) > 1 for r in rows)
        packed = collate(rows, tok.pad_token_id)
        per_sample = sequence_logps(model(**packed).logits, packed["labels"], [r.segments for r in rows])
    order = [i for r in rows for i in r.ids]
    torch.testing.assert_close(per_sample, logps[order], rtol=1e-4, atol=1e-4)


def test_loss_formulas():
    import torch

    from duma.trainers.dpo import DPOSettings, preference_losses

    pc, pr, rc, rr = torch.tensor([-3.0]), torch.tensor([-5.0]), torch.tensor([-4.0]), torch.tensor([-4.5])
    z = (pc - pr) - (rc - rr)  # 1.5
    beta = 0.2

    def loss(kind: str, eps: float = 0.0) -> float:
        return float(preference_losses(pc, pr, rc, rr, DPOSettings(beta=beta, loss_type=kind, label_smoothing=eps)))

    sig = lambda x: 1 / (1 + math.exp(-x))  # noqa: E731
    assert loss("sigmoid") == pytest.approx(-math.log(sig(beta * 1.5)))
    assert loss("sigmoid", 0.1) == pytest.approx(-0.9 * math.log(sig(0.3)) - 0.1 * math.log(sig(-0.3)))
    assert loss("robust", 0.1) == pytest.approx((-0.9 * math.log(sig(0.3)) + 0.1 * math.log(sig(-0.3))) / 0.8)
    assert loss("hinge") == pytest.approx(1 - 0.3)
    assert loss("ipo") == pytest.approx((1.5 - 1 / (2 * beta)) ** 2)
    assert float(z) == 1.5


# --- the trainer


def test_prompt_tokens_get_no_gradient(tiny_model, tmp_path):
    """The loss (DPO plus the SFT term) has zero gradient w.r.t. the logits that predict
    prompt tokens: only the replies are trained."""
    import torch

    from duma.trainers.base import load_causal_lm

    data = synthetic_pairs(tmp_path / "pairs.jsonl")
    trainer = _prepare(dpo_config(tiny_model, tmp_path / "out", data, dpo={"sft_weight": 0.5}))
    rows = trainer.train_rows[:3]
    chosen = trainer.tokenizer.decode([t for t, lab in zip(rows[0].chosen.input_ids, rows[0].chosen.labels)
                                       if lab != -100])
    assert chosen.startswith("Gladly, here you are.") and "<|im_start|>" not in chosen
    model = load_causal_lm(tiny_model)
    for pair, (c, r) in zip(rows, zip(*model_logps(model, trainer, rows))):
        pair.reference = (float(c) - 1.0, float(r) + 1.0)  # any reference: the gradient is the point
    seen = {}

    def engine(**inputs):
        out = model(**inputs)
        out.logits.retain_grad()
        seen["logits"] = out.logits
        return out

    batch = trainer.collate(rows, trainer.tokenizer.pad_token_id)
    loss, metrics = trainer.compute_loss(engine, batch)
    loss.backward()
    grad = seen["logits"].grad  # position t scores the label at t + 1
    scored = torch.zeros_like(batch["labels"], dtype=torch.bool)
    scored[:, :-1] = batch["labels"][:, 1:] != -100
    assert float(grad[~scored].abs().max()) == 0.0
    assert float(grad[scored].abs().amax(-1).min()) > 0  # every reply token is trained
    assert {"rewards/chosen", "rewards/rejected", "rewards/accuracy", "rewards/margin", "sft_loss"} <= set(metrics)


def test_dpo_learns_held_out_preferences_with_a_fixed_reference(tiny_model, tmp_path, monkeypatch):
    import torch
    from transformers import AutoModelForCausalLM

    from duma.trainers import dpo
    from duma.trainers.base import load_causal_lm

    written = []
    real_write = dpo.DPOTrainer.write_reference_cache
    monkeypatch.setattr(dpo.DPOTrainer, "write_reference_cache",
                        lambda self, path, ref: (written.append(dict(ref)), real_write(self, path, ref))[1])
    out = tmp_path / "out"
    data = synthetic_pairs(tmp_path / "pairs.jsonl")
    cfg = dpo_config(tiny_model, out, data, data={"eval_ratio": 0.2},
                     training={"max_steps": 16, "schedule": "constant", "eval_every": 8})
    trainer, summary = train(cfg)
    records = steps(out)
    losses = [r["loss"] for r in records]
    assert losses[0] == pytest.approx(math.log(2), abs=1e-5)  # policy == reference at step 0
    assert records[0]["rewards/margin"] == pytest.approx(0, abs=1e-5)
    assert losses[-1] < 0.2 and records[-1]["rewards/accuracy"] == 1.0

    # The reference: computed once, from the starting model, and never changed.
    assert len(written) == 1
    start = load_causal_lm(tiny_model).eval()
    held_out = trainer.eval_rows
    assert len(held_out) == 16 and not {p.ids[0] for p in held_out} & {p.ids[0] for p in trainer.train_rows}
    ref_chosen, ref_rejected = model_logps(start, trainer, held_out)
    for pair, c, r in zip(held_out, ref_chosen, ref_rejected):
        assert pair.reference == pytest.approx((float(c), float(r)), abs=1e-4)
        assert written[0][pair.ids[0]] == pair.reference
    cache = torch.load(out / dpo.REFERENCE_FILE, weights_only=True)
    cached = dict(zip(cache["ids"].tolist(), map(tuple, cache["logps"].tolist())))
    assert cached == written[0]  # float32 values, written as read
    assert all(p.reference == written[0][p.ids[0]] for p in trainer.train_rows)

    # Held-out pairs: the implicit reward (policy - reference log-prob) prefers chosen.
    policy = AutoModelForCausalLM.from_pretrained(str(out)).eval()
    pol_chosen, pol_rejected = model_logps(policy, trainer, held_out)
    before = float(((ref_chosen - ref_rejected) > 0).float().mean())  # the raw model's own preference
    accuracy = float(((pol_chosen - ref_chosen) > (pol_rejected - ref_rejected)).float().mean())
    evals = [r for r in read_all(out) if r["event"] == "eval"]
    print(f"held-out reward accuracy {accuracy:.3f} (start model prefers chosen on {before:.3f}); "
          f"losses {losses[0]:.4f} -> {losses[-1]:.4f}; eval {[round(e['eval_loss'], 4) for e in evals]} "
          f"accuracy {[e['eval_rewards/accuracy'] for e in evals]}")
    assert accuracy >= 0.9
    assert evals[-1]["eval_rewards/accuracy"] == pytest.approx(accuracy)
    assert summary["eval_loss"] < math.log(2) / 2


def read_all(out: Path) -> list[dict]:
    from duma.trainers.base import read_log

    return read_log(out / "train_log.jsonl")


def test_lora_policy_and_loss_variants(tiny_model, tmp_path):
    """A LoRA policy writes an adapter; every loss type runs (ln 2 / 1 / 1/(4 beta^2) at step 0)."""
    data = synthetic_pairs(tmp_path / "pairs.jsonl")
    out = tmp_path / "lora"
    _, summary = train(dpo_config(tiny_model, out, data, training={"max_steps": 2, "lr": 2e-2},
                                  lora={"dropout": 0.0}, dpo={"loss_type": "robust", "label_smoothing": 0.1}))
    assert summary["result"] == "adapter" and (out / "adapter_model.safetensors").is_file()
    assert steps(out)[0]["loss"] == pytest.approx(math.log(2), abs=1e-5)
    for kind, at_start in (("hinge", 1.0), ("ipo", 1 / (4 * 0.1**2))):
        run = tmp_path / kind
        train(dpo_config(tiny_model, run, data, training={"max_steps": 1}, dpo={"loss_type": kind}))
        assert steps(run)[0]["loss"] == pytest.approx(at_start, rel=1e-4)


def test_a_policy_started_from_an_adapter_keeps_it_as_the_reference(tiny_model, tmp_path):
    """``model:`` naming an adapter folder (a shipped mind, a lora run) trains that adapter on:
    the reference is base + that adapter (not the bare base), and the result is an adapter of
    the same base and shape."""
    import torch

    from duma.models import load_model
    from duma.trainers.base import load_causal_lm

    data = synthetic_pairs(tmp_path / "pairs.jsonl")
    first = tmp_path / "first"
    train(dpo_config(tiny_model, first, data, training={"max_steps": 3, "lr": 5e-2}, lora={"r": 4, "dropout": 0.0}))
    out = tmp_path / "second"
    trainer, summary = train(dpo_config(first, out, data, training={"max_steps": 2}, lora={"dropout": 0.0}))
    assert steps(out)[0]["loss"] == pytest.approx(math.log(2), abs=1e-5)
    rows = trainer.train_rows[:4]
    start_chosen, _ = model_logps(load_causal_lm(tiny_model, adapter=first).eval(), trainer, rows)
    bare_chosen, _ = model_logps(load_causal_lm(tiny_model).eval(), trainer, rows)
    references = torch.tensor([p.reference[0] for p in rows])
    assert torch.allclose(references, start_chosen, atol=1e-4)
    assert not torch.allclose(references, bare_chosen, atol=1e-3)  # the adapter did change the model
    assert summary["result"] == "adapter"
    assert json.loads((out / "duma_adapter.json").read_text())["base_model"] == str(tiny_model)
    assert json.loads((out / "adapter_config.json").read_text())["r"] == 4  # the starting adapter's shape
    load_model(str(out))  # loads as base + adapter, like any lora run's output


def test_bad_preference_records_and_configs_fail_before_training(tiny_model, tmp_path):
    from duma.errors import ConfigError, DumaError

    lines = EXAMPLE.read_text(encoding="utf-8").splitlines()
    bad = tmp_path / "bad.jsonl"
    bad.write_text("\n".join([lines[0], '{"prompt": "Hi", "chosen": "", "rejected": "No."}', *lines[1:]]) + "\n",
                   encoding="utf-8")
    out = tmp_path / "out"
    with pytest.raises(DumaError, match=r"bad\.jsonl:2: chosen: empty"):
        _prepare(dpo_config(tiny_model, out, bad))
    bad.write_text("\n".join([*lines[:3], json.dumps({"messages": [{"role": "assistant", "content": "Hi"}],
                                                      "chosen": "a", "rejected": "b"})]) + "\n", encoding="utf-8")
    with pytest.raises(DumaError, match=r"bad\.jsonl:4: messages: the context must end with a user turn"):
        _prepare(dpo_config(tiny_model, out, bad))
    skipping = _prepare(dpo_config(tiny_model, out, bad, data={"skip_invalid": True,
                                                               "rejects_path": str(tmp_path / "rejects.jsonl")}))
    assert skipping.data_counts.invalid == 1 and len(skipping.train_rows) == 3
    with pytest.raises(ConfigError, match="training.packing: dpo"):
        _prepare(dpo_config(tiny_model, out, EXAMPLE, training={"packing": True}))
    belle = REPO / "configs" / "examples" / "data" / "belle_tiny.jsonl"
    with pytest.raises(DumaError, match="method 'dpo' trains on preference pairs"):
        _prepare(dpo_config(tiny_model, out, belle, data={"source": "belle"}))


def test_resume_after_sigkill_matches_uninterrupted_run(tiny_model, tmp_path):
    """Killed mid-run and resumed: every step once, the same losses and rewards as a clean
    run, and the reference log-probs read back from the run folder, not recomputed."""

    def write(name: str, out: Path) -> Path:
        cfg = dpo_config(tiny_model, out, EXAMPLE, data={"eval_ratio": 0.125},
                         training={"max_steps": None, "epochs": 2, "zero_stage": 2, "save_every": 3, "keep_last": 1})
        cfg["training"] = {k: v for k, v in cfg["training"].items() if v is not None}
        path = tmp_path / name
        path.write_text(yaml.safe_dump(cfg))
        return path

    out = tmp_path / "killed"
    cfg = write("run.yaml", out)
    # 42 training pairs, batch 4: 11 steps an epoch, 22 in all; sleep so we can kill mid-run.
    killed_at = train_until_killed(cfg, out, at_least=8, sleep_s=0.3, cwd=tmp_path)
    assert 8 <= killed_at < 22
    cache = out / "reference_logps.pt"
    cache_state = (cache.stat().st_mtime_ns, cache.read_bytes())

    res = subprocess.run([*DUMA, "train", str(cfg), "--resume"], capture_output=True, text=True,
                         env=child_env(), cwd=tmp_path)
    assert res.returncode == 0, res.stderr[-2000:]
    assert (cache.stat().st_mtime_ns, cache.read_bytes()) == cache_state  # reused, not rewritten
    resumed = [r for r in log_records(out) if r["event"] == "step"]
    assert [r["step"] for r in resumed] == list(range(1, 23))
    assert [r for r in log_records(out) if r["event"] == "resume"][0]["step"] <= killed_at

    clean = tmp_path / "clean"
    res = subprocess.run([*DUMA, "train", str(write("clean.yaml", clean))], capture_output=True, text=True,
                         env=child_env(), cwd=tmp_path)
    assert res.returncode == 0, res.stderr[-2000:]
    uninterrupted = [r for r in log_records(clean) if r["event"] == "step"]
    assert [r["samples"] for r in uninterrupted] == [r["samples"] for r in resumed]
    for a, b in zip(uninterrupted, resumed):
        for key in ("loss", "rewards/chosen", "rewards/rejected", "rewards/margin", "rewards/accuracy"):
            assert a[key] == pytest.approx(b[key], rel=1e-4, abs=1e-5), (a["step"], key)
    end = log_records(clean)[-1]
    print(f"resume: killed at step {killed_at}; losses {[round(r['loss'], 4) for r in resumed]}; "
          f"eval loss {end['eval_loss']:.4f}")
