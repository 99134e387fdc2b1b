"""The event stream of a turn. ``duma chat``, the Python API and the server all consume
this one stream. Every event is a pydantic model with a ``type`` tag and a timestamp.

A fast-path turn: ``fast_token``* -> ``fast_done`` (invoke=False) -> ``final_done``.
A slow-path turn: ``fast_token``* (the interim reply) -> ``fast_done`` (invoke=True) ->
``slow_step``* -> ``slow_done`` -> ``final_token``* -> ``final_done``.
``notice`` may appear anywhere (e.g. history trimmed); ``error`` ends a failed turn.
"""

from __future__ import annotations

import time
from typing import Annotated, Literal, Union

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
    usage: Usage = Field(default_factory=Usage)
    first_token_s: float | None = None


class SlowStep(_Event):
    type: Literal["slow_step"] = "slow_step"
    index: int
    reason: str = ""
    action: str | None = None
    observation: str | None = None


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
