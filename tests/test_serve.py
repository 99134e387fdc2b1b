"""``duma serve`` as a real subprocess on 127.0.0.1, driven by the real ``openai`` client (and
httpx where the raw stream matters), with scripted minds where exact events matter and the
embedded model for one end-to-end turn."""

from __future__ import annotations

import asyncio
import json
import re
import signal
import threading
import time
from pathlib import Path

import httpx
import openai
import pytest
from serve_support import Server, start_server

from duma.logstore import LogStore
from duma.testing import run_cli

FAST = "Response[Hello there, how can I help?] Invoke[False]"
LONG = "Response[" + " ".join(f"word{i}" for i in range(200)) + "] Invoke[False]"
SLOW = ["Reason[I should add.] Act[calculator(2+2)]", "Finish[2 + 2 = 4]"]
USER = [{"role": "user", "content": "hello"}]


def client(server: Server, **kw) -> openai.OpenAI:
    return openai.OpenAI(base_url=server.v1, api_key=server.api_key or "unused", max_retries=0, **kw)


def metric(server: Server, name: str, labels: str = "") -> float:
    headers = {"Authorization": f"Bearer {server.api_key}"} if server.api_key else {}
    text = httpx.get(server.base_url + "/metrics", headers=headers, timeout=5).text
    found = re.search(rf"^{re.escape(name)}{re.escape(labels)}(?:\{{[^}}]*\}})? (\S+)$", text, re.M)
    return float(found.group(1)) if found else 0.0


def sse_events(response: httpx.Response) -> list[str]:
    return [line[len("data: "):] for line in response.iter_lines() if line.startswith("data: ")]


def streamed_text(lines: list[str]) -> str:
    """The ``delta.content`` of raw ``data: {...}`` lines, joined."""
    chunks = [json.loads(line.removeprefix("data: ")) for line in lines if line.removeprefix("data: ") != "[DONE]"]
    return "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks if c.get("choices"))


@pytest.fixture(scope="module")
def server(tmp_path_factory) -> Server:
    with start_server(tmp_path_factory.mktemp("serve"), fast=[FAST], slow=SLOW, delay_s=0.01,
                      args=["--max-concurrent", "100"]) as running:
        yield running


# --------------------------------------------------------------------------- the protocol


def test_non_streaming_fast_turn(server: Server) -> None:
    reply = client(server).chat.completions.create(model="duma", messages=USER)
    assert reply.object == "chat.completion" and reply.model == "duma"
    assert reply.choices[0].message.content == "Hello there, how can I help?"
    assert reply.choices[0].finish_reason == "stop"
    assert reply.usage.completion_tokens > 0 and reply.usage.prompt_tokens > 0
    extension = reply.model_extra["duma"]
    assert extension["route"] == "fast" and extension["slow_ran"] is False and extension["conversation_id"]


def test_streaming_with_usage_chunk(server: Server) -> None:
    chunks = list(client(server).chat.completions.create(
        model="duma", messages=USER, stream=True, stream_options={"include_usage": True}))
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == "Hello there, how can I help?"
    assert len([c for c in chunks if c.choices and c.choices[0].delta.content]) > 3  # streamed, not one piece
    assert chunks[-1].choices == [] and chunks[-1].usage.total_tokens > 0  # the usage chunk comes last
    finish = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    assert finish == ["stop"]
    with httpx.stream("POST", server.v1 + "/chat/completions", timeout=10,
                      json={"model": "duma", "messages": USER, "stream": True}) as response:
        assert response.headers["content-type"].startswith("text/event-stream")
        assert response.headers["x-duma-conversation-id"]
        events = sse_events(response)
    assert events[-1] == "[DONE]" and '"usage"' not in events[-2]  # no usage chunk unless asked


def test_slow_turn_streams_reasoning_content(server: Server) -> None:
    chunks = list(client(server).chat.completions.create(
        model="duma/always-slow", messages=[{"role": "user", "content": "what is 2+2?"}], stream=True))
    content = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    reasoning = "".join((c.choices[0].delta.model_extra or {}).get("reasoning_content") or ""
                        for c in chunks if c.choices)
    assert content.startswith("Let me look into that.\n\nHello there")  # interim, then the final reply
    assert "Act: calculator(2+2)" in reasoning and "Obs: 4" in reasoning and "Result: 2 + 2 = 4" in reasoning
    # reasoning arrives before the final reply's tokens
    first_reasoning = next(i for i, c in enumerate(chunks) if c.choices and (c.choices[0].delta.model_extra or {}).get("reasoning_content"))
    final_start = next(i for i, c in enumerate(chunks) if c.choices and (c.choices[0].delta.content or "").startswith("\n\n"))
    assert first_reasoning < final_start
    summary = chunks[-1].model_extra["duma"]
    assert summary["route"] == "slow" and summary["router"] == "always-slow" and summary["slow_ran"] is True
    assert summary["steps"][0]["action"] == "calculator(2+2)"

    reply = client(server).chat.completions.create(model="duma/always-slow", messages=USER)
    message = reply.choices[0].message
    assert message.model_extra["reasoning_content"].startswith("Reason: I should add.")
    assert reply.model_extra["duma"]["route"] == "slow"


def test_conversation_continuation_and_history(server: Server) -> None:
    c = client(server)
    first = c.chat.completions.create(model="duma", messages=[{"role": "user", "content": "first message"}])
    cid = first.model_extra["duma"]["conversation_id"]
    second = c.chat.completions.create(model="duma", messages=[{"role": "user", "content": "second message"}],
                                       extra_body={"duma": {"conversation_id": cid}})
    assert second.model_extra["duma"]["conversation_id"] == cid
    third = c.chat.completions.create(model="duma", messages=[{"role": "user", "content": "third message"}],
                                      extra_headers={"X-Duma-Conversation-Id": cid})
    assert third.model_extra["duma"]["conversation_id"] == cid
    # A plain client sends the whole history: a new conversation holding it.
    history = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "earlier question"},
               {"role": "assistant", "content": "earlier answer"}, {"role": "user", "content": "follow-up"}]
    plain = c.chat.completions.create(model="duma", messages=history)
    other = plain.model_extra["duma"]["conversation_id"]
    assert other != cid
    store = LogStore(server.folder / "logs.db")
    users = [m.content for m in store.messages(cid) if m.role == "user"]
    assert users == ["first message", "second message", "third message"]
    logged = [(m.role, m.content) for m in store.messages(other)]
    assert logged[:3] == [("user", "earlier question"), ("assistant", "earlier answer"), ("user", "follow-up")]
    with pytest.raises(openai.NotFoundError, match="conversation"):
        c.chat.completions.create(model="duma", messages=USER, extra_body={"duma": {"conversation_id": "nope"}})


def test_models_parameters_and_bad_requests(server: Server) -> None:
    c = client(server)
    names = [m.id for m in c.models.list()]
    assert names[0] == "duma" and {"duma/always-slow", "duma/rules", "fast", "slow"} <= set(names)
    with pytest.raises(openai.NotFoundError, match="model"):
        c.chat.completions.create(model="gpt-9", messages=USER)
    with pytest.raises(openai.BadRequestError, match="n must be 1"):
        c.chat.completions.create(model="duma", messages=USER, n=2)
    with pytest.raises(openai.BadRequestError, match="last message"):
        c.chat.completions.create(model="duma", messages=[{"role": "assistant", "content": "hi"}])
    # the bare fast mind: raw protocol text; max_tokens and stop reach the backend
    bare = c.chat.completions.create(model="fast", messages=USER, max_tokens=2)
    assert bare.choices[0].message.content == "Response[Hello there," and bare.choices[0].finish_reason == "length"
    stopped = c.chat.completions.create(model="fast", messages=USER, stop=["how"], seed=1, temperature=0.5)
    assert stopped.choices[0].message.content.strip() == "Response[Hello there,"
    with pytest.raises(openai.BadRequestError, match="max_tokens"):
        c.chat.completions.create(model="duma", messages=USER, max_tokens=10**6)
    # unknown fields are ignored and never echoed; bad values are named, not echoed
    raw = httpx.post(server.v1 + "/chat/completions", timeout=10,
                     json={"model": "duma", "messages": USER, "secret_field": "SECRET-123"})
    assert raw.status_code == 200 and "SECRET-123" not in raw.text
    bad = httpx.post(server.v1 + "/chat/completions", timeout=10,
                     json={"model": "duma", "messages": USER, "temperature": "SECRET-456"})
    assert bad.status_code == 400 and "temperature" in bad.json()["error"]["message"]
    assert "SECRET-456" not in bad.text
    assert httpx.post(server.v1 + "/chat/completions", content=b"{not json", timeout=10).status_code == 400
    oversize = httpx.post(server.v1 + "/chat/completions", timeout=10,
                          content=json.dumps({"model": "duma", "messages": [{"role": "user", "content": "x" * 2_000_000}]}))
    assert oversize.status_code == 413 and oversize.json()["error"]["code"] == "request_too_large"


# --------------------------------------------------------------------------- load and failure


def test_hundred_concurrent_streams_and_health_meanwhile(server: Server) -> None:
    async def one(http: httpx.AsyncClient) -> list[str]:
        async with http.stream("POST", server.v1 + "/chat/completions",
                               json={"model": "duma", "messages": USER, "stream": True}) as response:
            assert response.status_code == 200
            return [line async for line in response.aiter_lines() if line.startswith("data: ")]

    async def main() -> tuple[list[list[str]], list[float]]:
        limits = httpx.Limits(max_connections=200, max_keepalive_connections=200)
        async with httpx.AsyncClient(timeout=60, limits=limits) as http:
            streams = asyncio.gather(*(one(http) for _ in range(100)))
            health_s = []
            for _ in range(3):
                await asyncio.sleep(0.1)
                t0 = time.perf_counter()
                assert (await http.get(server.base_url + "/health")).status_code == 200
                health_s.append(time.perf_counter() - t0)
            return await streams, health_s

    results, health_s = asyncio.run(main())
    assert len(results) == 100 and all(lines[-1] == "data: [DONE]" for lines in results)
    assert all(streamed_text(lines) == "Hello there, how can I help?" for lines in results)
    assert max(health_s) < 1.0
    assert metric(server, "duma_requests_in_flight") == 0


def test_disconnect_cancels_generation(tmp_path: Path) -> None:
    with start_server(tmp_path, fast=[LONG], delay_s=0.05) as server:
        with httpx.stream("POST", server.v1 + "/chat/completions", timeout=10,
                          json={"model": "duma", "messages": USER, "stream": True}) as response:
            seen = 0
            lines = response.iter_lines()  # kept: a dropped line iterator closes the connection
            for line in lines:
                seen += line.startswith("data: ") and '"content"' in line
                if seen >= 3:  # the role chunk, then two chunks of text
                    break
            assert metric(server, "duma_requests_in_flight") == 1
        closed = time.perf_counter()
        while metric(server, "duma_requests_in_flight") != 0 and time.perf_counter() - closed < 5:
            time.sleep(0.05)
        assert time.perf_counter() - closed < 1.0
        assert metric(server, "duma_cancellations_total") == 1
        time.sleep(0.2)
        store = LogStore(server.folder / "logs.db")
        cid = store.last_conversation()
        reply = store.messages(cid)[-1]
        assert reply.meta.get("interrupted") is True and reply.content.startswith("word0")
        assert len(reply.content.split()) < 40  # stopped, not written to the end


def test_timeout_storm_then_a_fresh_request_succeeds(tmp_path: Path) -> None:
    with start_server(tmp_path, fast=["Response[" + " ".join(["tick"] * 30) + "] Invoke[False]"], delay_s=0.05,
                      args=["--max-concurrent", "2"]) as server:
        storm = client(server, timeout=0.3)
        outcomes: list[str] = []

        def impatient(stream: bool) -> None:
            try:
                if stream:
                    for _ in storm.chat.completions.create(model="duma", messages=USER, stream=True):
                        pass
                else:
                    storm.chat.completions.create(model="duma", messages=USER)
                outcomes.append("finished")
            except openai.APITimeoutError:
                outcomes.append("timed out")

        threads = [threading.Thread(target=impatient, args=(i % 2 == 0,)) for i in range(20)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(30)
        assert outcomes.count("timed out") >= 16  # all but the few that got a turn at once
        # every abandoned turn stops: nothing left running or queued within a few seconds
        deadline = time.perf_counter() + 5
        while metric(server, "duma_requests_in_flight") + metric(server, "duma_queue_depth") and time.perf_counter() < deadline:
            time.sleep(0.1)
        assert metric(server, "duma_requests_in_flight") == 0 and metric(server, "duma_queue_depth") == 0
        reply = client(server, timeout=30).chat.completions.create(model="duma", messages=USER)
        assert reply.choices[0].message.content.startswith("tick tick")


def test_full_queue_is_429_with_retry_after(tmp_path: Path) -> None:
    with start_server(tmp_path, fast=[LONG], delay_s=0.01, args=["--max-concurrent", "1", "--max-queue", "1"]) as server:
        held = httpx.stream("POST", server.v1 + "/chat/completions", timeout=30,
                            json={"model": "duma", "messages": USER, "stream": True})
        held.__enter__()  # one turn running
        deadline = time.perf_counter() + 5
        while metric(server, "duma_requests_in_flight") < 1 and time.perf_counter() < deadline:
            time.sleep(0.02)
        waiting = threading.Thread(target=lambda: httpx.post(server.v1 + "/chat/completions", timeout=30,
                                                             json={"model": "duma", "messages": USER}))
        waiting.start()  # one waiting
        while metric(server, "duma_queue_depth") < 1 and time.perf_counter() < deadline:
            time.sleep(0.02)
        with pytest.raises(openai.RateLimitError) as refused:
            client(server).chat.completions.create(model="duma", messages=USER)
        assert int(refused.value.response.headers["retry-after"]) >= 1
        held.__exit__(None, None, None)
        waiting.join(30)


def test_failure_mid_stream_is_an_api_error(tmp_path: Path) -> None:
    # The slow mind on an endpoint that is down: the interim reply has streamed when it fails.
    down = {"agent": {"slow": {"backend": "openai", "model": "x",
                               "backend_options": {"base_url": "http://127.0.0.1:9/v1", "max_retries": 0}}}}
    with start_server(tmp_path, config=down) as server:
        stream = client(server).chat.completions.create(model="duma/always-slow", messages=USER, stream=True)
        seen = []
        with pytest.raises(openai.APIError, match="127.0.0.1:9"):
            for chunk in stream:
                seen.append(chunk)
        assert any(c.choices and c.choices[0].delta.content for c in seen)
        with pytest.raises(openai.InternalServerError, match="127.0.0.1:9"):
            client(server).chat.completions.create(model="duma/always-slow", messages=USER)


def test_openai_backend_against_duma_serve(server: Server, tmp_path: Path) -> None:
    """duma as its own remote slow mind: a second server whose slow mind is the first's."""
    remote = {"agent": {"slow": {"backend": "openai", "model": "slow",
                                 "backend_options": {"base_url": server.v1}}}}
    with start_server(tmp_path, config=remote) as front:
        reply = client(front).chat.completions.create(model="duma/always-slow", messages=USER)
    assert reply.model_extra["duma"]["steps"][0]["action"] == "calculator(2+2)"
    assert "Obs: 4" in reply.choices[0].message.model_extra["reasoning_content"]


# --------------------------------------------------------------------------- auth and lifecycle


def test_api_keys(tmp_path: Path) -> None:
    key_file = tmp_path / "keys.txt"
    key_file.write_text("# team keys\nsecond-key\n")
    with start_server(tmp_path, args=["--api-key", "first-key", "--api-key-file", str(key_file)]) as server:
        c = openai.OpenAI(base_url=server.v1, api_key="wrong-key", max_retries=0)
        with pytest.raises(openai.AuthenticationError):
            c.chat.completions.create(model="duma", messages=USER)
        missing = httpx.post(server.v1 + "/chat/completions", json={"model": "duma", "messages": USER})
        assert missing.status_code == 401 and missing.json()["error"]["code"] == "invalid_api_key"
        assert httpx.get(server.v1 + "/models").status_code == 401
        assert httpx.get(server.base_url + "/metrics").status_code == 401
        assert httpx.get(server.base_url + "/health").status_code == 200
        assert httpx.get(server.base_url + "/").status_code == 200  # the page asks for the key itself
        for key in ("first-key", "second-key"):
            c = openai.OpenAI(base_url=server.v1, api_key=key, max_retries=0)
            assert c.chat.completions.create(model="duma", messages=USER).choices[0].message.content


def test_health_is_503_while_loading(tmp_path: Path) -> None:
    with start_server(tmp_path, env={"DUMA_FIXTURE_LOAD_S": "1.5"}, wait_ready=False) as server:
        health = httpx.get(server.base_url + "/health", timeout=5)
        assert health.status_code == 503 and health.json()["error"]["code"] == "loading"
        with pytest.raises(openai.InternalServerError, match="loading"):
            client(server).chat.completions.create(model="duma", messages=USER)
        deadline = time.perf_counter() + 30
        while httpx.get(server.base_url + "/health", timeout=5).status_code != 200:
            assert time.perf_counter() < deadline
            time.sleep(0.1)


def test_sigterm_lets_the_request_in_flight_finish(tmp_path: Path) -> None:
    reply = "Response[" + " ".join(f"w{i}" for i in range(30)) + "] Invoke[False]"
    server = start_server(tmp_path, fast=[reply], delay_s=0.05)
    with httpx.stream("POST", server.v1 + "/chat/completions", timeout=30,
                      json={"model": "duma", "messages": USER, "stream": True}) as response:
        lines = response.iter_lines()
        first = next(line for line in lines if '"content": "w0' in line)
        server.process.send_signal(signal.SIGTERM)
        rest = [line for line in lines if line.startswith("data: ")]
    assert first and rest[-1] == "data: [DONE]"
    assert streamed_text(rest).endswith("w29")
    assert server.process.wait(15) == 0
    with pytest.raises(httpx.ConnectError):
        httpx.get(server.base_url + "/health", timeout=2)


def test_serve_bad_flags_are_one_line_errors(tmp_path: Path) -> None:
    code, out, err = run_cli(["serve", "--api-key-file", str(tmp_path / "missing.txt")])
    assert code == 2 and "--api-key-file" in err and "missing.txt" in err and len(err.strip().splitlines()) == 1
    code, out, err = run_cli(["-S", "serve.max_queue=-1", "serve"])
    assert code == 2 and "serve.max_queue" in err


# --------------------------------------------------------------------------- the real model


@pytest.mark.slow
def test_embedded_minds_end_to_end(tmp_path: Path) -> None:
    """The default config (the shipped minds on the embedded model) served for real."""
    import subprocess

    from serve_support import DUMA, READY

    log = tmp_path / "out.txt"
    with open(log, "wb") as out:
        process = subprocess.Popen([str(DUMA), "serve", "--port", "0"], stdout=out, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 300
        while not READY.search(log.read_text()):
            assert process.poll() is None and time.monotonic() < deadline, log.read_text()[-2000:]
            time.sleep(0.2)
        base = READY.search(log.read_text()).group(1)
        c = openai.OpenAI(base_url=base + "/v1", api_key="unused", max_retries=0, timeout=120)
        chunks = list(c.chat.completions.create(
            model="duma", messages=[{"role": "user", "content": "What is the capital of France?"}], stream=True))
        text = "".join(ch.choices[0].delta.content or "" for ch in chunks if ch.choices)
        assert "Paris" in text
    finally:
        process.send_signal(signal.SIGTERM)
        process.wait(30)


# --------------------------------------------------------------------------- the README's examples


def readme_block(starts_with: str) -> str:
    text = (Path(__file__).resolve().parents[1] / "README.md").read_text(encoding="utf-8")
    blocks = re.findall(r"```(?:bash|python)\n(.*?)```", text, re.S)
    return next(b for b in blocks if b.lstrip().startswith(starts_with))


def test_readme_openai_and_curl_examples_run(server: Server, capsys) -> None:
    import shutil
    import subprocess

    code = readme_block("from openai import OpenAI").replace("http://127.0.0.1:8000", server.base_url)
    exec(compile(code, "README.md", "exec"), {})
    assert "Hello there, how can I help?" in capsys.readouterr().out
    curl = readme_block("curl").replace("http://127.0.0.1:8000", server.base_url).replace("\\\n", " ")
    if shutil.which("curl"):
        out = subprocess.run(curl, shell=True, capture_output=True, text=True, timeout=30).stdout
        assert json.loads(out)["choices"][0]["message"]["content"] == "Hello there, how can I help?"
