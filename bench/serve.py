"""``duma serve`` under load, and what HTTP adds for one client.

Starts ``duma serve`` on the default config (the shipped minds on the embedded model) as a
subprocess on 127.0.0.1, then:

1. Overhead for one client: time to first token of a fast-path turn through HTTP (a streaming
   request, first chunk with text) against ``Agent.stream`` in this process (first
   ``fast_token``), same question and options, runs alternating after a warm-up; each run is a
   new conversation. ``ratio`` = HTTP median / in-process median (goal: <= 1.1).
2. N concurrent streaming clients (10, 50, 100), each one turn: p50/p95 time to first token,
   completion tokens per second in total (from the usage chunks), errors, wall time.

Prints one JSON object (last line)::

    python bench/serve.py [--clients 10,50,100] [--runs 8] [--max-tokens 32]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

QUESTIONS = ["What is the capital of France?", "Hi! How are you today?", "Give me a short tip for sleeping well."]
READY = re.compile(r"ready on (http://\S+)")


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    k = (len(ordered) - 1) * q
    lo, hi = int(k), min(int(k) + 1, len(ordered) - 1)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (k - lo)


def start_server(home: Path) -> tuple[subprocess.Popen[bytes], str]:
    duma = Path(sys.executable).with_name("duma")
    log = home / "serve.log"
    env = {**os.environ, "DUMA_HOME": str(home), "PYTHONUNBUFFERED": "1"}
    with open(log, "wb") as out:
        process = subprocess.Popen([str(duma), "serve", "--port", "0"], stdout=out, stderr=subprocess.STDOUT, env=env)
    deadline = time.monotonic() + 600  # a first run converts the minds (about a minute)
    while time.monotonic() < deadline:
        found = READY.search(log.read_text())
        if found:
            return process, found.group(1)
        if process.poll() is not None:
            break
        time.sleep(0.2)
    process.kill()
    raise SystemExit(f"duma serve did not start:\n{log.read_text()[-2000:]}")


async def http_turn(http: Any, base: str, question: str, max_tokens: int) -> dict[str, Any]:
    """One streaming turn: time to first text, completion tokens, error."""
    body = {"model": "duma", "messages": [{"role": "user", "content": question}], "stream": True,
            "max_tokens": max_tokens, "temperature": 0, "stream_options": {"include_usage": True}}
    start = time.perf_counter()
    first = None
    tokens = 0
    route = None
    try:
        async with http.stream("POST", base + "/v1/chat/completions", json=body) as response:
            if response.status_code != 200:
                return {"error": f"HTTP {response.status_code}"}
            async for line in response.aiter_lines():
                if not line.startswith("data: ") or line == "data: [DONE]":
                    continue
                chunk = json.loads(line[6:])
                if "error" in chunk:
                    return {"error": chunk["error"]["message"]}
                if chunk.get("choices") and first is None and (chunk["choices"][0]["delta"].get("content") or "").strip():
                    first = time.perf_counter() - start
                route = (chunk.get("duma") or {}).get("route", route)
                if chunk.get("usage"):
                    tokens = chunk["usage"]["completion_tokens"]
    except Exception as exc:  # counted, not fatal: the figure is how many fail
        return {"error": f"{type(exc).__name__}: {exc}"}
    return {"ttft_s": first if first is not None else time.perf_counter() - start, "tokens": tokens,
            "route": route, "total_s": time.perf_counter() - start}


def inprocess_ttft(agent: Any, question: str, max_tokens: int) -> float:
    start = time.perf_counter()
    first = None
    for event in agent.stream(question, options={"max_tokens": max_tokens, "temperature": 0}):
        if first is None and event.type == "fast_token" and event.text.strip():
            first = time.perf_counter() - start
        if event.type == "error":
            raise SystemExit(f"in-process turn failed: {event.message}")
    return first if first is not None else time.perf_counter() - start


async def concurrent(base: str, clients: int, max_tokens: int) -> dict[str, Any]:
    import httpx

    limits = httpx.Limits(max_connections=clients + 10, max_keepalive_connections=clients + 10)
    async with httpx.AsyncClient(timeout=900, limits=limits) as http:
        start = time.perf_counter()
        results = await asyncio.gather(*(http_turn(http, base, QUESTIONS[i % len(QUESTIONS)], max_tokens)
                                         for i in range(clients)))
        wall = time.perf_counter() - start
    ok = [r for r in results if "error" not in r]
    ttfts = [r["ttft_s"] for r in ok]
    return {"clients": clients, "errors": len(results) - len(ok),
            "error_examples": sorted({r["error"] for r in results if "error" in r})[:3],
            "ttft_p50_s": round(percentile(ttfts, 0.5), 3) if ttfts else None,
            "ttft_p95_s": round(percentile(ttfts, 0.95), 3) if ttfts else None,
            "tokens_per_s_total": round(sum(r["tokens"] for r in ok) / wall, 1),
            "slow_turns": sum(r["route"] == "slow" for r in ok), "wall_s": round(wall, 2)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", default="10,50,100", help="Concurrent client counts, comma-separated.")
    parser.add_argument("--runs", type=int, default=8, help="Alternating runs for the one-client overhead.")
    parser.add_argument("--max-tokens", type=int, default=32)
    args = parser.parse_args()

    home = Path(tempfile.mkdtemp(prefix="duma-bench-serve-"))
    os.environ["DUMA_HOME"] = str(home)
    import httpx

    from duma.agents import Agent

    process, base = start_server(home)
    try:
        agent = Agent.from_config({}, log=False)
        agent.load()
        question = QUESTIONS[0]

        async def http_ttft() -> float:
            async with httpx.AsyncClient(timeout=120) as http:
                result = await http_turn(http, base, question, args.max_tokens)
            if "error" in result:
                raise SystemExit(f"HTTP turn failed: {result['error']}")
            return result["ttft_s"]

        inprocess_ttft(agent, question, args.max_tokens)  # warm-up both
        asyncio.run(http_ttft())
        local: list[float] = []
        remote: list[float] = []
        for run in range(args.runs):  # alternate which goes first
            if run % 2:
                remote.append(asyncio.run(http_ttft()))
            local.append(inprocess_ttft(agent, question, args.max_tokens))
            if not run % 2:
                remote.append(asyncio.run(http_ttft()))
        del agent

        loads = [asyncio.run(concurrent(base, int(n), args.max_tokens)) for n in args.clients.split(",")]
    finally:
        process.send_signal(signal.SIGTERM)
        process.wait(60)

    remote_med, local_med = statistics.median(remote), statistics.median(local)
    print(json.dumps({
        "model": "embedded (SmolLM2-135M-Instruct), shipped minds, default backend",
        "cpus": os.cpu_count(), "max_tokens": args.max_tokens, "runs": args.runs,
        "one_client": {"http_ttft_median_s": round(remote_med, 4), "inprocess_ttft_median_s": round(local_med, 4),
                       "http_ttft_min_s": round(min(remote), 4), "inprocess_ttft_min_s": round(min(local), 4),
                       "overhead_ms": round((remote_med - local_med) * 1000, 1)},
        "concurrent": loads,
        "ours": round(remote_med, 4), "baseline": round(local_med, 4),
        "ratio": round(remote_med / local_med, 3) if local_med > 0 else None, "goal": "ratio <= 1.1",
    }))


if __name__ == "__main__":
    main()
