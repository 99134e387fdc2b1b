"""The ``rm`` trainer (a Bradley-Terry reward model) on tiny random models: the loss and its
options, held-out pair accuracy on a synthetic correct-vs-wrong arithmetic task, the saved
folder reloading and scoring as in training (full and LoRA), ``duma eval rm``, and config
errors."""

from __future__ import annotations

import json
import math
import os
import random
from pathlib import Path

import pytest
import yaml

from test_train_engine import _prepare, steps, train

REPO = Path(__file__).resolve().parents[1]
ARITHMETIC = REPO / "configs" / "examples" / "data" / "arithmetic_pairs.jsonl"


@pytest.fixture(autouse=True)
def _shared_extension_cache(monkeypatch):
    monkeypatch.setenv("TORCH_EXTENSIONS_DIR", os.environ.get(
        "TORCH_EXTENSIONS_DIR", str(REPO / ".test-cache" / "torch_extensions")))


def arithmetic_pairs() -> list[dict]:
    """The correct sum of two digits 0-4 chosen over each other one-digit answer: 25 questions x
    9 wrong answers = 225 distinct pairs, shuffled with a fixed seed. Every answer is one
    token, so a small model can learn the addition table; it never sees the correct answer
    in the context. (The bundled ``arithmetic_pairs.jsonl`` is this list.)"""
    pairs = [{"messages": [{"role": "user", "content": f"What is {a} + {b}?"}], "chosen": str(a + b),
              "rejected": str(wrong)}
             for a in range(5) for b in range(5) for wrong in range(10) if wrong != a + b]
    random.Random(0).shuffle(pairs)
    return pairs


def write_jsonl(path: Path, records: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    return path


def rm_config(model: Path, out: Path, data_file: Path, **sections) -> dict:
    cfg = {
        "method": "rm", "model": str(model), "output_dir": str(out),
        "data": {"source": "preference", "files": [str(data_file)], "max_length": 64},
        "training": {"max_steps": 4, "batch_size": 8, "lr": 1e-3, "warmup_ratio": 0.05, "progress": False,
                     "zero_stage": 0, "seed": 1},
    }
    for key, value in sections.items():
        cfg.setdefault(key, {}).update(value)
    return cfg


@pytest.fixture(scope="module")
def four_layer_model(tmp_path_factory) -> Path:
    """The tiny model with 4 layers: 2 learn the table in some seeds only."""
    from duma.testing import make_tiny_model

    return make_tiny_model(tmp_path_factory.mktemp("tiny-4-layers"), layers=4)


def test_bundled_data_is_the_generated_task():
    assert ARITHMETIC.read_text(encoding="utf-8").splitlines() == [json.dumps(p) for p in arithmetic_pairs()]


def test_loss_margin_and_centring():
    import torch

    from duma.trainers.rm import RMSettings, reward_losses

    chosen, rejected = torch.tensor([1.5, -0.5]), torch.tensor([0.5, 0.5])

    def loss(**settings: float) -> list[float]:
        return reward_losses(chosen, rejected, RMSettings(**settings)).tolist()

    sig = lambda x: 1 / (1 + math.exp(-x))  # noqa: E731
    assert loss() == pytest.approx([-math.log(sig(1.0)), -math.log(sig(-1.0))])
    # A margin asks for a larger gap: the same rewards cost more.
    assert loss(margin=0.5) == pytest.approx([-math.log(sig(0.5)), -math.log(sig(-1.5))])
    assert all(m > p for m, p in zip(loss(margin=0.5), loss()))
    # Centring adds coefficient * (r_c + r_r)^2: 0.1 * 4 and 0.1 * 0 here.
    assert loss(center_rewards_coefficient=0.1) == pytest.approx([-math.log(sig(1.0)) + 0.4, -math.log(sig(-1.0))])
    # Its gradient pulls both rewards of the pair towards a zero sum; without it, none.
    for coef, sign in ((0.0, 0), (0.1, 1)):
        c, r = torch.tensor([1.0, 3.0], requires_grad=True), torch.tensor([1.0, 3.0], requires_grad=True)
        reward_losses(c, r, RMSettings(center_rewards_coefficient=coef)).sum().backward()
        assert float((c.grad + r.grad).sign().mean()) == sign


def test_reward_model_learns_held_out_pairs_reloads_and_evaluates(four_layer_model, tmp_path):
    from duma.testing import run_cli
    from duma.trainers.base import read_log
    from duma.trainers.rm import load_reward_model

    data = write_jsonl(tmp_path / "pairs.jsonl", arithmetic_pairs())
    out = tmp_path / "rm"
    trainer, summary = train(rm_config(four_layer_model, out, data, data={"eval_ratio": 0.2},
                                       training={"max_steps": 400, "eval_every": 200, "log_every": 10}))
    records = steps(out)
    assert records[0]["loss"] == pytest.approx(math.log(2), abs=0.05)  # a fresh head: rewards near 0
    evals = [r for r in read_log(out / "train_log.jsonl") if r["event"] == "eval"]
    accuracy = evals[-1]["eval_accuracy"]
    print(f"held-out pair accuracy {accuracy:.3f} ({len(trainer.eval_rows)} pairs) at steps "
          f"{[e['step'] for e in evals]}: {[round(e['eval_accuracy'], 3) for e in evals]}; eval loss "
          f"{summary['eval_loss']:.4f}, margin {evals[-1]['eval_margin']:.2f}")
    assert accuracy >= 0.9 and summary["eval_loss"] < 0.3

    # The folder reloads as a reward model and scores pairs as the trainer did.
    assert json.loads((out / "config.json").read_text())["architectures"] == ["LlamaForSequenceClassification"]
    pairs = arithmetic_pairs()
    held_out = [pairs[p.ids[0]] for p in trainer.eval_rows]
    assert not {json.dumps(p) for p in held_out} & {json.dumps(pairs[p.ids[0]]) for p in trainer.train_rows}
    reward_model = load_reward_model(out)
    scores = reward_model.score([[*p["messages"], {"role": "assistant", "content": reply}]
                                 for p in held_out for reply in (p["chosen"], p["rejected"])])
    reloaded = sum(c > r for c, r in zip(scores[0::2], scores[1::2])) / len(held_out)
    assert reloaded == pytest.approx(accuracy)
    one = reward_model.score([[{"role": "user", "content": "What is 2 + 3?"}, {"role": "assistant", "content": "5"}]])
    assert len(one) == 1 and isinstance(one[0], float)

    # duma eval rm: the same accuracy, as text and as JSON.
    held_file = write_jsonl(tmp_path / "held_out.jsonl", held_out)
    code, stdout, stderr = run_cli(["eval", "rm", str(out), str(held_file)])
    assert code == 0, stderr
    assert stdout.startswith(f"pair accuracy {accuracy:.3f} over {len(held_out)} pairs, mean margin")
    code, stdout, _ = run_cli(["eval", "rm", str(out), str(held_file), "--json"])
    report = json.loads(stdout)
    assert report["pairs"] == len(held_out) and report["accuracy"] == pytest.approx(accuracy)
    assert report["mean_margin"] == pytest.approx(evals[-1]["eval_margin"], rel=1e-3)


def test_lora_reward_model_saves_an_adapter_that_reloads(tiny_model, tmp_path):
    import torch

    from duma.trainers.rm import REWARD_FILE, load_reward_model

    data = write_jsonl(tmp_path / "pairs.jsonl", arithmetic_pairs()[:40])
    out = tmp_path / "lora"
    trainer, summary = train(rm_config(tiny_model, out, data, training={"max_steps": 3, "lr": 1e-2},
                                       lora={"r": 4, "alpha": 8, "dropout": 0.0}, rm={"margin": 0.5}))
    assert summary["result"] == "reward model" and (out / "adapter_model.safetensors").is_file()
    assert json.loads((out / REWARD_FILE).read_text())["adapter"] is True
    assert steps(out)[0]["loss"] == pytest.approx(-math.log(1 / (1 + math.exp(0.5))), abs=0.05)  # the margin
    # The head is trained and saved with the adapter; the reloaded model scores as the trained one.
    trained = trainer.engine.module.eval()
    rows = trainer.train_rows[:4]
    with torch.no_grad():
        expected = trained(**trainer.collate(rows, trainer.tokenizer.pad_token_id)).logits.squeeze(-1).tolist()
    pairs = arithmetic_pairs()[:40]
    convs = [[*pairs[p.ids[0]]["messages"], {"role": "assistant", "content": pairs[p.ids[0]][side]}]
             for side in ("chosen", "rejected") for p in rows]
    assert load_reward_model(out).score(convs) == pytest.approx(expected, abs=1e-4)


def test_bad_configs_and_data_fail_before_training(tiny_model, tmp_path):
    from duma.errors import ConfigError, DumaError
    from duma.testing import run_cli

    out = tmp_path / "out"
    with pytest.raises(ConfigError) as err:
        _prepare(rm_config(tiny_model, out, ARITHMETIC, rm={"marginn": 1.0}))
    assert "rm.marginn: unknown key" in str(err.value) and "\n" not in str(err.value)
    with pytest.raises(ConfigError, match="training.packing: rm"):
        _prepare(rm_config(tiny_model, out, ARITHMETIC, training={"packing": True}))
    with pytest.raises(ConfigError, match="center_rewards_coefficient"):
        _prepare(rm_config(tiny_model, out, ARITHMETIC, rm={"center_rewards_coefficient": -1}))
    belle = REPO / "configs" / "examples" / "data" / "belle_tiny.jsonl"
    with pytest.raises(DumaError, match="method 'rm' trains on preference pairs"):
        _prepare(rm_config(tiny_model, out, belle, data={"source": "belle"}))
    # Through the CLI: one line, exit code 2.
    cfg = tmp_path / "run.yaml"
    cfg.write_text(yaml.safe_dump(rm_config(tiny_model, out, ARITHMETIC)))
    code, stdout, stderr = run_cli(["train", str(cfg), "rm.marginn=1"])
    lines = [ln for ln in stderr.splitlines() if ln.strip()]
    assert code == 2 and len(lines) == 1 and "rm.marginn: unknown key" in lines[0], stderr
    # duma eval rm on a folder that is no reward model.
    code, _, stderr = run_cli(["eval", "rm", str(tiny_model), str(ARITHMETIC)])
    assert code == 1 and "not a reward model folder" in stderr and "Traceback" not in stderr


def test_example_config_validates():
    from duma.trainers import runner
    from duma.trainers.rm import RMTrainer

    cls, config = runner.load_run_config(REPO / "configs" / "examples" / "rm_tiny.yaml")
    assert cls is RMTrainer and config.data.files[0].resolve() == ARITHMETIC.resolve()


def test_resume_after_sigkill_matches_uninterrupted_run(tiny_model, tmp_path):
    """Killed mid-run and resumed: every step once, with the losses and accuracies of a clean run."""
    from test_train_cli import train_until_killed

    data = write_jsonl(tmp_path / "pairs.jsonl", arithmetic_pairs()[:48])

    def config(out: Path) -> dict:
        return rm_config(tiny_model, out, data, training={"max_steps": 12, "batch_size": 4, "save_every": 3,
                                                          "keep_last": 1}, rm={"center_rewards_coefficient": 0.01})

    killed = tmp_path / "killed"
    cfg = tmp_path / "run.yaml"
    cfg.write_text(yaml.safe_dump(config(killed)))
    killed_at = train_until_killed(cfg, killed, at_least=5, sleep_s=0.5, cwd=tmp_path, timeout_s=120)
    assert 5 <= killed_at < 12
    train(config(killed), resume=True)
    resumed = steps(killed)
    assert [r["step"] for r in resumed] == list(range(1, 13))
    clean = tmp_path / "clean"
    train(config(clean))
    for a, b in zip(steps(clean), resumed):
        assert a["samples"] == b["samples"]
        for key in ("loss", "accuracy", "margin", "rewards/chosen", "rewards/rejected"):
            assert a[key] == pytest.approx(b[key], rel=1e-4, abs=1e-5), (a["step"], key)
