"""Decode speed, time to first token and memory of every installed backend against a plain
``model.generate`` loop, on the same model, prompt and greedy decoding.

Each engine runs in a process of its own, one after the other (so resident memory is its
own and no two measurements overlap): a warm-up, then ``--runs`` generations of exactly
``--new-tokens`` tokens (EOS ignored where the engine allows; otherwise the tokens it made are
counted), medians reported. Engines:

- ``plain_generate``: transformers ``model.generate`` in float32 (the baseline);
- ``transformers``: duma's transformers backend (float32), and ``transformers_int8``;
- ``onnxruntime_int4`` / ``_int8`` / ``_fp32``: duma's onnxruntime backend at each precision;
- ``llamacpp_q4_1``: duma's llama.cpp backend on the embedded Q4_1 GGUF, when installed;
- ``default``: what ``duma chat`` runs with no configuration (the fast mind: the embedded
  model with its shipped adapter on the default backend).

Besides decode tok/s and first-turn time to first token, each reports the time to first token
of the 10th turn of one conversation (earlier turns' KV cache reused where the engine can)
and its peak resident memory. Prints one JSON object (last line of stdout); ``ratio`` of an
engine is its decode tok/s over plain generate's, and ``default.ratio`` is the headline.

    python bench/decode.py [--model embedded] [--new-tokens 128] [--runs 3] [--quick]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

PROMPT = "Write a short story about a robot who learns to paint. Describe the colours it chooses."
# Ten turns of one conversation: the 10th turn's prompt holds the nine before it.
TURNS = [
    "Hi! I'm planning a small vegetable garden.",
    "Which vegetables grow well for beginners?",
    "How much sun do tomatoes need?",
    "And how often should I water them?",
    "What about lettuce in hot weather?",
    "Can I grow carrots in containers?",
    "Which fertiliser would you suggest?",
    "How do I keep slugs away without chemicals?",
    "When should I harvest the carrots?",
    "Thanks! Can you sum up the plan in three sentences?",
]
TURN_TOKENS = 32
ENGINES = ["plain_generate", "transformers", "transformers_int8", "onnxruntime_int4", "onnxruntime_int8",
           "onnxruntime_fp32", "llamacpp_q4_1", "default"]


def _peak_rss_mb() -> float:
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)


def _median(runs: list[dict[str, float]]) -> dict[str, float]:
    return {key: round(statistics.median(r[key] for r in runs), 4) for key in runs[0]}


# --------------------------------------------------------------------------- engines


def _spec(engine: str, model: str) -> Any:
    from duma.config import DumaConfig
    from duma.types import ModelSpec

    if engine == "default":
        return DumaConfig().mind("fast")
    if engine.startswith("transformers"):
        return ModelSpec(backend="transformers", model=model, device="cpu",
                         dtype="int8" if engine.endswith("int8") else "float32")
    if engine.startswith("onnxruntime"):
        bits = {"int4": 4, "int8": 8, "fp32": 32}[engine.rsplit("_", 1)[1]]
        return ModelSpec(backend="onnxruntime", model=model, backend_options={"bits": bits})
    if engine == "llamacpp_q4_1":
        from duma.models import embedded_gguf_path

        return ModelSpec(backend="llamacpp", model=str(embedded_gguf_path()) if model == "embedded" else model)
    raise SystemExit(f"unknown engine {engine}")


def _backend_run(backend: Any, messages: list, new_tokens: int) -> dict[str, float]:
    from duma.types import GenerationOptions

    clear = getattr(backend, "clear_cache", None)
    if clear is not None:
        clear()  # a cold prompt, like the plain loop
    completion = backend.generate(messages, GenerationOptions(max_tokens=new_tokens, temperature=0,
                                                               max_repeats=None))
    made = completion.usage.completion_tokens
    ttft = completion.timings.first_token_s or 0.0
    return {"ttft_s": ttft, "decode_tok_s": (made - 1) / max(completion.timings.total_s - ttft, 1e-9),
            "tokens": made}


def _tenth_turn(backend: Any) -> dict[str, float]:
    """Play ten turns of one conversation, each reply the model's own (so a KV cache of the
    previous turn is a true prefix), and time the 10th turn's first token."""
    from duma.types import GenerationOptions, Message

    options = GenerationOptions(max_tokens=TURN_TOKENS, temperature=0)
    messages: list[Message] = []
    ttft = 0.0
    for text in TURNS:
        messages.append(Message(role="user", content=text))
        reply = backend.generate(messages, options)
        ttft = reply.timings.first_token_s or 0.0
        messages.append(Message(role="assistant", content=reply.text))
    return {"ttft_10th_turn_s": round(ttft, 4), "prompt_tokens_10th_turn": backend.count_tokens(messages[:-1])}


def _measure_backend(engine: str, model: str, new_tokens: int, runs: int) -> dict[str, Any]:
    from duma import models
    from duma.types import Message

    spec = _spec(engine, model)
    start = time.perf_counter()
    backend = models.load_backend(spec)
    load_s = time.perf_counter() - start
    base = getattr(backend, "base", backend)
    eos_ids = getattr(base, "_eos_ids", None)
    if eos_ids is not None:
        base._eos_ids = set()  # ignore EOS, like the plain loop, so every run makes new_tokens
    messages = [Message(role="user", content=PROMPT)]
    _backend_run(backend, messages, 8)
    measured = _median([_backend_run(backend, messages, new_tokens) for _ in range(runs)])
    if eos_ids is not None:
        base._eos_ids = eos_ids
    result: dict[str, Any] = {"backend": base.name, "spec": spec.model_dump(include={"model", "adapter", "dtype",
                                                                                      "backend_options"}),
                              "load_s": round(load_s, 2), **measured, **_tenth_turn(backend)}
    return result


def _measure_plain(model: str, new_tokens: int, runs: int) -> dict[str, Any]:
    import torch
    from transformers import GenerationConfig

    from duma import models
    from duma.rendering import render_prompt_ids
    from duma.types import Message

    tokenizer = models.load_tokenizer(model)
    lm = models.load_model(model, device="cpu", dtype="float32")

    def run(prompt_ids: list[int], tokens: int) -> dict[str, float]:
        config = GenerationConfig(max_new_tokens=tokens, do_sample=False, eos_token_id=None,
                                  pad_token_id=lm.generation_config.pad_token_id)
        inputs = torch.tensor([prompt_ids])
        timer = _FirstTokenTimer()
        with torch.inference_mode():
            out = lm.generate(inputs, attention_mask=torch.ones_like(inputs), generation_config=config,
                              streamer=timer)
        total = time.perf_counter() - timer.start
        made = out.shape[1] - len(prompt_ids)
        ttft = timer.first or 0.0
        return {"ttft_s": ttft, "decode_tok_s": (made - 1) / (total - ttft), "tokens": made}

    prompt_ids = render_prompt_ids(tokenizer, [Message(role="user", content=PROMPT)])
    run(prompt_ids, 8)
    measured = _median([run(prompt_ids, new_tokens) for _ in range(runs)])
    # The 10th turn with no cache (model.generate keeps none between calls), replies from
    # the model itself as for the backends.
    messages: list[Message] = []
    ttft = 0.0
    for text in TURNS:
        messages.append(Message(role="user", content=text))
        ids = render_prompt_ids(tokenizer, messages)
        config = GenerationConfig(max_new_tokens=TURN_TOKENS, do_sample=False,
                                  pad_token_id=lm.generation_config.pad_token_id)
        timer = _FirstTokenTimer()
        with torch.inference_mode():
            out = lm.generate(torch.tensor([ids]), attention_mask=torch.ones(1, len(ids), dtype=torch.long),
                              generation_config=config, streamer=timer)
        ttft = timer.first or 0.0
        reply = tokenizer.decode(out[0, len(ids):], skip_special_tokens=True)
        messages.append(Message(role="assistant", content=reply))
    return {"backend": "model.generate", **measured, "ttft_10th_turn_s": round(ttft, 4)}


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


def _available(engine: str) -> str | None:
    """Why an engine cannot run here (None: it can)."""
    import importlib.util

    if engine.startswith("onnxruntime") and importlib.util.find_spec("onnxruntime_genai") is None:
        return "onnxruntime-genai is not installed"
    if engine.startswith("llamacpp") and importlib.util.find_spec("llama_cpp") is None:
        return "llama-cpp-python is not installed (pip install 'duma[llamacpp]')"
    return None


def _run_engine(engine: str, args: argparse.Namespace) -> dict[str, Any]:
    """One engine in a child process: its own memory, nothing else running."""
    command = [sys.executable, __file__, "--engine", engine, "--model", args.model,
               "--new-tokens", str(args.new_tokens), "--runs", str(args.runs)]
    done = subprocess.run(command, capture_output=True, text=True)
    lines = done.stdout.strip().splitlines()
    if done.returncode != 0 or not lines:
        tail = (done.stderr.strip().splitlines() or ["no output"])[-1]
        return {"error": tail}
    return json.loads(lines[-1])


def main(out: Any = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="embedded")
    parser.add_argument("--new-tokens", type=int, default=128)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--engines", default=",".join(ENGINES), help="comma-separated subset of: " + ", ".join(ENGINES))
    parser.add_argument("--engine", help=argparse.SUPPRESS)  # the child process's one engine
    args = parser.parse_args()

    if args.engine:
        if args.engine == "plain_generate":
            result = _measure_plain(args.model, args.new_tokens, args.runs)
        else:
            result = _measure_backend(args.engine, args.model, args.new_tokens, args.runs)
        result["peak_rss_mb"] = _peak_rss_mb()
        print(json.dumps(result), file=out or sys.stdout, flush=True)
        return

    engines = [e.strip() for e in args.engines.split(",") if e.strip()]
    if "plain_generate" not in engines:
        engines.insert(0, "plain_generate")
    results: dict[str, Any] = {}
    for engine in engines:
        reason = _available(engine)
        results[engine] = {"skipped": reason} if reason else _run_engine(engine, args)
        print(f"{engine}: {json.dumps(results[engine])}", file=sys.stderr, flush=True)
    plain = results["plain_generate"].get("decode_tok_s")
    for engine, figures in results.items():
        if plain and "decode_tok_s" in figures:
            figures["ratio"] = round(figures["decode_tok_s"] / plain, 3)
    default = results.get("default", {})
    summary: dict[str, Any] = {
        "model": args.model, "new_tokens": args.new_tokens, "runs": args.runs, "cpus": os.cpu_count(),
        "load_average_1m": round(os.getloadavg()[0], 2),
        "default": default, "baseline": results["plain_generate"], "ratio": default.get("ratio"),
        "engines": results,
    }
    llama = results.get("llamacpp_q4_1", {})
    if "decode_tok_s" in llama and "decode_tok_s" in default:
        summary["default_over_llamacpp_q4"] = round(default["decode_tok_s"] / llama["decode_tok_s"], 3)
    transformers = results.get("transformers", {})
    if "ttft_10th_turn_s" in transformers and "ttft_10th_turn_s" in default:
        summary["default_10th_turn_ttft_over_transformers"] = round(
            default["ttft_10th_turn_s"] / transformers["ttft_10th_turn_s"], 3)
    print(json.dumps(summary), file=out or sys.stdout, flush=True)


if __name__ == "__main__":
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    # Libraries log to stdout (DeepSpeed's accelerator notice): send fd 1 to stderr while
    # measuring, so stdout holds only the JSON object.
    sys.stdout.flush()
    json_out = os.fdopen(os.dup(1), "w")
    os.dup2(2, 1)
    sys.stdout = sys.stderr
    main(json_out)
