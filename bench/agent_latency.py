"""Latency the agent adds on top of its fast backend, and what a slow-path turn costs.

Time to first token of a fast-path turn through ``Agent.stream`` (first ``fast_token``
event, counted from the call) against the bare fast backend streaming the very same messages
with the same options (first chunk with visible, non-whitespace text: the agent never shows
bare whitespace either). ``agent_overhead_median_ms`` is the agent's own share of its time to
first token (before calling the backend, and between the backend's first visible chunk and
the agent's first event), measured inside the same runs, so it holds on a busy machine too. Runs alternate (agent, bare, agent, bare...)
after a warm-up so background load hits both alike; the prompt cache of the backend is
cleared before every run when it has one. Then the same question goes through a slow-path
turn (router ``always-slow``) and the extra total time over the fast-path turn is reported.
Prints one JSON object:

    python bench/agent_latency.py [--model embedded|tiny|PATH] [--runs 10] [--max-tokens 24]

``ratio`` = agent median TTFT / bare median TTFT (goal: <= 1.1); ``ratio_of_min`` compares the
fastest runs, the least disturbed by other processes on a shared machine.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

QUESTION = "What is the capital of France?"


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    k = (len(ordered) - 1) * q
    lo, hi = int(k), min(int(k) + 1, len(ordered) - 1)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (k - lo)


def pick_model(requested: str) -> tuple[str, str]:
    """(model reference, label): the embedded model when it is installed, else a tiny one."""
    if requested not in ("auto", "tiny"):
        return requested, requested
    if requested == "auto":
        try:
            from duma.models import embedded_gguf_path

            embedded_gguf_path()
            return "embedded", "embedded (SmolLM2-135M-Instruct)"
        except Exception:  # not installed: fall back to the tiny random model
            pass
    from duma.testing import make_tiny_model

    folder = make_tiny_model(Path(tempfile.mkdtemp(prefix="duma-bench-")) / "tiny")
    return str(folder), "tiny random model (duma.testing.make_tiny_model)"


class TimingProxy:
    """Wraps the fast backend to time the agent's own work around the model: from the
    ``stream`` call of the agent to the backend's ``stream``, and from the backend's first
    chunk to the agent's first event (independent of how busy the machine is)."""

    def __init__(self, backend: Any) -> None:
        self.backend = backend
        self.called_at: float | None = None
        self.first_chunk_at: float | None = None

    def __getattr__(self, name: str) -> Any:
        return getattr(self.backend, name)

    @property
    def context_length(self) -> int:
        return self.backend.context_length

    def stream(self, messages: Any, options: Any = None, *, adapter: Any = None, cancel: Any = None) -> Any:
        if self.called_at is None:
            self.called_at = time.perf_counter()
        for chunk in self.backend.stream(messages, options, adapter=adapter, cancel=cancel):
            if self.first_chunk_at is None and chunk.text.strip():
                self.first_chunk_at = time.perf_counter()
            yield chunk

    def reset(self) -> None:
        self.called_at = self.first_chunk_at = None


def clear_cache(backend: Any) -> None:
    clear = getattr(backend, "clear_cache", None)
    if clear:
        clear()


def agent_ttft(agent: Any, options: dict[str, Any]) -> tuple[float, float, float | None]:
    """(time to first fast_token, total, agent overhead before that token) of one fast-path
    turn on a new conversation."""
    proxy: TimingProxy = agent._fast_backend
    proxy.reset()
    clear_cache(proxy.backend)
    start = time.perf_counter()
    first_at = None
    for event in agent.stream(QUESTION, options=options):
        if first_at is None and event.type == "fast_token":
            first_at = time.perf_counter()
        if event.type == "error":
            raise RuntimeError(event.message)
    end = time.perf_counter()
    first_at = first_at or end
    overhead = None
    if proxy.called_at is not None and proxy.first_chunk_at is not None:
        overhead = (proxy.called_at - start) + (first_at - proxy.first_chunk_at)
    return first_at - start, end - start, overhead


def bare_ttft(backend: Any, messages: list[Any], options: Any) -> float:
    clear_cache(backend)
    start = time.perf_counter()
    first = None
    for chunk in backend.stream(messages, options):
        if first is None and chunk.text.strip():
            first = time.perf_counter() - start
    return first if first is not None else time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="auto", help="embedded, tiny, a model folder or .gguf (default: embedded if installed)")
    parser.add_argument("--runs", type=int, default=10)
    parser.add_argument("--slow-runs", type=int, default=3)
    parser.add_argument("--max-tokens", type=int, default=24)
    args = parser.parse_args()

    os.environ.setdefault("DUMA_HOME", tempfile.mkdtemp(prefix="duma-bench-home-"))
    from duma.agents import Agent
    from duma.agents import fast_mind

    model, label = pick_model(args.model)
    options = {"max_tokens": args.max_tokens, "temperature": 0.0}
    config = {"model": {"model": model, "options": options}, "agent": {"router": "duma"}}
    load_start = time.perf_counter()
    agent = Agent.from_config(config, log=False)
    agent.load()
    load_s = time.perf_counter() - load_start
    backend = agent.fast_backend
    agent._fast_backend = TimingProxy(backend)  # times the agent's own work (see TimingProxy)

    # The very messages and options the agent gives its fast mind on a new conversation.
    messages = fast_mind.build_context(fast_mind.fast_system_prompt(agent.fast_spec.system_prompt, None),
                                       [], QUESTION, agent.config.agent.memory_turns)
    bare_options = agent._fast_options(options)

    agent_ttft(agent, options)  # warm-up both paths
    bare_ttft(backend, messages, bare_options)
    agent_times: list[float] = []
    agent_totals: list[float] = []
    bare_times: list[float] = []
    overheads: list[float] = []
    for run in range(args.runs):
        # Alternate which goes first, so a trend in background load favours neither.
        if run % 2:
            bare_times.append(bare_ttft(backend, messages, bare_options))
        ttft, total, overhead = agent_ttft(agent, options)
        agent_times.append(ttft)
        agent_totals.append(total)
        if overhead is not None:
            overheads.append(overhead)
        if not run % 2:
            bare_times.append(bare_ttft(backend, messages, bare_options))

    slow_agent = Agent.from_config({**config, "agent": {"router": "always-slow", "max_slow_steps": 2}}, log=False)
    slow_totals: list[float] = []
    slow_ttfts: list[float] = []
    slow_steps: list[int] = []
    for _ in range(args.slow_runs):
        clear_cache(backend)
        reply = slow_agent.chat(QUESTION, options=options)
        slow_totals.append(reply.total_s)
        slow_ttfts.append(reply.first_token_s or 0.0)
        slow_steps.append(len(reply.steps))

    agent_med, bare_med = statistics.median(agent_times), statistics.median(bare_times)
    fast_total_med = statistics.median(agent_totals)
    print(json.dumps({
        "model": label,
        "backend": backend.name,
        "device": getattr(backend, "device", None),
        "cpu_load_1min": round(os.getloadavg()[0], 2),
        "cpus": os.cpu_count(),
        "runs": args.runs,
        "max_tokens": args.max_tokens,
        "load_s": round(load_s, 3),
        "fast_path": {
            "agent_ttft_median_s": round(agent_med, 4),
            "agent_ttft_p95_s": round(percentile(agent_times, 0.95), 4),
            "bare_ttft_median_s": round(bare_med, 4),
            "bare_ttft_p95_s": round(percentile(bare_times, 0.95), 4),
            "ratio": round(agent_med / bare_med, 3) if bare_med > 0 else None,
            "paired_ratio_median": round(statistics.median(a / b for a, b in zip(agent_times, bare_times) if b > 0), 3),
            "ratio_of_min": round(min(agent_times) / min(bare_times), 3) if min(bare_times) > 0 else None,
            "agent_overhead_median_ms": round(statistics.median(overheads) * 1000, 2) if overheads else None,
            "goal_ratio": 1.1,
            "turn_total_median_s": round(fast_total_med, 3),
        },
        "slow_path": {
            "router": "always-slow",
            "runs": args.slow_runs,
            "turn_total_median_s": round(statistics.median(slow_totals), 3),
            "extra_s_over_fast_path": round(statistics.median(slow_totals) - fast_total_med, 3),
            "interim_ttft_median_s": round(statistics.median(slow_ttfts), 4),
            "slow_steps_median": statistics.median(slow_steps),
        },
    }, indent=2))


if __name__ == "__main__":
    main()
