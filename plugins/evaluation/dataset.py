"""Evaluation sets in BELLE's format: JSONL (or a JSON list, or Parquet) of
``{"question", "std_answer", "class"}``, an optional ``"id"``.

Items without an ``id`` get ``q<position>`` (their 1-based position in the file), so the ids
are stable across runs with different ``--limit`` or ``--classes`` and a resumed run finds
what it already did.
"""

from __future__ import annotations

import unicodedata
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator

from duma.data import read_validated
from duma.errors import DumaError

SET_HINT = "each item needs a non-empty question and class, std_answer may be empty; see BELLE's eval_set.json"


def normalise_class(name: str) -> str:
    """Class names compare case-folded with white space (U+00A0 included) collapsed to one
    space: BELLE writes "closed\\u00a0qa" in the set and "closed\\u00a0QA" in its prompts."""
    return " ".join(unicodedata.normalize("NFKC", str(name)).split()).casefold()


class EvalItem(BaseModel):
    """One question of an evaluation set; ``klass`` is the normalised class name."""

    model_config = ConfigDict(extra="ignore", populate_by_name=True)

    id: str
    question: str = Field(min_length=1)
    std_answer: str = ""
    klass: str = Field(alias="class", min_length=1)

    @field_validator("id", mode="before")
    @classmethod
    def _id_as_text(cls, value: Any) -> Any:
        return str(value) if isinstance(value, (int, float)) else value

    @field_validator("std_answer", mode="before")
    @classmethod
    def _no_answer_as_empty(cls, value: Any) -> Any:
        return "" if value is None else value

    @field_validator("klass", mode="before")
    @classmethod
    def _normalised(cls, value: Any) -> Any:
        return normalise_class(value) if isinstance(value, str) else value


def read_eval_set(path: str | Path, *, limit: int | None = None, classes: Iterable[str] | None = None) -> list[EvalItem]:
    """The items of an evaluation set, filtered to ``classes`` (normalised names) and then
    cut to the first ``limit``. Errors name ``file:line`` and the field."""
    path = Path(path)
    wanted = {normalise_class(c) for c in classes} if classes else None
    position = 0

    def with_default_id(raw: dict[str, Any]) -> dict[str, Any]:
        nonlocal position
        position += 1
        if raw.get("id") is None:
            raw["id"] = f"q{position}"
        return raw

    items: list[EvalItem] = []
    seen: dict[str, int] = {}
    for line, item in read_validated(path, EvalItem, hint=SET_HINT, prepare=with_default_id):
        if item.id in seen:
            raise DumaError(f"{path}:{line}: id '{item.id}' repeats the one on line {seen[item.id]}",
                            "give every item its own id")
        seen[item.id] = line
        if wanted is not None and item.klass not in wanted:
            continue
        items.append(item)
        if limit is not None and len(items) >= limit:
            break
    if not items:
        what = f" in classes {', '.join(sorted(wanted))}" if wanted else ""
        raise DumaError(f"evaluation set {path} has no items{what}",
                        "give a JSONL file of {\"question\", \"std_answer\", \"class\"} objects")
    return items
