"""``duma minds``: the generated training data matches what the agent sends at inference,
is reproducible, holds out whole templates, and trains/measures on the tiny model."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from duma.testing import run_cli


REPO = Path(__file__).resolve().parents[1]
FILES = ("fast_train.jsonl", "fast_eval.jsonl", "slow_train.jsonl", "slow_eval.jsonl",
         "routing_eval.jsonl", "router_train.jsonl", "slow_expected.jsonl")


def run(*args: str) -> tuple[int, str, str]:
    """The duma CLI in-process: (exit code, stdout, stderr)."""
    return run_cli(args)


def read(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    from duma.plugins.minds.generate import generate

    out = tmp_path_factory.mktemp("minds-data")
    generate(out, seed=0, n_fast=20, n_slow=20)
    return out


def test_generation_is_reproducible_from_the_seed(data, tmp_path, capsys):
    code, out, _ = run("minds", "generate", "--out", str(tmp_path), "--seed", "0", "--fast", "20",
                       "--slow", "20")
    assert code == 0 and "tokens" in out
    for name in FILES:
        assert (tmp_path / name).read_bytes() == (data / name).read_bytes(), name
    code, _, _ = run("minds", "generate", "--out", str(tmp_path / "other"), "--seed", "1",
                     "--fast", "20", "--slow", "20")
    assert (tmp_path / "other" / "slow_train.jsonl").read_bytes() != (data / "slow_train.jsonl").read_bytes()


def test_splits_hold_out_whole_templates(data):
    from duma.plugins.minds.generate import template_ids

    templates: dict[str, set[str]] = {"train": set(), "eval": set()}
    for name in ("fast_train.jsonl", "fast_eval.jsonl", "slow_train.jsonl", "slow_eval.jsonl"):
        for r in read(data / name):
            kind, split = r["category"].split("/")
            assert r["id"].startswith(f"{kind}-{split}-") and name.endswith(f"_{split}.jsonl")
            templates[split].update(template_ids(r["id"]))
    assert templates["train"] and templates["eval"]
    assert not templates["train"] & templates["eval"]
    summary = json.loads((data / "summary.json").read_text())
    assert set(summary["eval_templates"]) == templates["eval"]


def test_slow_observations_equal_rerunning_the_tools(data):
    from duma.agents import protocol
    from duma.plugins.minds.generate import DEFAULT_TODAY, fixed_today, load_generation_tools, tool_runner

    with fixed_today(DEFAULT_TODAY):
        runner = tool_runner(load_generation_tools())
        records = read(data / "slow_train.jsonl") + read(data / "slow_eval.jsonl")
        errors = 0
        for r in records:
            msgs = r["messages"]
            assert msgs[0]["content"] == runner.system_prompt
            assert msgs[1]["content"].splitlines()[-1].startswith(f"Query ")
            steps = msgs[2:]
            assert protocol.parse_slow(steps[-1]["content"]).finish
            for act, obs in zip(steps[0:-1:2], steps[1:-1:2]):
                parsed = protocol.parse_slow(act["content"])
                assert parsed.action and parsed.reason
                assert obs["content"] == protocol.format_observation(runner.run_tool(parsed.action))
                errors += obs["content"].startswith("Obs[Error")
        assert len(records) == 20


def test_fast_samples_equal_the_agents_context(data):
    from duma.agents import fast_mind, protocol
    from duma.plugins.minds.measure import _logged_history

    dialogues = {r["id"]: r["messages"] for r in read(data / "fast_eval.jsonl")}
    turns = read(data / "routing_eval.jsonl")
    assert turns
    system = fast_mind.fast_system_prompt(None, None)
    for turn in turns:
        messages = dialogues[turn["dialogue"]]
        context = fast_mind.build_context(system, _logged_history(turn["history"]), turn["text"], 20)
        assert [m.model_dump() for m in context] == messages[:len(context)]
        answer = protocol.parse_fast(messages[len(context)]["content"])
        assert answer.parse_ok and answer.invoke == turn["slow"]
        if turn["slow"]:  # interim, then the slow mind's result, then the final reply
            assert messages[len(context) + 1]["content"].startswith("SlowMind[")
            assert protocol.parse_fast(messages[len(context) + 2]["content"]).invoke is False
    for messages in dialogues.values():
        assert messages[0] == {"role": "system", "content": fast_mind.DEFAULT_FAST_PROMPT}


def test_samples_render_with_trainable_tokens(data, tiny_model):
    from duma.rendering import render_training
    from duma.trainers.base import load_padded_tokenizer

    tokenizer = load_padded_tokenizer(tiny_model)
    for name in ("fast_train.jsonl", "fast_eval.jsonl", "slow_train.jsonl", "slow_eval.jsonl"):
        for r in read(data / name):
            assert render_training(tokenizer, r["messages"]).trainable_tokens > 0


def test_files_pass_duma_data_validate_and_stats(data, capsys):
    files = [str(data / n) for n in ("fast_train.jsonl", "fast_eval.jsonl", "slow_train.jsonl", "slow_eval.jsonl")]
    code, out, err = run("data", "validate", "sharegpt", *files)
    assert code == 0, out + err
    code, out, err = run("data", "stats", *files, "--format", "sharegpt")
    assert code == 0, out + err
    from duma.data import iter_records

    records = list(iter_records("sharegpt", [data / "slow_train.jsonl"]))
    raw = read(data / "slow_train.jsonl")
    assert [[m.model_dump() for m in r.messages] for r in records] == [r["messages"] for r in raw]


def test_measure_runs_on_the_tiny_model(data, tiny_model, tmp_path, capsys):
    out = tmp_path / "report.json"
    code, stdout, err = run("minds", "measure", "--data", str(data), "--model", str(tiny_model),
                            "--limit", "2", "--max-tokens", "8", "--out", str(out))
    assert code == 0, stdout + err
    report = json.loads(out.read_text())
    assert set(report) >= {"invoke", "slow", "end_to_end", "routing"}
    assert report["invoke"]["n"] == 2 and report["slow"]["episodes"] == 2
    assert set(report["routing"]) == {"duma", "classifier", "random"}
    assert "| invoke accuracy" in out.with_suffix(".md").read_text()
    code, stdout, err = run("minds", "compare", str(out), str(out))
    assert code == 0, stdout + err
    assert "| measure | untrained | trained |" in stdout and "| router duma: APGR |" in stdout
    code, stdout, err = run("minds", "compare", str(out.with_suffix(".md")), str(out))
    assert code != 0 and "not a 'duma minds measure' report" in err


def test_one_training_step_on_the_generated_data(data, tiny_model, tmp_path):
    env = {k: v for k, v in os.environ.items()
           if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")}
    env.setdefault("TORCH_EXTENSIONS_DIR", str(REPO / ".test-cache" / "torch_extensions"))
    out = tmp_path / "fast-adapter"
    done = subprocess.run(
        [sys.executable, "-m", "duma", "train", "--json", str(REPO / "configs" / "duma-default" / "fast.yaml"),
         f"model={tiny_model}", f"data.files=[{data / 'fast_train.jsonl'}]", f"output_dir={out}",
         "training.max_steps=1", "training.progress=false"],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    summary = json.loads(done.stdout.strip().splitlines()[-1])
    assert summary["steps"] == 1 and summary["data"]["records"] > 0

    # The trained adapter ships as float16 and still loads (and behaves) as the same adapter.
    shipped = tmp_path / "shipped"
    code, stdout, err = run("minds", "ship", "--fast-adapter", str(out), "--slow-adapter", str(out),
                            "--into", str(shipped))
    assert code == 0, stdout + err
    assert sorted(p.name for p in (shipped / "fast").iterdir()) == [
        "adapter_config.json", "adapter_model.safetensors", "duma_adapter.json"]
    from duma import models
    from duma.types import GenerationOptions, Message, ModelSpec

    models.clear_backends()
    question = [Message(role="user", content="User[hello]")]
    options = GenerationOptions(max_tokens=8)
    trained = models.load_backend(ModelSpec(model=str(tiny_model), adapter=str(out))).generate(question, options)
    packed = models.load_backend(ModelSpec(model=str(tiny_model), adapter=str(shipped / "fast"))).generate(
        question, options)
    assert packed.text == trained.text
    models.clear_backends()


def test_ship_refuses_a_folder_without_an_adapter(tmp_path):
    code, stdout, err = run("minds", "ship", "--fast-adapter", str(tmp_path), "--slow-adapter", str(tmp_path),
                            "--into", str(tmp_path / "out"))
    assert code != 0
    assert "adapter_config.json" in err and "Traceback" not in err


def test_config_defaults_to_the_shipped_minds_on_the_embedded_model():
    from duma import models
    from duma.config import DumaConfig

    fast, slow = models.shipped_mind_adapter("fast"), models.shipped_mind_adapter("slow")
    config = DumaConfig()
    if fast is None or slow is None:
        pytest.skip("this checkout ships no trained minds")
    assert config.mind("fast").adapter == str(fast) and config.mind("slow").adapter == str(slow)
    assert DumaConfig.model_validate({"agent": {"trained_minds": False}}).mind("fast").adapter is None
    other = DumaConfig.model_validate({"model": {"model": "/some/model"}})
    assert other.mind("fast").adapter is None  # shipped adapters fit the embedded model only
