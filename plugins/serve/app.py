"""The OpenAI-compatible HTTP server on FastAPI: ``create_app(agent)`` for a service that
mounts it in its own ASGI app, and what ``duma serve`` runs under uvicorn.

Models: ``duma`` is the agent with its configured router, ``duma/<router>`` the agent with any
registered router, ``fast`` and ``slow`` the bare minds (no protocol handling, no log).
Every turn goes through the agent's one event stream (:meth:`Agent.astream`).
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Sequence
from contextlib import asynccontextmanager
from importlib import resources
from typing import TYPE_CHECKING, Any, TypeVar

from fastapi import FastAPI, Request
from fastapi.responses import HTMLResponse, JSONResponse, Response, StreamingResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from duma.backend import stream_guarded
from duma.errors import DumaError, first_line
from duma.types import Message

from .limits import Admission, ApiKeys, BodyLimit, Slot, read_api_keys
from .metrics import ServerMetrics
from .openai_api import (CONVERSATION_HEADER, ApiError, ChatCompletionRequest, Completion, Dialogue, error_body,
                         generation_options, parse_request, split_messages)

if TYPE_CHECKING:
    from duma.agents import Agent
    from duma.config import ServeConfig

CHAT_ROUTE = "/v1/chat/completions"
T = TypeVar("T")
MINDS = ("fast", "slow")


class ServerState:
    """What the routes share: the agent (and one per other router), loading, limits, metrics."""

    def __init__(self, agent: Agent, settings: ServeConfig, api_keys: Sequence[str]) -> None:
        self.agent = agent
        self.settings = settings
        self.keys = ApiKeys(api_keys)
        self.metrics = ServerMetrics()
        self.admission = Admission(settings.max_concurrent, settings.max_queue, self.metrics)
        self.loaded = threading.Event()
        self.load_error: str | None = None
        self._loading: threading.Thread | None = None
        self._lock = threading.Lock()
        self._router_agents: dict[str, Agent] = {}

    # loading --------------------------------------------------------------
    def start_loading(self) -> None:
        """Load both minds in a thread of their own: the server answers /health (503) meanwhile."""
        with self._lock:
            if self._loading is None:
                self._loading = threading.Thread(target=self._load, name="duma-serve-load", daemon=True)
                self._loading.start()

    def _load(self) -> None:
        try:
            self.agent.load()
        except Exception as exc:  # reported by /health and by `duma serve`, which then exits
            self.load_error = first_line(exc, with_type=not isinstance(exc, DumaError))
        finally:
            self.loaded.set()

    def check_ready(self) -> None:
        self.start_loading()
        if self.load_error is not None:
            raise ApiError(503, f"the models failed to load: {self.load_error}", kind="server_error",
                           code="load_failed")
        if not self.loaded.is_set():
            raise ApiError(503, "the models are loading; retry shortly", kind="server_error", code="loading",
                           headers={"Retry-After": "5"})

    # models ---------------------------------------------------------------
    def model_names(self) -> list[str]:
        from duma import host

        names = ["duma"]
        if self.agent.runs_minds:  # the configured router's own name is `duma` itself
            names += [f"duma/{router}" for router in sorted(host.components("router"))
                      if router != self.agent.router_name]
        return names + list(MINDS)

    def agent_for(self, model: str) -> Agent | None:
        """The agent that runs ``model`` (None for a bare mind); unknown names are a 404."""
        if model in MINDS:
            return None
        if model not in self.model_names() and model != f"duma/{self.agent.router_name}":
            raise ApiError(404, f"the model '{model}' does not exist; GET /v1/models lists them", param="model",
                           code="model_not_found")
        router = model.partition("/")[2] or self.agent.router_name
        if router == self.agent.router_name:
            return self.agent
        with self._lock:
            if router not in self._router_agents:
                self._router_agents[router] = self._agent_with_router(router)
            return self._router_agents[router]

    def _agent_with_router(self, router: str) -> Agent:
        from duma.agents import Agent
        from duma.agents.agent import load_router

        base = self.agent
        options = base.config.agent.router_options if base.config.agent.router == router else {}
        config = base.config.model_copy(
            update={"agent": base.config.agent.model_copy(update={"router": router, "router_options": options})})
        return Agent(config, log_store=base.log_store, fast_backend=base.fast_backend,
                     slow_backend=base.slow_backend, router=load_router(router, options), tools=base.tools)


def create_app(agent: Agent | None = None, settings: ServeConfig | None = None, *,
               api_keys: Sequence[str] | None = None) -> FastAPI:
    """The server as an ASGI app. ``agent``: default ``Agent.from_config()``; ``settings``: the
    agent's ``serve`` section; ``api_keys``: default those of ``serve.api_key_file`` and
    ``DUMA_API_KEY`` (an empty list: no auth). The minds load in the background from startup
    (or from the first request when mounted in an app that runs no sub-app lifespans)."""
    if agent is None:
        from duma.agents import Agent

        agent = Agent.from_config()
    settings = settings or agent.config.serve
    keys = read_api_keys(key_file=settings.api_key_file) if api_keys is None else list(api_keys)
    state = ServerState(agent, settings, keys)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        state.start_loading()
        yield

    app = FastAPI(title="duma", summary="The DUMA agent over the OpenAI API", lifespan=lifespan,
                  docs_url=None, redoc_url=None, openapi_url=None)
    app.state.duma = state
    if settings.cors_origins:
        from fastapi.middleware.cors import CORSMiddleware

        app.add_middleware(CORSMiddleware, allow_origins=settings.cors_origins, allow_methods=["GET", "POST"],
                           allow_headers=["Authorization", "Content-Type", CONVERSATION_HEADER],
                           expose_headers=[CONVERSATION_HEADER])
    app.add_middleware(BodyLimit, max_bytes=settings.max_body_bytes)

    @app.exception_handler(ApiError)
    async def api_error(request: Request, exc: ApiError) -> JSONResponse:
        state.metrics.requests.labels(_model_label(request), request.url.path, str(exc.status)).inc()
        return JSONResponse(exc.body(), status_code=exc.status, headers=exc.headers)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        message = "no such route" if exc.status_code == 404 else str(exc.detail)
        return JSONResponse(error_body(message), status_code=exc.status_code, headers=exc.headers)

    @app.exception_handler(ClientGone)
    async def client_gone(request: Request, exc: ClientGone) -> Response:
        state.metrics.cancellations.labels(_model_label(request)).inc()
        state.metrics.requests.labels(_model_label(request), request.url.path, "cancelled").inc()
        return Response(status_code=499)  # nobody reads it: nginx's "client closed request"

    @app.exception_handler(Exception)
    async def unexpected_error(request: Request, exc: Exception) -> JSONResponse:
        state.metrics.requests.labels(_model_label(request), request.url.path, "500").inc()
        return JSONResponse(error_body(first_line(exc, with_type=True), kind="server_error"), status_code=500)

    @app.get("/health", include_in_schema=False)
    async def health() -> JSONResponse:
        state.check_ready()
        return JSONResponse({"status": "ok", "models": state.model_names()})

    @app.get("/", include_in_schema=False)
    async def page() -> HTMLResponse:
        return HTMLResponse(_page_html())

    @app.get("/metrics", include_in_schema=False)
    async def metrics(request: Request) -> Response:
        state.keys.check(request.headers.get("authorization"))
        body, content_type = state.metrics.render()
        return Response(body, media_type=content_type)

    @app.get("/v1/models")
    async def list_models(request: Request) -> JSONResponse:
        state.keys.check(request.headers.get("authorization"))
        return JSONResponse({"object": "list", "data": [_model_card(name) for name in state.model_names()]})

    @app.get("/v1/models/{model:path}")
    async def get_model(model: str, request: Request) -> JSONResponse:
        state.keys.check(request.headers.get("authorization"))
        if model not in state.model_names():
            raise ApiError(404, f"the model '{model}' does not exist", param="model", code="model_not_found")
        return JSONResponse(_model_card(model))

    @app.post(CHAT_ROUTE)
    async def chat_completions(request: Request) -> Response:
        arrived = time.perf_counter()
        state.keys.check(request.headers.get("authorization"))
        try:
            data = json.loads(await request.body())
        except ValueError:
            raise ApiError(400, "the request body is not valid JSON") from None
        body = parse_request(data)
        request.state.model = body.model
        if body.n not in (None, 1):
            raise ApiError(400, "n must be 1: duma writes one reply per turn", param="n")
        target = state.agent_for(body.model)
        dialogue = split_messages(body, state.settings.max_messages)
        state.check_ready()
        mind = target.fast_spec if target is not None else getattr(state.agent, f"{body.model}_spec")
        options = generation_options(body, mind.options, state.settings.max_tokens)
        slot = await _unless_client_leaves(request, state.admission.enter())
        try:
            if target is None:
                completion = Completion(body.model)
                items = await _bare_mind_stream(state.agent, body.model, dialogue, options, slot)
                translate: Callable[[Any], list[dict[str, Any]]] = completion.from_generation
                headers: dict[str, str] = {}
            else:
                cid = await asyncio.to_thread(_conversation_for, target, body, request, dialogue)
                completion = Completion(body.model, cid)
                items = target.astream(dialogue.text, cid, system=dialogue.system, options=options,
                                       on_end=slot.release)
                translate = completion.from_event
                headers = {CONVERSATION_HEADER: cid}
        except BaseException:
            slot.release()
            raise
        if body.stream:
            include_usage = bool(body.stream_options and body.stream_options.include_usage)
            stream = _sse(state, completion, items, translate, include_usage, arrived)
            return StreamingResponse(stream, media_type="text/event-stream",
                                     headers={**headers, "Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
        async def collect() -> None:
            try:
                async for item in items:
                    translate(item)
                    if completion.error:
                        break
            finally:
                await items.aclose()

        await _unless_client_leaves(request, collect())
        _observe(state, completion, arrived, "500" if completion.error else "200")
        if completion.error:
            raise ApiError(500, completion.error, kind="server_error")
        return JSONResponse(completion.response(), headers=headers)

    return app


class ClientGone(Exception):
    """The client disconnected before its answer was ready."""


async def _unless_client_leaves(request: Request, work: Awaitable[T]) -> T:
    """Await ``work``, cancelling it if the client disconnects first (a client that gave up
    while queued or while a whole reply was generated for it frees its slot at once)."""
    async def left() -> None:
        while (await request.receive())["type"] != "http.disconnect":
            pass

    task = asyncio.ensure_future(work)
    watcher = asyncio.ensure_future(left())
    try:
        await asyncio.wait({task, watcher}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        watcher.cancel()
        if not task.done():
            task.cancel()
    if task.cancelled() or not task.done():
        try:
            await task
        except asyncio.CancelledError:
            pass
        raise ClientGone
    return task.result()


def _model_label(request: Request) -> str:
    return getattr(request.state, "model", "") or ""


def _model_card(name: str) -> dict[str, Any]:
    return {"id": name, "object": "model", "created": 0, "owned_by": "duma"}


def _page_html() -> str:
    return resources.files("duma.plugins.serve").joinpath("page.html").read_text(encoding="utf-8")


def _conversation_for(agent: Agent, body: ChatCompletionRequest, request: Request, dialogue: Dialogue) -> str:
    """The duma conversation a request continues (by the extension field or the header), or a
    new one holding the history the client sent."""
    cid = (body.duma.conversation_id if body.duma else None) or request.headers.get(CONVERSATION_HEADER)
    if cid:
        if not agent.log_store.exists(cid):
            raise ApiError(404, f"the conversation '{cid}' does not exist", param="duma.conversation_id",
                           code="conversation_not_found")
        return cid
    return agent.new_conversation(name="api", history=dialogue.history)


async def _bare_mind_stream(agent: Agent, which: str, dialogue: Dialogue, options: Any,
                            slot: Slot) -> AsyncIterator[Any]:
    """A bare mind's generation chunks: the messages as sent, the mind's own backend."""
    from duma.events import iterate_in_thread

    backend = agent.fast_backend if which == "fast" else agent.slow_backend
    messages = ([Message(role="system", content=dialogue.system)] if dialogue.system else []) + [
        *dialogue.history, Message(role="user", content=dialogue.text)]
    needed = await asyncio.to_thread(backend.count_tokens, messages)
    if needed + options.max_tokens > backend.context_length:
        raise ApiError(400, f"the messages take {needed} tokens and max_tokens is {options.max_tokens}: over the "
                       f"model's context of {backend.context_length} tokens", param="messages",
                       code="context_length_exceeded")

    def produce(cancel: threading.Event) -> Iterator[Any]:
        return stream_guarded(backend, messages, options, cancel=cancel)

    return iterate_in_thread(produce, on_end=slot.release, name=f"duma-{which}")


def _data(payload: dict[str, Any]) -> str:
    return f"data: {json.dumps(payload, ensure_ascii=False)}\n\n"


async def _sse(state: ServerState, completion: Completion, items: AsyncIterator[Any],
               translate: Callable[[Any], list[dict[str, Any]]], include_usage: bool,
               started: float) -> AsyncIterator[str]:
    """Server-sent events of one completion; a client that goes away cancels the turn (the
    response task is cancelled, which cancels ``items``)."""
    status = "cancelled"
    try:
        yield _data(completion.first_chunk())
        async for item in items:
            for chunk in translate(item):
                yield _data(chunk)
            if completion.error:
                break
        if completion.error:
            status = "error"
            yield _data(completion.error_chunk())
        else:
            status = "200"
            if include_usage:
                yield _data(completion.usage_chunk())
        yield "data: [DONE]\n\n"
    finally:
        await items.aclose()
        if status == "cancelled":
            state.metrics.cancellations.labels(completion.model).inc()
        _observe(state, completion, started, status)


def _observe(state: ServerState, completion: Completion, started: float, status: str) -> None:
    metrics = state.metrics
    metrics.requests.labels(completion.model, CHAT_ROUTE, status).inc()
    if completion.first_output_at is not None:
        metrics.first_token.labels(completion.model).observe(completion.first_output_at - started)
    if completion.slow_ran:
        metrics.handoffs.labels(completion.model).inc()
