"""``duma quantize``: a smaller copy of a model with any registered quantizer."""

from __future__ import annotations

import json
from typing import Any

import click


def _parse_options(pairs: tuple[tuple[str, str], ...]) -> dict[str, Any]:
    """``-o KEY VALUE`` pairs, values read as YAML scalars (``128``, ``true``, ``Q4_0``); the
    quantizer's own Options model checks them."""
    import yaml

    options: dict[str, Any] = {}
    for key, raw in pairs:
        try:
            options[key] = yaml.safe_load(raw) if raw.strip() else raw
        except yaml.YAMLError:
            options[key] = raw
    return options


def _size(n: int) -> str:
    return f"{n / 1e6:.1f} MB"


@click.command()
@click.argument("model")
@click.option("--method", required=True, help="Quantizer name (see 'duma plugins'): gguf, onnx, gptq, int8, ...")
@click.option("--out", "out", required=True, type=click.Path(), help="The file or folder to write.")
@click.option("--adapter", default=None, type=click.Path(file_okay=False),
              help="A peft adapter folder; merged into MODEL first, unless the method exports adapters itself.")
@click.option("--bits", type=int, default=None, help="Bits per weight (each method says which it takes).")
@click.option("--calibration", type=click.Path(), default=None,
              help="Data file of sample texts for methods that calibrate (gptq), in any format 'duma data' reads.")
@click.option("-o", "--option", "option_pairs", type=(str, str), multiple=True, metavar="KEY VALUE",
              help="A setting of the method, e.g. -o type Q4_0 (repeatable).")
@click.option("--overwrite", is_flag=True, help="Replace --out if it exists (only once the new one is complete).")
@click.option("--ppl-text", type=click.Path(dir_okay=False), default=None,
              help="Held-out text for the perplexity figures (default: a text shipped with duma).")
@click.option("--no-ppl", is_flag=True, help="Skip the perplexity figures.")
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
def quantize(model: str, method: str, out: str, adapter: str | None, bits: int | None, calibration: str | None,
             option_pairs: tuple[tuple[str, str], ...], overwrite: bool, ppl_text: str | None, no_ppl: bool,
             as_json: bool) -> None:
    """Write a quantized copy of MODEL ('embedded', an HF folder, a .gguf file or an adapter
    folder, which is merged into its base) with --method into --out.

    Reports size and perplexity before and after, and writes duma-quantized.json beside the
    output. The output appears only once it is complete.

    \b
    Examples:
      duma quantize embedded --method gguf --bits 4 --out smollm2-q4_1.gguf
      duma quantize runs/fast-lora --method onnx --bits 4 --out fast-int4
      duma quantize embedded --method gptq --bits 4 --calibration data.jsonl --out smollm2-gptq
    """
    from rich.console import Console

    from duma.models import conversion_progress
    from duma.quantizer import DEFAULT_PPL_TEXT, quantize_model

    console = Console(stderr=True)
    with conversion_progress(console, title=f"duma: quantizing {model} with '{method}'") as phase:
        report = quantize_model(model, method, out, adapter=adapter, bits=bits, calibration=calibration,
                                options=_parse_options(option_pairs), overwrite=overwrite,
                                ppl_text=None if no_ppl else (ppl_text or DEFAULT_PPL_TEXT), progress=phase)
    if as_json:
        click.echo(json.dumps(report.model_dump(mode="json"), indent=2))
        return
    kind = report.details.get("type") or f"{report.bits} bits"  # a method's own name for it, e.g. Q4_1
    click.echo(f"wrote {report.output} ({method}, {kind}) in {report.seconds:.0f} s")
    click.echo(f"size: {_size(report.size_before_bytes)} -> {_size(report.size_after_bytes)} "
               f"({report.size_ratio:.0%})")
    if report.perplexity_before is not None and report.perplexity_after is not None:
        change = report.perplexity_after / report.perplexity_before - 1
        click.echo(f"perplexity ({report.perplexity_tokens} tokens of held-out text): "
                   f"{report.perplexity_before:.2f} -> {report.perplexity_after:.2f} ({change:+.1%})")
