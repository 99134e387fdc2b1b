"""The ``kto`` trainer on the tiny random model: the loss formula, the loss at step 0 (policy ==
reference: every log-ratio 0), held-out desirable replies preferred after training, reference
log-probs computed once from the starting model and read back on resume, rated chats exported
with ``duma logs export --format kto`` train, and bad unpaired records stop the run with
``file:line`` errors."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import pytest

from test_train_engine import _prepare, steps, train

REPO = Path(__file__).resolve().parents[1]
EXAMPLE = REPO / "configs" / "examples" / "data" / "unpaired_tiny.jsonl"
TOPICS = ["the weather", "Paris", "a cat", "the sea", "music", "bread", "a train", "the moon", "tea", "a garden",
          "winter", "a river", "chess", "the city", "a book", "coffee", "a song", "rain", "a bridge", "snow"]
ASKS = ["Tell me about {t}.", "Can you describe {t}?", "What do you know about {t}?", "Say something on {t}."]
POLITE, CURT = "Gladly, here you are.", "No."


@pytest.fixture(autouse=True)
def _shared_extension_cache(monkeypatch):
    monkeypatch.setenv("TORCH_EXTENSIONS_DIR", os.environ.get(
        "TORCH_EXTENSIONS_DIR", str(REPO / ".test-cache" / "torch_extensions")))


def synthetic_examples(path: Path) -> Path:
    """80 different questions, each answered once: the polite reply labelled desirable (even
    lines) or the curt one labelled undesirable (odd lines); no question has both."""
    with path.open("w", encoding="utf-8") as fh:
        for i, (topic, ask) in enumerate((t, a) for t in TOPICS for a in ASKS):
            desirable = i % 2 == 0
            fh.write(json.dumps({"messages": [{"role": "user", "content": ask.format(t=topic)}],
                                 "completion": POLITE if desirable else CURT, "label": desirable}) + "\n")
    return path


def kto_config(tiny_model: Path, out: Path, data_files: Path | list[Path], **sections) -> dict:
    files = [str(f) for f in (data_files if isinstance(data_files, list) else [data_files])]
    cfg = {
        "method": "kto", "model": str(tiny_model), "output_dir": str(out),
        "data": {"source": "unpaired", "files": files, "max_length": 64},
        "training": {"max_steps": 4, "batch_size": 4, "lr": 1e-3, "warmup_ratio": 0.0, "progress": False,
                     "zero_stage": 0, "seed": 1, "threads": 1},
    }
    for key, value in sections.items():
        cfg.setdefault(key, {}).update(value)
    return cfg


QUESTIONS = [ask.format(t=t) for t in TOPICS for ask in ASKS]  # example i of the synthetic set asks QUESTIONS[i]


def completion_logps(model, trainer, examples: list[int], completion: str):
    """Summed log-probs of ``completion`` after the question of each synthetic example,
    rendered with the one renderer as the trainer renders its rows."""
    import torch

    from duma.rendering import render_training
    from duma.trainers.base import Sample, collate
    from duma.trainers.logps import sequence_logps

    samples = []
    for i in examples:
        r = render_training(trainer.tokenizer, [{"role": "user", "content": QUESTIONS[i]},
                                                {"role": "assistant", "content": completion}], last_turn_only=True)
        n = trainer.examples[i].context_len
        assert r.input_ids[:n] == trainer.examples[i].sample.input_ids[:n] and r.labels[n] != -100
        samples.append(Sample(r.input_ids, r.labels, [i]))
    batch = collate(samples, trainer.tokenizer.pad_token_id)
    with torch.no_grad():
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    return sequence_logps(logits, batch["labels"])


def pair_logps(model, trainer, pairs):
    """Log-probs of (context id, completion id) pairs under ``model``, as the trainer builds them."""
    import torch

    from duma.trainers.base import collate
    from duma.trainers.logps import sequence_logps

    batch = collate([trainer.pair_sample(c, y) for c, y in pairs], trainer.tokenizer.pad_token_id)
    with torch.no_grad():
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    return sequence_logps(logits, batch["labels"])


# --- the formula


def test_loss_formula_and_mismatched_pairs():
    import torch

    from duma.trainers.kto import KTOSettings, UnpairedExample, kto_losses, mismatched_pairs

    sig = lambda x: 1 / (1 + math.exp(-x))  # noqa: E731
    settings = KTOSettings(beta=0.2, desirable_weight=1.0, undesirable_weight=1.5)
    logratios, desirable = torch.tensor([2.0, -1.0, 0.5]), torch.tensor([True, False, False])
    losses = kto_losses(logratios, desirable, 0.5, settings).tolist()
    assert losses == pytest.approx([1 - sig(0.2 * (2.0 - 0.5)), 1.5 * (1 - sig(0.2 * (0.5 + 1.0))),
                                    1.5 * (1 - sig(0.0))])
    # Policy == reference: every log-ratio and z0 are 0, every loss its weight x (1 - sigmoid(0)).
    at_start = kto_losses(torch.zeros(3), desirable, 0.0, settings).tolist()
    assert at_start == pytest.approx([0.5, 0.75, 0.75])

    rows = [UnpairedExample(None, 0, ([], []), True, [i]) for i in (7, 3, 9)]  # type: ignore[arg-type]
    assert mismatched_pairs(rows) == [(7, 9), (3, 7), (9, 3)]  # each context, another row's completion
    assert mismatched_pairs(rows[:1]) == [(7, 7)]


def test_unpaired_source_reads_the_kto_export_shape_and_is_detected(tmp_path):
    """A multi-turn context would also pass as a sharegpt conversation: detection tries
    ``unpaired`` first. Records convert back to the same shape."""
    from duma.data import InvalidDataError, UnpairedRecord, detect_source, get_source, iter_records

    record = {"messages": [{"role": "user", "content": "Capital of France?"},
                           {"role": "assistant", "content": "Paris."},
                           {"role": "user", "content": "And its second city?"}],
              "completion": "Lyon.", "label": False}
    path = tmp_path / "kto.jsonl"
    path.write_text(json.dumps(record) + "\n", encoding="utf-8")
    assert detect_source(path) == "unpaired"
    [read] = list(iter_records("unpaired", path))
    assert isinstance(read, UnpairedRecord) and (read.completion, read.label) == ("Lyon.", False)
    assert get_source("unpaired").to_raw(read) == record
    path.write_text(json.dumps(record) + "\n" + json.dumps({**record, "label": 0}) + "\n", encoding="utf-8")
    with pytest.raises(InvalidDataError, match=r"kto\.jsonl:2: label: Input should be a valid boolean"):
        list(iter_records("unpaired", path))


# --- the trainer


def test_kto_prefers_held_out_desirable_replies_with_a_fixed_reference(tiny_model, tmp_path, monkeypatch):
    import torch
    from transformers import AutoModelForCausalLM

    from duma.trainers import kto
    from duma.trainers.base import load_causal_lm

    written = []
    real_write = kto.KTOTrainer.write_reference_cache
    monkeypatch.setattr(kto.KTOTrainer, "write_reference_cache",
                        lambda self, path, ref: (written.append(dict(ref)), real_write(self, path, ref))[1])
    out = tmp_path / "out"
    data = synthetic_examples(tmp_path / "examples.jsonl")
    weights = {"desirable_weight": 1.0, "undesirable_weight": 1.5}
    cfg = kto_config(tiny_model, out, data, data={"eval_ratio": 0.2}, kto=weights,
                     training={"max_steps": 16, "schedule": "constant", "eval_every": 8})
    trainer, summary = train(cfg)
    records = steps(out)

    # Step 0: policy == reference, so every log-ratio is 0 and z0 = max(0, 0) = 0.
    first = records[0]
    labels = [trainer.examples[i].desirable for i in first["samples"]]
    assert 0 < sum(labels) < len(labels)  # both kinds, so the weights show
    expected = sum(0.5 * (1.0 if d else 1.5) for d in labels) / len(labels)
    assert first["loss"] == pytest.approx(expected, abs=1e-5)
    assert first["kl"] == pytest.approx(0, abs=1e-5)
    assert first["rewards/desirable"] == pytest.approx(0, abs=1e-5)
    assert first["rewards/undesirable"] == pytest.approx(0, abs=1e-5)
    assert {"rewards/desirable", "rewards/undesirable", "kl"} <= set(records[-1])

    # The reference: computed once, from the starting model, and never changed.
    assert len(written) == 1 and trainer.reference == written[0]
    start = load_causal_lm(tiny_model).eval()
    held_out = [r.ids[0] for r in trainer.eval_rows]
    assert len(held_out) == 16 and not set(held_out) & {r.ids[0] for r in trainer.train_rows}
    own = [(i, i) for i in held_out]
    mismatched = [p for p in written[0] if p[0] != p[1]][:8]
    assert mismatched  # the z0 pairs are cached too
    for pairs in (own, mismatched):
        for pair, value in zip(pairs, pair_logps(start, trainer, pairs).tolist()):
            assert written[0][pair] == pytest.approx(value, abs=1e-4)
    cache = torch.load(out / kto.REFERENCE_FILE, weights_only=True)
    cached = {tuple(p): v for p, v in zip(cache["pairs"].tolist(), cache["logps"].tolist())}
    assert cached == written[0]  # float32 values, written as read

    # Held-out questions: the implicit reward (policy - reference log-prob) of the polite reply
    # beats the curt one's.
    policy = AutoModelForCausalLM.from_pretrained(str(out)).eval()
    ref_polite, ref_curt = (completion_logps(start, trainer, held_out, c) for c in (POLITE, CURT))
    pol_polite, pol_curt = (completion_logps(policy, trainer, held_out, c) for c in (POLITE, CURT))
    margin = (pol_polite - ref_polite) - (pol_curt - ref_curt)
    accuracy = float((margin > 0).float().mean())
    before = float((ref_polite > ref_curt).float().mean())  # the raw model's own preference
    losses = [r["loss"] for r in records]
    evals = [r for r in steps_and_evals(out) if r["event"] == "eval"]
    print(f"held-out reward accuracy {accuracy:.3f} (start model prefers the polite reply on {before:.3f}); "
          f"mean beta x margin {float(margin.mean()) * 0.1:.3f}; losses {losses[0]:.4f} -> {losses[-1]:.4f}; "
          f"eval {[round(e['eval_loss'], 4) for e in evals]} rewards (desirable, undesirable) "
          f"{[(round(e['eval_rewards/desirable'], 3), round(e['eval_rewards/undesirable'], 3)) for e in evals]}")
    assert accuracy >= 0.9
    assert evals[-1]["eval_rewards/desirable"] > evals[-1]["eval_rewards/undesirable"]
    assert summary["eval_loss"] < expected
    assert summary["data"]["desirable"] + summary["data"]["undesirable"] == 80


def steps_and_evals(out: Path) -> list[dict]:
    from duma.trainers.base import read_log

    return read_log(out / "train_log.jsonl")


def test_resume_reads_the_cached_reference_and_repeats_the_losses(tiny_model, tmp_path, monkeypatch):
    """A run resumed from a mid-run checkpoint reads the reference log-probs back (no new
    reference pass, the file untouched) and redoes the later steps with the same losses."""
    import shutil

    from duma.trainers import kto

    out = tmp_path / "out"
    cfg = kto_config(tiny_model, out, EXAMPLE, training={"max_steps": 4, "save_every": 2, "keep_last": 2})
    train(cfg)
    first = steps(out)
    cache = out / kto.REFERENCE_FILE
    cache_state = (cache.stat().st_mtime_ns, cache.read_bytes())
    shutil.rmtree(out / "checkpoints" / "step-4")  # as if killed after step 3

    def no_reference_pass(self, engine, pairs):
        raise AssertionError("the reference was recomputed on resume")

    monkeypatch.setattr(kto.KTOTrainer, "compute_reference", no_reference_pass)
    trainer, summary = train(cfg, resume=True)
    assert summary["resumed_from"] == 2
    assert (cache.stat().st_mtime_ns, cache.read_bytes()) == cache_state
    again = steps(out)
    assert [r["step"] for r in again] == [1, 2, 3, 4]
    for a, b in zip(first, again):
        assert a["samples"] == b["samples"]
        for key in ("loss", "kl", "rewards/desirable", "rewards/undesirable"):
            assert a[key] == pytest.approx(b[key], rel=1e-4, abs=1e-5), (a["step"], key)


def test_rated_chats_exported_for_kto_train_with_a_lora_policy(tiny_model, tmp_path, duma_home):
    from test_feedback import make_agent

    from duma.logstore import LogStore
    from duma.testing import run_cli

    duma_home.mkdir(parents=True, exist_ok=True)
    store = LogStore(duma_home / "logs.db")
    agent = make_agent(store, ["Response[Paris.] Invoke[False]", "Response[Lyon.] Invoke[False]",
                               "Response[Blue, mostly.] Invoke[False]", "Response[Go away.] Invoke[False]"])
    first = agent.chat("Capital of France?").conversation_id
    agent.feedback(first, "good")
    agent.chat("And its second city?", first)
    agent.feedback(first, "good")
    second = agent.chat("Colour of the sky?").conversation_id
    agent.feedback(second, "good")
    agent.chat("Tell me more.", second)
    agent.feedback(second, "bad", note="rude")
    store.close()

    exported = []
    for mind in ("plain", "fast"):
        path = tmp_path / f"kto-{mind}.jsonl"
        code, stdout, err = run_cli(["logs", "export", "--format", "kto", "--mind", mind, "--out", str(path)])
        assert code == 0 and stdout.startswith("wrote 4 kto records"), err
        exported.append(path)
    labels = [json.loads(line)["label"] for line in exported[0].read_text(encoding="utf-8").splitlines()]
    assert labels == [True, True, True, False]

    out = tmp_path / "out"
    trainer, summary = train(kto_config(tiny_model, out, exported, data={"max_length": 256},
                                        training={"max_steps": 2, "batch_size": 2}, lora={"dropout": 0.0}))
    assert summary["result"] == "adapter" and (out / "adapter_model.safetensors").is_file()
    assert summary["data"]["records"] == 8 and summary["data"]["train_rows"] == 8
    assert (summary["data"]["desirable"], summary["data"]["undesirable"]) == (6, 2)
    records = steps(out)
    assert records[0]["loss"] == pytest.approx(0.5, abs=1e-5)  # weights 1: each starts at 1 - sigmoid(0)
    assert [r["step"] for r in records] == [1, 2] and all(math.isfinite(r["loss"]) for r in records)
    # The completions: the replies for --mind plain, what the fast mind writes for --mind fast.
    completions = {trainer.tokenizer.decode(e.completion[0]) for e in trainer.examples.values()}
    assert any(c.startswith("Paris.") for c in completions)
    assert any(c.startswith("Response[Paris.]") for c in completions)


def test_bad_unpaired_records_and_configs_fail_before_training(tiny_model, tmp_path):
    from duma.errors import ConfigError, DumaError

    lines = EXAMPLE.read_text(encoding="utf-8").splitlines()
    bad = tmp_path / "bad.jsonl"
    out = tmp_path / "out"
    bad.write_text("\n".join([lines[0], json.dumps({"messages": [{"role": "user", "content": "Hi"}],
                                                    "completion": "Hello.", "label": "yes"}), *lines[1:]]) + "\n",
                   encoding="utf-8")
    with pytest.raises(DumaError, match=r"bad\.jsonl:2: label: Input should be a valid boolean"):
        _prepare(kto_config(tiny_model, out, bad))
    bad.write_text("\n".join([*lines[:3], json.dumps({"messages": [{"role": "user", "content": "Hi"},
                                                                   {"role": "assistant", "content": "Hello."}],
                                                      "completion": "a", "label": True})]) + "\n", encoding="utf-8")
    with pytest.raises(DumaError, match=r"bad\.jsonl:4: messages: the context must end with a user turn"):
        _prepare(kto_config(tiny_model, out, bad))
    bad.write_text("\n".join([*lines[:5], json.dumps({"messages": [{"role": "user", "content": "Hi"}],
                                                      "label": False})]) + "\n", encoding="utf-8")
    with pytest.raises(DumaError, match=r"bad\.jsonl:6: completion: missing \(unpaired records have messages, "
                                        r"completion, label\)"):
        _prepare(kto_config(tiny_model, out, bad))
    skipping = _prepare(kto_config(tiny_model, out, bad, data={"skip_invalid": True,
                                                               "rejects_path": str(tmp_path / "rejects.jsonl")}))
    assert skipping.data_counts.invalid == 1 and len(skipping.train_rows) == 5

    with pytest.raises(ConfigError, match="training.packing: kto"):
        _prepare(kto_config(tiny_model, out, EXAMPLE, training={"packing": True}))
    with pytest.raises(ConfigError, match="training.batch_size: kto needs at least 2"):
        _prepare(kto_config(tiny_model, out, EXAMPLE, training={"batch_size": 1}))
    preference = REPO / "configs" / "examples" / "data" / "preference_tiny.jsonl"
    with pytest.raises(DumaError, match="method 'kto' trains on unpaired examples"):
        _prepare(kto_config(tiny_model, out, preference, data={"source": "preference"}))
