"""The built-in data sources: ``belle``, ``alpaca``, ``sharegpt``, ``text``, ``preference``,
``unpaired``, ``seed-tasks`` and ``duma-logs`` (duma's own chat log, so a user's chats become
training data).

Each JSON source validates the raw item with a pydantic model of its own shape first, so a
bad record names the field as it is spelled in the file (``conversations.1.from``).
Imported only from inside the hook of :mod:`duma.plugins.data_sources` (pydantic is too slow
for CLI start-up).
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from pathlib import Path
from typing import Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field, StrictBool, ValidationError

from duma import DataSource
from duma.data import (
    Conversation,
    InvalidRecord,
    JsonRecordSource,
    Located,
    PreferenceRecord,
    PromptRecord,
    Record,
    RecordProblem,
    TextRecord,
    UnpairedRecord,
    check_readable,
    problem_of,
    prompt_messages,
    split_flattened_dialogue,
)
from duma.errors import DumaError
from duma.types import Message

_Raw = ConfigDict(extra="ignore", populate_by_name=True)  # unknown keys in data files are common


def _conversation(messages: list[dict[str, str]], container: str, *, id: Any = None,
                  category: str | None = None) -> Conversation:
    """A validated Conversation from ``{"role", "content"}`` dicts (one pydantic call); a
    problem is reported against ``container`` (the field of the file that holds the turns)."""
    has_assistant = False
    for i, m in enumerate(messages):
        if m["role"] == "assistant":
            has_assistant = True
            if not m["content"].strip():
                raise RecordProblem(f"{container}.{i}", "empty assistant reply")
    if not has_assistant:
        raise RecordProblem(container, "needs at least one assistant turn")
    try:
        return Conversation.model_validate(
            {"id": None if id is None else str(id), "messages": messages, "category": category})
    except ValidationError as exc:
        raise problem_of(exc) from None


def _need_kind(source: DataSource, record: Record, kind: type) -> None:
    if not isinstance(record, kind):
        raise DumaError(f"data source '{source.name}' cannot hold {type(record).__name__} records",
                        "pick an output format with --to that fits the records")


# ----------------------------------------------------------------------------- belle / sharegpt

_FROM_ROLES = {"human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant",
               "system": "system"}


class _Turn(BaseModel):
    model_config = _Raw
    from_: Literal["human", "assistant", "gpt", "user", "system"] = Field(alias="from")
    value: str


class _BelleRaw(BaseModel):
    model_config = _Raw
    id: str | int | None = None
    conversations: list[_Turn] = Field(min_length=1)
    category: str | None = None


class BelleSource(JsonRecordSource):
    name: ClassVar[str] = "belle"
    kind = "conversation"
    description = "BELLE conversations: {id, conversations: [{from: human|assistant, value}]}"
    expected_fields = "id, conversations: [{from, value}]"

    def parse(self, raw: dict[str, Any]) -> list[Record]:
        item = _BelleRaw.model_validate(raw)
        msgs = [{"role": _FROM_ROLES[t.from_], "content": t.value} for t in item.conversations]
        return [_conversation(msgs, "conversations", id=item.id, category=item.category)]

    def to_raw(self, record: Record) -> dict[str, Any]:
        return _conversations_raw(self, record, {"user": "human", "assistant": "assistant", "system": "system"})


def _conversations_raw(source: DataSource, record: Record, names: dict[str, str]) -> dict[str, Any]:
    """A conversation as ``{id, conversations: [{from, value}], category}`` with the
    source's own names for the roles (belle and sharegpt differ only there)."""
    _need_kind(source, record, Conversation)
    assert isinstance(record, Conversation)
    out: dict[str, Any] = {"id": record.id} if record.id is not None else {}
    out["conversations"] = [{"from": names[m.role], "value": m.content} for m in record.messages]
    if record.category is not None:
        out["category"] = record.category
    return out


class _OpenAIMessage(BaseModel):
    model_config = _Raw
    role: Literal["system", "user", "assistant"]
    content: str


class _ShareGPTRaw(BaseModel):
    model_config = _Raw
    id: str | int | None = None
    conversations: list[_Turn] | None = Field(None, min_length=1)
    messages: list[_OpenAIMessage] | None = Field(None, min_length=1)
    system: str | None = None
    category: str | None = None


class ShareGPTSource(JsonRecordSource):
    name: ClassVar[str] = "sharegpt"
    kind = "conversation"
    description = ("ShareGPT {conversations: [{from: human|gpt|system, value}]} or OpenAI-style "
                   "{messages: [{role, content}]}")
    expected_fields = "conversations: [{from, value}] or messages: [{role, content}]"

    def parse(self, raw: dict[str, Any]) -> list[Record]:
        item = _ShareGPTRaw.model_validate(raw)
        if item.conversations is not None:
            container = "conversations"
            msgs = [{"role": _FROM_ROLES[t.from_], "content": t.value} for t in item.conversations]
        elif item.messages is not None:
            container = "messages"
            msgs = [{"role": m.role, "content": m.content} for m in item.messages]
        else:
            raise RecordProblem("conversations", f"missing (sharegpt records have {self.expected_fields})")
        if item.system and not (msgs and msgs[0]["role"] == "system"):
            msgs.insert(0, {"role": "system", "content": item.system})
        return [_conversation(msgs, container, id=item.id, category=item.category)]

    def to_raw(self, record: Record) -> dict[str, Any]:
        return _conversations_raw(self, record, {"user": "human", "assistant": "gpt", "system": "system"})


# ----------------------------------------------------------------------------- alpaca

class _AlpacaRaw(BaseModel):
    model_config = _Raw
    instruction: str
    input: str | None = ""  # some exports write null for "no input"
    output: str = Field(min_length=1)
    system: str | None = None
    history: list[tuple[str, str]] | None = None  # LLaMA-Factory's [[query, answer], ...]
    category: str | None = None
    id: str | int | None = None


class AlpacaSource(JsonRecordSource):
    name: ClassVar[str] = "alpaca"
    kind = "conversation"
    description = ("Alpaca/BELLE instructions: {instruction, input, output, category?}; "
                   "instruction may hold a flattened 'Human:...\\nAssistant:...' dialogue")
    expected_fields = "instruction, input, output"

    def parse(self, raw: dict[str, Any]) -> list[Record]:
        item = _AlpacaRaw.model_validate(raw)
        msgs = [{"role": "system", "content": item.system}] if item.system else []
        for query, answer in item.history or []:
            msgs += [{"role": "user", "content": query}, {"role": "assistant", "content": answer}]
        turns = split_flattened_dialogue(item.instruction)
        if turns is None:
            prompt = item.instruction + (f"\n{item.input}" if item.input else "")
            if not prompt.strip():
                raise RecordProblem("instruction", "empty instruction and input")
            msgs.append({"role": "user", "content": prompt})
        else:
            if turns and turns[-1]["role"] == "assistant":
                if turns[-1]["content"]:
                    raise RecordProblem("instruction", "the flattened dialogue must end with 'Assistant:'"
                                        " (the reply is the output)")
                turns.pop()
            if not turns or turns[-1]["role"] != "user":
                raise RecordProblem("instruction", "the flattened dialogue has no final 'Human:' turn")
            if item.input:
                turns[-1] = {"role": "user", "content": f"{turns[-1]['content']}\n{item.input}"}
            msgs += turns
        msgs.append({"role": "assistant", "content": item.output})
        return [_conversation(msgs, "output", id=item.id, category=item.category)]

    def to_raw(self, record: Record) -> dict[str, Any]:
        _need_kind(self, record, Conversation)
        assert isinstance(record, Conversation)
        msgs = list(record.messages)
        system = msgs.pop(0).content if msgs and msgs[0].role == "system" else None
        while msgs and msgs[-1].role != "assistant":  # an unanswered last question has no output
            msgs.pop()
        output = msgs.pop().content
        out: dict[str, Any] = {"id": record.id} if record.id is not None else {}
        if len(msgs) == 1 and msgs[0].role == "user":
            out |= {"instruction": msgs[0].content, "input": "", "output": output}
        else:
            names = {"user": "Human", "assistant": "Assistant", "system": "Human"}
            context = "\n".join(f"{names[m.role]}:{m.content}" for m in msgs)
            out |= {"instruction": f"{context}\nAssistant:", "input": "", "output": output}
        if system:
            out["system"] = system
        if record.category is not None:
            out["category"] = record.category
        return out


# ----------------------------------------------------------------------------- text / preference

class _TextRaw(BaseModel):
    model_config = _Raw
    text: str


class TextSource(JsonRecordSource):
    name: ClassVar[str] = "text"
    kind = "text"
    description = ('pre-training text: {"text"} JSON Lines, or .txt/.md files with one record '
                   "per paragraph (lines up to a blank line)")
    expected_fields = "text"
    reads_plain_text = True

    def parse(self, raw: dict[str, Any]) -> list[Record]:
        item = _TextRaw.model_validate(raw)
        if not item.text.strip():
            raise RecordProblem("text", "empty text")
        return [TextRecord(text=item.text)]

    def to_raw(self, record: Record) -> dict[str, Any]:
        _need_kind(self, record, TextRecord)
        assert isinstance(record, TextRecord)
        return {"text": record.text}


class _PreferenceRaw(BaseModel):
    model_config = _Raw
    prompt: str | None = Field(None, min_length=1)  # BELLE's form: the context as one string
    messages: list[_OpenAIMessage] | None = Field(None, min_length=1)
    chosen: str = Field(min_length=1)
    rejected: str = Field(min_length=1)


def _context(messages: list[_OpenAIMessage] | None, prompt: str | None, expected: str, kind: str
             ) -> list[dict[str, str]]:
    """The context of a preference, unpaired or prompts record: its messages, or BELLE's one-string
    prompt split into turns; it must end with the user turn that the reply answers."""
    if messages is not None and prompt is not None:
        raise RecordProblem("prompt", "give the context as messages or as prompt, not both")
    if messages is not None:
        container, msgs = "messages", [{"role": m.role, "content": m.content} for m in messages]
    elif prompt is not None:
        container, msgs = "prompt", prompt_messages(prompt)
    else:
        raise RecordProblem("messages", f"missing ({kind} records have {expected})")
    if msgs[-1]["role"] != "user":
        raise RecordProblem(container, "the context must end with a user turn (the reply answers it)")
    return msgs


def _validated(record_cls: type[BaseModel], data: dict[str, Any]) -> list[Record]:
    try:
        return [record_cls.model_validate(data)]  # type: ignore[list-item]
    except ValidationError as exc:
        raise problem_of(exc) from None


class PreferenceSource(JsonRecordSource):
    name: ClassVar[str] = "preference"
    kind = "preference"
    description = ("preference pairs for DPO and reward models: {messages: [{role, content}] (the context, "
                   "ending with a user turn), chosen, rejected}, or BELLE's {prompt, chosen, rejected}")
    expected_fields = "messages or prompt, chosen, rejected"

    def parse(self, raw: dict[str, Any]) -> list[Record]:
        if "rejected" not in raw and "reject" in raw:
            raise RecordProblem("rejected", "missing (found 'reject': the key is 'rejected')")
        item = _PreferenceRaw.model_validate(raw)
        msgs = _context(item.messages, item.prompt, self.expected_fields, "preference")
        return _validated(PreferenceRecord, {"messages": msgs, "chosen": item.chosen, "rejected": item.rejected})

    def to_raw(self, record: Record) -> dict[str, Any]:
        _need_kind(self, record, PreferenceRecord)
        assert isinstance(record, PreferenceRecord)
        return record.model_dump()


class _UnpairedRaw(BaseModel):
    model_config = _Raw
    messages: list[_OpenAIMessage] = Field(min_length=1)
    completion: str = Field(min_length=1)
    label: StrictBool  # JSON true/false, as the export writes: "no" or 0 are mistakes, not labels


class UnpairedSource(JsonRecordSource):
    name: ClassVar[str] = "unpaired"
    kind = "unpaired"
    description = ("unpaired examples for KTO, as 'duma logs export --format kto' writes them: {messages: "
                   "[{role, content}] (the context, ending with a user turn), completion, label: true|false}")
    expected_fields = "messages, completion, label"

    def parse(self, raw: dict[str, Any]) -> list[Record]:
        item = _UnpairedRaw.model_validate(raw)
        if not item.completion.strip():
            raise RecordProblem("completion", "empty reply")
        msgs = _context(item.messages, None, self.expected_fields, "unpaired")
        return _validated(UnpairedRecord, {"messages": msgs, "completion": item.completion, "label": item.label})

    def to_raw(self, record: Record) -> dict[str, Any]:
        _need_kind(self, record, UnpairedRecord)
        assert isinstance(record, UnpairedRecord)
        return record.model_dump()


class _PromptRaw(BaseModel):
    model_config = _Raw
    prompt: str | None = Field(None, min_length=1)  # BELLE's form: the context as one string
    messages: list[_OpenAIMessage] | None = Field(None, min_length=1)
    answer: str | bool | int | float | None = None


class PromptsSource(JsonRecordSource):
    name: ClassVar[str] = "prompts"
    kind = "prompt"
    description = ("prompts with reference answers for RL with verifiable rewards (grpo): {messages: "
                   "[{role, content}] (ending with a user turn), answer}, or {prompt, answer}")
    expected_fields = "messages or prompt, answer"

    def parse(self, raw: dict[str, Any]) -> list[Record]:
        item = _PromptRaw.model_validate(raw)
        msgs = _context(item.messages, item.prompt, self.expected_fields, "prompts")
        # A bare number (or true/false, a handoff label) is a common answer; rewards compare text.
        answer = item.answer if item.answer is None or isinstance(item.answer, str) else str(item.answer)
        if answer is not None and not answer.strip():
            raise RecordProblem("answer", "empty (leave it out when there is none)")
        return _validated(PromptRecord, {"messages": msgs, "answer": answer})

    def to_raw(self, record: Record) -> dict[str, Any]:
        _need_kind(self, record, PromptRecord)
        assert isinstance(record, PromptRecord)
        return record.model_dump()


# ----------------------------------------------------------------------------- seed tasks

class _Instance(BaseModel):
    model_config = _Raw
    input: str = ""
    output: str = Field(min_length=1)


class _SeedTaskRaw(BaseModel):
    model_config = _Raw
    id: str | int | None = None
    name: str | None = None
    instruction: str = Field(min_length=1)
    instances: list[_Instance] = Field(min_length=1)


class SeedTasksSource(JsonRecordSource):
    name: ClassVar[str] = "seed-tasks"
    kind = "conversation"
    description = ("self-instruct seed tasks {id, name, instruction, instances: [{input, output}]}; "
                   "one conversation per instance, category = the task name")
    expected_fields = "id, name, instruction, instances: [{input, output}]"

    def parse(self, raw: dict[str, Any]) -> list[Record]:
        item = _SeedTaskRaw.model_validate(raw)
        out: list[Record] = []
        for k, inst in enumerate(item.instances):
            prompt = item.instruction + (f"\n{inst.input}" if inst.input else "")
            rid = item.id if len(item.instances) == 1 or item.id is None else f"{item.id}-{k}"
            out.append(_conversation([{"role": "user", "content": prompt},
                                      {"role": "assistant", "content": inst.output}],
                                     f"instances.{k}", id=rid, category=item.name))
        return out


# ----------------------------------------------------------------------------- duma logs

class DumaLogsSource(DataSource):
    """The conversations of a duma chat log (``logs.db``): each becomes one Conversation of
    its system/user/assistant messages; conversations without an assistant reply are skipped,
    as are empty messages and unanswered trailing questions. ``line`` is the conversation's
    position in the log (oldest first)."""

    name: ClassVar[str] = "duma-logs"
    kind = "conversation"
    description = "duma's own SQLite chat log (a logs.db file): each logged conversation"
    expected_fields = "a duma logs.db SQLite file"

    def read(self, path: Path) -> Iterator[Located | InvalidRecord]:
        check_readable(path)
        try:  # read-only: never create or migrate someone's log
            db = sqlite3.connect(f"file:{path.resolve()}?mode=ro", uri=True)
            tables = {r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type='table'")}
        except sqlite3.DatabaseError as exc:
            raise DumaError(f"{path}: not a duma chat log ({exc})",
                            "pass the logs.db file under DUMA_HOME") from None
        try:
            if not {"conversations", "messages"} <= tables:
                raise DumaError(f"{path}: not a duma chat log (no conversations/messages tables)",
                                "pass the logs.db file under DUMA_HOME")
            conversations = db.execute(
                "SELECT id, name FROM conversations ORDER BY created, rowid").fetchall()
            for position, (cid, _name) in enumerate(conversations, 1):
                rows = db.execute("SELECT role, content FROM messages WHERE conversation_id = ?"
                                  " ORDER BY id", (cid,)).fetchall()
                msgs = [Message(role=role, content=content) for role, content in rows
                        if role in ("system", "user", "assistant") and content and content.strip()]
                while msgs and msgs[-1].role != "assistant":
                    msgs.pop()
                if not msgs:
                    continue
                yield Located(record=Conversation(id=str(cid), messages=msgs), file=str(path),
                              line=position)
        finally:
            db.close()


BUILTIN_SOURCES: list[type[DataSource]] = [
    BelleSource, AlpacaSource, ShareGPTSource, TextSource, PreferenceSource, SeedTasksSource,
    DumaLogsSource,
    PromptsSource,
    UnpairedSource,
]

