"""Training-data records (validated with pydantic) and the data-source interface.

A data source reads one record shape (``belle``, ``alpaca``, ``text``...) into records; sources
are registered through ``register_data_sources``. Readers stream: a large file is never loaded
whole. The file format is picked per file:

* ``.parquet``: Parquet, read one record batch at a time (needs ``pyarrow``);
* ``.txt`` / ``.md``: plain text (only the ``text`` source reads it);
* anything else: a JSON list if the first non-blank character is ``[``, otherwise JSON Lines
  (BELLE ships JSON Lines files named ``.json``).

Every bad record is reported as ``file:line: field: problem``. The line is the JSONL line, the
line where a JSON list item starts, or the row number of a Parquet file.

The entry point for readers (the trainers, ``duma data``) is :func:`iter_records`.
"""

from __future__ import annotations

import json
import os
import re
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, ClassVar, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from duma.errors import DumaError, first_line, validation_problems
from duma.paths import temporary_path
from duma.types import Message


class Conversation(BaseModel):
    """A chat for SFT: messages in order; the loss falls on assistant turns."""

    model_config = ConfigDict(extra="forbid")

    id: str | None = None
    messages: list[Message] = Field(min_length=1)
    category: str | None = None

    @field_validator("messages")
    @classmethod
    def _has_assistant(cls, v: list[Message]) -> list[Message]:
        if not any(m.role == "assistant" for m in v):
            raise ValueError("needs at least one assistant message")
        return v


class TextRecord(BaseModel):
    """Plain text for continued pre-training."""

    model_config = ConfigDict(extra="forbid")

    text: str = Field(min_length=1)


# BELLE's flattened multi-turn form: "Human:...\nAssistant:...\nHuman:...\nAssistant:".
_FLAT_TURN = re.compile(r"(?:^|\n)[ \t]*(Human|Assistant)[ \t]*[:：]")


def split_flattened_dialogue(text: str) -> list[dict[str, str]] | None:
    """The turns of a flattened ``Human:/Assistant:`` context, or None if it is not one."""
    if not re.match(r"\s*Human[ \t]*[:：]", text):
        return None
    parts = _FLAT_TURN.split(text.strip())
    # parts = ["", "Human", text, "Assistant", text, ...]
    roles = {"Human": "user", "Assistant": "assistant"}
    return [{"role": roles[parts[i]], "content": parts[i + 1].strip()} for i in range(1, len(parts) - 1, 2)]


def prompt_messages(prompt: str) -> list[dict[str, str]]:
    """The context messages of a one-string prompt: BELLE's flattened ``Human: ...
    Assistant:`` dialogue split into turns (its empty last ``Assistant:`` dropped), else one
    user message."""
    turns = split_flattened_dialogue(prompt)
    if turns and turns[-1]["role"] == "assistant" and not turns[-1]["content"]:
        turns.pop()
    return turns or [{"role": "user", "content": prompt}]


class ContextRecord(BaseModel):
    """A record built on a context: messages ending with the user turn that a reply answers.
    ``prompt="..."`` is accepted in place of ``messages`` (see :func:`prompt_messages`)."""

    model_config = ConfigDict(extra="forbid")

    messages: list[Message] = Field(min_length=1)

    @model_validator(mode="before")
    @classmethod
    def _prompt_to_messages(cls, data: Any) -> Any:
        if isinstance(data, dict) and "prompt" in data and "messages" not in data:
            data = dict(data)
            prompt = data.pop("prompt")
            data["messages"] = prompt_messages(prompt) if isinstance(prompt, str) and prompt.strip() else []
        return data

    @field_validator("messages")
    @classmethod
    def _ends_with_user(cls, v: list[Message]) -> list[Message]:
        if v[-1].role != "user":
            raise ValueError("the context must end with a user message")
        return v

    @property
    def prompt(self) -> str:
        """The context's text, message contents joined by newlines (for statistics; training
        renders ``messages`` with the chat template)."""
        return "\n".join(m.content for m in self.messages)


class PreferenceRecord(ContextRecord):
    """A context with a preferred and a rejected reply (DPO, reward models)."""

    chosen: str = Field(min_length=1)
    rejected: str = Field(min_length=1)


class UnpairedRecord(ContextRecord):
    """A context with one reply labelled desirable (``label`` true) or undesirable (false), for
    KTO: the shape ``duma logs export --format kto`` writes."""

    completion: str = Field(min_length=1)
    label: bool


class PromptRecord(ContextRecord):
    """A prompt with its reference answer, for methods that sample replies and score them
    (``grpo``'s verifiable rewards, ``ppo``)."""

    answer: str | None = None


Record = Conversation | TextRecord | PreferenceRecord | PromptRecord | UnpairedRecord
RecordKind = Literal["conversation", "text", "preference", "prompt", "unpaired"]


class Located(BaseModel):
    """A record with where it came from (for ``file:line`` errors and rejects files)."""

    record: Conversation | TextRecord | PreferenceRecord | PromptRecord | UnpairedRecord
    file: str
    line: int


class InvalidRecord(Exception):
    """A record that does not validate: ``file:line: field: problem``."""

    def __init__(self, file: str, line: int, field: str, problem: str, raw: object = None) -> None:
        super().__init__(f"{file}:{line}: {field}: {problem}")
        self.file, self.line, self.field, self.problem, self.raw = file, line, field, problem, raw


class InvalidDataError(DumaError):
    """Raised by :func:`iter_records` on the first bad record (``invalid`` says which)."""

    def __init__(self, invalid: InvalidRecord, hint: str | None = None) -> None:
        super().__init__(str(invalid), hint)
        self.invalid = invalid


class RecordProblem(ValueError):
    """Raised by :meth:`JsonRecordSource.parse` for a bad field (``field: problem``)."""

    def __init__(self, field: str, problem: str) -> None:
        super().__init__(f"{field}: {problem}")
        self.field, self.problem = field, problem


class DataSource(ABC):
    """Reads one format (``belle``, ``alpaca``, ``text``...) into records of one kind."""

    name: ClassVar[str]
    kind: ClassVar[RecordKind]
    description: ClassVar[str] = ""
    # The fields one record has, shown when a record lacks them (wrong source picked).
    expected_fields: ClassVar[str] = ""

    @abstractmethod
    def read(self, path: Path) -> Iterator[Located | InvalidRecord]:
        """Yield records in file order, or an :class:`InvalidRecord` for each bad one."""

    def accepts(self, raw: Any) -> bool:
        """Whether one raw item (a parsed JSON value) is a valid record of this source; used
        to suggest the right source when a file was read with the wrong one."""
        return False

    def to_raw(self, record: Record) -> dict[str, Any]:
        """The record in this source's shape (for ``duma data convert``); optional."""
        raise DumaError(f"data source '{self.name}' cannot write records",
                        "pick another output format with --to")


# ----------------------------------------------------------------------------- file formats

FileFormat = Literal["jsonl", "json", "parquet", "txt"]
TEXT_SUFFIXES = (".txt", ".md")
_CHUNK_CHARS = 1 << 20  # the JSON-list reader's read size: memory stays ~ chunk + one item
_WHITESPACE = re.compile(r"[ \t\n\r]*")


def detect_format(path: Path) -> FileFormat:
    """The file format of ``path``, from its suffix, else from its first non-blank character."""
    suffix = path.suffix.lower()
    if suffix == ".parquet":
        return "parquet"
    if suffix in TEXT_SUFFIXES:
        return "txt"
    with open(path, "rb") as fh:
        head = fh.read(4096).lstrip(b"\xef\xbb\xbf \t\r\n")
    return "json" if head.startswith(b"[") else "jsonl"


def check_readable(path: Path) -> None:
    """One-line errors for a missing file or a folder."""
    if not path.exists():
        raise DumaError(f"data file {path} does not exist", "check the path")
    if path.is_dir():
        raise DumaError(f"data file {path} is a folder", "pass the data files themselves")


def _iter_jsonl(path: Path) -> Iterator[tuple[int, Any]]:
    # Binary lines so that a bad byte is reported at its own line.
    with open(path, "rb") as fh:
        for line_no, raw_line in enumerate(fh, 1):
            try:
                line = raw_line.decode("utf-8")
            except UnicodeDecodeError as exc:
                yield line_no, RecordProblem("json", f"not UTF-8 text ({exc.reason})")
                continue
            if line_no == 1:
                line = line.lstrip("\ufeff")
            if not line.strip():
                continue
            try:
                yield line_no, json.loads(line.rstrip("\r\n"))
            except json.JSONDecodeError as exc:
                problem = f"not valid JSON ({exc.msg} at column {exc.pos + 1})"
                if line_no == 1 and line.lstrip().startswith("{"):  # e.g. one pretty-printed object
                    problem += "; a data file holds one JSON object per line, or a JSON list"
                yield line_no, RecordProblem("json", problem)


def _iter_json_list(path: Path) -> Iterator[tuple[int, Any]]:
    """The items of a top-level JSON list, one at a time, with the line each starts on.

    ``raw_decode`` parses one item from a buffer of ~1 MB chunks, so a multi-GB file streams.
    A syntax error ends the file (a JSON list cannot be resynchronised).
    """
    decoder = json.JSONDecoder()
    with open(path, encoding="utf-8-sig", errors="strict") as fh:
        buf, pos, eof = "", 0, False
        # Newlines are counted once, incrementally: line_no is the line of buf[line_pos].
        line_no, line_pos = 1, 0

        def line_at(p: int) -> int:
            nonlocal line_no, line_pos
            if p > line_pos:
                line_no += buf.count("\n", line_pos, p)
                line_pos = p
            return line_no

        def more() -> None:
            nonlocal buf, pos, eof, line_pos
            if pos > _CHUNK_CHARS:  # drop what was consumed
                line_at(pos)
                buf, line_pos, pos = buf[pos:], 0, 0
            try:
                chunk = fh.read(_CHUNK_CHARS)
            except UnicodeDecodeError as exc:
                raise DumaError(f"{path}: not UTF-8 text ({exc.reason})", "re-encode the file as UTF-8") from None
            eof = not chunk
            buf += chunk

        def skip_blank() -> str:
            """The next non-blank character ("" at the end of the file)."""
            nonlocal pos
            while True:
                pos = _WHITESPACE.match(buf, pos).end()  # type: ignore[union-attr]
                if pos < len(buf):
                    return buf[pos]
                if eof:
                    return ""
                more()

        if skip_blank() != "[":
            yield line_at(pos), RecordProblem("json", "expected a JSON list of records ('[' ...)")
            return
        pos += 1
        expect_item = True
        first = True
        while True:
            ch = skip_blank()
            if ch == "":
                yield line_at(pos), RecordProblem("json", "the JSON list is not closed (missing ']')")
                return
            if ch == "]" and (first or not expect_item):
                return
            if not expect_item:
                if ch != ",":
                    yield line_at(pos), RecordProblem("json", f"expected ',' or ']' between list items, found {ch!r}")
                    return
                pos += 1
                expect_item = True
                continue
            start = pos
            while True:
                try:
                    item, end = decoder.raw_decode(buf, start)
                except json.JSONDecodeError as exc:
                    if not eof:
                        more()
                        start = pos
                        continue
                    yield line_at(start), RecordProblem("json", f"not valid JSON ({exc.msg})")
                    return
                if end == len(buf) and not eof:  # a number may continue in the next chunk
                    more()
                    start = pos
                    continue
                break
            yield line_at(start), item
            pos, expect_item, first = end, False, False


def _iter_parquet(path: Path) -> Iterator[tuple[int, Any]]:
    import pyarrow.parquet as pq
    try:
        reader = pq.ParquetFile(str(path))
    except Exception as exc:
        raise DumaError(f"{path}: not a readable Parquet file ({first_line(exc)})") from None
    row = 0
    for batch in reader.iter_batches(batch_size=1024):
        for item in batch.to_pylist():
            row += 1
            # A column a row does not have reads as null: treat it as absent, like in JSON.
            yield row, {k: v for k, v in item.items() if v is not None}


def _iter_text_paragraphs(path: Path) -> Iterator[tuple[int, Any]]:
    """One ``{"text"}`` item per paragraph (lines up to a blank line), with its first line."""
    lines: list[str] = []
    start = 0
    with open(path, encoding="utf-8-sig", errors="replace") as fh:
        for line_no, line in enumerate(fh, 1):
            if line.strip():
                if not lines:
                    start = line_no
                lines.append(line.rstrip("\r\n"))
            elif lines:
                yield start, {"text": "\n".join(lines)}
                lines = []
    if lines:
        yield start, {"text": "\n".join(lines)}


def iter_raw(path: Path, *, allow_text: bool = False) -> Iterator[tuple[int, Any]]:
    """``(line, item)`` for each raw item of a file (a parsed JSON value, a Parquet row as a
    dict), or ``(line, RecordProblem)`` where the item cannot even be parsed."""
    check_readable(path)
    with open(path, "rb") as fh:
        if fh.read(16) == b"SQLite format 3\x00":
            raise DumaError(f"{path} is an SQLite database, not a JSON/Parquet data file",
                            "read a duma chat log with source 'duma-logs'")
    fmt = detect_format(path)
    if fmt == "txt":
        if not allow_text:
            raise DumaError(f"{path}: plain-text files are read only by the 'text' source",
                            "use --format text, or convert the file to JSON Lines")
        return _iter_text_paragraphs(path)
    return {"jsonl": _iter_jsonl, "json": _iter_json_list, "parquet": _iter_parquet}[fmt](path)


ModelT = TypeVar("ModelT", bound=BaseModel)


def read_validated(path: str | Path, model: type[ModelT], *, hint: str,
                   prepare: Callable[[dict[str, Any]], dict[str, Any]] | None = None,
                   ) -> Iterator[tuple[int, ModelT]]:
    """``(line, item)`` for each item of a JSON Lines, JSON list or Parquet file, validated
    against ``model``: the one reader for duma's small record files (eval sets, labelled
    turns, routing records). The first bad item raises a one-line :class:`DumaError`
    ``file:line: field: problem`` with ``hint`` (what a good item looks like).

    ``prepare`` may fill defaults into each raw object before validation.
    """
    path = Path(path)
    for line, raw in iter_raw(path):
        if isinstance(raw, RecordProblem):
            raise DumaError(f"{path}:{line}: {raw}", hint)
        if not isinstance(raw, dict):
            raise DumaError(f"{path}:{line}: expected a JSON object, got {type(raw).__name__}", hint)
        try:
            yield line, model.model_validate(prepare(dict(raw)) if prepare else raw)
        except ValidationError as exc:
            raise DumaError(f"{path}:{line}: {problem_of(exc)}", hint) from None
        except RecordProblem as exc:
            raise DumaError(f"{path}:{line}: {exc}", hint) from None


# ----------------------------------------------------------------------------- JSON sources

def problem_of(exc: ValidationError, prefix: str = "") -> RecordProblem:
    """The first pydantic error as ``field: problem`` (``field`` is a dotted path)."""
    path, message = validation_problems(exc)[0]
    return RecordProblem(".".join(p for p in (prefix, path) if p) or "record", message)


class JsonRecordSource(DataSource):
    """A source whose files hold one JSON object per record (JSON Lines, a JSON list or
    Parquet rows). Subclasses implement :meth:`parse`."""

    reads_plain_text: ClassVar[bool] = False

    @abstractmethod
    def parse(self, raw: dict[str, Any]) -> list[Record]:
        """The records in one raw item (usually one); raise :class:`RecordProblem` or a
        pydantic ``ValidationError`` for a bad item."""

    def parse_checked(self, raw: Any) -> list[Record]:
        """:meth:`parse` with every failure turned into a :class:`RecordProblem`."""
        if not isinstance(raw, dict):
            raise RecordProblem("record", f"expected a JSON object, got {type(raw).__name__}")
        try:
            return self.parse(raw)
        except ValidationError as exc:
            raise problem_of(exc) from None
        except RecordProblem:
            raise
        except (TypeError, ValueError, KeyError, AttributeError) as exc:
            raise RecordProblem("record", first_line(exc) or type(exc).__name__) from None

    def accepts(self, raw: Any) -> bool:
        try:
            return bool(self.parse_checked(raw))
        except RecordProblem:
            return False

    def read(self, path: Path) -> Iterator[Located | InvalidRecord]:
        file = str(path)
        for line, raw in iter_raw(path, allow_text=self.reads_plain_text):
            if isinstance(raw, RecordProblem):
                yield InvalidRecord(file, line, raw.field, raw.problem, None)
                continue
            try:
                records = self.parse_checked(raw)
            except RecordProblem as exc:
                problem = exc.problem
                if problem == "missing" and self.expected_fields:
                    problem = f"missing ({self.name} records have {self.expected_fields})"
                yield InvalidRecord(file, line, exc.field, problem, raw)
                continue
            for record in records:
                yield Located(record=record, file=file, line=line)


# ----------------------------------------------------------------------------- reading

@dataclass
class ReadStats:
    """Counts of one read, filled in by :func:`iter_records` as it streams."""

    files: int = 0
    records: int = 0
    invalid: int = 0
    rejects_path: Path | None = None
    invalid_by_field: dict[str, int] = field(default_factory=dict)


def get_source(name: str) -> DataSource:
    """An instance of the data source registered as ``name`` (one-line error if unknown)."""
    from duma import host

    obj = host.get("data_source", name)
    return obj() if isinstance(obj, type) else obj


def source_names() -> list[str]:
    from duma import host

    return sorted(host.components("data_source"))


def suggest_source(raw: Any, exclude: str) -> str | None:
    """The name of another registered source that accepts ``raw``, if any."""
    if raw is None:
        return None
    from duma import host

    for name, comp in sorted(host.components("data_source").items()):
        if name == exclude:
            continue
        try:
            source = comp.obj() if isinstance(comp.obj, type) else comp.obj
            if source.accepts(raw):
                return name
        except Exception:  # a third-party source's bug must not hide the real error
            continue
    return None


# Tried in this order when no source is named: the more specific shapes first.
# ``preference`` before ``sharegpt``: a context of {role, content} messages would pass as one.
DETECT_ORDER = ("belle", "preference", "unpaired", "sharegpt", "alpaca", "seed-tasks", "text")


def detect_source(path: Path) -> str:
    """The name of the source that reads ``path``, judged from its first item (``.db`` files
    are duma chat logs, ``.txt``/``.md`` files plain text)."""
    check_readable(path)
    if path.suffix.lower() == ".db":
        return "duma-logs"
    if path.suffix.lower() in TEXT_SUFFIXES:
        return "text"
    first = next((raw for _, raw in iter_raw(path) if not isinstance(raw, RecordProblem)), None)
    names = source_names()
    for name in [n for n in DETECT_ORDER if n in names] + [n for n in names if n not in DETECT_ORDER]:
        try:
            if first is not None and get_source(name).accepts(first):
                return name
        except Exception:  # a third-party source's bug must not break detection
            continue
    raise DumaError(f"{path}: cannot tell which data source reads it",
                    f"name one with --format (known: {', '.join(names)})")


def _reject_line(invalid: InvalidRecord) -> str:
    return json.dumps({"file": invalid.file, "line": invalid.line, "field": invalid.field,
                       "problem": invalid.problem, "error": str(invalid), "record": invalid.raw},
                      ensure_ascii=False, default=str)


def iter_located(source_name: str, paths: list[Path] | Path, *, skip_invalid: bool = False,
                 rejects_path: Path | None = None, stats: ReadStats | None = None) -> Iterator[Located]:
    """Like :func:`iter_records`, with each record's file and line."""
    source = get_source(source_name)
    files = [Path(paths)] if isinstance(paths, (str, Path)) else [Path(p) for p in paths]
    for path in files:  # fail before reading anything
        check_readable(path)
    stats = stats if stats is not None else ReadStats()
    rejects: IO[str] | None = None
    try:
        for path in files:
            stats.files += 1
            seen_valid = False
            for item in source.read(path):
                if isinstance(item, Located):
                    seen_valid = True
                    stats.records += 1
                    yield item
                    continue
                stats.invalid += 1
                stats.invalid_by_field[item.field] = stats.invalid_by_field.get(item.field, 0) + 1
                if not skip_invalid:
                    hint = None
                    if not seen_valid:  # a wrong --format shows on the first record
                        other = suggest_source(item.raw, exclude=source.name)
                        if other:
                            hint = f"this looks like '{other}' data: use source '{other}'"
                    raise InvalidDataError(item, hint)
                if rejects_path is not None:
                    if rejects is None:
                        Path(rejects_path).parent.mkdir(parents=True, exist_ok=True)
                        rejects = open(rejects_path, "w", encoding="utf-8")
                        stats.rejects_path = Path(rejects_path)
                    rejects.write(_reject_line(item) + "\n")
                    rejects.flush()
    finally:
        if rejects is not None:
            rejects.close()


def iter_records(source_name: str, paths: list[Path] | Path, *, skip_invalid: bool = False,
                 rejects_path: Path | None = None, stats: ReadStats | None = None) -> Iterator[Record]:
    """Stream the validated records of ``paths`` read with the source ``source_name``.

    The first bad record raises :class:`InvalidDataError` (a ``DumaError``) reading
    ``file:line: field: problem``; when the first record of a file is bad and another source
    would accept it, the hint names that source. With ``skip_invalid`` bad records are counted
    in ``stats`` (pass a :class:`ReadStats` to see them) and written to ``rejects_path`` as
    JSON Lines (``file``, ``line``, ``field``, ``problem``, ``error``, ``record``).
    """
    for located in iter_located(source_name, paths, skip_invalid=skip_invalid,
                                rejects_path=rejects_path, stats=stats):
        yield located.record


# ----------------------------------------------------------------------------- writing

class RecordWriter:
    """Writes raw items (dicts) to a file in the format its suffix names: ``.jsonl`` (and any
    other suffix) JSON Lines, ``.json`` a JSON list, ``.parquet`` Parquet (buffered whole).

    The items go to a temporary file beside ``path`` that replaces it on :meth:`close`; a
    writer left by an exception (``with`` block) or a killed process never leaves a
    half-written ``path``."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._tmp = temporary_path(self.path)
        suffix = self.path.suffix.lower()
        self.format: FileFormat = "json" if suffix == ".json" else "parquet" if suffix == ".parquet" else "jsonl"
        self.count = 0
        self._rows: list[dict[str, Any]] = []
        self._fh: IO[str] | None = None
        if self.format != "parquet":
            self._fh = open(self._tmp, "w", encoding="utf-8")
            if self.format == "json":
                self._fh.write("[")

    def write(self, item: dict[str, Any]) -> None:
        if self.format == "parquet":
            self._rows.append(item)
        else:
            assert self._fh is not None
            text = json.dumps(item, ensure_ascii=False)
            if self.format == "json":
                self._fh.write(("\n" if self.count == 0 else ",\n") + text)
            else:
                self._fh.write(text + "\n")
        self.count += 1

    def write_all(self, items: Iterable[dict[str, Any]]) -> None:
        for item in items:
            self.write(item)

    def close(self) -> None:
        """Finish the file and put it in place."""
        if self._fh is not None:
            if self.format == "json":
                self._fh.write("\n]\n")
            self._fh.close()
            self._fh = None
            os.replace(self._tmp, self.path)
        elif self.format == "parquet":
            import pyarrow as pa
            import pyarrow.parquet as pq

            # from_pylist takes its columns from the first row: give every row all the keys
            # (the reader drops the nulls again).
            columns = list(dict.fromkeys(key for row in self._rows for key in row))
            table = pa.Table.from_pylist([{k: row.get(k) for k in columns} for row in self._rows])
            pq.write_table(table, str(self._tmp))
            os.replace(self._tmp, self.path)
            self._rows = []

    def discard(self) -> None:
        """Drop what was written; ``path`` stays as it was."""
        if self._fh is not None:
            self._fh.close()
            self._fh = None
        self._rows = []
        self._tmp.unlink(missing_ok=True)

    def __enter__(self) -> RecordWriter:
        return self

    def __exit__(self, exc_type: object, *exc: object) -> None:
        if exc_type is None:
            self.close()
        else:
            self.discard()


def flat_text(record: Record) -> str:
    """All the text of a record as one string, a conversation as ``role: content`` lines (for
    statistics and de-duplication; training renders records with the chat template instead)."""
    if isinstance(record, Conversation):
        return "\n".join(f"{m.role}: {m.content}" for m in record.messages)
    if isinstance(record, TextRecord):
        return record.text
    if isinstance(record, UnpairedRecord):
        return f"{record.prompt}\n{record.completion}"
    if isinstance(record, PromptRecord):
        return f"{record.prompt}\n{record.answer or ''}"
    return f"{record.prompt}\n{record.chosen}\n{record.rejected}"
