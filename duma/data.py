"""Training-data records (validated with pydantic) and the data-source interface.

A data source reads one file format into records; sources are registered through
``register_data_sources``. Readers stream: a large file is never loaded whole.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterator
from pathlib import Path
from typing import ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

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


class PreferenceRecord(BaseModel):
    """A prompt with a preferred and a rejected answer (reward model, DPO)."""

    model_config = ConfigDict(extra="forbid")

    prompt: str = Field(min_length=1)
    chosen: str = Field(min_length=1)
    rejected: str = Field(min_length=1)


Record = Conversation | TextRecord | PreferenceRecord
RecordKind = Literal["conversation", "text", "preference"]


class Located(BaseModel):
    """A record with where it came from (for ``file:line`` errors and rejects files)."""

    record: Conversation | TextRecord | PreferenceRecord
    file: str
    line: int


class InvalidRecord(Exception):
    """A record that does not validate: ``file:line: field: problem``."""

    def __init__(self, file: str, line: int, field: str, problem: str, raw: object = None) -> None:
        super().__init__(f"{file}:{line}: {field}: {problem}")
        self.file, self.line, self.field, self.problem, self.raw = file, line, field, problem, raw


class DataSource(ABC):
    """Reads one format (``belle``, ``alpaca``, ``text``...) into records of one kind."""

    name: ClassVar[str]
    kind: ClassVar[RecordKind]

    @abstractmethod
    def read(self, path: Path) -> Iterator[Located | InvalidRecord]:
        """Yield records in file order, or an :class:`InvalidRecord` for each bad one."""
