"""``duma eval ppl``: sliding-window perplexity of a causal LM on a text file.

The text is tokenized once (with the tokenizer's own special tokens). Windows of at most
``max_length`` tokens start every ``stride`` tokens; each token is scored exactly once, in
the first window that reaches it, with the preceding tokens of that window as context (the
Hugging Face recipe). The first token has no context and is not scored. Perplexity =
exp(total NLL / tokens scored). With ``max_length`` at least the text's length this is
exp(mean NLL) of one forward pass over the whole text.
"""

from __future__ import annotations

from pathlib import Path

from pydantic import BaseModel

from duma.errors import DumaError


class PerplexityReport(BaseModel):
    model: str
    file: str
    tokens: int
    scored_tokens: int
    windows: int
    max_length: int
    stride: int
    nll_mean: float
    perplexity: float


def read_text(path: str | Path) -> str:
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise DumaError(f"text file {path} does not exist", "check the path") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise DumaError(f"cannot read text file {path}: {exc}", "give a UTF-8 text file") from None
    if not text.strip():
        raise DumaError(f"text file {path} is empty", "give a file with some text to score")
    return text


def sliding_window_nll(model: object, input_ids: object, max_length: int, stride: int) -> tuple[float, int, int]:
    """``(total NLL, tokens scored, windows)`` of a 1-D tensor of token ids."""
    import torch

    ids = input_ids.reshape(-1)  # type: ignore[attr-defined]
    n = int(ids.numel())
    device = next(model.parameters()).device  # type: ignore[attr-defined]
    total = 0.0
    scored = 0
    windows = 0
    scored_until = 1  # tokens [0, scored_until) are done (token 0 never is: no context)
    begin = 0
    with torch.no_grad():
        while scored_until < n:
            end = min(begin + max_length, n)
            window = ids[begin:end].unsqueeze(0).to(device)
            logits = model(window).logits[0].float()  # type: ignore[operator]
            # Position p predicts token p + 1; score the tokens [scored_until, end). A window
            # that starts at scored_until (stride == max_length) cannot score its first token.
            first = max(scored_until - begin - 1, 0)
            log_probs = torch.log_softmax(logits[first:end - begin - 1], dim=-1)
            targets = window[0, first + 1:end - begin]
            total += float(-log_probs.gather(1, targets.unsqueeze(1)).sum())
            scored += int(targets.numel())
            windows += 1
            scored_until = end
            if end == n:
                break
            begin += stride
    return total, scored, windows


def perplexity(model_ref: str, text_path: str | Path, *, max_length: int | None = None, stride: int | None = None,
               device: str = "auto", dtype: str = "auto", adapter: str | None = None) -> PerplexityReport:
    """Sliding-window perplexity of ``model_ref`` (``embedded``, an HF folder or a .gguf file)."""
    import math

    from duma.models import load_model, load_tokenizer

    text = read_text(text_path)
    tokenizer = load_tokenizer(model_ref)
    model = load_model(model_ref, device=device, dtype=dtype, adapter=adapter)
    context = int(getattr(model.config, "max_position_embeddings", 0) or 2048)
    max_length = max_length or min(context, 2048)
    if max_length < 2:
        raise DumaError(f"--max-length {max_length} is too small", "use at least 2 tokens")
    if max_length > context:
        raise DumaError(f"--max-length {max_length} is longer than the model's context ({context})",
                        f"use --max-length {context} or less")
    stride = stride or max(1, max_length // 2)
    if not 1 <= stride <= max_length:
        raise DumaError(f"--stride {stride} must be between 1 and --max-length ({max_length})",
                        "a stride above the window length would skip tokens")
    input_ids = tokenizer(text, return_tensors="pt")["input_ids"][0]
    if input_ids.numel() < 2:
        raise DumaError(f"{text_path} has fewer than 2 tokens", "give a longer text")
    total, scored, windows = sliding_window_nll(model, input_ids, max_length, stride)
    nll = total / scored
    return PerplexityReport(model=model_ref, file=str(text_path), tokens=int(input_ids.numel()),
                            scored_tokens=scored, windows=windows, max_length=max_length, stride=stride,
                            nll_mean=nll, perplexity=math.exp(nll))
