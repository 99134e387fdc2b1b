"""The router interface: decides, per user turn, whether the slow mind runs.

Routers are registered through ``register_routers``. A router scores a turn (higher means
"send to the slow mind") and compares the score with its threshold. The ``duma`` router is
special: it defers to the fast mind's own ``Invoke[...]`` (``defers_to_fast_mind``), so it
has no score; its ``route()`` returns ``slow=None, score=None`` and callers that need scores
(calibration, evaluation) check ``defers_to_fast_mind`` first.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any, ClassVar

from pydantic import BaseModel, Field

from duma.types import Message


class RouteInput(BaseModel):
    """What a router sees: the new user message and the dialogue before it."""

    text: str
    history: list[Message] = Field(default_factory=list)


class RouteDecision(BaseModel):
    """``slow=None`` means the router leaves the decision to the fast mind's Invoke[...]."""

    slow: bool | None
    score: float | None = None


class Router(ABC):
    """Base class for routers. ``options`` come from config ``agent.router_options``."""

    name: ClassVar[str]
    defers_to_fast_mind: ClassVar[bool] = False

    def __init__(self, options: dict[str, Any] | None = None) -> None:
        self.options = dict(options or {})
        self.threshold: float = float(self.options.get("threshold", 0.5))

    @abstractmethod
    def score(self, turn: RouteInput) -> float:
        """Score in [0, 1] (or any monotone scale); higher = more likely to need the slow mind.
        A router that defers to the fast mind has none and raises ``DumaError``."""

    def route(self, turn: RouteInput) -> RouteDecision:
        s = self.score(turn)
        return RouteDecision(slow=s >= self.threshold, score=s)
