"""Decode speed of the transformers backend against a plain ``model.generate`` loop.

Both run on the same weights, the same prompt and greedy decoding, with EOS ignored so that
both produce exactly ``--new-tokens`` tokens; runs alternate (duma, plain, duma, plain...)
after a warm-up so that background load hits both alike, and the medians are reported.
Prints one JSON object:

    python bench/decode.py [--model embedded] [--new-tokens 128] [--runs 3] [--int8] [--minds]

``ratio`` is duma decode tok/s divided by plain decode tok/s. ``tiny_model_overhead`` is the
per-token time of both loops on a tiny random model (pure loop overhead, robust to load). ``second_turn`` compares the
time to first token of a follow-up turn with the KV cache of the first turn reused and with
no cache. ``shipped_minds`` (``--minds``) compares the shipped fast-mind adapter, switched per
call on one base model beside the slow mind's, with a plain model that has it folded in.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

PROMPT = "Write a short story about a robot who learns to paint. Describe the colours it chooses."
FOLLOW_UP = "Now give the robot a name and tell me why it chose that name."


def _duma_run(backend: Any, messages: list, new_tokens: int) -> dict[str, float]:
    from duma.types import GenerationOptions

    backend.clear_cache()  # measure a cold prompt, like the plain loop
    completion = backend.generate(messages, GenerationOptions(max_tokens=new_tokens, temperature=0))
    assert completion.usage.completion_tokens == new_tokens, completion.usage
    ttft = completion.timings.first_token_s or 0.0
    decode_s = completion.timings.total_s - ttft
    return {"ttft_s": ttft, "decode_tok_s": (new_tokens - 1) / decode_s, "total_s": completion.timings.total_s}


class _FirstTokenTimer:
    """A generate() streamer that notes when the first new token arrives."""

    def __init__(self) -> None:
        self.start = time.perf_counter()
        self.calls = 0
        self.first: float | None = None

    def put(self, value: Any) -> None:
        self.calls += 1
        if self.calls == 2 and self.first is None:  # the first put is the prompt
            self.first = time.perf_counter() - self.start

    def end(self) -> None:
        pass


def _plain_run(model: Any, prompt_ids: list[int], new_tokens: int) -> dict[str, float]:
    import torch
    from transformers import GenerationConfig

    config = GenerationConfig(max_new_tokens=new_tokens, do_sample=False, eos_token_id=None,
                              pad_token_id=model.generation_config.pad_token_id)
    inputs = torch.tensor([prompt_ids], device=model.device)
    timer = _FirstTokenTimer()
    with torch.inference_mode():
        out = model.generate(inputs, attention_mask=torch.ones_like(inputs), generation_config=config,
                             streamer=timer)
    total = time.perf_counter() - timer.start
    assert out.shape[1] - len(prompt_ids) == new_tokens, out.shape
    ttft = timer.first or 0.0
    return {"ttft_s": ttft, "decode_tok_s": (new_tokens - 1) / (total - ttft), "total_s": total}


def _median(runs: list[dict[str, float]]) -> dict[str, float]:
    return {key: round(statistics.median(r[key] for r in runs), 4) for key in runs[0]}


def _second_turn(backend: Any, messages: list, runs: int) -> dict[str, Any]:
    from duma.types import GenerationOptions, Message

    options = GenerationOptions(max_tokens=48, temperature=0)
    first = backend.generate(messages, options)
    follow = [*messages, Message(role="assistant", content=first.text), Message(role="user", content=FOLLOW_UP)]
    reused, cold = [], []
    for _ in range(runs):
        backend.clear_cache()
        backend.generate(messages, options)
        warm_reply = backend.generate(follow, GenerationOptions(max_tokens=1, temperature=0))
        reused.append(warm_reply.timings.first_token_s)
        backend.clear_cache()
        cold_reply = backend.generate(follow, GenerationOptions(max_tokens=1, temperature=0))
        cold.append(cold_reply.timings.first_token_s)
    return {
        "prompt_tokens": backend.count_tokens(follow),
        "ttft_reused_cache_s": round(statistics.median(reused), 4),
        "ttft_no_cache_s": round(statistics.median(cold), 4),
    }


def _tiny_overhead(runs: int, new_tokens: int = 200) -> dict[str, float]:
    """Per-token milliseconds on a tiny random model, where compute is negligible: the
    loop's own overhead, much less sensitive to background load than the real model."""
    import tempfile

    from duma.testing import make_tiny_model
    from duma.types import Message, ModelSpec
    from duma.plugins.backends.transformers import TransformersBackend

    with tempfile.TemporaryDirectory() as folder:
        backend = TransformersBackend(ModelSpec(model=str(make_tiny_model(folder)), device="cpu"))
    backend._eos_ids = set()
    messages = [Message(role="user", content=PROMPT)]
    prompt_ids = backend.prompt_ids(messages)
    _duma_run(backend, messages, 8)
    _plain_run(backend.model, prompt_ids, 8)
    duma, plain = [], []
    for _ in range(runs):
        duma.append(_duma_run(backend, messages, new_tokens)["total_s"])
        plain.append(_plain_run(backend.model, prompt_ids, new_tokens)["total_s"])
    return {"duma_ms_per_token": round(statistics.median(duma) / new_tokens * 1e3, 3),
            "plain_ms_per_token": round(statistics.median(plain) / new_tokens * 1e3, 3)}


def _shipped_minds(model: str, runs: int, new_tokens: int) -> dict[str, Any]:
    """Decode with the shipped fast-mind adapter active on a backend that holds both minds'
    adapters (what ``duma chat`` runs) against ``model.generate`` on a plain model with that
    adapter folded in for good (peft's merge_and_unload): the cost of switching adapters."""
    from duma import models
    from duma.backend import AdapterView
    from duma.types import Message, ModelSpec
    from duma.plugins.backends.transformers import TransformersBackend

    fast_dir, slow_dir = models.shipped_mind_adapter("fast"), models.shipped_mind_adapter("slow")
    if fast_dir is None or slow_dir is None:
        return {"skipped": "this checkout ships no trained minds"}
    base = TransformersBackend(ModelSpec(model=model))
    base._eos_ids = set()
    for folder in (slow_dir, fast_dir):
        base.load_adapter(str(folder))
    fast = AdapterView(base, str(fast_dir))
    folded = models.load_model(model, device=base.device, adapter=str(fast_dir), merge_adapter=True)
    messages = [Message(role="user", content=PROMPT)]
    prompt_ids = base.prompt_ids(messages)
    _duma_run(fast, messages, 8)
    _plain_run(folded, prompt_ids, 8)
    duma_runs, plain_runs = [], []
    for _ in range(runs):
        duma_runs.append(_duma_run(fast, messages, new_tokens))
        plain_runs.append(_plain_run(folded, prompt_ids, new_tokens))
    duma, plain = _median(duma_runs), _median(plain_runs)
    return {"duma_switched_adapter": duma, "plain_generate_folded_adapter": plain,
            "ratio": round(duma["decode_tok_s"] / plain["decode_tok_s"], 3)}


def main(out: Any = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="embedded")
    parser.add_argument("--new-tokens", type=int, default=128)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--int8", action="store_true", help="also measure the opt-in int8 backend")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (default: torch's choice)")
    parser.add_argument("--minds", action="store_true",
                        help="also measure the shipped fast-mind adapter on the two-adapter backend")
    args = parser.parse_args()

    import torch

    if args.threads:
        torch.set_num_threads(args.threads)

    from duma.types import Message, ModelSpec
    from duma.plugins.backends.transformers import TransformersBackend

    spec = ModelSpec(model=args.model)
    load_start = time.perf_counter()
    backend = TransformersBackend(spec)
    load_s = time.perf_counter() - load_start
    backend._eos_ids = set()  # ignore EOS, like the plain loop, so both make equal lengths
    messages = [Message(role="user", content=PROMPT)]
    prompt_ids = backend.prompt_ids(messages)

    # Warm-up (first calls allocate and pick kernels).
    _duma_run(backend, messages, 8)
    _plain_run(backend.model, prompt_ids, 8)
    duma_runs, plain_runs = [], []
    for _ in range(args.runs):
        duma_runs.append(_duma_run(backend, messages, args.new_tokens))
        plain_runs.append(_plain_run(backend.model, prompt_ids, args.new_tokens))
    duma, plain = _median(duma_runs), _median(plain_runs)
    result: dict[str, Any] = {
        "model": args.model,
        "device": backend.device,
        "torch_threads": torch.get_num_threads(),
        "prompt_tokens": len(prompt_ids),
        "new_tokens": args.new_tokens,
        "runs": args.runs,
        "load_s": round(load_s, 2),
        "duma": duma,
        "plain_generate": plain,
        "ratio": round(duma["decode_tok_s"] / plain["decode_tok_s"], 3),
        "load_average_1m": round(os.getloadavg()[0], 2),
        "duma_runs_decode_tok_s": [round(r["decode_tok_s"], 2) for r in duma_runs],
        "plain_runs_decode_tok_s": [round(r["decode_tok_s"], 2) for r in plain_runs],
        "second_turn": _second_turn(backend, messages, args.runs),
        "tiny_model_overhead": _tiny_overhead(args.runs),
    }
    if args.int8:
        backend.close()
        del backend
        quantized = TransformersBackend(spec.model_copy(update={"device": "cpu", "dtype": "int8"}))
        quantized._eos_ids = set()
        _duma_run(quantized, messages, 8)
        int8 = _median([_duma_run(quantized, messages, args.new_tokens) for _ in range(args.runs)])
        result["duma_int8"] = int8
        result["int8_ratio_vs_plain"] = round(int8["decode_tok_s"] / plain["decode_tok_s"], 3)
    if args.minds:
        result["shipped_minds"] = _shipped_minds(args.model, args.runs, args.new_tokens)
    print(json.dumps(result), file=out or sys.stdout, flush=True)


if __name__ == "__main__":
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    # Libraries log to stdout (DeepSpeed's accelerator notice): send fd 1 to stderr while
    # measuring, so stdout holds only the JSON object.
    sys.stdout.flush()
    json_out = os.fdopen(os.dup(1), "w")
    os.dup2(2, 1)
    sys.stdout = sys.stderr
    main(json_out)
