"""Built-in plugin: the trainers (``pt``, ``sft``, ``lora``, ``vocab``) and the ``duma train``
and ``duma export`` commands. Trainer modules import torch only when a run starts."""

from __future__ import annotations

import json
import sys
from typing import Any

import click

import duma


@duma.hookimpl
def register_trainers(register: Any) -> None:
    from duma.trainers.lora import LoraTrainer
    from duma.trainers.pt import PTTrainer
    from duma.trainers.sft import SFTTrainer
    from duma.trainers.vocab import VocabTrainer

    for cls in (PTTrainer, SFTTrainer, LoraTrainer, VocabTrainer):
        register(cls)


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
@click.option("--worker", is_flag=True, hidden=True, help="Set by the launcher: checks are done.")
def train_command(config_file: str, overrides: tuple[str, ...], resume: bool, overwrite: bool,
                  nproc: int, hostfile: str | None, worker: bool) -> None:
    """Train a model from a run config: duma train CONFIG.yaml [key=value ...].

    The YAML holds model, method (pt|sft|lora|vocab), data, training and output_dir keys;
    key=value arguments override dotted keys (training.lr=1e-4).
    """
    import os

    from duma.errors import ConfigError
    from duma.trainers import runner
    from duma.trainers.base import LAUNCHED_ENV

    if resume and overwrite:
        raise ConfigError("--resume and --overwrite exclude each other", "pass one of them")
    if worker:
        os.environ[LAUNCHED_ENV] = "1"
    elif nproc > 1 or hostfile:
        sys.exit(runner.launch(config_file, list(overrides), nproc=nproc, hostfile=hostfile,
                               resume=resume, overwrite=overwrite))
    summary = runner.train(config_file, list(overrides), resume=resume, overwrite=overwrite)
    if summary and summary.get("output_dir") and int(os.environ.get("RANK", "0")) == 0:
        click.echo(json.dumps(summary))


@click.command(name="export")
@click.option("--merge", "adapter", required=True, type=click.Path(file_okay=False),
              help="LoRA adapter folder to fold into its base model.")
@click.option("--out", "out", required=True, type=click.Path(file_okay=False), help="Output model folder.")
def export_command(adapter: str, out: str) -> None:
    """Merge a LoRA adapter into its base and write a plain HF model folder."""
    from duma.trainers.lora import merge_adapter

    folder = merge_adapter(adapter, out)
    click.echo(f"merged model written to {folder}")
