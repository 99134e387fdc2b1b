"""The conversation log: every turn in a SQLite database under DUMA_HOME (WAL mode).

Each message is committed as soon as it exists (the user message before generation starts),
so a crash or kill in the middle of a turn loses nothing already written.
"""

from __future__ import annotations

import json
import sqlite3
import threading
import time
import uuid
from pathlib import Path
from typing import Any

from pydantic import BaseModel, Field

from duma.errors import DumaError, LogStoreError
from duma.paths import duma_home
from duma.types import Message

SCHEMA = """
CREATE TABLE IF NOT EXISTS conversations (
    id TEXT PRIMARY KEY,
    name TEXT,
    model TEXT,
    created REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS messages (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    conversation_id TEXT NOT NULL REFERENCES conversations(id),
    role TEXT NOT NULL,
    content TEXT NOT NULL,
    model TEXT,
    options TEXT,
    prompt_tokens INTEGER,
    completion_tokens INTEGER,
    first_token_s REAL,
    total_s REAL,
    meta TEXT,
    created REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS messages_by_conversation ON messages(conversation_id, id);
"""


class LoggedMessage(BaseModel):
    id: int
    conversation_id: str
    role: str
    content: str
    model: str | None = None
    options: dict[str, Any] | None = None
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    first_token_s: float | None = None
    total_s: float | None = None
    meta: dict[str, Any] = Field(default_factory=dict)
    created: float

    def as_message(self) -> Message:
        return Message(role=self.role, content=self.content)  # type: ignore[arg-type]


class ConversationSummary(BaseModel):
    id: str
    name: str | None
    model: str | None
    created: float
    messages: int


def default_path() -> Path:
    return duma_home() / "logs.db"


class LogStore:
    """Thread-safe access to the log database (one connection, serialised)."""

    def __init__(self, path: str | Path | None = None, timeout_s: float = 5.0) -> None:
        self.path = Path(path) if path else default_path()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.RLock()
        try:
            self._db = sqlite3.connect(str(self.path), timeout=timeout_s, check_same_thread=False,
                                       isolation_level=None)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=NORMAL")
            self._db.executescript(SCHEMA)
        except sqlite3.DatabaseError as exc:
            raise self._error(exc) from None

    def _error(self, exc: sqlite3.Error) -> DumaError:
        msg = str(exc)
        if "locked" in msg or "busy" in msg:
            return LogStoreError(f"the log database {self.path} is locked by another process",
                                 "close the other duma process or use -n/--no-log")
        return LogStoreError(f"the log database {self.path} is unreadable ({msg})",
                             "move it away to start a new log, or use -n/--no-log")

    def _execute(self, sql: str, params: tuple[Any, ...] = ()) -> sqlite3.Cursor:
        with self._lock:
            try:
                return self._db.execute(sql, params)
            except sqlite3.DatabaseError as exc:
                raise self._error(exc) from None

    def new_conversation(self, model: str | None = None, name: str | None = None,
                         conversation_id: str | None = None) -> str:
        cid = conversation_id or uuid.uuid4().hex[:16]
        self._execute("INSERT OR IGNORE INTO conversations (id, name, model, created) VALUES (?, ?, ?, ?)",
                      (cid, name, model, time.time()))
        return cid

    def exists(self, conversation_id: str) -> bool:
        return self._execute("SELECT 1 FROM conversations WHERE id = ?", (conversation_id,)).fetchone() is not None

    def last_conversation(self) -> str | None:
        row = self._execute(
            "SELECT conversation_id FROM messages ORDER BY id DESC LIMIT 1").fetchone()
        if row is None:
            row = self._execute("SELECT id FROM conversations ORDER BY created DESC LIMIT 1").fetchone()
        return row[0] if row else None

    def add_message(self, conversation_id: str, message: Message, *, model: str | None = None,
                    options: dict[str, Any] | None = None, prompt_tokens: int | None = None,
                    completion_tokens: int | None = None, first_token_s: float | None = None,
                    total_s: float | None = None, meta: dict[str, Any] | None = None) -> int:
        cur = self._execute(
            "INSERT INTO messages (conversation_id, role, content, model, options, prompt_tokens,"
            " completion_tokens, first_token_s, total_s, meta, created)"
            " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (conversation_id, message.role, message.content, model,
             json.dumps(options) if options is not None else None, prompt_tokens, completion_tokens,
             first_token_s, total_s, json.dumps(meta or {}), time.time()),
        )
        return int(cur.lastrowid)

    def messages(self, conversation_id: str) -> list[LoggedMessage]:
        cur = self._execute(
            "SELECT id, conversation_id, role, content, model, options, prompt_tokens, completion_tokens,"
            " first_token_s, total_s, meta, created FROM messages WHERE conversation_id = ? ORDER BY id",
            (conversation_id,))
        out = []
        for row in cur.fetchall():
            d = dict(zip([c[0] for c in cur.description], row))
            d["options"] = json.loads(d["options"]) if d["options"] else None
            d["meta"] = json.loads(d["meta"]) if d["meta"] else {}
            out.append(LoggedMessage(**d))
        return out

    def conversations(self, limit: int = 20) -> list[ConversationSummary]:
        cur = self._execute(
            "SELECT c.id, c.name, c.model, c.created, COUNT(m.id) FROM conversations c"
            " LEFT JOIN messages m ON m.conversation_id = c.id GROUP BY c.id"
            " ORDER BY COALESCE(MAX(m.created), c.created) DESC LIMIT ?", (limit,))
        return [ConversationSummary(id=r[0], name=r[1], model=r[2], created=r[3], messages=r[4])
                for r in cur.fetchall()]

    def close(self) -> None:
        with self._lock:
            self._db.close()
