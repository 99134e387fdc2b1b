"""The openai backend against a real HTTP server on 127.0.0.1: a small FastAPI stub that speaks
the chat-completions streaming protocol (SSE), its behaviour chosen by the request's model name."""

from __future__ import annotations

import asyncio
import json
import logging
import socket
import subprocess
import sys
import threading
import time

import pytest
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, PlainTextResponse, StreamingResponse

from duma.errors import ConfigError, DumaError
from duma.plugins.backends.openai import OpenAIBackend
from duma.types import GenerationOptions, Message, ModelSpec

KEY = "sekrit-test-key"
HI = [Message(role="user", content="hi")]
LONG_CHUNKS = 400


class Stub:
    """What the server saw: request bodies and headers, and how the long stream ended."""

    def __init__(self) -> None:
        self.requests: list[tuple[dict, dict]] = []
        self.tries: dict[str, int] = {}
        self.long_sent = 0
        self.long_ended = threading.Event()

    def last(self, model: str) -> tuple[dict, dict]:
        return next(r for r in reversed(self.requests) if r[0].get("model") == model)


def _chunk(model: str, content: str | None = None, finish: str | None = None) -> str:
    delta = {"content": content} if content is not None else {"role": "assistant"}
    data = {"id": "chatcmpl-1", "object": "chat.completion.chunk", "created": 0, "model": model,
            "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]}
    return f"data: {json.dumps(data)}\n\n"


def _usage(model: str, prompt: int, completion: int) -> str:
    data = {"id": "chatcmpl-1", "object": "chat.completion.chunk", "created": 0, "model": model, "choices": [],
            "usage": {"prompt_tokens": prompt, "completion_tokens": completion,
                      "total_tokens": prompt + completion}}
    return f"data: {json.dumps(data)}\n\n"


REPLIES = {  # model -> (streamed pieces, finish reason, usage or None)
    "ok": (["Hello", " world", "!"], "stop", (11, 3)),
    "length": (["cut", " short"], "length", (5, 2)),
    "nousage": (["a", "b", "c", "d"], "stop", None),
    "stops": (["one", " two", " ST", "OP three"], "stop", (4, 4)),
    "secure": (["welcome"], "stop", (2, 1)),
    "flaky": (["up again"], "stop", (2, 2)),
}


def make_app(stub: Stub) -> FastAPI:
    app = FastAPI()

    def sse(gen):
        return StreamingResponse(gen, media_type="text/event-stream")

    def error(status: int, message: str) -> JSONResponse:
        return JSONResponse({"error": {"message": message, "type": "invalid_request_error"}}, status_code=status)

    @app.post("/v1/chat/completions")
    async def chat(request: Request):
        body = await request.json()
        stub.requests.append((body, dict(request.headers)))
        model = body["model"]
        stub.tries[model] = stub.tries.get(model, 0) + 1
        if model == "secure" and request.headers.get("authorization") != f"Bearer {KEY}":
            return error(401, "Incorrect API key provided.\nSecond line.")
        if model == "flaky" and stub.tries[model] == 1:
            return error(503, "warming up")
        if model == "slow":  # answers after 3 s, unless the client gives up first
            for _ in range(60):
                if await request.is_disconnected():
                    return error(499, "client went away")
                await asyncio.sleep(0.05)
        if model == "garbage":
            return PlainTextResponse("this is not an event stream\nat all")
        if model == "badjson":
            async def bad():
                yield "data: not json\n\n"
            return sse(bad())
        if model == "boom":
            async def boom():
                yield _chunk(model, "partial")
                yield 'data: {"error": {"message": "boom: the GPU caught fire"}}\n\n'
            return sse(boom())
        if model == "cut":
            async def cut():
                yield _chunk(model, "half")
                raise RuntimeError("the stub server dies mid-reply")
            return sse(cut())
        if model == "long":
            async def long():
                try:
                    for i in range(LONG_CHUNKS):
                        yield _chunk(model, f"w{i} ")
                        stub.long_sent += 1
                        await asyncio.sleep(0.01)
                    yield "data: [DONE]\n\n"
                finally:  # reached early when the client disconnects
                    stub.long_ended.set()
            return sse(long())
        if model not in REPLIES:
            return error(404, f"The model `{model}` does not exist.")
        pieces, finish, usage = REPLIES[model]

        async def reply():
            yield _chunk(model)
            for piece in pieces:
                yield _chunk(model, piece)
            yield _chunk(model, "", finish)
            if usage:
                yield _usage(model, *usage)
            yield "data: [DONE]\n\n"
        return sse(reply())

    return app


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def server():
    import uvicorn

    stub = Stub()
    port = free_port()
    srv = uvicorn.Server(uvicorn.Config(make_app(stub), host="127.0.0.1", port=port, log_level="warning",
                                        timeout_graceful_shutdown=1))
    thread = threading.Thread(target=srv.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not srv.started:
        assert time.monotonic() < deadline, "the stub server did not start"
        time.sleep(0.01)
    stub.base_url = f"http://127.0.0.1:{port}/v1"
    yield stub
    srv.should_exit = True
    thread.join(timeout=5)


def backend(url: str, model: str, **options) -> OpenAIBackend:
    return OpenAIBackend(ModelSpec(backend="openai", model=model, backend_options={"base_url": url, **options}))


def failure(b: OpenAIBackend, options: GenerationOptions | None = None) -> tuple[str, list[str], float]:
    """The one-line error of a call, the text streamed before it, and how long it took."""
    texts: list[str] = []
    start = time.perf_counter()
    with pytest.raises(DumaError) as info:
        for chunk in b.stream(HI, options):
            texts.append(chunk.text)
    message = str(info.value)
    assert "\n" not in message and message.strip() == message
    return message, texts, time.perf_counter() - start


# --- streaming -------------------------------------------------------------------------------

def test_streams_text_then_a_last_chunk_with_the_servers_usage(server):
    b = backend(server.base_url, "ok")
    chunks = list(b.stream(HI))
    assert "".join(c.text for c in chunks) == "Hello world!"
    assert [c.text for c in chunks[:-1]] == ["Hello", " world", "!"]
    last = chunks[-1]
    assert last.done and last.finish_reason == "stop"
    assert (last.usage.prompt_tokens, last.usage.completion_tokens) == (11, 3)
    assert last.timings.first_token_s is not None and last.timings.total_s >= last.timings.first_token_s
    completion = b.generate(HI)
    assert completion.text == "Hello world!" and completion.usage.completion_tokens == 3


def test_length_finish_and_estimated_usage_without_a_usage_chunk(server):
    done = list(backend(server.base_url, "length").stream(HI))[-1]
    assert done.finish_reason == "length"
    b = backend(server.base_url, "nousage")
    chunks = list(b.stream(HI))
    assert "".join(c.text for c in chunks) == "abcd"
    assert chunks[-1].usage.completion_tokens == 4  # one token a streamed piece
    assert chunks[-1].usage.prompt_tokens == b.count_tokens(HI) > 0


def test_options_reach_the_server(server):
    b = backend(server.base_url, "ok", headers={"X-Duma-Test": "yes"})
    options = GenerationOptions(max_tokens=7, temperature=0.3, top_p=0.9, top_k=5, repetition_penalty=1.1,
                                stop=["<a>", "<b>", "<c>", "<d>", "<e>"], seed=42)
    messages = [Message(role="system", content="Be brief."), *HI]
    list(b.stream(messages, options))
    body, headers = server.last("ok")
    assert body["messages"] == [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "hi"}]
    assert body["stream"] is True and body["stream_options"] == {"include_usage": True}
    assert body["max_tokens"] == 7 and body["temperature"] == 0.3 and body["top_p"] == 0.9
    assert body["stop"] == ["<a>", "<b>", "<c>", "<d>"]  # OpenAI's limit; all five apply locally
    assert body["seed"] == 42 and body["top_k"] == 5 and body["repetition_penalty"] == 1.1
    assert headers["x-duma-test"] == "yes"

    list(b.stream(HI, GenerationOptions()))
    body, _ = server.last("ok")
    assert body["temperature"] == 0.0 and body["max_tokens"] == 256
    for absent in ("stop", "seed", "top_k", "repetition_penalty"):
        assert absent not in body


def test_a_constraint_is_sent_only_to_a_server_that_takes_one(server):
    pattern = r"Finish\[[^\[\]]*\]"
    options = GenerationOptions(constraint=pattern)
    plain = backend(server.base_url, "ok")
    assert not plain.capabilities.constrained_decoding  # duma checks the slow mind's steps instead
    list(plain.stream(HI, options))
    body, _ = server.last("ok")
    assert not {"structured_outputs", "guided_regex", "regex"} & set(body)
    for field, sent in [("structured_outputs", {"regex": pattern}), ("guided_regex", pattern), ("regex", pattern)]:
        b = backend(server.base_url, "ok", regex_field=field)
        assert b.capabilities.constrained_decoding
        list(b.stream(HI, options))
        assert server.last("ok")[0][field] == sent
    list(b.stream(HI, GenerationOptions()))
    assert "regex" not in server.last("ok")[0]


def test_stop_strings_beyond_the_fourth_apply_locally(server):
    options = GenerationOptions(stop=["x1", "x2", "x3", "x4", "STOP"])
    chunks = list(backend(server.base_url, "stops").stream(HI, options))
    assert "".join(c.text for c in chunks) == "one two "
    assert chunks[-1].finish_reason == "stop"
    assert server.last("stops")[0]["stop"] == ["x1", "x2", "x3", "x4"]


def test_cancel_ends_the_stream_and_disconnects(server):
    b = backend(server.base_url, "long")
    cancel = threading.Event()
    texts = []
    stream = b.stream(HI, cancel=cancel)
    for chunk in stream:
        if chunk.done:
            last = chunk
            break
        texts.append(chunk.text)
        if len(texts) == 2:
            cancel.set()
            cancelled_at = time.perf_counter()
    assert texts == ["w0 ", "w1 "]  # nothing after the cancel
    assert last.finish_reason == "cancelled"
    assert time.perf_counter() - cancelled_at < 1.0
    # The server's stream ended early: the client closed the connection.
    assert server.long_ended.wait(5)
    assert server.long_sent < LONG_CHUNKS


def test_a_set_cancel_sends_nothing(server):
    cancel = threading.Event()
    cancel.set()
    before = len(server.requests)
    chunks = list(backend(server.base_url, "ok").stream(HI, cancel=cancel))
    assert [c.finish_reason for c in chunks] == ["cancelled"]
    assert len(server.requests) == before


# --- failures: one line naming the endpoint, quickly -----------------------------------------

def test_connection_refused_is_one_line_and_quick():
    url = f"http://127.0.0.1:{free_port()}/v1"  # nothing listens there
    message, _, took = failure(backend(url, "any", max_retries=0))
    assert message.startswith(f"openai backend: {url} refused the connection")
    assert "is the server running?" in message
    assert took < 1.0
    # Retries of a refused connection wait 0.5 s, then 1 s, and then give up.
    _, _, took = failure(backend(url, "any", max_retries=2))
    assert 1.4 < took < 4.0


def test_a_server_error_is_retried(server):
    chunks = list(backend(server.base_url, "flaky", max_retries=1).stream(HI))
    assert "".join(c.text for c in chunks) == "up again"
    assert server.tries["flaky"] == 2


def test_a_wrong_or_missing_key_is_refused(server, monkeypatch):
    monkeypatch.setenv("DUMA_TEST_KEY", KEY)
    chunks = list(backend(server.base_url, "secure", api_key_env="DUMA_TEST_KEY").stream(HI))
    assert "".join(c.text for c in chunks) == "welcome"
    assert server.last("secure")[1]["authorization"] == f"Bearer {KEY}"

    monkeypatch.setenv("DUMA_TEST_KEY", "wrong")
    message, _, _ = failure(backend(server.base_url, "secure", api_key_env="DUMA_TEST_KEY"))
    assert message.startswith(f"openai backend: {server.base_url} refused the API key (HTTP 401: "
                              "Incorrect API key provided.)")
    assert "DUMA_TEST_KEY" in message

    monkeypatch.delenv("DUMA_TEST_KEY")
    message, _, _ = failure(backend(server.base_url, "secure", api_key_env="DUMA_TEST_KEY"))
    assert "DUMA_TEST_KEY is not set" in message
    assert server.last("secure")[1]["authorization"] == "Bearer none"


def test_an_unknown_model_names_the_model(server):
    message, _, _ = failure(backend(server.base_url, "missing"))
    assert message.startswith(f"openai backend: {server.base_url} has no model 'missing' (HTTP 404: "
                              "The model `missing` does not exist.)")


def test_a_silent_server_times_out(server):
    message, _, took = failure(backend(server.base_url, "slow", timeout_s=1, max_retries=2))
    assert message.startswith(f"openai backend: {server.base_url} did not answer within 1 s")
    assert took < 2.0  # a timeout is not retried


def test_a_reply_that_is_not_an_event_stream(server):
    message, _, _ = failure(backend(server.base_url, "garbage"))
    assert message.startswith(f"openai backend: {server.base_url} sent no streamed reply (text/plain")
    message, _, _ = failure(backend(server.base_url, "badjson"))
    assert message.startswith(f"openai backend: {server.base_url} sent a reply that is not OpenAI's streaming")
    assert "/v1" in message


def test_an_error_mid_stream(server):
    message, texts, _ = failure(backend(server.base_url, "boom"))
    assert texts == ["partial"]
    assert message.startswith(f"openai backend: {server.base_url} reported an error mid-reply: "
                              "boom: the GPU caught fire")


def test_a_connection_broken_mid_stream(server, monkeypatch):
    monkeypatch.setattr(logging.getLogger("uvicorn.error"), "disabled", True)  # the stub's own traceback
    message, texts, _ = failure(backend(server.base_url, "cut"))
    assert texts == ["half"]
    assert message.startswith(f"openai backend: {server.base_url} broke off the reply (")


# --- configuration ---------------------------------------------------------------------------

def test_backend_options_are_checked():
    with pytest.raises(ConfigError) as info:
        backend("http://127.0.0.1:1/v1", "m", nope=1)
    message = str(info.value)
    assert "backend_options.nope: unknown key" in message and "base_url" in message and "\n" not in message
    with pytest.raises(ConfigError, match="backend_options.base_url: missing"):
        OpenAIBackend(ModelSpec(backend="openai", model="m"))
    with pytest.raises(ConfigError, match="backend_options.timeout_s"):
        backend("http://127.0.0.1:1/v1", "m", timeout_s=0)


def test_an_adapter_is_refused():
    spec = ModelSpec(backend="openai", model="m", adapter="runs/lora",
                     backend_options={"base_url": "http://127.0.0.1:1/v1"})
    with pytest.raises(ConfigError) as info:
        OpenAIBackend(spec)
    assert "remote endpoint serves its own models" in str(info.value) and "\n" not in str(info.value)


def test_registered_and_context_length():
    from duma import host

    assert host.get("backend", "openai") is OpenAIBackend
    b = backend("http://127.0.0.1:1/v1", "m", context_length=32768)
    assert b.context_length == 32768 and not b.capabilities.adapters_per_call


def test_importing_the_module_does_not_import_openai():
    code = "import sys, duma.plugins.backends.openai; assert 'openai' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)


# --- through the agent -----------------------------------------------------------------------

def _down_backend() -> tuple[str, OpenAIBackend]:
    url = f"http://127.0.0.1:{free_port()}/v1"
    return url, OpenAIBackend(ModelSpec(backend="openai", model="down",
                                        backend_options={"base_url": url, "max_retries": 0, "timeout_s": 2}))


def _agent(tmp_path, fast, slow):
    from duma.agents import Agent
    from duma.logstore import LogStore

    return Agent({}, log_store=LogStore(tmp_path / "log.db"), fast_backend=fast, slow_backend=slow, tools={})


def test_a_down_slow_mind_ends_the_turn_with_one_error_event(tmp_path):
    """A slow mind whose endpoint is down fails the turn after the interim reply: one error
    event naming the endpoint, no hang, the user's message and the interim reply logged."""
    from duma.testing import ScriptedBackend

    url, slow = _down_backend()
    fast = ScriptedBackend(replies=["Response[Let me check.] Invoke[True]", "Response[final] Invoke[False]"])
    agent = _agent(tmp_path, fast, slow)
    start = time.perf_counter()
    events = list(agent.stream("hi"))
    assert time.perf_counter() - start < 5
    errors = [e for e in events if e.type == "error"]
    assert len(errors) == 1 and events[-1] is errors[0] and "\n" not in errors[0].message
    assert errors[0].message.startswith(f"openai backend: {url} refused the connection")
    assert not [e for e in events if e.type in ("slow_done", "final_done")]
    logged = agent.log_store.messages(events[0].conversation_id)
    assert [(m.role, m.content) for m in logged] == [("user", "hi"), ("assistant", "Let me check.")]


def test_a_down_fast_mind_ends_the_turn_with_one_error_event(tmp_path):
    from duma.testing import ScriptedBackend

    url, fast = _down_backend()
    agent = _agent(tmp_path, fast, ScriptedBackend(replies=["Finish[x]"]))
    start = time.perf_counter()
    events = list(agent.stream("hi"))
    assert time.perf_counter() - start < 5
    errors = [e for e in events if e.type == "error"]
    assert len(errors) == 1 and events[-1] is errors[0]
    assert errors[0].message.startswith(f"openai backend: {url} refused the connection")
    assert "\n" not in errors[0].message
    logged = agent.log_store.messages(events[0].conversation_id)
    assert logged[0].role == "user" and logged[0].content == "hi"
    assert url in logged[-1].meta.get("error", "")  # the interrupted reply keeps what was shown
