"""Evaluation sets in BELLE's format: JSONL (or a JSON list) of
``{"question", "std_answer", "class"}``, an optional ``"id"``.

Items without an ``id`` get ``q<position>`` (their 1-based position in the file), so the ids
are stable across runs with different ``--limit`` or ``--classes`` and a resumed run finds
what it already did.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from duma.errors import DumaError
from duma.plugins.evaluation.judging import normalise_class


class EvalItem(BaseModel):
    """One question of an evaluation set; ``klass`` is the normalised class name."""

    model_config = ConfigDict(extra="ignore", populate_by_name=True)

    id: str
    question: str = Field(min_length=1)
    std_answer: str = ""
    klass: str = Field(alias="class", min_length=1)


def _rows(path: Path) -> Iterable[tuple[int, Any]]:
    """``(line number, parsed value)``: a JSON list (line 0) or one JSON value per line."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise DumaError(f"evaluation set {path} does not exist", "check the path given to --set") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise DumaError(f"cannot read evaluation set {path}: {exc}", "give a UTF-8 JSONL file") from None
    if text.lstrip().startswith("["):
        try:
            data = json.loads(text)
        except ValueError as exc:
            raise DumaError(f"{path}: invalid JSON list: {exc}", "fix the file or write one JSON object per line") from None
        yield from ((0, row) for row in data)
        return
    for lineno, line in enumerate(text.splitlines(), 1):
        if line.strip():
            try:
                yield lineno, json.loads(line)
            except ValueError as exc:
                raise DumaError(f"{path}:{lineno}: invalid JSON: {exc}", "fix that line (one JSON object per line)") from None


def read_eval_set(path: str | Path, *, limit: int | None = None, classes: Iterable[str] | None = None) -> list[EvalItem]:
    """The items of an evaluation set, filtered to ``classes`` (normalised names) and then
    cut to the first ``limit``. Errors name ``file:line`` and the field."""
    path = Path(path)
    wanted = {normalise_class(c) for c in classes} if classes else None
    items: list[EvalItem] = []
    seen: dict[str, str] = {}
    for position, (lineno, row) in enumerate(_rows(path), 1):
        where = f"{path}:{lineno}" if lineno else f"{path} item {position}"
        if not isinstance(row, dict):
            raise DumaError(f"{where}: expected a JSON object with question, std_answer and class",
                            "see BELLE's eval_set.json for the format")
        data = dict(row)
        data["id"] = str(data["id"]) if data.get("id") is not None else f"q{position}"
        if data.get("std_answer") is None:
            data["std_answer"] = ""
        try:
            item = EvalItem.model_validate(data)
        except ValidationError as exc:
            err = exc.errors()[0]
            field = ".".join(str(p) for p in err["loc"]) or "(record)"
            raise DumaError(f"{where}: field '{field}': {err['msg']}",
                            "each item needs a non-empty question and class (std_answer may be empty)") from None
        if item.id in seen:
            raise DumaError(f"{where}: id '{item.id}' repeats the one at {seen[item.id]}", "give every item its own id")
        seen[item.id] = where
        item.klass = normalise_class(item.klass)
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
