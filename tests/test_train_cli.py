"""``duma train`` as users run it: one-line errors, progress bars and a short summary with
nothing from DeepSpeed or transformers, a run killed with SIGKILL and resumed (every step
exactly once, same weights as an uninterrupted run), and two processes over gloo."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
BELLE = REPO / "configs" / "examples" / "data" / "belle_tiny.jsonl"
DUMA = [sys.executable, "-m", "duma"]
# Launcher variables of an in-process run in this pytest process must not leak into children.
_LAUNCH_VARS = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")


def child_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in _LAUNCH_VARS}
    env.setdefault("TORCH_EXTENSIONS_DIR", str(REPO / ".test-cache" / "torch_extensions"))
    env.update(extra)
    return env


def write_config(path: Path, tiny_model: Path, out: Path, **training) -> Path:
    cfg = {
        "method": "sft", "model": str(tiny_model), "output_dir": str(out),
        "data": {"source": "belle", "files": [str(BELLE)], "max_length": 96, "limit": 42, "eval_ratio": 0.1},
        "training": {"epochs": 2, "batch_size": 4, "lr": 3e-3, "warmup_ratio": 0.1, "zero_stage": 2,
                     "seed": 3, "progress": False, **training},
    }
    path.write_text(yaml.safe_dump(cfg))
    return path


def log_records(out: Path) -> list[dict]:
    from duma.trainers.base import read_log

    return read_log(out / "train_log.jsonl")


def train_until_killed(cfg: Path, out: Path, *, at_least: int, sleep_s: float, cwd: Path,
                       timeout_s: float = 240, **env: str) -> int:
    """Start ``duma train cfg`` slowed by ``sleep_s`` a step, SIGKILL it once ``out``'s log holds
    ``at_least`` steps, and return the last step it logged (its stderr goes to a file)."""
    stderr_path = cwd / f"{out.name}-killed.stderr"
    with open(stderr_path, "wb") as stderr:
        proc = subprocess.Popen([*DUMA, "train", str(cfg)], env=child_env(DUMA_TRAIN_STEP_SLEEP=str(sleep_s), **env),
                                stdout=subprocess.DEVNULL, stderr=stderr, cwd=cwd)
    deadline = time.time() + timeout_s
    try:
        while time.time() < deadline:
            log = out / "train_log.jsonl"
            if log.exists() and sum(r["event"] == "step" for r in log_records(out)) >= at_least:
                break
            assert proc.poll() is None, f"the run ended before it could be killed: {stderr_path.read_text()[-2000:]}"
            time.sleep(0.05)
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
    return max(r["step"] for r in log_records(out) if r["event"] == "step")


def test_cli_errors_are_one_line(tiny_model, tmp_path):
    cfg = write_config(tmp_path / "run.yaml", tiny_model, tmp_path / "out")
    started = time.time()
    res = subprocess.run([*DUMA, "train", str(cfg), "training.lrr=1"], capture_output=True, text=True,
                         env=child_env(), cwd=tmp_path)
    assert res.returncode == 2
    lines = [ln for ln in res.stderr.splitlines() if ln.strip()]
    assert lines[-1].startswith("Error: ") and "training.lrr: unknown key" in lines[-1]
    assert "allowed keys:" in lines[-1] and "Traceback" not in res.stderr
    assert "DeepSpeed" not in res.stderr + res.stdout and time.time() - started < 60
    res = subprocess.run([*DUMA, "train", str(cfg), "method=no-such-method"], capture_output=True, text=True,
                         env=child_env(), cwd=tmp_path)
    assert res.returncode == 1 and "unknown trainer 'no-such-method'" in res.stderr and "Traceback" not in res.stderr


LIBRARY_NOISE = ("built successfully", "Writing model shards", "[INFO]", "[WARNING]", "Warning")


def test_train_shows_phase_bars_and_a_short_summary(tiny_model, tmp_path):
    out = tmp_path / "out"
    cfg = write_config(tmp_path / "run.yaml", tiny_model, out, max_steps=3, progress=True)
    res = subprocess.run([*DUMA, "train", str(cfg)], capture_output=True, text=True, env=child_env(), cwd=tmp_path)
    assert res.returncode == 0, res.stderr[-2000:]
    for noise in LIBRARY_NOISE:
        assert noise not in res.stdout + res.stderr, noise
    bars = res.stderr.splitlines()
    for phase, shows in (("data", "42 records"), ("model", "params"), ("train", "3/3"), ("eval", "loss"),
                         ("save", "model written")):
        assert any(line.startswith(phase) and shows in line for line in bars), (phase, res.stderr)
    lines = res.stdout.splitlines()
    assert lines[0].startswith("sft run done: 3 steps in ") and lines[0].endswith("s")
    end = next(r for r in log_records(out) if r["event"] == "end")
    assert f"  loss        {end['final_loss']:.4f} at the last step, eval loss {end['eval_loss']:.4f}" in lines
    assert f"  speed       {end['tokens_per_s']:.0f} tokens/s" in lines and end["tokens_per_s"] > 0
    assert any(line.startswith("  data        42 records: 38 train rows, 4 eval rows") for line in lines), lines
    assert f"  model       {out}" in lines and f"  try it      duma chat -m {out}" in lines
    assert any(line.startswith("  log ") and str(out / "train_log.jsonl") in line for line in lines)
    assert len(lines) == 7 and not any(line.startswith("{") for line in lines)
    assert end["elapsed_s"] > 0 and end["steps"] == 3
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out", "run.yaml"]  # nothing else in the cwd


def test_resume_after_sigkill_matches_uninterrupted_run(tiny_model, tmp_path):
    from safetensors.torch import load_file

    out = tmp_path / "killed"
    cfg = write_config(tmp_path / "run.yaml", tiny_model, out, save_every=3, keep_last=2)
    # 38 training rows, batch 4: 10 steps an epoch, 20 in all; sleep so we can kill mid-run.
    killed_at = train_until_killed(cfg, out, at_least=11, sleep_s=0.3, cwd=tmp_path)
    assert 11 <= killed_at < 20
    assert not (out / "model.safetensors").exists()

    res = subprocess.run([*DUMA, "train", str(cfg), "--resume"], capture_output=True, text=True,
                         env=child_env(), cwd=tmp_path)
    assert res.returncode == 0, res.stderr[-2000:]
    records = log_records(out)
    resume = [r for r in records if r["event"] == "resume"]
    assert len(resume) == 1 and 9 <= resume[0]["step"] <= killed_at
    step_recs = [r for r in records if r["event"] == "step"]
    assert [r["step"] for r in step_recs] == list(range(1, 21))  # every step exactly once
    for epoch in (0, 1):  # every training sample exactly once an epoch
        seen = [i for r in step_recs if r["epoch"] == epoch for i in r["samples"]]
        assert len(seen) == len(set(seen)) == 38
    ckpts = sorted(p.name for p in (out / "checkpoints").iterdir())
    assert ckpts == ["step-18", "step-20"]  # the last two kept; no temporary folder left

    assert "resumed at step" in res.stdout.splitlines()[0]

    clean = tmp_path / "clean"
    write_config(tmp_path / "clean.yaml", tiny_model, clean)
    res = subprocess.run([*DUMA, "train", str(tmp_path / "clean.yaml"), "--json"], capture_output=True, text=True,
                         env=child_env(), cwd=tmp_path)
    assert res.returncode == 0, res.stderr[-2000:]
    summary = json.loads(res.stdout)  # all of stdout is the one JSON summary
    assert summary == {k: v for k, v in log_records(clean)[-1].items() if k not in ("event", "time")}
    assert summary["steps"] == 20 and summary["output_dir"] == str(clean) and summary["result"] == "model"
    for noise in LIBRARY_NOISE:
        assert noise not in res.stdout + res.stderr, noise
    assert res.stderr == ""  # training.progress false: no bars either
    clean_steps = [r for r in log_records(clean) if r["event"] == "step"]
    assert [r["samples"] for r in clean_steps] == [r["samples"] for r in step_recs]
    for a, b in zip(clean_steps, step_recs):
        assert a["loss"] == pytest.approx(b["loss"], rel=1e-4, abs=1e-5)
    import torch

    resumed, uninterrupted = load_file(str(out / "model.safetensors")), load_file(str(clean / "model.safetensors"))
    assert resumed.keys() == uninterrupted.keys()
    for key in resumed:
        assert torch.allclose(resumed[key], uninterrupted[key], atol=1e-5), key


def test_two_processes_over_gloo(tiny_model, tmp_path):
    out = tmp_path / "two"
    cfg = write_config(tmp_path / "run.yaml", tiny_model, out, max_steps=4, batch_size=2, save_every=2)
    res = subprocess.run([*DUMA, "train", str(cfg), "--nproc", "2", "--json"], capture_output=True, text=True,
                         env=child_env(), cwd=tmp_path, timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    records = log_records(out)
    assert [r["world_size"] for r in records if r["event"] == "start"] == [2]
    step_recs = [r for r in records if r["event"] == "step"]
    assert [r["step"] for r in step_recs] == [1, 2, 3, 4]
    for r in step_recs:  # both ranks ran a forward/backward on their own micro-batch
        assert len(r["rank_losses"]) == 2 and r["rank_losses"][0] != r["rank_losses"][1]
        assert len(r["samples"]) == len(set(r["samples"]))
    assert len([r for r in records if r["event"] == "end"]) == 1
    assert (out / "model.safetensors").is_file()
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["step-2", "step-4"]
    summaries = [ln for ln in res.stdout.splitlines() if ln.startswith("{")]
    assert len(summaries) == 1 and json.loads(summaries[0])["world_size"] == 2  # saved and reported once
    assert "built successfully" not in res.stdout + res.stderr and "Gloo" not in res.stderr


def test_hostfile_launches_through_deepspeed_launcher(tmp_path):
    from duma.errors import DumaError
    from duma.trainers.runner import launch_command

    hostfile = tmp_path / "hostfile"
    hostfile.write_text("node1 slots=2\nnode2 slots=2\n")
    cmd = launch_command("run.yaml", ["training.lr=1e-4"], nproc=1, hostfile=str(hostfile), resume=True)
    assert cmd[1:4] == ["-m", "deepspeed.launcher.runner", "--hostfile"]
    assert cmd[cmd.index("--module") + 1:] == ["duma", "train", "run.yaml", "training.lr=1e-4", "--worker", "--resume"]
    loud = launch_command("run.yaml", [], nproc=2, hostfile=None, resume=False, as_json=True, debug=True)
    assert loud[loud.index("-m", 3) + 1:] == ["duma", "--debug", "train", "run.yaml", "--worker", "--json"]
    local = launch_command("run.yaml", [], nproc=2, hostfile=None, resume=False)
    assert "torch.distributed.run" in local and "--nproc_per_node=2" in local
    with pytest.raises(DumaError, match="hostfile .* does not exist"):
        launch_command("run.yaml", [], nproc=1, hostfile=str(tmp_path / "none"), resume=False)
