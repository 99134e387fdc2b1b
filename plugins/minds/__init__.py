"""Built-in plugin: training data and measurement for the two minds (``duma minds``).

Imported when the CLI starts: no torch or langchain at the top level.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

import duma


@duma.hookimpl
def register_commands(cli: Any) -> None:
    cli.add_command(minds_group)


@click.group(name="minds")
def minds_group() -> None:
    """Generate training data for the fast and slow minds and measure them."""


@minds_group.command(name="generate")
@click.option("--out", "out", required=True, type=click.Path(file_okay=False, path_type=Path),
              help="Output folder for the JSONL files.")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--fast", "n_fast", type=click.IntRange(1), default=700, show_default=True,
              help="Fast-mind dialogues.")
@click.option("--slow", "n_slow", type=click.IntRange(1), default=900, show_default=True,
              help="Slow-mind ReAct traces.")
@click.option("--eval-fraction", type=click.FloatRange(0.0, 1.0), default=0.15, show_default=True,
              help="Share of samples drawn (from held-out templates only) for the eval split.")
@click.option("--today", default=None, metavar="YYYY-MM-DD",
              help="Fixed date for the date tools (default: a fixed date, for reproducibility).")
@click.option("--general", "general", type=click.IntRange(0), default=100, show_default=True,
              help="General prompts answered by the untrained model itself (greedy, its int8 ONNX build), mixed "
                   "into the fast dialogues so the fast mind keeps what it could do; cached in OUT/general.jsonl. "
                   "0: none.")
@click.option("--general-model", default="embedded", show_default=True,
              help="The model that answers the general prompts: the base model of the fast mind.")
@click.option("--exclude", "exclude", default=None, type=click.Path(dir_okay=False, exists=True, path_type=Path),
              help="A test set (JSONL, e.g. tests/data/minds/handwritten.jsonl) whose user messages no generated "
                   "user message may equal: a draw that hits one is drawn again.")
def generate_command(out: Path, seed: int, n_fast: int, n_slow: int, eval_fraction: float,
                     today: str | None, general: int, general_model: str, exclude: Path | None) -> None:
    """Write fast/slow train and eval data (sharegpt messages form) plus routing files."""
    from .generate import DEFAULT_TODAY, generate

    summary = generate(out, seed, n_fast, n_slow, eval_fraction, today or DEFAULT_TODAY, general=general,
                       general_model=general_model, exclude=exclude,
                       progress=lambda line: click.echo(line, err=True))
    for name, count in summary.files.items():
        tokens = summary.tokens_estimate.get(name)
        extra = (f", ~{tokens:,} tokens (chars/3.5), ~{summary.tokens_with_template[name]:,} with the chat "
                 "template" if tokens is not None else "")
        click.echo(f"{out / name}: {count} records{extra}")
    train_tokens = sum(v for k, v in summary.tokens_estimate.items() if k.endswith("_train.jsonl"))
    templated = sum(v for k, v in summary.tokens_with_template.items() if k.endswith("_train.jsonl"))
    click.echo(f"train tokens per epoch: ~{train_tokens:,} (chars/3.5), ~{templated:,} with the chat template; "
               f"{len(summary.train_templates)} train templates, {len(summary.eval_templates)} held out")
    shares = ", ".join(f"{name.removesuffix('.jsonl')} {share:.0%}" for name, share in summary.zh_share.items())
    click.echo(f"Chinese: {shares}; Invoke[True] turns: "
               + ", ".join(f"{n.removesuffix('.jsonl')} {v:.0%}" for n, v in summary.invoke_share.items())
               + f"; general replies: {summary.general}")


@minds_group.command(name="measure")
@click.option("--data", "data", default=None, type=click.Path(file_okay=False, exists=True, path_type=Path),
              help="Folder written by 'duma minds generate' (the held-out templates).")
@click.option("--handwritten", "handwritten", default=None,
              type=click.Path(dir_okay=False, exists=True, path_type=Path),
              help="A hand-written test set (JSONL, e.g. tests/data/minds/handwritten.jsonl): the agent as "
                   "'duma chat' runs it, dialogue by dialogue. With --data too, both are measured.")
@click.option("--model", default="embedded", show_default=True, help="Base model of both minds.")
@click.option("--fast-adapter", default=None, type=click.Path(), help="LoRA adapter of the fast mind.")
@click.option("--slow-adapter", default=None, type=click.Path(), help="LoRA adapter of the slow mind.")
@click.option("--limit", type=click.IntRange(1), default=None,
              help="At most this many items per held-out measurement.")
@click.option("--max-tokens", type=click.IntRange(1), default=None,
              help="Reply cap [default: 96 on the held-out data, 256 (duma chat's) on the hand-written set].")
@click.option("--backend", default="auto", show_default=True,
              help="Backend both minds run on (auto: what duma chat uses; transformers: float32 PyTorch).")
@click.option("--out", "out", required=True, type=click.Path(dir_okay=False, path_type=Path),
              help="Report JSON (a Markdown table is written next to it, .md).")
@click.option("--quiet", "-q", is_flag=True, help="No progress lines on stderr for the hand-written set.")
def measure_command(data: Path | None, handwritten: Path | None, model: str, fast_adapter: str | None,
                    slow_adapter: str | None, limit: int | None, max_tokens: int | None, backend: str, out: Path,
                    quiet: bool) -> None:
    """Measure invoke decisions, slow-mind validity and end-to-end routing on held-out templates
    (--data), and/or the agent on a hand-written test set (--handwritten)."""
    if data is None and handwritten is None:
        raise click.UsageError("give --data (held-out templates), --handwritten (a hand-written set) or both")
    from .measure import measure, to_markdown

    report = measure(data, model=model, fast_adapter=fast_adapter, slow_adapter=slow_adapter,
                     limit=limit, max_tokens=max_tokens, backend=backend, handwritten=handwritten,
                     progress=None if quiet else (lambda line: click.echo(line, err=True)))
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(report.model_dump_json(indent=1) + "\n", encoding="utf-8")
    table = to_markdown(report)
    out.with_suffix(".md").write_text(table + "\n", encoding="utf-8")
    click.echo(table)


@minds_group.command(name="ship")
@click.option("--fast-adapter", required=True, type=click.Path(file_okay=False, exists=True, path_type=Path),
              help="Trained fast-mind adapter (output_dir of configs/duma-default/fast.yaml).")
@click.option("--slow-adapter", required=True, type=click.Path(file_okay=False, exists=True, path_type=Path),
              help="Trained slow-mind adapter (output_dir of configs/duma-default/slow.yaml).")
@click.option("--into", "into", default=None, type=click.Path(file_okay=False, path_type=Path),
              help="Target folder (default: duma's own default_minds, which `duma chat` uses).")
def ship_command(fast_adapter: Path, slow_adapter: Path, into: Path | None) -> None:
    """Make two trained adapters the default minds on the embedded model (float16 copies)."""
    from .ship import default_target, ship_adapter

    target = into or default_target()
    for which, folder in (("fast", fast_adapter), ("slow", slow_adapter)):
        info = ship_adapter(folder, target / which)
        click.echo(f"{which}: {info['folder']} ({info['parameters']:,} parameters, "
                   f"{info['bytes'] / 1e6:.1f} MB, sha256 {info['sha256']})")


@minds_group.command(name="compare")
@click.argument("before", type=click.Path(dir_okay=False, exists=True, path_type=Path))
@click.argument("after", type=click.Path(dir_okay=False, exists=True, path_type=Path))
@click.option("--names", default="untrained,trained", show_default=True,
              help="Column names, comma-separated (e.g. v1,v2).")
def compare_command(before: Path, after: Path, names: str) -> None:
    """Print two 'duma minds measure' reports side by side (a Markdown table): held-out and
    hand-written figures alike; a measure only one report has shows n/a for the other."""
    from pydantic import ValidationError

    from duma.errors import DumaError, format_validation_error

    from .measure import MeasureReport, compare_markdown

    reports = []
    for path in (before, after):
        try:
            reports.append(MeasureReport.model_validate_json(path.read_text(encoding="utf-8", errors="replace")))
        except ValidationError as exc:
            raise DumaError(f"{path}: not a 'duma minds measure' report: {format_validation_error(exc)}",
                            "pass the JSON files written by 'duma minds measure --out'") from None
    first_name, _, second_name = names.partition(",")
    click.echo(compare_markdown(reports[0], reports[1], first_name, second_name or "after"))
