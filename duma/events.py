"""The event stream of a turn. ``duma chat``, the Python API and the server all consume
this one stream. Every event is a pydantic model with a ``type`` tag and a timestamp.

A fast-path turn: ``fast_token``* -> ``fast_done`` (invoke=False) -> ``final_done``.
A slow-path turn: ``fast_token``* (the interim reply) -> ``fast_done`` (invoke=True) ->
``slow_step``* -> ``slow_done`` -> ``final_token``* -> ``final_done``.
``notice`` may appear anywhere (e.g. history trimmed); ``error`` ends a failed turn.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Annotated, Any, Literal, TypeVar, Union

from pydantic import BaseModel, Field, TypeAdapter

from duma.types import Usage


class _Event(BaseModel):
    timestamp: float = Field(default_factory=time.time)
    conversation_id: str | None = None


class FastToken(_Event):
    type: Literal["fast_token"] = "fast_token"
    text: str


class FastDone(_Event):
    type: Literal["fast_done"] = "fast_done"
    text: str = Field(description="The fast mind's reply (the interim reply when invoking).")
    invoke: bool = False
    router: str | None = None
    router_score: float | None = None
    parse_ok: bool = True
    raw: str | None = Field(None, description="The fast mind's raw output, protocol included.")
    promise_kept: bool = Field(False, description="The reply promised a lookup after Invoke[False] and the "
                               "agent invoked the slow mind anyway (agent.keep_promises).")
    usage: Usage = Field(default_factory=Usage)
    first_token_s: float | None = None


class SlowStep(_Event):
    type: Literal["slow_step"] = "slow_step"
    index: int
    reason: str = ""
    action: str | None = None
    observation: str | None = None

    def describe(self) -> list[str]:
        """``Reason: ...``, ``Act: ...``, ``Obs: ...`` lines (how the terminal, the log viewer
        and the server's reasoning stream show a step)."""
        lines = []
        if self.reason:
            lines.append(f"Reason: {self.reason}")
        if self.action:
            lines.append(f"Act: {self.action}")
        if self.observation is not None:
            lines.append(f"Obs: {self.observation}")
        return lines or [f"step {self.index}"]


class SlowDone(_Event):
    type: Literal["slow_done"] = "slow_done"
    result: str
    finished: bool = Field(True, description="False when a step or time limit stopped it.")
    steps: int = 0
    usage: Usage = Field(default_factory=Usage)


class FinalToken(_Event):
    type: Literal["final_token"] = "final_token"
    text: str


class FinalDone(_Event):
    type: Literal["final_done"] = "final_done"
    text: str = Field(description="The reply the user keeps for this turn.")
    slow_ran: bool = False
    usage: Usage = Field(default_factory=Usage)
    first_token_s: float | None = None
    total_s: float = 0.0


class Notice(_Event):
    type: Literal["notice"] = "notice"
    message: str


class ErrorEvent(_Event):
    type: Literal["error"] = "error"
    message: str


Event = Annotated[
    Union[FastToken, FastDone, SlowStep, SlowDone, FinalToken, FinalDone, Notice, ErrorEvent],
    Field(discriminator="type"),
]
EVENT_ADAPTER: TypeAdapter[Event] = TypeAdapter(Event)


T = TypeVar("T")


class _Raised:
    def __init__(self, exc: BaseException) -> None:
        self.exc = exc


async def iterate_in_thread(produce: Callable[[threading.Event], Iterator[T]], *,
                            on_end: Callable[[], None] | None = None, name: str = "duma-stream") -> AsyncIterator[T]:
    """Iterate a blocking stream from asyncio: ``produce(cancel)`` runs in a thread of its own
    (never the loop's shared executor, so many streams never starve each other) and its items
    arrive through a queue. When the reader stops early, or its task is cancelled, ``cancel``
    is set at once; the producer must stop soon after. ``on_end`` runs in that thread once
    the producer is finished."""
    loop = asyncio.get_running_loop()
    items: asyncio.Queue[Any] = asyncio.Queue()
    cancel = threading.Event()
    end = object()

    def put(item: Any) -> None:
        try:
            loop.call_soon_threadsafe(items.put_nowait, item)
        except RuntimeError:  # the event loop is closed: nobody is listening
            cancel.set()

    def work() -> None:
        stream: Iterator[T] | None = None
        try:
            stream = produce(cancel)
            for item in stream:
                if not cancel.is_set():  # once cancelled, drain without handing items on
                    put(item)
        except BaseException as exc:  # handed to the awaiting task
            if not cancel.is_set():
                put(_Raised(exc))
        finally:
            close = getattr(stream, "close", None)
            if close:
                close()
            try:
                if on_end is not None:
                    on_end()
            finally:
                put(end)

    threading.Thread(target=work, name=name, daemon=True).start()
    try:
        while True:
            item = await items.get()
            if item is end:
                return
            if isinstance(item, _Raised):
                raise item.exc
            yield item
    finally:
        cancel.set()
