"""Built-in plugin: the trainers (``pt``, ``sft``, ``lora``, ``vocab``, ``dpo``, ``kto``, ``rm``,
``grpo``, ``ppo``) and the ``duma train`` and ``duma export`` commands. Trainer modules import torch only
when a run starts."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

import duma
from duma import pass_state

if TYPE_CHECKING:
    from duma.cli import CliState


# One line a trainer: its module under duma.trainers and its class (imported when looked up).
TRAINERS: list[tuple[str, str]] = [
    ("pt", "PTTrainer"),
    ("sft", "SFTTrainer"),
    ("lora", "LoraTrainer"),
    ("vocab", "VocabTrainer"),
    ("dpo", "DPOTrainer"),
    ("kto", "KTOTrainer"),
    ("grpo", "GRPOTrainer"),
    ("rm", "RMTrainer"),
    ("ppo", "PPOTrainer"),
]


@duma.hookimpl
def register_trainers(register: Any) -> None:
    import importlib

    for module, name in TRAINERS:
        register(getattr(importlib.import_module(f"duma.trainers.{module}"), name))


@duma.hookimpl
def register_commands(cli: Any) -> None:
    cli.add_command(train_command)
    cli.add_command(export_command)


@click.command(name="train", context_settings={"ignore_unknown_options": False})
@click.argument("config_file", type=click.Path(dir_okay=False))
@click.argument("overrides", nargs=-1)
@click.option("--resume", is_flag=True, help="Continue from the last complete checkpoint in output_dir.")
@click.option("--overwrite", is_flag=True, help="Replace whatever output_dir holds.")
@click.option("--nproc", type=click.IntRange(1), default=1, show_default=True,
              help="Processes on this machine (gloo on CPU, nccl on GPUs).")
@click.option("--hostfile", type=click.Path(dir_okay=False), default=None,
              help="DeepSpeed hostfile: launch on several nodes with DeepSpeed's launcher.")
@click.option("--json", "as_json", is_flag=True,
              help="Print the run summary as JSON (the 'end' record of train_log.jsonl).")
@click.option("--worker", is_flag=True, hidden=True, help="Set by the launcher: checks are done.")
@pass_state
def train_command(state: CliState, config_file: str, overrides: tuple[str, ...], resume: bool, overwrite: bool,
                  nproc: int, hostfile: str | None, as_json: bool, worker: bool) -> None:
    """Train a model from a run config: duma train CONFIG.yaml [key=value ...].

    The YAML holds model, method (pt|sft|lora|vocab|dpo|kto|rm|grpo|ppo), data, training and
    output_dir keys; key=value arguments override dotted keys (training.lr=1e-4). Shows a progress bar per
    phase (training.progress=false: none) and ends with a short summary; DeepSpeed's and
    transformers' own output shows with duma --debug.
    """
    import os

    from duma.errors import ConfigError
    from duma.trainers import runner
    from duma.trainers.base import LAUNCHED_ENV

    if resume and overwrite:
        raise ConfigError("--resume and --overwrite exclude each other", "pass one of them")
    quiet = not state.debug
    if worker:
        os.environ[LAUNCHED_ENV] = "1"
    elif nproc > 1 or hostfile:
        sys.exit(runner.launch(config_file, list(overrides), nproc=nproc, hostfile=hostfile,
                               resume=resume, overwrite=overwrite, as_json=as_json, quiet=quiet))
    summary = runner.train(config_file, list(overrides), resume=resume, overwrite=overwrite, quiet=quiet)
    if summary and summary.get("output_dir") and int(os.environ.get("RANK", "0")) == 0:
        click.echo(json.dumps(summary) if as_json else "\n".join(summary_lines(summary)))


def summary_lines(summary: dict[str, Any]) -> list[str]:
    """The end of ``duma train`` for people: what ran, how it went, where the result is."""
    data = summary.get("data", {})
    out = Path(summary["output_dir"])
    resumed = f", resumed at step {summary['resumed_from']}" if summary.get("resumed_from") else ""
    processes = f" on {summary['world_size']} processes" if summary.get("world_size", 1) > 1 else ""
    lines = [f"{summary.get('method', 'training')} run done: {summary['steps']} steps in "
             f"{_duration(summary.get('elapsed_s'))}{processes}{resumed}"]
    loss = f"{summary['final_loss']:.4f} at the last step" if summary.get("final_loss") is not None else "n/a"
    if summary.get("eval_loss") is not None:
        loss += f", eval loss {summary['eval_loss']:.4f}"
    lines.append(f"  loss        {loss}")
    if summary.get("tokens_per_s"):
        lines.append(f"  speed       {summary['tokens_per_s']:.0f} tokens/s")
    skipped = [f"{data[key]} {label}" for key, label in (
        ("invalid_skipped", "invalid skipped"), ("truncated", "truncated"),
        ("skipped_overlong", "too long, skipped"), ("skipped_all_masked", "with nothing to learn, skipped"))
        if data.get(key)]
    lines.append(f"  data        {data.get('records', 0)} records: {data.get('train_rows', 0)} train rows, "
                 f"{data.get('eval_rows', 0)} eval rows" + (f" ({', '.join(skipped)})" if skipped else ""))
    if data.get("rejects"):
        lines.append(f"  rejects     {data['rejects']}")
    vocab = data.get("vocab")
    if vocab:
        lines.append(f"  vocabulary  +{vocab['added_pieces']} pieces: {vocab['tokens_per_line_before']} -> "
                     f"{vocab['tokens_per_line_after']} tokens per held-out line")
    lines.append(f"  {summary.get('result', 'model'):<11} {out}")
    lines.append(f"  log         {out / 'train_log.jsonl'} (loss curve: {out / 'loss.png'})")
    if summary.get("method") in ("sft", "lora", "dpo"):
        lines.append(f"  try it      duma chat -m {out}")
    return lines


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return "n/a"
    minutes, secs = divmod(round(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h {minutes:02d}m" if hours else f"{minutes}m {secs:02d}s" if minutes else f"{secs}s"


@click.command(name="export")
@click.option("--merge", "adapter", required=True, type=click.Path(file_okay=False),
              help="LoRA adapter folder to fold into its base model.")
@click.option("--out", "out", required=True, type=click.Path(file_okay=False), help="Output model folder.")
def export_command(adapter: str, out: str) -> None:
    """Merge a LoRA adapter into its base and write a plain HF model folder."""
    from duma.trainers.lora import merge_adapter

    folder = merge_adapter(adapter, out)
    click.echo(f"merged model written to {folder}")
