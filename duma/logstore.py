"""The conversation log: every turn in a SQLite database under DUMA_HOME (WAL mode).

Each message is committed as soon as it exists (the user message before generation starts),
so a crash or kill in the middle of a turn loses nothing already written.
"""

from __future__ import annotations

import json
import os
import sqlite3
import threading
import time
import uuid
import zlib
from collections.abc import Iterator
from contextlib import contextmanager
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
    created REAL NOT NULL,
    setup TEXT
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
    preview: str = Field("", description="The start of the first user message.")


def default_path() -> Path:
    return duma_home() / "logs.db"


class LogStore:
    """Thread-safe access to the log database (one connection, serialised).

    A write that finds the database locked by another process waits (``timeout_s``); if it
    still cannot write, the message is kept in memory, :meth:`take_write_problem` reports it
    once, and the next write that succeeds writes the kept messages first, in order. Reads
    in this process see kept messages too, so a conversation never loses a reply it showed.
    """

    def __init__(self, path: str | Path | None = None, timeout_s: float = 5.0) -> None:
        self.path = Path(path) if path else default_path()
        self.in_memory = str(path) == ":memory:"
        self._lock = threading.RLock()
        self._pending: list[tuple[str, tuple[Any, ...], LoggedMessage | None]] = []
        self._pending_conversations: set[str] = set()
        self._pending_setups: dict[str, dict[str, Any] | None] = {}
        self._write_problem: str | None = None
        self._write_problem_told = False
        self._turn_lock_fd: int | None = None
        if not self.in_memory:
            try:
                self.path.parent.mkdir(parents=True, exist_ok=True)
            except OSError as exc:
                raise LogStoreError(f"cannot create the log folder {self.path.parent} ({exc.strerror})",
                                    "set DUMA_HOME or logging.database to a writable place, or use -n/--no-log"
                                    ) from None
        try:
            self._db = sqlite3.connect(str(self.path), timeout=timeout_s, check_same_thread=False,
                                       isolation_level=None)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=NORMAL")
            self._db.executescript(SCHEMA)
            columns = {row[1] for row in self._db.execute("PRAGMA table_info(conversations)")}
            if "setup" not in columns:  # a log written before conversations kept their setup
                self._db.execute("ALTER TABLE conversations ADD COLUMN setup TEXT")
        except sqlite3.DatabaseError as exc:
            raise self._error(exc) from None
        if not self.in_memory and os.name == "posix":
            try:
                self._turn_lock_fd = os.open(f"{self.path}.turns", os.O_RDWR | os.O_CREAT, 0o644)
            except OSError:
                self._turn_lock_fd = None  # a read-only log: nothing will be written anyway

    def _error(self, exc: sqlite3.Error) -> DumaError:
        msg = str(exc)
        if "locked" in msg or "busy" in msg:
            return LogStoreError(f"the log database {self.path} is locked by another process",
                                 "close the other duma process or use -n/--no-log")
        if "readonly" in msg or "read-only" in msg or "unable to open" in msg:
            where = self.path if self.path.exists() else self.path.parent
            writable = os.access(where, os.W_OK)
            cause = "cannot be opened" if writable else "is not writable"
            return LogStoreError(f"the log database {self.path} {cause} ({msg})",
                                 "set DUMA_HOME or logging.database to a writable place, or use -n/--no-log")
        return LogStoreError(f"the log database {self.path} is unreadable ({msg})",
                             "move it away to start a new log, or use -n/--no-log")

    def _execute(self, sql: str, params: tuple[Any, ...] = ()) -> sqlite3.Cursor:
        with self._lock:
            try:
                return self._db.execute(sql, params)
            except sqlite3.DatabaseError as exc:
                raise self._error(exc) from None

    def _write(self, sql: str, params: tuple[Any, ...], kept: LoggedMessage | None = None) -> int | None:
        """Run one write after any kept ones; a locked database keeps it in memory instead.
        Returns the new row id, or None when the write was kept."""
        with self._lock:
            self._flush_pending()
            if not self._pending:
                try:
                    return int(self._db.execute(sql, params).lastrowid or 0)
                except sqlite3.OperationalError as exc:
                    if not _is_locked(exc):
                        raise self._error(exc) from None
                    self._keep_for_later(exc)
            self._pending.append((sql, params, kept))
            return None

    def _keep_for_later(self, exc: sqlite3.Error) -> None:
        if self._write_problem is None:
            self._write_problem = (f"the log database {self.path} is locked by another process ({exc}); "
                                   "this conversation is kept in memory and written once the log is free")
            self._write_problem_told = False

    def _flush_pending(self) -> None:
        if not self._pending:
            return
        try:
            self._db.execute("BEGIN IMMEDIATE")
            for sql, params, _ in self._pending:
                self._db.execute(sql, params)
            self._db.execute("COMMIT")
        except sqlite3.OperationalError as exc:
            if self._db.in_transaction:
                self._db.execute("ROLLBACK")
            if not _is_locked(exc):
                raise self._error(exc) from None
            return
        self._pending.clear()
        self._pending_conversations.clear()
        self._pending_setups.clear()
        self._write_problem = None

    def take_write_problem(self) -> str | None:
        """A write problem to tell the user, once per episode of a locked database."""
        with self._lock:
            if self._write_problem is None or self._write_problem_told:
                return None
            self._write_problem_told = True
            return self._write_problem

    @property
    def unwritten(self) -> int:
        """How many writes are kept in memory, waiting for the database."""
        return len(self._pending)

    @contextmanager
    def turn_lock(self, conversation_id: str) -> Iterator[None]:
        """Serialise the turns of one conversation across processes sharing this log (an
        advisory lock on one byte of ``<database>.turns``, released when the turn ends or
        the process dies). Threads of one process are serialised by the agent already."""
        if self._turn_lock_fd is None:
            yield
            return
        import fcntl

        offset = zlib.crc32(conversation_id.encode("utf-8"))
        fcntl.lockf(self._turn_lock_fd, fcntl.LOCK_EX, 1, offset)
        try:
            yield
        finally:
            fcntl.lockf(self._turn_lock_fd, fcntl.LOCK_UN, 1, offset)

    def new_conversation(self, model: str | None = None, name: str | None = None,
                         conversation_id: str | None = None, setup: dict[str, Any] | None = None) -> str:
        """A new conversation; ``setup`` records how it runs (its minds), so that continuing
        it later keeps them."""
        cid = conversation_id or uuid.uuid4().hex[:16]
        written = self._write(
            "INSERT OR IGNORE INTO conversations (id, name, model, created, setup) VALUES (?, ?, ?, ?, ?)",
            (cid, name, model, time.time(), json.dumps(setup) if setup is not None else None))
        if written is None:
            self._pending_conversations.add(cid)
            self._pending_setups[cid] = setup
        return cid

    def conversation_setup(self, conversation_id: str) -> dict[str, Any] | None:
        """The setup a conversation was started with (None when it recorded none)."""
        if conversation_id in self._pending_setups:
            return self._pending_setups[conversation_id]
        row = self._execute("SELECT setup FROM conversations WHERE id = ?", (conversation_id,)).fetchone()
        return json.loads(row[0]) if row and row[0] else None

    def exists(self, conversation_id: str) -> bool:
        if conversation_id in self._pending_conversations:
            return True
        return self._execute("SELECT 1 FROM conversations WHERE id = ?", (conversation_id,)).fetchone() is not None

    def last_conversation(self) -> str | None:
        """The conversation with the most recent message (or the newest one)."""
        with self._lock:
            kept = next((m.conversation_id for _, _, m in reversed(self._pending) if m is not None), None)
        if kept is not None:
            return kept
        row = self._execute(
            "SELECT conversation_id FROM messages ORDER BY id DESC LIMIT 1").fetchone()
        if row is None:
            row = self._execute("SELECT id FROM conversations ORDER BY created DESC LIMIT 1").fetchone()
        return row[0] if row else None

    def add_message(self, conversation_id: str, message: Message, *, model: str | None = None,
                    options: dict[str, Any] | None = None, prompt_tokens: int | None = None,
                    completion_tokens: int | None = None, first_token_s: float | None = None,
                    total_s: float | None = None, meta: dict[str, Any] | None = None) -> int:
        """Log one message; returns its id (negative while it is kept in memory)."""
        now = time.time()
        params = (conversation_id, message.role, message.content, model,
                  json.dumps(options) if options is not None else None, prompt_tokens, completion_tokens,
                  first_token_s, total_s, json.dumps(meta or {}), now)
        with self._lock:
            kept_id = -(len(self._pending) + 1)
            kept = LoggedMessage(id=kept_id, conversation_id=conversation_id, role=message.role,
                                 content=message.content, model=model, options=options,
                                 prompt_tokens=prompt_tokens, completion_tokens=completion_tokens,
                                 first_token_s=first_token_s, total_s=total_s, meta=meta or {}, created=now)
            written = self._write(
                "INSERT INTO messages (conversation_id, role, content, model, options, prompt_tokens,"
                " completion_tokens, first_token_s, total_s, meta, created)"
                " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)", params, kept)
            return kept_id if written is None else written

    def messages(self, conversation_id: str) -> list[LoggedMessage]:
        cur = self._execute(
            "SELECT id, conversation_id, role, content, model, options, prompt_tokens, completion_tokens,"
            " first_token_s, total_s, meta, created FROM messages WHERE conversation_id = ? ORDER BY id",
            (conversation_id,))
        out = [_logged(cur.description, row) for row in cur.fetchall()]
        with self._lock:
            out += [m for _, _, m in self._pending if m is not None and m.conversation_id == conversation_id]
        return out

    def conversations(self, limit: int = 20, *, include_empty: bool = False) -> list[ConversationSummary]:
        """The most recent conversations, newest first, with a preview of their first user
        message (empty ones are left out unless ``include_empty``)."""
        having = "" if include_empty else " HAVING COUNT(m.id) > 0"
        cur = self._execute(
            "SELECT c.id, c.name, c.model, c.created, COUNT(m.id),"
            " (SELECT content FROM messages f WHERE f.conversation_id = c.id AND f.role = 'user'"
            "  ORDER BY f.id LIMIT 1)"
            " FROM conversations c LEFT JOIN messages m ON m.conversation_id = c.id GROUP BY c.id"
            f"{having} ORDER BY COALESCE(MAX(m.created), c.created) DESC LIMIT ?", (limit,))
        return [ConversationSummary(id=r[0], name=r[1], model=r[2], created=r[3], messages=r[4],
                                    preview=_preview(r[5])) for r in cur.fetchall()]

    def search(self, text: str, limit: int = 20) -> list[tuple[ConversationSummary, LoggedMessage]]:
        """Messages containing ``text`` (case-insensitive for ASCII), newest first, each with
        its conversation."""
        pattern = "%" + text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "%"
        cur = self._execute(
            "SELECT id, conversation_id, role, content, model, options, prompt_tokens, completion_tokens,"
            " first_token_s, total_s, meta, created FROM messages WHERE content LIKE ? ESCAPE '\\'"
            " AND role IN ('user', 'assistant') ORDER BY id DESC LIMIT ?", (pattern, limit))
        found = [_logged(cur.description, row) for row in cur.fetchall()]
        summaries = {s.id: s for s in self.conversations(limit=1_000_000, include_empty=True)}
        return [(summaries[m.conversation_id], m) for m in found if m.conversation_id in summaries]

    def delete(self, conversation_id: str) -> int:
        """Delete a conversation and its messages; returns how many messages went."""
        with self._lock:
            try:
                self._db.execute("BEGIN IMMEDIATE")
                count = self._db.execute("DELETE FROM messages WHERE conversation_id = ?",
                                         (conversation_id,)).rowcount
                self._db.execute("DELETE FROM conversations WHERE id = ?", (conversation_id,))
                self._db.execute("COMMIT")
            except sqlite3.DatabaseError as exc:
                if self._db.in_transaction:
                    self._db.execute("ROLLBACK")
                raise self._error(exc) from None
            return int(count)

    def close(self) -> None:
        with self._lock:
            try:
                self._flush_pending()
            finally:
                self._db.close()
                if self._turn_lock_fd is not None:
                    os.close(self._turn_lock_fd)
                    self._turn_lock_fd = None


def _is_locked(exc: sqlite3.Error) -> bool:
    text = str(exc)
    return "locked" in text or "busy" in text


def _logged(description: Any, row: tuple[Any, ...]) -> LoggedMessage:
    d = dict(zip([c[0] for c in description], row))
    d["options"] = json.loads(d["options"]) if d["options"] else None
    d["meta"] = json.loads(d["meta"]) if d["meta"] else {}
    return LoggedMessage(**d)


def _preview(text: str | None, width: int = 60) -> str:
    flat = " ".join((text or "").split())
    return flat if len(flat) <= width else flat[: width - 1] + "…"
