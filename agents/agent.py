"""The DUMA agent's Python API: one :class:`Agent` serves many conversations.

A turn: the user message is logged, the router (or the fast mind's own ``Invoke[...]``)
decides whether the slow mind runs, the fast mind's reply streams to the user, and on a
handoff the slow mind's result goes back to the fast mind, which writes the final reply.
Every turn yields the events of :mod:`duma.events`; ``chat`` collects them into a
:class:`Reply`.
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

from pydantic import BaseModel, Field, ValidationError

from duma.backend import Backend, stream_guarded
from duma.config import DumaConfig, MindConfig, config_from
from duma.errors import DumaError, first_line, format_validation_error
from duma.events import (ErrorEvent, Event, FastDone, FastToken, FinalDone, FinalToken, Notice,
                         SlowDone, SlowStep, iterate_in_thread)
from duma.logstore import LoggedMessage, LogStore, Rating
from duma.models import load_backend
from duma.routing import RouteInput, Router
from duma.types import GenerationOptions, Message, ModelSpec, Usage

from . import fast_mind, grammar, protocol
from .slow_mind import SlowMind

OptionsLike = GenerationOptions | dict[str, Any] | None


class Reply(BaseModel):
    """The outcome of one turn (``Agent.chat``)."""

    text: str = Field(description="The reply the user keeps for this turn.")
    conversation_id: str
    interim: str | None = Field(None, description="The fast mind's interim reply when the slow mind ran.")
    slow_ran: bool = False
    slow_finished: bool | None = None
    router: str | None = None
    router_score: float | None = None
    steps: list[SlowStep] = Field(default_factory=list)
    usage: Usage = Field(default_factory=Usage)
    first_token_s: float | None = None
    total_s: float = 0.0
    events: list[Event] = Field(default_factory=list)

    @classmethod
    def from_events(cls, events: list[Any], conversation_id: str) -> Reply:
        """Collect a turn's events; an ``error`` event raises :class:`DumaError`."""
        for ev in events:
            if isinstance(ev, ErrorEvent):
                raise DumaError(ev.message)
        fast = next((e for e in events if isinstance(e, FastDone)), None)
        slow = next((e for e in events if isinstance(e, SlowDone)), None)
        final = next((e for e in events if isinstance(e, FinalDone)), None)
        if final is None:
            raise DumaError("the turn ended without a reply")
        return cls(
            text=final.text, conversation_id=conversation_id,
            interim=fast.text if fast is not None and final.slow_ran else None,
            slow_ran=final.slow_ran, slow_finished=slow.finished if slow else None,
            router=fast.router if fast else None, router_score=fast.router_score if fast else None,
            steps=[e for e in events if isinstance(e, SlowStep)], usage=final.usage,
            first_token_s=final.first_token_s, total_s=final.total_s, events=events,
        )


def load_router(name: str, options: dict[str, Any]) -> Router:
    """The registered router ``name``, built with its options (``agent.router_options``)."""
    from duma import host

    found = host.get("router", name)
    return found(options) if isinstance(found, type) else found


def load_tools(config: DumaConfig) -> dict[str, Any]:
    """The agent's tools by name: every registered tool, or those ``agent.tools`` names
    (unknown names are an error). Tools registered as factories are built here, once, from
    ``config``."""
    from langchain_core.tools import BaseTool

    from duma import host

    registered = host.components("tool")
    names = config.agent.tools
    if names is not None:
        missing = [n for n in names if n not in registered]
        if missing:
            known = ", ".join(sorted(registered)) or "none"
            raise DumaError(f"unknown tool(s) in agent.tools: {', '.join(missing)}",
                            f"known tools: {known}; see 'duma plugins'")
    tools = {}
    for name in names if names is not None else registered:
        obj = registered[name].obj
        tools[name] = obj if isinstance(obj, BaseTool) else obj(config)
    return tools


def tool_runner(knowledge_dir: Path | None, *, tool_timeout_s: float = 10.0) -> SlowMind:
    """A SlowMind without a model over every registered tool (search_knowledge reading
    ``knowledge_dir``): its ``run_tool`` runs an ``Act[...]`` exactly as the agent's slow mind
    does, for the data generator and GRPO's tool loop."""
    tools = load_tools(DumaConfig(agent={"knowledge_dir": knowledge_dir}))
    return SlowMind(None, tools, tool_timeout_s=tool_timeout_s)  # type: ignore[arg-type]  # run_tool needs no model


def model_label(spec: ModelSpec) -> str:
    """How the log names a mind's model: ``model`` or ``model+adapter`` (the shipped minds'
    adapters by name, not by their install path)."""
    if not spec.adapter:
        return spec.model
    from duma.models import shipped_mind_adapter

    for which in ("fast", "slow"):
        if spec.adapter == str(shipped_mind_adapter(which)):
            return f"{spec.model}+duma-{which}-mind"
    return f"{spec.model}+{spec.adapter}"


class Agent:
    """The DUMA agent. Thread-safe: one instance serves many conversations at once.

    ``Agent.from_config(...)`` is the public constructor; ``Agent(config, fast_backend=...,
    slow_backend=..., router=..., tools=...)`` injects components (tests, embedding).
    """

    def __init__(self, config: DumaConfig | dict[str, Any] | str | Path | None = None, *,
                 log_store: LogStore | None = None, log: bool = True,
                 fast_backend: Backend | None = None, slow_backend: Backend | None = None,
                 router: Router | None = None, tools: dict[str, Any] | None = None) -> None:
        self.config = config_from(config)
        agent_cfg = self.config.agent
        self.fast_spec: MindConfig = self.config.mind("fast")
        self.slow_spec: MindConfig = self.config.mind("slow")
        # How the log names each mind's model (computed once, not per logged message).
        self.fast_label, self.slow_label = model_label(self.fast_spec), model_label(self.slow_spec)
        self.runs_minds = self.config.runs_minds()
        if log_store is not None:
            self.log_store = log_store
        elif log and self.config.logging.enabled:
            self.log_store = LogStore(self.config.logging.database)
        else:
            self.log_store = LogStore(":memory:")  # nothing written to disk
        self.router = router if router is not None else load_router(agent_cfg.router, agent_cfg.router_options)
        self.router_name = getattr(self.router, "name", type(self.router).__name__)
        self.tools = tools if tools is not None else load_tools(self.config)
        self._fast_backend = fast_backend
        self._slow_backend = slow_backend
        self._load_lock = threading.Lock()

    @classmethod
    def from_config(cls, config: DumaConfig | dict[str, Any] | str | Path | None = None, *,
                    log_store: LogStore | None = None, log: bool = True) -> Agent:
        """An agent from a config object, a dict of overrides, a YAML path or None (defaults
        and environment). ``log=False`` keeps conversations in memory only."""
        return cls(config, log_store=log_store, log=log)

    # ------------------------------------------------------------------ components
    def load(self) -> None:
        """Load both minds' backends now (otherwise the first turn does it). Minds on the same
        model share one loaded copy (``duma.models.load_backend`` caches per spec)."""
        with self._load_lock:
            if self._fast_backend is not None and self._slow_backend is not None:
                return
            if self._fast_backend is None:
                self._fast_backend = load_backend(self.fast_spec)
            if self._slow_backend is None:
                self._slow_backend = load_backend(self.slow_spec)
            if self.runs_minds:
                # The minds' protocol constraints compile in the background (token masks: about
                # 1 s the first time), not in the first turn's time to first token.
                threading.Thread(target=self._prepare_constraints, name="duma-constraints", daemon=True).start()

    def _prepare_constraints(self) -> None:
        fast, slow = self._fast_backend, self._slow_backend
        assert fast is not None and slow is not None
        try:
            fast.prepare_constraint(grammar.fast_output_pattern(prefilled=fast.capabilities.prefill))
            slow.prepare_constraint(grammar.slow_step_pattern(self.tools))
        except Exception:  # the turn that uses the constraint reports what is wrong with it
            pass

    @property
    def fast_backend(self) -> Backend:
        self.load()
        assert self._fast_backend is not None
        return self._fast_backend

    @property
    def slow_backend(self) -> Backend:
        self.load()
        assert self._slow_backend is not None
        return self._slow_backend

    # ------------------------------------------------------------------ conversations
    def new_conversation(self, name: str | None = None, *, history: Sequence[Message] = ()) -> str:
        """A new conversation. ``history``, user and assistant messages as an OpenAI client
        sends them, is logged into it first (marked ``imported``), so the next turn follows it."""
        unsupported = sorted({m.role for m in history} - {"user", "assistant"})
        if unsupported:
            raise DumaError(f"a conversation's history holds user and assistant messages, not {unsupported[0]}",
                            "pass system prompts as system=")
        cid = self.log_store.new_conversation(model=self.fast_label, name=name, setup=self.setup())
        for message in history:
            kind = fast_mind.KIND_USER if message.role == "user" else fast_mind.KIND_REPLY
            self.log_store.add_message(cid, message, model=self.fast_label if message.role == "assistant" else None,
                                       meta={"kind": kind, "imported": True})
        return cid

    def setup(self) -> dict[str, Any]:
        """How this agent runs a conversation: the mode and both minds' specs (kept with each
        conversation, so continuing it keeps its minds)."""
        return {"mode": "duma" if self.runs_minds else "plain",
                "fast": _portable_spec(self.fast_spec, "fast"), "slow": _portable_spec(self.slow_spec, "slow")}

    def _check_conversation(self, conversation_id: str) -> None:
        if not self.log_store.exists(conversation_id):
            raise DumaError(f"conversation {conversation_id} does not exist",
                            "list them with `duma logs list`")

    def history(self, conversation_id: str, *, internal: bool = False) -> list[Message]:
        """The conversation as the user saw it (``internal=True`` adds the slow mind's results
        as system messages)."""
        self._check_conversation(conversation_id)
        logged = self.log_store.messages(conversation_id)
        if internal:
            return [m.as_message() for m in logged]
        return fast_mind.visible_history(logged)

    def feedback(self, conversation_id: str, score: int | str, note: str | None = None,
                 message_id: int | None = None) -> Rating:
        """Rate a reply: ``score`` is +1 or -1, or ``"good"``/``"bad"``; ``note`` says why.
        Rates the conversation's last assistant message (the last thing the user saw: the final
        reply, or the interim one of a turn cut before its final reply), or the assistant
        message ``message_id``. A message rated again keeps its newest rating (the returned
        :class:`Rating`); ``duma logs export`` turns ratings into training records."""
        key = score.strip().lower() if isinstance(score, str) else score
        value = None if isinstance(score, bool) else _SCORES.get(key)  # True is not +1 here
        if value is None:
            raise DumaError(f"score must be +1/-1 or 'good'/'bad', not {score!r}")
        self._check_conversation(conversation_id)
        replies = [m for m in self.log_store.messages(conversation_id) if m.role == "assistant"]
        if message_id is None:
            if not replies:
                raise DumaError(f"conversation {conversation_id} has no reply to rate yet")
            target = replies[-1]
        else:
            found = next((m for m in replies if m.id == message_id), None)
            if found is None:
                raise DumaError(f"message {message_id} is not an assistant message of conversation "
                                f"{conversation_id}", "see the message ids with `duma logs show ID --json`")
            target = found
        note = note.strip() if note and note.strip() else None
        return self.log_store.add_rating(conversation_id, target.id, value, note)

    def _fast_options(self, options: OptionsLike) -> GenerationOptions:
        base = self.fast_spec.options
        if options is None:
            merged = base
        elif isinstance(options, GenerationOptions):
            merged = options
        else:
            try:
                merged = GenerationOptions.model_validate({**base.model_dump(), **dict(options)})
            except ValidationError as exc:
                raise DumaError(f"bad generation options: {format_validation_error(exc)}",
                                "see GenerationOptions for the allowed keys") from None
        stop = list(dict.fromkeys([*merged.stop, *protocol.FAST_STOP]))
        return merged.model_copy(update={"stop": stop})

    # ------------------------------------------------------------------ turns
    def stream(self, text: str, conversation_id: str | None = None, *, system: str | None = None,
               options: OptionsLike = None, cancel: threading.Event | None = None) -> Iterator[Event]:
        """Run one turn, yielding its events as they happen (every event carries the
        conversation id). An unknown conversation or bad options raise :class:`DumaError`
        here; a failure during the turn (e.g. an empty message) is an ``error`` event.
        Setting ``cancel`` (from any thread) stops the turn as closing the stream does."""
        fast_options = self._fast_options(options)
        # Lone surrogates (undecodable input bytes) cannot be stored as UTF-8: replace them.
        text = text.encode("utf-8", errors="replace").decode("utf-8") if text else text
        if conversation_id is not None:
            self._check_conversation(conversation_id)
        if not text or not text.strip():  # refused before a conversation is created for it
            return iter([ErrorEvent(conversation_id=conversation_id, message="empty message")])
        self.load()
        if conversation_id is None:
            conversation_id = self.new_conversation()
        return TurnStream(self, text, conversation_id, system, fast_options, cancel)

    def chat(self, text: str, conversation_id: str | None = None, *, system: str | None = None,
             options: OptionsLike = None) -> Reply:
        """Run one turn and return its :class:`Reply` (an ``error`` event raises DumaError)."""
        events = list(self.stream(text, conversation_id, system=system, options=options))
        cid = events[0].conversation_id if events else conversation_id
        return Reply.from_events(events, cid or "")

    def astream(self, text: str, conversation_id: str | None = None, *, system: str | None = None,
                options: OptionsLike = None, on_end: Callable[[], None] | None = None) -> AsyncIterator[Event]:
        """:meth:`stream` for asyncio (``async for event in agent.astream(...)``): the turn runs
        in a worker thread and its events arrive through a queue, so the event loop is never
        blocked. Leaving the loop early (or the task being cancelled, e.g. by a client that went
        away) cancels the turn at once. ``on_end`` is called in the worker once the turn has
        ended, generation stopped and the log written (a server frees the turn's slot there)."""
        def turn(cancel: threading.Event) -> Iterator[Event]:
            return self.stream(text, conversation_id, system=system, options=options, cancel=cancel)

        return iterate_in_thread(turn, on_end=on_end, name="duma-turn")

    async def achat(self, text: str, conversation_id: str | None = None, *,
                    system: str | None = None, options: OptionsLike = None) -> Reply:
        events = [ev async for ev in self.astream(text, conversation_id, system=system, options=options)]
        cid = events[0].conversation_id if events else conversation_id
        return Reply.from_events(events, cid or "")

    def _run_turn(self, text: str, cid: str, system: str | None, options: GenerationOptions,
                  cancel: threading.Event, put: Callable[[Any], None]) -> None:
        """One turn, start to end, handing each event to ``put`` (runs in the turn's worker)."""
        try:
            with self.log_store.turn_lock(cid):
                for event in TurnRun(self, text, cid, system, options, cancel).run():
                    put(event)
        except DumaError as exc:
            put(ErrorEvent(conversation_id=cid, message=str(exc)))
        except Exception as exc:  # a backend or tool failure ends this turn, not the process
            put(ErrorEvent(conversation_id=cid, message=first_line(exc, with_type=True)))


class TurnStream(Iterator[Event]):
    """The events of one turn as it runs in a worker thread of its own.

    The worker never waits for the reader: a caller that reads slowly, or pauses between
    events, holds neither the model nor the conversation, and other conversations go on.
    Closing the stream (or dropping it) cancels the turn: generation stops at its next token
    (a running tool call finishes first) and the part of the reply already shown is logged,
    marked as interrupted.
    """

    _END = object()

    def __init__(self, agent: Agent, text: str, cid: str, system: str | None,
                 options: GenerationOptions, cancel: threading.Event | None = None) -> None:
        self.conversation_id = cid
        self._events: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._cancel = cancel or threading.Event()
        self._finished = False
        # The worker holds the queue and the event, never this object: dropping the stream
        # must be able to collect it (and so cancel the turn).
        self._worker = threading.Thread(target=self._work, name=f"duma-turn-{cid}", daemon=True,
                                        args=(agent, text, cid, system, options, self._cancel, self._events))
        self._worker.start()

    @staticmethod
    def _work(agent: Agent, text: str, cid: str, system: str | None, options: GenerationOptions,
              cancel: threading.Event, events: queue.SimpleQueue[Any]) -> None:
        try:
            agent._run_turn(text, cid, system, options, cancel, events.put)
        finally:
            events.put(TurnStream._END)

    def __next__(self) -> Event:
        if self._finished:
            raise StopIteration
        item = self._events.get()
        if item is self._END:
            self._finished = True
            raise StopIteration
        return item

    def close(self, timeout_s: float = 10.0) -> None:
        """Cancel the turn if it is still running and wait (bounded) until it has logged what
        it has, so a process that exits right after still has its partial reply logged."""
        self._cancel.set()
        self._finished = True
        if self._worker.is_alive() and threading.current_thread() is not self._worker:
            self._worker.join(timeout_s)

    def __del__(self) -> None:
        self._cancel.set()  # abandoned: stop generating; never block the garbage collector


class TurnCancelled(Exception):
    """The reader closed the turn's stream: stop generating."""


class TurnRun:
    """One turn of one conversation (runs under that conversation's lock)."""

    def __init__(self, agent: Agent, text: str, cid: str, system: str | None,
                 options: GenerationOptions, cancel: threading.Event | None = None) -> None:
        self.cancel = cancel or threading.Event()
        # What the user has seen of the reply being written (logged if the turn is cut).
        self.shown: list[str] = []
        self.user_logged = False
        self.interim_logged = False
        self.reply_logged = False
        self.agent = agent
        self.text = text
        self.cid = cid
        self.system = system
        self.store = agent.log_store
        self.cfg = agent.config.agent
        self.fast = agent.fast_backend
        self.options = fast_mind.cap_max_tokens(self.fast, options)
        self.started = time.perf_counter()
        self.first_token_s: float | None = None
        self.usage = Usage()

    def _add_usage(self, usage: Usage) -> None:
        self.usage = Usage(prompt_tokens=self.usage.prompt_tokens + usage.prompt_tokens,
                           completion_tokens=self.usage.completion_tokens + usage.completion_tokens)

    def _mark_first_token(self) -> None:
        if self.first_token_s is None:
            self.first_token_s = time.perf_counter() - self.started

    def _log(self, role: str, content: str, meta: dict[str, Any], usage: Usage | None = None,
             timed: bool = False) -> None:
        if role == "assistant":
            model: str | None = self.agent.fast_label
        elif meta.get("kind") == fast_mind.KIND_SLOW:
            model = self.agent.slow_label
        else:
            model = None
        self.store.add_message(
            self.cid, Message(role=role, content=content),  # type: ignore[arg-type]
            model=model,
            options=self.options.model_dump() if role == "assistant" else None,
            prompt_tokens=usage.prompt_tokens if usage else None,
            completion_tokens=usage.completion_tokens if usage else None,
            first_token_s=self.first_token_s if timed else None,
            total_s=time.perf_counter() - self.started if timed else None,
            meta=meta)

    def _fit(self, messages: list[Message]) -> tuple[list[Message], Notice | None]:
        fitted = fast_mind.fit_to_context(self.fast, messages, self.options.max_tokens,
                                          fast_mind.is_user_turn)
        note = fitted.notice()
        return fitted.messages, (Notice(conversation_id=self.cid, message=note) if note else None)

    def _shown(self, delta: str) -> str:
        self._stop_if_cancelled()
        self.shown.append(delta)
        return delta

    def _stop_if_cancelled(self) -> None:
        if self.cancel.is_set():
            raise TurnCancelled

    def run(self) -> Iterator[Event]:
        try:
            for event in self._run():
                yield event
                yield from self._write_problem()
        except TurnCancelled:
            self._log_interrupted()
        except Exception as exc:  # the reply shown so far is kept with the error that cut it
            self._log_interrupted(error=first_line(exc, with_type=True))
            raise
        yield from self._write_problem()

    def _write_problem(self) -> Iterator[Notice]:
        problem = self.store.take_write_problem()
        if problem:
            yield Notice(conversation_id=self.cid, message=problem)

    def _log_interrupted(self, error: str | None = None) -> None:
        """Close a cut turn in the log with what the user saw, so no shown text is lost and
        the next turn follows an assistant message."""
        if self.reply_logged or not self.user_logged or (self.interim_logged and not self.shown):
            return  # closed already (the interim reply closes a turn), or nothing to close
        meta: dict[str, Any] = {"kind": fast_mind.KIND_REPLY, "interrupted": True}
        if error:
            meta["error"] = error
        try:
            self._log("assistant", "".join(self.shown).strip(), meta, usage=self.usage, timed=True)
        except DumaError:
            pass  # the log itself failed: the error event reports the turn's failure
        self.reply_logged = True

    def _close_unanswered_turn(self, history: list[LoggedMessage]) -> list[LoggedMessage]:
        """A process killed mid-turn leaves a user message with no reply: close that turn
        first, so the dialogue never has two user messages in a row."""
        if not history or history[-1].role != "user":
            return history
        self._log("assistant", "", {"kind": fast_mind.KIND_REPLY, "interrupted": True})
        return self.store.messages(self.cid)

    def _run(self) -> Iterator[Event]:
        cid = self.cid
        history = self._close_unanswered_turn(self.store.messages(cid))
        # Logged before generation starts: a killed process keeps the user's message.
        self._log("user", self.text, {"kind": fast_mind.KIND_USER})
        self.user_logged = True
        if not self.agent.runs_minds:
            yield from self._run_plain(history)
            return

        decision = self.agent.router.route(
            RouteInput(text=self.text, history=fast_mind.visible_history(history)))
        system_prompt = fast_mind.fast_system_prompt(self.agent.fast_spec.system_prompt, self.system)
        context = fast_mind.build_context(system_prompt, history, self.text, self.cfg.memory_turns)
        context, notice = self._fit(context)
        if notice:
            yield notice

        fast_meta: dict[str, Any] = {"router": self.agent.router_name, "router_score": decision.score}
        promise_kept = False
        if decision.slow is True:
            # The router already chose the slow mind: a fixed interim reply, no model call.
            interim = fast_mind.INTERIM_TEMPLATE
            self._mark_first_token()
            yield FastToken(conversation_id=cid, text=interim)
            invoke, parse_ok, raw, fast_usage, reply = True, True, None, Usage(), interim
        else:
            fast_pass = fast_mind.FastPass()
            for delta in fast_mind.stream_fast(self.fast, context, self.options, fast_pass, cancel=self.cancel):
                self._mark_first_token()
                yield FastToken(conversation_id=cid, text=self._shown(delta))
            self._stop_if_cancelled()
            out = fast_pass.output
            assert out is not None
            # A router that decided "fast" overrides the fast mind's Invoke[...].
            invoke = out.invoke if decision.slow is None else False
            parse_ok, raw, fast_usage, reply = out.parse_ok, out.raw, fast_pass.usage, out.response
            # The user has just read "let me check": a small fast mind's Invoke[False] after it
            # is the less reliable half of a contradictory output.
            promise_kept = not invoke and decision.slow is None and self.cfg.keep_promises \
                and fast_mind.promises_lookup(reply)
            if promise_kept:
                invoke = True
                fast_meta["promise_kept"] = True
            if invoke and not reply:
                reply = fast_mind.INTERIM_TEMPLATE
                self._mark_first_token()
                yield FastToken(conversation_id=cid, text=reply)
            elif not reply and not invoke:
                reply = "(no reply)"  # the model wrote nothing usable
                self._mark_first_token()
                yield FastToken(conversation_id=cid, text=reply)
        self._add_usage(fast_usage)
        yield FastDone(conversation_id=cid, text=reply, invoke=invoke, router=self.agent.router_name,
                       router_score=decision.score, parse_ok=parse_ok, raw=raw, promise_kept=promise_kept,
                       usage=fast_usage, first_token_s=self.first_token_s)
        fast_meta.update(invoke=invoke, parse_ok=parse_ok, raw=raw)

        if not invoke:
            self._log("assistant", reply, {"kind": fast_mind.KIND_REPLY, "slow_ran": False, **fast_meta},
                      usage=self.usage, timed=True)
            self.reply_logged = True
            yield FinalDone(conversation_id=cid, text=reply, slow_ran=False, usage=self.usage,
                            first_token_s=self.first_token_s, total_s=time.perf_counter() - self.started)
            return

        # Handoff: the interim reply is logged now, so it survives a kill during the slow mind.
        self._log("assistant", reply, {"kind": fast_mind.KIND_INTERIM, **fast_meta}, usage=fast_usage)
        self.interim_logged = True
        self.shown = []  # what follows is the final reply
        slow_done: SlowDone | None = None
        trace: list[dict[str, Any]] = []
        for ev in self._run_slow(history):
            self._stop_if_cancelled()
            if isinstance(ev, SlowDone):
                slow_done = ev
            else:
                trace.append(ev.model_dump(include={"index", "reason", "action", "observation"}))
            yield ev
        assert slow_done is not None
        self._add_usage(slow_done.usage)
        # The steps are kept with the turn: `duma logs show` and training data read them.
        self._log("system", slow_done.result,
                  {"kind": fast_mind.KIND_SLOW, "finished": slow_done.finished, "steps": slow_done.steps,
                   "trace": trace},
                  usage=slow_done.usage)

        final_context = [*context,
                         Message(role="assistant", content=protocol.format_fast_output(reply, True)),
                         Message(role="user", content=protocol.format_slow_mind(slow_done.result))]
        final_context, notice = self._fit(final_context)
        if notice:
            yield notice
        final_pass = fast_mind.FastPass()
        for delta in fast_mind.stream_fast(self.fast, final_context, self.options, final_pass,
                                           hold_raw=True, cancel=self.cancel):
            yield FinalToken(conversation_id=cid, text=self._shown(delta))
        self._stop_if_cancelled()
        out = final_pass.output
        assert out is not None
        self._add_usage(final_pass.usage)
        final_text = out.response
        fallback = final_pass.held_back or not final_text
        if fallback:
            # Garbled final output: the user still gets the slow mind's result.
            final_text = fallback_reply(slow_done, out.response)
            yield FinalToken(conversation_id=cid, text=final_text)
        self._log("assistant", final_text,
                  {"kind": fast_mind.KIND_REPLY, "slow_ran": True, "slow_finished": slow_done.finished,
                   "slow_steps": slow_done.steps, "final_parse_ok": out.parse_ok, "final_raw": out.raw,
                   "fallback": fallback, **fast_meta},
                  usage=self.usage, timed=True)
        self.reply_logged = True
        yield FinalDone(conversation_id=cid, text=final_text, slow_ran=True, usage=self.usage,
                        first_token_s=self.first_token_s, total_s=time.perf_counter() - self.started)

    def _run_plain(self, history: list[LoggedMessage]) -> Iterator[Event]:
        """A turn with a model that is not a mind: its own chat template, no protocol."""
        system = self.system or self.agent.fast_spec.system_prompt
        context = ([Message(role="system", content=system)] if system else []) + [
            *fast_mind.visible_history(history), Message(role="user", content=self.text)]
        fitted = fast_mind.fit_to_context(self.fast, context, self.options.max_tokens,
                                          lambda m: m.role == "user")
        if fitted.notice():
            yield Notice(conversation_id=self.cid, message=fitted.notice() or "")
        options = self.options.model_copy(
            update={"stop": [s for s in self.options.stop if s not in protocol.FAST_STOP]})
        usage = Usage()
        for chunk in stream_guarded(self.fast, fitted.messages, options, cancel=self.cancel):
            if chunk.text:
                self._mark_first_token()
                yield FastToken(conversation_id=self.cid, text=self._shown(chunk.text))
            if chunk.done and chunk.usage:
                usage = chunk.usage
        self._stop_if_cancelled()
        reply = "".join(self.shown).strip() or "(no reply)"
        self._add_usage(usage)
        yield FastDone(conversation_id=self.cid, text=reply, invoke=False, usage=usage,
                       first_token_s=self.first_token_s)
        self._log("assistant", reply, {"kind": fast_mind.KIND_REPLY, "slow_ran": False, "plain": True},
                  usage=self.usage, timed=True)
        self.reply_logged = True
        yield FinalDone(conversation_id=self.cid, text=reply, slow_ran=False, usage=self.usage,
                        first_token_s=self.first_token_s, total_s=time.perf_counter() - self.started)

    def _slow_options(self, slow_backend: Backend) -> GenerationOptions:
        """The slow mind's options, each step capped: a step is one Reason and one Act, so a
        model that rambles is cut short instead of spending the turn's whole time budget."""
        options = fast_mind.cap_max_tokens(slow_backend, self.agent.slow_spec.options)
        cap = self.cfg.slow_step_max_tokens
        return options if options.max_tokens <= cap else options.model_copy(update={"max_tokens": cap})

    def _run_slow(self, history: list[LoggedMessage]) -> Iterator[SlowStep | SlowDone]:
        slow_backend = self.agent.slow_backend
        slow = SlowMind(slow_backend, self.agent.tools, system_prompt=self.agent.slow_spec.system_prompt,
                        options=self._slow_options(slow_backend),
                        max_steps=self.cfg.max_slow_steps, timeout_s=self.cfg.slow_timeout_s,
                        tool_timeout_s=self.cfg.tool_timeout_s)
        query = fast_mind.retrospect(history, self.text, self.cfg.memory_turns)

        def fit(messages: list[Message]) -> list[Message]:
            return fast_mind.fit_to_context(slow_backend, messages, slow.options.max_tokens,
                                            lambda m: False, keep="end").messages

        yield from slow.run(query, conversation_id=self.cid, fit=fit, cancel=self.cancel)


_SCORES: dict[int | str, int] = {1: 1, -1: -1, "+1": 1, "-1": -1, "good": 1, "bad": -1}


def _portable_spec(spec: MindConfig, which: str) -> dict[str, Any]:
    """A mind's spec as a conversation keeps it: the shipped adapter is left out (the config
    puts it back on the embedded model), so no install path is stored."""
    from duma.models import shipped_mind_adapter

    data = spec.model_dump(mode="json")
    if spec.adapter is not None and spec.adapter == str(shipped_mind_adapter(which)):
        data["adapter"] = None
    return data


def fallback_reply(slow_done: SlowDone, raw_reply: str) -> str:
    """A reply built from the slow mind's result when the fast mind's final output is garbled
    (kept as is when it already contains the result)."""
    result = slow_done.result.strip()
    raw_reply = raw_reply.strip()
    if raw_reply and result and result in raw_reply:
        return raw_reply
    if slow_done.finished:
        return f"Here is what I found: {result}"
    return f"I could not finish looking into this. {result}"


__all__ = ["Agent", "Reply", "load_router", "load_tools", "tool_runner"]
