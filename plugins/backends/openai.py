"""The ``openai`` backend: a mind run by any OpenAI-compatible chat-completions endpoint (a vLLM
or llama.cpp server, another ``duma serve``, a hosted API), through the official ``openai``
client::

    agent:
      slow:
        backend: openai
        model: Qwen/Qwen2.5-7B-Instruct        # the name the server serves the model under
        backend_options:
          base_url: http://gpu-box:8000/v1
          api_key_env: MY_SERVER_KEY           # default OPENAI_API_KEY; unset: no key

The server renders the prompt with its own chat template, so the reply follows the remote
model's conventions, not duma's rendering. Sampling options map to the request; ``top_k`` and
``repetition_penalty`` are not OpenAI parameters and go in the request body only when set
(vLLM and llama.cpp read them, other servers may ignore them). Stop strings are sent (the
first four: OpenAI's limit) and applied here too, all of them.

``options.constraint`` (a regular expression the reply must match: the minds' protocol) is sent
only to a server that says how it takes one (``regex_field``: vLLM's ``structured_outputs`` or
``guided_regex``, SGLang's ``regex``); otherwise duma checks the reply.

Waiting is bounded: ``timeout_s`` is the longest wait to connect, for the reply to begin and
between two streamed chunks. A failed try is retried (``max_retries``) only when it failed fast
(connection refused or reset, HTTP 408/409/429/5xx) and less than ``timeout_s`` has passed since
the call began; a timeout is not retried. So a silent server fails a call after ``timeout_s``,
and no call waits more than about twice ``timeout_s`` for its first token, retries included.

``count_tokens`` is an estimate (about four characters a token): the remote tokenizer is not
known here. ``openai`` is imported when a backend is constructed, never at module import.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Iterator, Sequence
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from duma.backend import Backend, BackendCapabilities, StopFilter
from duma.errors import ConfigError, DumaError, ModelLoadError, first_line
from duma.types import GenerationChunk, GenerationOptions, Message, ModelSpec, Timings, Usage

# OpenAI's chat-completions API takes at most this many stop strings.
MAX_REMOTE_STOPS = 4
# Statuses worth another try: the server was busy or failed, not the request.
RETRY_STATUSES = {408, 409, 429} | set(range(500, 600))
FORMAT_HINT = "check that backend_options.base_url is an OpenAI-compatible endpoint, usually ending in /v1"


class OpenAIOptions(BaseModel):
    """``backend_options`` of the openai backend."""

    model_config = ConfigDict(extra="forbid")

    base_url: str = Field(..., min_length=1, description="The endpoint's base URL, e.g. http://127.0.0.1:8000/v1.")
    api_key_env: str = Field("OPENAI_API_KEY", min_length=1, description="Name of the environment variable "
                             "that holds the API key; when it is not set, no key is sent (a placeholder).")
    timeout_s: float = Field(60.0, gt=0, description="Longest wait in seconds to connect, for the reply to "
                             "begin, and between two streamed chunks.")
    max_retries: int = Field(2, ge=0, le=10, description="Further tries after a fast failure (connection "
                             "refused, HTTP 408/409/429/5xx) while less than timeout_s has passed.")
    headers: dict[str, str] = Field(default_factory=dict, description="Extra HTTP headers sent with every "
                                    "request.")
    context_length: int = Field(8192, ge=64, description="Prompt plus reply tokens the remote model accepts "
                                "(duma trims long histories to fit).")
    regex_field: Literal["none", "structured_outputs", "guided_regex", "regex"] = Field(
        "none", description="How the server takes a regular expression the reply must match "
        "(options.constraint, e.g. the minds' protocol): structured_outputs (vLLM 0.10.2 and later: "
        "{\"structured_outputs\": {\"regex\": ...}}), guided_regex (older vLLM), regex (SGLang); none: the "
        "server is sent none, and duma checks replies instead (a slow-mind step that misses is sampled once "
        "more).")


class OpenAIBackend(Backend):
    """A remote model behind an OpenAI-compatible chat-completions endpoint."""

    name = "openai"
    Options = OpenAIOptions
    capabilities = BackendCapabilities()

    @classmethod
    def capabilities_for(cls, spec: ModelSpec) -> BackendCapabilities:
        # A server told how to take a regex enforces options.constraint itself.
        options: OpenAIOptions = cls.parse_backend_options(spec)  # type: ignore[assignment]
        return cls.capabilities.model_copy(update={"constrained_decoding": options.regex_field != "none"})

    def __init__(self, spec: ModelSpec) -> None:
        super().__init__(spec)
        options: OpenAIOptions = self.backend_options  # type: ignore[assignment]
        if spec.adapter:
            raise ConfigError(f"backend 'openai' takes no adapter ({spec.adapter}): a remote endpoint serves "
                              "its own models", "name the served adapter as the mind's model instead")
        try:
            import openai
        except ImportError:
            raise ModelLoadError("backend 'openai' needs the openai package, which is not installed",
                                 "pip install openai") from None
        self._openai = openai
        self.base_url = options.base_url.rstrip("/")
        self.options = options
        key = os.environ.get(options.api_key_env)
        self._has_key = bool(key)
        # Retries are ours (see _open): the client's own would wait out Retry-After headers.
        # The client is thread-safe, so one serves every call.
        self.client = openai.OpenAI(api_key=key or "none", base_url=self.base_url, timeout=options.timeout_s,
                                    max_retries=0, default_headers=options.headers or None)

    @property
    def context_length(self) -> int:
        return self.options.context_length

    def close(self) -> None:
        self.client.close()

    def stream(self, messages: Sequence[Message], options: GenerationOptions | None = None, *,
               adapter: str | None = None, cancel: threading.Event | None = None) -> Iterator[GenerationChunk]:
        if adapter is not None:
            raise DumaError("backend 'openai' cannot switch adapters per call",
                            "name the served adapter as the mind's model instead")
        options = options or self.spec.options
        start = time.perf_counter()
        stops = StopFilter(options.stop)
        first_token_s: float | None = None
        usage: Usage | None = None
        finish = "stop"
        pieces = 0
        got_chunk = False
        if cancel is not None and cancel.is_set():
            yield self._last("cancelled", None, messages, 0, start, None)
            return
        response = self._open(messages, options, cancel, start)
        if response is None:  # cancelled while retrying
            yield self._last("cancelled", None, messages, 0, start, None)
            return
        chunks = self._chunks(response)
        try:
            for chunk in chunks:
                got_chunk = True
                if cancel is not None and cancel.is_set():
                    finish = "cancelled"
                    break
                if getattr(chunk, "usage", None) is not None:
                    usage = Usage(prompt_tokens=chunk.usage.prompt_tokens or 0,
                                  completion_tokens=chunk.usage.completion_tokens or 0)
                choices = getattr(chunk, "choices", None) or []
                if not choices:
                    continue
                choice = choices[0]
                delta = getattr(getattr(choice, "delta", None), "content", None)
                if delta:
                    pieces += 1
                    text = stops.push(delta)
                    if text:
                        if first_token_s is None:
                            first_token_s = time.perf_counter() - start
                        yield GenerationChunk(text=text)
                    if stops.stopped:
                        finish = "stop"
                        break
                reason = getattr(choice, "finish_reason", None)
                if reason:
                    finish = "length" if reason == "length" else "stop"
            else:
                if not got_chunk:
                    kind = response.response.headers.get("content-type", "no content-type")
                    raise DumaError(f"openai backend: {self.base_url} sent no streamed reply ({kind})", FORMAT_HINT)
        finally:
            chunks.close()
            response.close()  # an early end (cancel, a stop string) disconnects: the server stops
        tail = stops.flush()
        if tail:
            yield GenerationChunk(text=tail)
        # A reply cut short here (cancel, a stop string) gets no usage from the server.
        if finish == "cancelled" or stops.stopped:
            usage = None
        yield self._last(finish, usage, messages, pieces, start, first_token_s)

    # --- requests ------------------------------------------------------------------------

    def _request(self, messages: Sequence[Message], options: GenerationOptions) -> dict[str, Any]:
        body: dict[str, Any] = {
            "model": self.spec.model,
            "messages": [{"role": m.role, "content": m.content} for m in messages],
            "stream": True,
            "stream_options": {"include_usage": True},
            "max_tokens": options.max_tokens,
            "temperature": options.temperature,
            "top_p": options.top_p,
        }
        stop = [s for s in options.stop if s]
        if stop:
            body["stop"] = stop[:MAX_REMOTE_STOPS]  # all of them are applied here (StopFilter)
        if options.seed is not None:
            body["seed"] = options.seed
        extra: dict[str, Any] = {}
        if options.top_k > 0:
            extra["top_k"] = options.top_k
        if options.repetition_penalty != 1.0:
            extra["repetition_penalty"] = options.repetition_penalty
        field = self.options.regex_field
        if options.constraint is not None and field != "none":
            extra[field] = {"regex": options.constraint} if field == "structured_outputs" else options.constraint
        if extra:
            body["extra_body"] = extra
        return body

    def _open(self, messages: Sequence[Message], options: GenerationOptions, cancel: threading.Event | None,
              start: float) -> Any:
        """The open response stream; None when ``cancel`` was set while waiting to retry."""
        openai = self._openai
        request = self._request(messages, options)
        attempt = 0
        while True:
            try:
                return self.client.chat.completions.create(**request)
            except openai.APITimeoutError as exc:
                raise self._error(exc) from None
            except (openai.APIConnectionError, openai.APIStatusError) as exc:
                retry = isinstance(exc, openai.APIConnectionError) or exc.status_code in RETRY_STATUSES
                delay = min(0.5 * 2 ** attempt, 4.0)
                elapsed = time.perf_counter() - start
                if not retry or attempt >= self.options.max_retries or elapsed + delay >= self.options.timeout_s:
                    raise self._error(exc) from None
            except openai.OpenAIError as exc:
                raise self._error(exc) from None
            attempt += 1
            if cancel is not None:
                if cancel.wait(delay):
                    return None
            else:
                time.sleep(delay)

    def _chunks(self, response: Any) -> Iterator[Any]:
        """The response's chunks, its failures as one-line errors."""
        openai = self._openai
        try:
            yield from response
        except openai.APITimeoutError:
            raise DumaError(f"openai backend: {self.base_url} sent nothing for {self.options.timeout_s:g} s "
                            "mid-reply", "is the server overloaded? raise backend_options.timeout_s") from None
        except openai.APIConnectionError as exc:
            raise DumaError(f"openai backend: {self.base_url} broke off the reply ({_cause(exc)})",
                            "check the server's log") from None
        except openai.APIError as exc:  # an error event in the stream
            raise DumaError(f"openai backend: {self.base_url} reported an error mid-reply: "
                            f"{first_line(exc.message or 'no message')}", "check the server's log") from None
        except ValueError as exc:  # a data line that is not JSON
            raise DumaError(f"openai backend: {self.base_url} sent a reply that is not OpenAI's streaming "
                            f"format ({first_line(exc, limit=80)})", FORMAT_HINT) from None

    def _error(self, exc: Exception) -> DumaError:
        """A failed request as one line: what the endpoint did, and what to do."""
        openai = self._openai
        url, o = self.base_url, self.options
        if isinstance(exc, openai.APITimeoutError):
            return DumaError(f"openai backend: {url} did not answer within {o.timeout_s:g} s",
                             "is the server overloaded or the model still loading? raise backend_options.timeout_s")
        if isinstance(exc, openai.APIConnectionError):
            if _caused_by(exc, ConnectionRefusedError):
                return DumaError(f"openai backend: {url} refused the connection",
                                 "is the server running? check backend_options.base_url")
            return DumaError(f"openai backend: cannot reach {url} ({_cause(exc)})",
                             "check backend_options.base_url and that the server is running")
        if isinstance(exc, openai.APIStatusError):
            code, said = exc.status_code, _server_message(exc)
            if code in (401, 403):
                hint = (f"check the key in the environment variable {o.api_key_env}" if self._has_key else
                        f"{o.api_key_env} is not set: export the key there, or name its variable in "
                        "backend_options.api_key_env")
                return DumaError(f"openai backend: {url} refused the API key (HTTP {code}: {said})", hint)
            if code == 404:
                return DumaError(f"openai backend: {url} has no model '{self.spec.model}' (HTTP 404: {said})",
                                 f"check the model name against GET {url}/models, and that base_url "
                                 "ends in /v1")
            return DumaError(f"openai backend: {url} answered HTTP {code}: {said}",
                             "check the request options and the server's log")
        return DumaError(f"openai backend: request to {url} failed: {first_line(exc, with_type=True)}",
                         "check backend_options and the server's log")

    def _last(self, finish: str, usage: Usage | None, messages: Sequence[Message], pieces: int, start: float,
              first_token_s: float | None) -> GenerationChunk:
        if usage is None:
            # A rough estimate: servers stream about one token per chunk.
            usage = Usage(prompt_tokens=self.count_tokens(messages), completion_tokens=pieces)
        return GenerationChunk(done=True, finish_reason=finish, usage=usage,  # type: ignore[arg-type]
                               timings=Timings(first_token_s=first_token_s, total_s=time.perf_counter() - start))


def _caused_by(exc: BaseException, kind: type[BaseException]) -> bool:
    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, kind):
            return True
        seen = seen.__cause__ or seen.__context__
    return False


def _cause(exc: BaseException) -> str:
    """The innermost reason of a connection failure, one line."""
    inner: BaseException = exc
    while (inner.__cause__ or inner.__context__) is not None:
        inner = inner.__cause__ or inner.__context__  # type: ignore[assignment]
    return first_line(inner, with_type=True, limit=120)


def _server_message(exc: Any) -> str:
    """What the server said in an error response: OpenAI's ``{"error": {"message"}}``, FastAPI's
    ``{"detail"}``, or the start of the body."""
    body = getattr(exc, "body", None)
    said: Any = None
    if isinstance(body, dict):
        error = body.get("error", body)
        said = error.get("message") if isinstance(error, dict) else error
        said = said or body.get("detail") or body.get("message")
    if not said:
        try:
            said = exc.response.text
        except Exception:  # a streamed body that cannot be read now
            said = None
    return first_line(str(said), limit=160) if said else "no message"
