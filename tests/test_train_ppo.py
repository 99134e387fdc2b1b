"""The ``ppo`` trainer (experimental): GAE and the adaptive KL controller against hand-computed
values, PPO raising a learned reward model's score on held-out prompts (the reward model is
trained here, by the ``rm`` trainer, to prefer replies that write a digit), the policy and value
head reloading, an exact resume (the KL coefficient included), and a missing reward model
stopping before training."""

from __future__ import annotations

import json
import os
import random
import re
import shutil
from pathlib import Path

import pytest
import yaml

from test_train_engine import _prepare, steps, train

REPO = Path(__file__).resolve().parents[1]
TOPICS = ["the weather", "Paris", "a cat", "the sea", "music", "bread", "a train", "the moon", "tea", "a garden",
          "winter", "a river", "chess", "the city", "a book", "coffee", "a song", "rain", "a bridge", "snow"]
HAS_DIGIT = re.compile(r"[0-9]")


@pytest.fixture(autouse=True)
def _shared_extension_cache(monkeypatch):
    monkeypatch.setenv("TORCH_EXTENSIONS_DIR", os.environ.get(
        "TORCH_EXTENSIONS_DIR", str(REPO / ".test-cache" / "torch_extensions")))


def prompt_messages(topic: str) -> list[dict]:
    return [{"role": "user", "content": f"Tell me about {topic}."}]


def write_prompts(path: Path) -> Path:
    path.write_text("".join(json.dumps({"messages": prompt_messages(t)}) + "\n" for t in TOPICS), encoding="utf-8")
    return path


def ppo_config(model: Path, out: Path, data_file: Path, reward_model: Path, **sections) -> dict:
    cfg = {
        "method": "ppo", "model": str(model), "output_dir": str(out),
        "data": {"files": [str(data_file)], "max_length": 64},
        "training": {"max_steps": 4, "batch_size": 8, "lr": 3e-3, "warmup_ratio": 0.0, "schedule": "constant",
                     "progress": False, "zero_stage": 0, "seed": 1, "threads": 1},
        "ppo": {"reward_model": str(reward_model), "max_new_tokens": 4},
    }
    for key, value in sections.items():
        cfg.setdefault(key, {}).update(value)
    return cfg


@pytest.fixture(scope="module")
def reward_model(tiny_model, tmp_path_factory) -> Path:
    """An ``rm`` run on the tiny model's own samples: a reply that writes a digit is chosen over
    one that does not, for the same prompt. The random tiny model writes a digit in about a
    quarter of its 4-token replies, so the reward model learns on the policy's distribution."""
    import torch

    from duma.rendering import render_prompt_ids
    from duma.trainers.base import load_causal_lm, load_padded_tokenizer

    root = tmp_path_factory.mktemp("ppo-rm")
    tok = load_padded_tokenizer(tiny_model)
    model = load_causal_lm(tiny_model).eval()
    torch.manual_seed(0)
    pairs = []
    for topic in TOPICS:
        ids = torch.tensor([render_prompt_ids(tok, prompt_messages(topic))] * 24)
        with torch.no_grad():
            out = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), do_sample=True,
                                 max_new_tokens=4, pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id)
        replies = {tok.decode(o[ids.shape[1]:], skip_special_tokens=True).strip() for o in out}
        good = sorted(r for r in replies if r and HAS_DIGIT.search(r))
        bad = sorted(r for r in replies if r and not HAS_DIGIT.search(r))
        pairs += [{"messages": prompt_messages(topic), "chosen": g, "rejected": b} for g, b in zip(good, bad)]
    random.Random(0).shuffle(pairs)
    data = root / "pairs.jsonl"
    data.write_text("".join(json.dumps(p) + "\n" for p in pairs), encoding="utf-8")
    out = root / "rm"
    cfg = {"method": "rm", "model": str(tiny_model), "output_dir": str(out),
           "data": {"source": "preference", "files": [str(data)], "max_length": 64, "eval_ratio": 0.2},
           "training": {"max_steps": 120, "batch_size": 8, "lr": 1e-3, "warmup_ratio": 0.05, "progress": False,
                        "zero_stage": 0, "seed": 1, "threads": 1, "eval_every": 0}}
    _, summary = train(cfg)
    accuracy = [r for r in read_log(out) if r["event"] == "eval"][-1]["eval_accuracy"]
    print(f"reward model: {len(pairs)} pairs, held-out pair accuracy {accuracy:.3f}, "
          f"eval loss {summary['eval_loss']:.3f}")
    assert accuracy >= 0.8
    return out


def read_log(out: Path) -> list[dict]:
    from duma.trainers.base import read_log as read

    return read(out / "train_log.jsonl")


# --- the maths


def test_gae_matches_a_hand_computed_example():
    import torch

    from duma.trainers.ppo import gae, masked_whiten

    # Row 0: three tokens; row 1: two tokens, then padding. gamma 0.9, lambda 0.5.
    rewards = torch.tensor([[0.0, -0.1, 1.0], [0.5, 2.0, 9.0]])
    values = torch.tensor([[0.2, 0.4, 0.6], [1.0, 0.5, 7.0]])
    mask = torch.tensor([[1, 1, 1], [1, 1, 0]])
    adv, ret = gae(rewards, values, mask, gamma=0.9, lam=0.5)
    # By hand: delta_t = r_t + 0.9 v_{t+1} - v_t (no value after the last token), A_t = delta_t + 0.45 A_{t+1}.
    # Row 0: deltas 0 + 0.36 - 0.2 = 0.16, -0.1 + 0.54 - 0.4 = 0.04, 1 - 0.6 = 0.4;
    #        A = 0.16 + 0.45 * 0.22 = 0.259, 0.04 + 0.45 * 0.4 = 0.22, 0.4.
    # Row 1: deltas 0.5 + 0.45 - 1 = -0.05, 2 - 0.5 = 1.5 (the padding's 9 and 7 do not leak in);
    #        A = -0.05 + 0.45 * 1.5 = 0.625, 1.5, 0.
    assert adv[0].tolist() == pytest.approx([0.259, 0.22, 0.4], abs=1e-6)
    assert adv[1].tolist() == pytest.approx([0.625, 1.5, 0.0], abs=1e-6)
    assert ret[0].tolist() == pytest.approx([0.459, 0.62, 1.0], abs=1e-6)  # A + V
    assert ret[1].tolist() == pytest.approx([1.625, 2.0, 0.0], abs=1e-6)
    # gamma = lambda = 1: the advantage is the undiscounted reward-to-go minus the value.
    adv1, _ = gae(rewards, values, mask, gamma=1.0, lam=1.0)
    assert adv1[0].tolist() == pytest.approx([0.9 - 0.2, 0.9 - 0.4, 1.0 - 0.6], abs=1e-6)
    white = masked_whiten(adv, mask)
    kept = white[mask.bool()]
    assert float(kept.mean()) == pytest.approx(0, abs=1e-6) and float(kept.std()) == pytest.approx(1, abs=1e-4)
    assert float(white[1, 2]) == 0.0


def test_adaptive_kl_controller():
    from duma.trainers.ppo import AdaptiveKLController

    kl = AdaptiveKLController(0.05, target=6.0, horizon=100)
    # KL 9 > target: error clip(9/6 - 1, +-0.2) = 0.2; 10 samples of a 100 horizon: x1.02.
    assert kl.update(9.0, 10) == pytest.approx(0.05 * 1.02)
    assert kl.update(5.4, 10) == pytest.approx(0.05 * 1.02 * (1 - 0.1 * 0.1))  # error -0.1
    assert kl.update(0.0, 50) == pytest.approx(0.05 * 1.02 * 0.99 * (1 - 0.2 * 0.5))  # clipped at -0.2
    fixed = AdaptiveKLController(0.05, target=None, horizon=100)
    assert fixed.update(100.0, 10) == 0.05


# --- learning, saving, reloading


def held_out_scores(trainer, module, rows, n_seeds: int = 8) -> tuple[float, float]:
    """(reward-model score, share of replies with a digit) of ``module``'s samples on ``rows``,
    with fixed seeds (the same for every model)."""

    class Policy:
        def __init__(self, m):
            self.module = m

    scores, digits = [], []
    for k in range(n_seeds):
        sampled = trainer.sample(Policy(module), rows, seed=1000 + k)
        w = int(sampled["prompt_width"])
        texts = []
        for s, n, ended in zip(sampled["sequences"], sampled["completion_mask"].sum(-1), sampled["ended"]):
            ids = s[w:w + int(n)].tolist()
            texts.append(trainer.tokenizer.decode(ids[:-1] if bool(ended) else ids, skip_special_tokens=True))
        scores += trainer.scores(rows, texts).tolist()
        digits += [float(HAS_DIGIT.search(t) is not None) for t in texts]
    return sum(scores) / len(scores), sum(digits) / len(digits)


def test_ppo_raises_the_reward_model_score_and_saves_policy_and_value_head(tiny_model, reward_model, tmp_path):
    import torch
    from transformers import AutoModelForCausalLM

    from duma.trainers.base import load_causal_lm
    from duma.trainers.ppo import VALUE_HEAD_FILE, load_value_head

    out = tmp_path / "ppo"
    data = write_prompts(tmp_path / "prompts.jsonl")
    cfg = ppo_config(tiny_model, out, data, reward_model, data={"eval_ratio": 0.2},
                     training={"max_steps": 40}, ppo={"kl_coef": 0.02, "kl_target": 1.0, "kl_horizon": 200})
    trainer, summary = train(cfg)
    records = steps(out)
    assert {"reward/mean", "kl", "kl_coef", "loss/value", "loss/policy", "clip_fraction", "returns/mean"} \
        <= set(records[0])
    assert records[0]["kl"] == pytest.approx(0, abs=1e-5)  # the first rollout is the reference's
    assert records[0]["kl_coef"] == 0.02 and records[-1]["kl_coef"] != 0.02  # adaptive
    assert all(r["clip_fraction"] == 0 for r in records)  # one pass per rollout: the ratio is 1
    rewards = [r["reward/mean"] for r in records]
    first, last = sum(rewards[:5]) / 5, sum(rewards[-5:]) / 5

    before, digits_before = held_out_scores(trainer, load_causal_lm(tiny_model).eval(), trainer.eval_rows)
    policy = trainer.engine.module.policy.eval()
    after, digits_after = held_out_scores(trainer, policy, trainer.eval_rows)
    print(f"reward-model score: training steps 1-5 {first:.3f} -> 36-40 {last:.3f}; held-out "
          f"{before:.3f} -> {after:.3f} (replies with a digit {digits_before:.2f} -> {digits_after:.2f}); "
          f"kl {records[-1]['kl']:.3f}, kl_coef {records[-1]['kl_coef']:.4f}, "
          f"value loss {records[0]['loss/value']:.3f} -> {records[-1]['loss/value']:.3f}; "
          f"step rewards by 5s {[round(sum(rewards[i:i + 5]) / 5, 2) for i in range(0, len(rewards), 5)]}")
    # Seeds 1-4 gave held-out gains of 3.3-4.3 and digit shares 0.19 -> 0.62-0.84.
    assert after - before >= 1.0 and digits_after - digits_before >= 0.2 and last > first
    assert torch.isfinite(torch.tensor(summary["final_loss"]))

    # The policy reloads as a plain HF model with the trained weights; the value head beside it.
    assert (out / VALUE_HEAD_FILE).is_file() and json.loads((out / "duma_ppo.json").read_text())["kind"] == "ppo_policy"
    reloaded = AutoModelForCausalLM.from_pretrained(str(out)).eval()
    ids = torch.tensor([trainer.eval_rows[0].prompt_ids])
    with torch.no_grad():
        hidden = reloaded(input_ids=ids, output_hidden_states=True).hidden_states[-1]
        expected_logits, expected_values = trainer.engine.module.eval()(input_ids=ids)
        assert torch.allclose(reloaded(input_ids=ids).logits, expected_logits, atol=1e-5)
        assert torch.allclose(load_value_head(out)(hidden).squeeze(-1), expected_values, atol=1e-5)
    assert float(expected_values.abs().max()) > 0  # the head was trained


def test_lora_policy_saves_an_adapter_and_value_head(tiny_model, reward_model, tmp_path):
    from duma.trainers.ppo import VALUE_HEAD_FILE

    out = tmp_path / "lora"
    data = write_prompts(tmp_path / "prompts.jsonl")
    _, summary = train(ppo_config(tiny_model, out, data, reward_model, training={"max_steps": 3, "lr": 2e-2},
                                  lora={"r": 4, "alpha": 8, "dropout": 0.0}))
    records = steps(out)
    assert summary["result"] == "adapter" and (out / "adapter_model.safetensors").is_file()
    assert (out / VALUE_HEAD_FILE).is_file()
    assert records[0]["kl"] == pytest.approx(0, abs=1e-5) and records[-1]["kl"] != 0  # base = reference


def test_resume_restores_the_kl_coefficient(tiny_model, reward_model, tmp_path):
    """A run resumed from its step-3 checkpoint redoes steps 4-6 exactly as the run did,
    adaptive KL coefficient included."""
    data = write_prompts(tmp_path / "prompts.jsonl")
    clean = tmp_path / "clean"
    cfg = ppo_config(tiny_model, clean, data, reward_model,
                     training={"max_steps": 6, "batch_size": 4, "save_every": 3, "keep_last": 2},
                     ppo={"kl_coef": 0.5, "kl_target": 0.01, "kl_horizon": 20})
    train(cfg)
    expected = steps(clean)
    assert expected[3]["kl_coef"] != 0.5  # the coefficient moved before the checkpoint
    resumed = tmp_path / "resumed"
    shutil.copytree(clean, resumed)
    shutil.rmtree(resumed / "checkpoints" / "step-6")
    cfg["output_dir"] = str(resumed)
    _, summary = train(cfg, resume=True)
    assert summary["resumed_from"] == 3
    got = steps(resumed)
    assert [r["step"] for r in got] == list(range(1, 7))
    for a, b in zip(expected[3:], got[3:]):
        for key in ("kl_coef", "loss", "kl", "reward/mean", "loss/value"):
            assert a[key] == pytest.approx(b[key], rel=1e-5, abs=1e-7), (a["step"], key)


# --- bad input


def test_missing_reward_model_is_a_one_line_error_before_training(tiny_model, tmp_path):
    from duma.errors import ConfigError
    from duma.testing import run_cli

    data = write_prompts(tmp_path / "prompts.jsonl")
    out = tmp_path / "out"
    with pytest.raises(ConfigError, match="ppo.reward_model: .*nowhere does not exist"):
        _prepare(ppo_config(tiny_model, out, data, tmp_path / "nowhere"))
    with pytest.raises(ConfigError, match="not a reward model folder"):
        _prepare(ppo_config(tiny_model, out, data, tiny_model))
    with pytest.raises(ConfigError, match="zero_stage"):
        _prepare(ppo_config(tiny_model, out, data, tiny_model, training={"zero_stage": 3}))
    cfg = tmp_path / "run.yaml"
    cfg.write_text(yaml.safe_dump(ppo_config(tiny_model, out, data, tmp_path / "nowhere")))
    code, _, stderr = run_cli(["train", str(cfg)])
    lines = [ln for ln in stderr.splitlines() if ln.strip()]
    assert code == 2 and len(lines) == 1 and "ppo.reward_model" in lines[0], stderr
    assert not out.exists()  # nothing started


def test_example_config_validates():
    from duma.trainers import runner
    from duma.trainers.ppo import PPOTrainer

    cls, config = runner.load_run_config(REPO / "configs" / "examples" / "ppo_tiny.yaml")
    assert cls is PPOTrainer and Path(config.data.files[0]).is_file()
    assert str(config.ppo.reward_model) == yaml.safe_load(
        (REPO / "configs" / "examples" / "rm_tiny.yaml").read_text())["output_dir"]
