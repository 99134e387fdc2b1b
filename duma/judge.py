"""The judge interface: a judge scores one answer 0-1 for ``duma eval``.

Judges are registered through ``register_judges``. A judge never raises for a bad reply from
a judge model: it returns ``JudgeResult(score=None, error=...)`` with one of the prefixes
below, and the evaluation counts and reports those.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any, ClassVar

from pydantic import BaseModel

FAILED_PREFIX = "failed: "
UNPARSED_PREFIX = "unparsed: "
NO_REFERENCE_PREFIX = "no reference: "


class JudgeResult(BaseModel):
    """One judgement: ``score`` in [0, 1], or None with ``error`` saying why."""

    score: float | None = None
    raw: str = ""
    error: str | None = None

    @property
    def failed(self) -> bool:
        """The judge could not be asked (backend error), as opposed to an unreadable reply."""
        return self.error is not None and self.error.startswith(FAILED_PREFIX)

    @property
    def unparsed(self) -> bool:
        return self.error is not None and self.error.startswith(UNPARSED_PREFIX)


class Judge(ABC):
    """Base class: ``name`` and ``score(question, answer, reference, klass)``.

    ``needs_backend`` judges are constructed with ``backend=`` (a loaded
    :class:`duma.backend.Backend`); the others with no arguments.
    """

    name: ClassVar[str]
    needs_backend: ClassVar[bool] = False

    def __init__(self, **options: Any) -> None:
        self.options = options

    @abstractmethod
    def score(self, question: str, answer: str, reference: str, klass: str) -> JudgeResult:
        """Score ``answer`` to ``question`` of class ``klass`` against ``reference`` (may be
        empty when the class has none)."""
