"""`duma eval ppl`: sliding-window perplexity of the tiny model against a direct computation."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
from click.testing import CliRunner

from duma.cli import cli, load_plugin_commands
from duma.errors import DumaError
from duma.plugins.evaluation.perplexity import perplexity

TEXT = Path(__file__).parent / "data" / "eval" / "text.txt"


def direct_nll(model_dir: Path, text: str) -> tuple[float, int, list[int]]:
    """exp(mean NLL) the plain transformers way: one forward pass with labels = inputs."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(model_dir))
    model = AutoModelForCausalLM.from_pretrained(str(model_dir), dtype=torch.float32).eval()
    ids = tokenizer(text, return_tensors="pt")["input_ids"]
    with torch.no_grad():
        loss = model(ids, labels=ids).loss  # mean NLL over tokens 1..n-1
    return float(loss), ids.shape[1], ids[0].tolist()


def chunk_nll_sum(model_dir: Path, ids: list[int], size: int) -> tuple[float, int]:
    """Independent chunks of ``size`` tokens, each scored from its second token on."""
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(str(model_dir), dtype=torch.float32).eval()
    total, count = 0.0, 0
    for start in range(0, len(ids), size):
        chunk = torch.tensor([ids[start:start + size]])
        if chunk.shape[1] < 2:
            continue
        with torch.no_grad():
            loss = model(chunk, labels=chunk).loss
        total += float(loss) * (chunk.shape[1] - 1)
        count += chunk.shape[1] - 1
    return total, count


def test_full_window_equals_exp_mean_nll(tiny_model):
    text = TEXT.read_text()
    nll, n_tokens, _ = direct_nll(tiny_model, text)
    report = perplexity(str(tiny_model), TEXT, max_length=1024, device="cpu")
    assert report.tokens == n_tokens and report.scored_tokens == n_tokens - 1 and report.windows == 1
    assert report.nll_mean == pytest.approx(nll, rel=1e-5)
    assert report.perplexity == pytest.approx(math.exp(nll), rel=1e-5)


def test_stride_equal_to_window_is_independent_chunks(tiny_model):
    text = TEXT.read_text()
    _, n_tokens, ids = direct_nll(tiny_model, text)
    total, count = chunk_nll_sum(tiny_model, ids, 16)
    report = perplexity(str(tiny_model), TEXT, max_length=16, stride=16, device="cpu")
    assert report.scored_tokens == count and report.windows == math.ceil(n_tokens / 16)
    assert report.perplexity == pytest.approx(math.exp(total / count), rel=1e-5)


def test_sliding_windows_score_every_token_once(tiny_model):
    _, n_tokens, _ = direct_nll(tiny_model, TEXT.read_text())
    report = perplexity(str(tiny_model), TEXT, max_length=32, stride=8, device="cpu")
    assert report.scored_tokens == n_tokens - 1
    assert report.windows == 1 + math.ceil((n_tokens - 32) / 8)
    assert math.isfinite(report.perplexity) and report.perplexity > 1


def test_ppl_through_the_cli(tiny_model):
    load_plugin_commands()
    result = CliRunner().invoke(cli, ["eval", "ppl", str(tiny_model), str(TEXT), "--max-length", "64",
                                      "--stride", "32", "--device", "cpu"])
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert data["max_length"] == 64 and data["stride"] == 32 and data["perplexity"] > 1


def test_bad_ppl_input(tiny_model, tmp_path):
    empty = tmp_path / "empty.txt"
    empty.write_text("  \n")
    with pytest.raises(DumaError, match="is empty"):
        perplexity(str(tiny_model), empty, device="cpu")
    with pytest.raises(DumaError, match="between 1 and --max-length"):
        perplexity(str(tiny_model), TEXT, max_length=8, stride=9, device="cpu")
    with pytest.raises(DumaError, match="longer than the model's context"):
        perplexity(str(tiny_model), TEXT, max_length=100000, device="cpu")
    with pytest.raises(DumaError, match="does not exist"):
        perplexity(str(tiny_model), tmp_path / "nope.txt", device="cpu")
