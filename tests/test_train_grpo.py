"""The ``grpo`` trainer and the reward plugins: the built-in rewards on clear cases, the
observation mask and group advantages, GRPO raising a verifiable reward on a toy task the
tiny random model solves by chance at first, a KL-penalised LoRA policy, a SIGKILLed run
resuming to the same losses and samples, and bad prompt records stopping with ``file:line``."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest
import yaml

from plugins_fixtures.installer import write_distribution
from test_train_cli import DUMA, child_env, log_records, train_until_killed
from test_train_engine import _prepare, steps, train

REPO = Path(__file__).resolve().parents[1]
EXAMPLE = REPO / "configs" / "examples" / "data" / "prompts_tiny.jsonl"
TOPICS = ["the weather", "Paris", "a cat", "the sea", "music", "bread", "a train", "the moon", "tea", "a garden",
          "winter", "a river", "chess", "the city", "a book", "coffee", "a song", "rain", "a bridge", "snow"]

# The toy task's reward, as a third-party plugin would ship it: 1 when the completion writes a
# digit. A random tiny model does so by chance in about one completion of four (4 tokens).
TOY_PLUGIN = '''
import re
import duma


class HasDigit:
    name = "has-digit"

    def score(self, prompt_messages, completion, answer):
        return float(re.search(r"[0-9]", completion) is not None)


@duma.hookimpl
def register_rewards(register):
    register(HasDigit)
'''


@pytest.fixture(autouse=True)
def _shared_extension_cache(monkeypatch):
    monkeypatch.setenv("TORCH_EXTENSIONS_DIR", os.environ.get(
        "TORCH_EXTENSIONS_DIR", str(REPO / ".test-cache" / "torch_extensions")))


@pytest.fixture
def toy_site(tmp_path, monkeypatch) -> Path:
    """The toy reward plugin installed (entry point and module) for this process and children."""
    from duma import host

    site = tmp_path / "site"
    site.mkdir()
    (site / "duma_grpo_toy.py").write_text(TOY_PLUGIN, encoding="utf-8")
    write_distribution(site, "duma-grpo-toy", {"grpo_toy": "duma_grpo_toy"})
    monkeypatch.syspath_prepend(str(site))
    host.reset()
    return site


def toy_prompts(path: Path, n: int = 16) -> Path:
    with path.open("w", encoding="utf-8") as fh:
        for topic in TOPICS[:n]:
            fh.write(json.dumps({"messages": [{"role": "user", "content": f"Tell me about {topic}."}]}) + "\n")
    return path


def grpo_config(tiny_model: Path, out: Path, data_file: Path, **sections) -> dict:
    cfg = {
        "method": "grpo", "model": str(tiny_model), "output_dir": str(out),
        "data": {"files": [str(data_file)], "max_length": 64},
        "training": {"max_steps": 4, "batch_size": 4, "lr": 3e-3, "warmup_ratio": 0.0, "schedule": "constant",
                     "progress": False, "zero_stage": 0, "seed": 1},
        "grpo": {"group_size": 4, "max_new_tokens": 4, "rewards": ["has-digit"]},
    }
    for key, value in sections.items():
        cfg.setdefault(key, {}).update(value)
    return cfg


# --- rewards


def test_builtin_rewards_are_plugins_and_score_clear_cases():
    from duma import host

    rewards = host.components("reward")
    assert {"exact", "numeric", "duma-slow", "duma-fast"} <= set(rewards)
    assert all(rewards[n].plugin == "rewards" for n in ("exact", "numeric", "duma-slow", "duma-fast"))

    def score(name: str, completion: str, answer: str | None) -> float:
        return host.get("reward", name)().score([{"role": "user", "content": "q"}], completion, answer)

    assert score("exact", "  Paris. ", "paris") == 1.0
    assert score("exact", "Paris, France", "Paris") == 0.0
    assert score("exact", "anything", None) == 0.0

    assert score("numeric", "17% of 2,340 is 397.8", "397.8") == 1.0
    assert score("numeric", "It is 2,340.", "2340") == 1.0
    assert score("numeric", "about 397.80001", "397.8") == 1.0  # within the relative tolerance
    assert score("numeric", "397.8? no: 398", "397.8") == 0.0  # the last number counts
    assert score("numeric", "no number here", "4") == 0.0

    right = ("Reason[I need the percentage.]\nAct[calculator(17% of 2,340)]\nObs[397.8]\n"
             "Reason[The tool answered.]\nFinish[17% of 2,340 is 397.8.]")
    assert score("duma-slow", right, "397.8") == pytest.approx(1.0)
    assert score("duma-slow", right.replace("397.8.]", "400.]"), "397.8") == pytest.approx(0.2)  # well formed only
    unfinished = "Reason[I need the percentage.]\nAct[calculator(17% of 2,340)]"
    assert score("duma-slow", unfinished, "397.8") == 0.0
    act_without_obs = "Act[calculator(1+1)]\nFinish[397.8]"
    assert score("duma-slow", act_without_obs, "397.8") == pytest.approx(0.8)  # right answer, malformed
    assert score("duma-slow", "The answer is 397.8", "397.8") == 0.0  # no Finish at all
    assert score("duma-slow", "Reason[easy]\nFinish[Paris]", "paris") == pytest.approx(1.0)

    handoff = "Response[Let me look that up.]\nInvoke[True]"
    assert score("duma-fast", handoff, "True") == pytest.approx(1.0)
    assert score("duma-fast", handoff, "False") == pytest.approx(0.2)
    assert score("duma-fast", "Response[Hello!]\nInvoke[False]", "false") == pytest.approx(1.0)
    assert score("duma-fast", "Hello!", "False") == 0.0  # not the protocol: the default no-handoff earns nothing
    assert score("duma-fast", "Response[Hi]\nInvoke[False] and more", "False") == 0.0
    with pytest.raises(ValueError, match="True or False"):
        score("duma-fast", handoff, "maybe")


def test_observation_tokens_are_masked(tiny_model):
    import torch

    from duma.trainers.base import load_padded_tokenizer
    from duma.trainers.grpo import group_advantages, observation_mask, observation_spans

    tok = load_padded_tokenizer(tiny_model)
    text = "Reason[add]\nAct[calculator(2+2)]\nObs[4]\nFinish[done]"
    assert [text[s:e] for s, e in observation_spans(text)] == ["Obs[4]"]
    nested = "Act[x]\nObs[a [b] c]\nObs[open"
    assert [nested[s:e] for s, e in observation_spans(nested)] == ["Obs[a [b] c]", "Obs[open"]
    ids = tok(text, add_special_tokens=False)["input_ids"]
    keep = observation_mask(tok, ids)
    pieces = [tok.decode([i]) for i in ids]
    masked = "".join(p for p, k in zip(pieces, keep) if not k)
    trained = "".join(p for p, k in zip(pieces, keep) if k)
    assert "Obs[4]" in masked and "4" not in trained.replace("Finish[done]", "") and "Obs" not in trained
    assert trained.startswith("Reason[add]\nAct[calculator(2+2)]") and trained.endswith("Finish[done]")
    assert all(observation_mask(tok, tok("Reason[no tools]\nFinish[x]", add_special_tokens=False)["input_ids"]))

    adv = group_advantages(torch.tensor([1.0, 0.0, 0.0, 0.0, 2.0, 2.0, 2.0, 2.0]), 4)
    assert adv[:4].sum() == pytest.approx(0, abs=1e-6) and adv[0] > 0 > adv[1]
    assert adv[4:].abs().max() == 0  # no reward difference in a group: no signal


def test_observation_tokens_get_no_gradient(tiny_model, tmp_path, toy_site, monkeypatch):
    """compute_loss itself: the logits at positions predicting Obs[...] tokens get no gradient."""
    import torch

    from duma.trainers import grpo

    trainer = _prepare(grpo_config(tiny_model, tmp_path / "o", toy_prompts(tmp_path / "p.jsonl")))
    tok = trainer.tokenizer
    completion = tok("Act[f(1)]\nObs[42]\nFinish[ok]", add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
    row = trainer.train_rows[0]

    def fixed_sample(engine, rows, seed):  # every completion is the same slow-mind trace
        width = len(row.prompt_ids)
        seq = torch.tensor([row.prompt_ids + completion] * 4)
        attention = torch.ones_like(seq)
        return {"sequences": seq, "attention_mask": attention, "position_ids": attention.cumsum(-1) - 1,
                "completion_mask": torch.ones(4, len(completion), dtype=torch.long),
                "prompt_width": torch.tensor(width), "ended": torch.ones(4, dtype=torch.bool)}

    monkeypatch.setattr(trainer, "sample", fixed_sample)
    scores = iter([1.0, 0.0, 0.0, 0.0])
    monkeypatch.setattr(trainer, "score", lambda rows, texts: (torch.tensor([next(scores) for _ in texts]), {}))
    from duma.trainers.base import load_causal_lm

    model = load_causal_lm(tiny_model)
    seen = {}

    class Engine:
        global_steps = 0
        module = model

        def __call__(self, **kw):
            out = model(**kw)
            out.logits.retain_grad()
            seen["logits"] = out.logits
            return out

    loss, metrics = trainer.compute_loss(Engine(), {grpo.ROWS_KEY: [row]})
    loss.backward()
    grad = seen["logits"].grad[0, len(row.prompt_ids) - 1:-1].abs().amax(-1)  # position t scores token t+1
    keep = grpo.observation_mask(tok, completion)
    assert not all(keep) and metrics["completion/masked_tokens"] == 4 * keep.count(False)
    assert all(float(g) == 0.0 for g, k in zip(grad, keep) if not k)
    assert all(float(g) > 0.0 for g, k in zip(grad, keep) if k)


# --- learning


def test_grpo_raises_a_verifiable_reward(tiny_model, tmp_path, toy_site):
    """The toy task: write a digit within 4 tokens. The starting model does so in ~1/4 of its
    samples; after 50 GRPO steps, held-out prompts get a digit far more often."""
    import torch

    from duma.trainers.base import load_causal_lm, read_log

    out = tmp_path / "out"
    data = toy_prompts(tmp_path / "prompts.jsonl", n=20)
    cfg = grpo_config(tiny_model, out, data, data={"eval_ratio": 0.2}, training={"max_steps": 50})
    trainer, summary = train(cfg)
    records = steps(out)
    rewards = [r["reward/mean"] for r in records]
    first, last = sum(rewards[:5]) / 5, sum(rewards[-5:]) / 5
    assert {"reward/std", "reward/has-digit", "advantage/std", "completion/length", "clip_ratio"} <= set(records[0])
    assert all(abs(r["clip_ratio"]) == 0 for r in records)  # one pass per generation: the ratio is 1

    # Held-out prompts, sampled with the same seeds from the starting and the trained model.
    class Policy:
        def __init__(self, model):
            self.module = model

    def held_out_reward(model) -> float:
        scores = []
        for k in range(8):
            sampled = trainer.sample(Policy(model), trainer.eval_rows, seed=1000 + k)
            w = int(sampled["prompt_width"])
            texts = [trainer.tokenizer.decode(s[w:w + int(n)].tolist(), skip_special_tokens=True)
                     for s, n in zip(sampled["sequences"], sampled["completion_mask"].sum(-1))]
            scores.append(float(trainer.score(trainer.eval_rows, texts)[0].mean()))
        return sum(scores) / len(scores)

    before = held_out_reward(load_causal_lm(tiny_model).eval())
    after = held_out_reward(trainer.engine.module.eval())
    evals = [r for r in read_log(out / "train_log.jsonl") if r["event"] == "eval"]
    print(f"has-digit reward: training steps 1-5 {first:.3f} -> 46-50 {last:.3f}; "
          f"held-out {before:.3f} -> {after:.3f} (end-of-run eval {evals[-1]['eval_reward/mean']:.3f})")
    assert last - first >= 0.3
    assert after - before >= 0.3
    assert torch.isfinite(torch.tensor(summary["final_loss"]))


def test_lora_policy_with_kl_penalty(tiny_model, tmp_path, toy_site):
    """A LoRA policy: the reference is the base (adapter off), so KL starts at 0 and grows;
    the result is an adapter."""
    out = tmp_path / "lora"
    data = toy_prompts(tmp_path / "prompts.jsonl")
    _, summary = train(grpo_config(tiny_model, out, data, training={"max_steps": 6, "lr": 2e-2},
                                   grpo={"kl_beta": 0.1, "loss_aggregation": "token"}, lora={"dropout": 0.0}))
    records = steps(out)
    assert summary["result"] == "adapter" and (out / "adapter_model.safetensors").is_file()
    assert records[0]["kl"] == pytest.approx(0, abs=1e-6) and records[-1]["kl"] > 0


# --- resume


def test_resume_after_sigkill_matches_uninterrupted_run(tiny_model, tmp_path, toy_site):
    """Killed mid-run and resumed (through ``duma train``, the reward from an installed
    plugin): every step once, and the same samples (rewards, lengths), KL and losses as an
    uninterrupted run."""

    def write(name: str, out: Path) -> Path:
        cfg = grpo_config(tiny_model, out, toy_prompts(tmp_path / "prompts.jsonl", n=20),
                          data={"eval_ratio": 0.2},
                          training={"max_steps": None, "epochs": 4, "zero_stage": 2, "save_every": 3,
                                    "keep_last": 1, "lr": 1e-2},
                          grpo={"kl_beta": 0.05, "max_new_tokens": 6})
        cfg["training"] = {k: v for k, v in cfg["training"].items() if v is not None}
        path = tmp_path / name
        path.write_text(yaml.safe_dump(cfg))
        return path

    env = {"PYTHONPATH": os.pathsep.join([str(toy_site), *filter(None, [os.environ.get("PYTHONPATH")])])}
    out = tmp_path / "killed"
    cfg = write("run.yaml", out)
    # 16 training prompts, batch 4: 4 steps an epoch, 16 in all; sleep so we can kill mid-run.
    killed_at = train_until_killed(cfg, out, at_least=7, sleep_s=0.4, cwd=tmp_path, **env)
    assert 7 <= killed_at < 16

    res = subprocess.run([*DUMA, "train", str(cfg), "--resume"], capture_output=True, text=True,
                         env=child_env(**env), cwd=tmp_path)
    assert res.returncode == 0, res.stderr[-2000:]
    resumed = [r for r in log_records(out) if r["event"] == "step"]
    assert [r["step"] for r in resumed] == list(range(1, 17))
    resumed_at = [r for r in log_records(out) if r["event"] == "resume"][0]["step"]
    assert 0 < resumed_at <= killed_at

    clean = tmp_path / "clean"
    res = subprocess.run([*DUMA, "train", str(write("clean.yaml", clean))], capture_output=True, text=True,
                         env=child_env(**env), cwd=tmp_path)
    assert res.returncode == 0, res.stderr[-2000:]
    uninterrupted = [r for r in log_records(clean) if r["event"] == "step"]
    assert [r["samples"] for r in uninterrupted] == [r["samples"] for r in resumed]
    for a, b in zip(uninterrupted, resumed):
        for key in ("loss", "kl", "reward/mean", "reward/std", "completion/length", "advantage/std"):
            assert a[key] == pytest.approx(b[key], rel=1e-4, abs=1e-6), (a["step"], key)
    assert len({r["reward/mean"] for r in uninterrupted}) > 1 and any(r["kl"] > 0 for r in uninterrupted[1:])
    end = [r for r in log_records(clean) if r["event"] == "eval"][-1]
    assert end["eval_reward/mean"] == pytest.approx([r for r in log_records(out) if r["event"] == "eval"][-1]
                                                    ["eval_reward/mean"])
    print(f"resume: killed at step {killed_at}, resumed at {resumed_at}; losses "
          f"{[round(r['loss'], 4) for r in resumed]}; rewards {[r['reward/mean'] for r in resumed]}")


# --- bad input


def test_bad_prompt_records_and_configs_fail_before_training(tiny_model, tmp_path, toy_site):
    from duma.errors import ConfigError, DumaError

    lines = EXAMPLE.read_text(encoding="utf-8").splitlines()
    bad = tmp_path / "bad.jsonl"
    bad.write_text("\n".join([lines[0], '{"messages": [], "answer": "4"}', *lines[1:]]) + "\n", encoding="utf-8")
    out = tmp_path / "out"
    with pytest.raises(DumaError, match=r"bad\.jsonl:2: messages"):
        _prepare(grpo_config(tiny_model, out, bad))
    bad.write_text("\n".join([*lines[:2], json.dumps({"messages": [{"role": "assistant", "content": "Hi"}],
                                                      "answer": "a"})]) + "\n", encoding="utf-8")
    with pytest.raises(DumaError, match=r"bad\.jsonl:3: messages: the context must end with a user turn"):
        _prepare(grpo_config(tiny_model, out, bad))
    bad.write_text(json.dumps({"prompt": "Hi", "answer": ""}) + "\n", encoding="utf-8")
    with pytest.raises(DumaError, match=r"bad\.jsonl:1: answer: empty"):
        _prepare(grpo_config(tiny_model, out, bad))
    with pytest.raises(DumaError, match="unknown reward 'nope'.*known rewards: .*duma-fast"):
        _prepare(grpo_config(tiny_model, out, EXAMPLE, grpo={"rewards": ["nope"]}))
    with pytest.raises(ConfigError, match="reward_weights"):
        _prepare(grpo_config(tiny_model, out, EXAMPLE, grpo={"reward_weights": [1.0, 2.0]}))
    with pytest.raises(ConfigError, match="zero_stage"):
        _prepare(grpo_config(tiny_model, out, EXAMPLE, training={"zero_stage": 3}))
    belle = REPO / "configs" / "examples" / "data" / "belle_tiny.jsonl"
    with pytest.raises(DumaError, match="method 'grpo' trains on prompts"):
        _prepare(grpo_config(tiny_model, out, belle, data={"source": "belle"}))


def test_example_config_validates():
    from duma.trainers import runner

    path = REPO / "configs" / "examples" / "grpo_tiny.yaml"
    trainer = runner.build_trainer(path)
    assert trainer.name == "grpo" and trainer.config.data.source == "prompts"
    assert [name for name, _, _ in trainer.rewards] == ["numeric"] and Path(trainer.config.data.files[0]).is_file()


def test_tools_run_in_the_loop_and_their_observations_are_not_trained(tiny_model, tmp_path, monkeypatch):
    """``grpo.run_tools``: a sampled turn that writes Act[...] gets the real tool's Obs[...] as
    the next user turn, rendered as the one renderer renders a slow-mind trace; only the
    model's own tokens are trained, and the rewards see the whole trace. The model's turns are
    scripted here (this is about the loop, not the sampling)."""
    import types

    import torch

    from duma import host
    from duma.rendering import render_training
    from duma.trainers.grpo import GRPOTrainer

    data = tmp_path / "prompts.jsonl"
    question = [{"role": "system", "content": "You are the slow mind."}, {"role": "user", "content": "Query 0: 2+3?"}]
    data.write_text(json.dumps({"messages": question, "answer": "5"}) + "\n", encoding="utf-8")
    host.reset()
    trainer = _prepare(grpo_config(tiny_model, tmp_path / "out", data, data={"max_length": 256},
                                   grpo={"group_size": 2, "max_new_tokens": 120, "rewards": ["duma-slow"],
                                         "run_tools": True}))
    assert isinstance(trainer, GRPOTrainer)
    tok = trainer.tokenizer
    turns = ["Reason[add]\nAct[calculator(2+3)]", "Reason[done]\nFinish[5]"]
    from duma.trainers.base import load_causal_lm

    model = load_causal_lm(tiny_model)
    calls = []

    def scripted_generate(input_ids, **kwargs):
        calls.append(input_ids.shape[1])
        reply = tok(turns[(len(calls) - 1) % 2], add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
        return torch.cat([input_ids, torch.tensor([reply])], dim=1)

    monkeypatch.setattr(model, "generate", scripted_generate)
    [row] = trainer.train_rows
    sampled = trainer.sample_with_tools(types.SimpleNamespace(module=model), [row], seed=0)
    assert len(calls) == 4  # two turns for each of the two samples
    assert sampled["texts"] == ["Reason[add]\nAct[calculator(2+3)]\nObs[5]\nReason[done]\nFinish[5]"] * 2
    assert sampled["ended"].tolist() == [True, True]
    width = int(sampled["prompt_width"])
    full = render_training(tok, [*question, {"role": "assistant", "content": turns[0]},
                                 {"role": "user", "content": "Obs[5]"}, {"role": "assistant", "content": turns[1]}])
    n = int(sampled["completion_mask"][0].sum())
    got = sampled["sequences"][0, :width + n].tolist()
    # The trace is the training rendering of that conversation up to the last reply's end token.
    assert got == full.input_ids[:len(got)] and len(full.input_ids) - len(got) <= 1
    trained = [t for t, m in zip(got[width:], sampled["loss_mask"][0].tolist()) if m]
    untrained = tok.decode([t for t, m in zip(got[width:], sampled["loss_mask"][0].tolist()) if not m])
    assert tok.decode(trained, skip_special_tokens=True) == turns[0] + turns[1]
    assert "Obs[5]" in untrained and "Reason" not in untrained
    rewards, _ = trainer.score([row], sampled["texts"])
    assert rewards.tolist() == [1.0, 1.0]  # the real tool's result in Finish, a well-formed trace
