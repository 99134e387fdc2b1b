"""The conversation log: every turn in a SQLite database under DUMA_HOME (WAL mode).

Each message is committed as soon as it exists (the user message before generation starts),
so a crash or kill in the middle of a turn loses nothing already written. The user's ratings
of replies (``!good``/``!bad`` in ``duma chat``, :meth:`LogStore.add_rating`) are kept beside
the message they rate; ``duma logs export`` turns them into training records.
"""

from __future__ import annotations

import json
import os
import sqlite3
import sys
import threading
import time
import uuid
import weakref
import zlib
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Literal

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
CREATE TABLE IF NOT EXISTS ratings (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    conversation_id TEXT NOT NULL REFERENCES conversations(id),
    message_id INTEGER NOT NULL REFERENCES messages(id),
    score INTEGER NOT NULL CHECK (score IN (-1, 1)),
    note TEXT,
    created REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS ratings_by_message ON ratings(message_id, id);
"""
# Every statement is IF NOT EXISTS: opening a log written by an older duma adds what it lacks
# (the ratings table), and the old one keeps working with the new file.


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


class Rating(BaseModel):
    """A user's rating of one logged reply: +1 (good) or -1 (bad), with an optional note.
    A message rated again keeps every rating; the newest one counts."""

    id: int
    conversation_id: str
    message_id: int
    score: Literal[-1, 1]
    note: str | None = None
    created: float


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
    once, and later writes try the kept ones first (without waiting again), in order. Reads
    in this process see kept messages too, so a conversation never loses a reply it showed.
    What is still kept at :meth:`close` goes to a recovery file beside the database.
    """

    RETRY_WAIT_S = 0.05  # how long a write waits for a locked database once writes are kept

    def __init__(self, path: str | Path | None = None, timeout_s: float = 5.0) -> None:
        self.path = Path(path) if path else default_path()
        self.in_memory = str(path) == ":memory:"
        self.timeout_s = timeout_s
        self._lock = threading.RLock()
        self._pending: list[tuple[str, tuple[Any, ...], LoggedMessage | Rating | None]] = []
        self._pending_conversations: dict[str, dict[str, Any] | None] = {}
        self._write_problem: str | None = None
        self._write_problem_told = False
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

    def _query(self, sql: str, params: tuple[Any, ...] = ()) -> tuple[Any, list[tuple[Any, ...]]]:
        """The column description and all rows of a query, read under the lock (the one
        connection is shared by threads)."""
        with self._lock:
            try:
                cur = self._db.execute(sql, params)
                return cur.description, cur.fetchall()
            except sqlite3.DatabaseError as exc:
                raise self._error(exc) from None

    def _write(self, sql: str, params: tuple[Any, ...], kept: LoggedMessage | Rating | None = None) -> int | None:
        """Run one write after any kept ones; a locked database keeps it in memory instead.
        Returns the new row id, or None when the write was kept."""
        with self._lock:
            self._flush_pending(wait_s=self.RETRY_WAIT_S)
            if not self._pending:
                try:
                    return int(self._db.execute(sql, params).lastrowid or 0)
                except sqlite3.DatabaseError as exc:
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

    def _flush_pending(self, wait_s: float | None = None) -> None:
        """Write the kept writes in one transaction, waiting at most ``wait_s`` for the lock
        (the full ``timeout_s`` when None)."""
        if not self._pending:
            return
        if wait_s is not None:
            self._db.execute(f"PRAGMA busy_timeout = {int(wait_s * 1000)}")
        try:
            self._db.execute("BEGIN IMMEDIATE")
            for sql, params, _ in self._pending:
                self._db.execute(sql, params)
            self._db.execute("COMMIT")
        except sqlite3.DatabaseError as exc:
            if self._db.in_transaction:
                self._db.execute("ROLLBACK")
            if not _is_locked(exc):
                raise self._error(exc) from None
            return
        finally:
            if wait_s is not None:
                self._db.execute(f"PRAGMA busy_timeout = {int(self.timeout_s * 1000)}")
        self._pending.clear()
        self._pending_conversations.clear()
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
        """Serialise the turns of one conversation: across the threads of this process (also
        for an in-memory log) and across processes sharing this database (an advisory lock on one byte of
        ``<database>.turns``, released when the turn ends or the process dies)."""
        database = f"memory:{id(self)}" if self.in_memory else str(self.path.resolve())
        with _TURN_LOCKS.hold(database, conversation_id, between_processes=not self.in_memory):
            yield
            with self._lock:  # kept writes go in before another process takes its turn
                self._flush_pending(wait_s=self.RETRY_WAIT_S)

    def new_conversation(self, model: str | None = None, name: str | None = None,
                         conversation_id: str | None = None, setup: dict[str, Any] | None = None) -> str:
        """A new conversation; ``setup`` records how it runs (its minds), so that continuing
        it later keeps them."""
        cid = conversation_id or uuid.uuid4().hex[:16]
        with self._lock:
            written = self._write(
                "INSERT OR IGNORE INTO conversations (id, name, model, created, setup) VALUES (?, ?, ?, ?, ?)",
                (cid, name, model, time.time(), json.dumps(setup) if setup is not None else None))
            if written is None:
                self._pending_conversations[cid] = setup
        return cid

    def conversation_setup(self, conversation_id: str) -> dict[str, Any] | None:
        """The setup a conversation was started with (None when it recorded none)."""
        with self._lock:
            if conversation_id in self._pending_conversations:
                return self._pending_conversations[conversation_id]
        _, rows = self._query("SELECT setup FROM conversations WHERE id = ?", (conversation_id,))
        return json.loads(rows[0][0]) if rows and rows[0][0] else None

    def exists(self, conversation_id: str) -> bool:
        with self._lock:
            if conversation_id in self._pending_conversations:
                return True
        _, rows = self._query("SELECT 1 FROM conversations WHERE id = ?", (conversation_id,))
        return bool(rows)

    def last_conversation(self) -> str | None:
        """The conversation with the most recent message (or the newest one)."""
        with self._lock:
            kept = next((m.conversation_id for _, _, m in reversed(self._pending) if isinstance(m, LoggedMessage)),
                        None)
        if kept is not None:
            return kept
        _, rows = self._query("SELECT conversation_id FROM messages ORDER BY created DESC, id DESC LIMIT 1")
        if not rows:
            _, rows = self._query("SELECT id FROM conversations ORDER BY created DESC LIMIT 1")
        return rows[0][0] if rows else None

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
            self._flush_pending(wait_s=self.RETRY_WAIT_S)
            kept = LoggedMessage(id=-(len(self._pending) + 1), conversation_id=conversation_id,
                                 role=message.role, content=message.content, model=model, options=options,
                                 prompt_tokens=prompt_tokens, completion_tokens=completion_tokens,
                                 first_token_s=first_token_s, total_s=total_s, meta=meta or {}, created=now)
            written = self._write(
                "INSERT INTO messages (conversation_id, role, content, model, options, prompt_tokens,"
                " completion_tokens, first_token_s, total_s, meta, created)"
                " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)", params, kept)
            return kept.id if written is None else written

    def messages(self, conversation_id: str) -> list[LoggedMessage]:
        """A conversation's messages in the order they were written (kept ones last)."""
        description, rows = self._query(
            "SELECT id, conversation_id, role, content, model, options, prompt_tokens, completion_tokens,"
            " first_token_s, total_s, meta, created FROM messages WHERE conversation_id = ?"
            " ORDER BY created, id", (conversation_id,))
        out = [_logged(description, row) for row in rows]
        with self._lock:
            out += [m for _, _, m in self._pending
                    if isinstance(m, LoggedMessage) and m.conversation_id == conversation_id]
        return out

    def add_rating(self, conversation_id: str, message_id: int, score: int, note: str | None = None) -> Rating:
        """Rate one logged message (+1 or -1); returns the rating (a negative id while it is
        kept in memory). The caller checks that the message belongs to the conversation."""
        if score not in (-1, 1):
            raise DumaError(f"a rating is +1 or -1, not {score!r}")
        now = time.time()
        with self._lock:
            self._flush_pending(wait_s=self.RETRY_WAIT_S)
            kept_message = next((m for _, _, m in self._pending
                                 if isinstance(m, LoggedMessage) and m.id == message_id), None)
            if kept_message is not None:
                # The message has no row id yet: find its row when the kept writes go in, in order.
                target = ("(SELECT id FROM messages WHERE conversation_id = ? AND created = ?"
                          " ORDER BY id DESC LIMIT 1)")
                target_params: tuple[Any, ...] = (conversation_id, kept_message.created)
            else:
                target, target_params = "?", (message_id,)
            rating = Rating(id=-(len(self._pending) + 1), conversation_id=conversation_id, message_id=message_id,
                            score=score, note=note, created=now)  # type: ignore[arg-type]
            # conversation_id first, as in every write: delete() drops kept writes by it.
            written = self._write(
                "INSERT INTO ratings (conversation_id, message_id, score, note, created)"
                f" VALUES (?, {target}, ?, ?, ?)",
                (conversation_id, *target_params, score, note, now), rating)
            return rating if written is None else rating.model_copy(update={"id": written})

    def ratings(self, conversation_id: str | None = None, since: float | None = None) -> list[Rating]:
        """The newest rating of each rated message (of one conversation, or all), oldest first;
        ``since`` (a timestamp) keeps the ratings made at or after it."""
        where: list[str] = []
        params: list[Any] = []
        if conversation_id is not None:
            where.append("r.conversation_id = ?")
            params.append(conversation_id)
        if since is not None:
            where.append("r.created >= ?")
            params.append(since)
        clause = " AND ".join(["r.id = (SELECT MAX(id) FROM ratings n WHERE n.message_id = r.message_id)", *where])
        description, rows = self._query(
            "SELECT id, conversation_id, message_id, score, note, created FROM ratings r"
            f" WHERE {clause} ORDER BY r.created, r.id", tuple(params))
        found = {r.message_id: r for r in (Rating(**dict(zip([c[0] for c in description], row))) for row in rows)}
        with self._lock:
            for _, _, kept in self._pending:
                if (isinstance(kept, Rating) and conversation_id in (None, kept.conversation_id)
                        and (since is None or kept.created >= since)):
                    found.pop(kept.message_id, None)  # the newer rating goes last
                    found[kept.message_id] = kept
        return list(found.values())

    def conversations(self, limit: int = 20, *, include_empty: bool = False,
                      conversation_id: str | None = None) -> list[ConversationSummary]:
        """The most recent conversations, newest first, with a preview of their first user
        message (empty ones are left out unless ``include_empty``); or just ``conversation_id``."""
        having = "" if include_empty or conversation_id else " HAVING COUNT(m.id) > 0"
        where = " WHERE c.id = ?" if conversation_id else ""
        params: tuple[Any, ...] = (conversation_id, limit) if conversation_id else (limit,)
        _, rows = self._query(
            "SELECT c.id, c.name, c.model, c.created, COUNT(m.id),"
            " (SELECT content FROM messages f WHERE f.conversation_id = c.id AND f.role = 'user'"
            "  ORDER BY f.id LIMIT 1)"
            f" FROM conversations c LEFT JOIN messages m ON m.conversation_id = c.id{where} GROUP BY c.id"
            f"{having} ORDER BY COALESCE(MAX(m.created), c.created) DESC LIMIT ?", params)
        return [ConversationSummary(id=r[0], name=r[1], model=r[2], created=r[3], messages=r[4],
                                    preview=_preview(r[5])) for r in rows]

    def conversation(self, conversation_id: str) -> ConversationSummary | None:
        """One conversation's summary, or None when there is no such conversation."""
        found = self.conversations(1, conversation_id=conversation_id)
        return found[0] if found else None

    def search(self, text: str, limit: int = 20) -> list[tuple[ConversationSummary, LoggedMessage]]:
        """Messages containing ``text`` (case-insensitive for ASCII), newest first, each with
        its conversation."""
        pattern = "%" + text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "%"
        description, rows = self._query(
            "SELECT id, conversation_id, role, content, model, options, prompt_tokens, completion_tokens,"
            " first_token_s, total_s, meta, created FROM messages WHERE content LIKE ? ESCAPE '\\'"
            " AND role IN ('user', 'assistant') ORDER BY id DESC LIMIT ?", (pattern, limit))
        found = [_logged(description, row) for row in rows]
        summaries = {cid: self.conversation(cid) for cid in {m.conversation_id for m in found}}
        return [(summary, m) for m in found if (summary := summaries[m.conversation_id]) is not None]

    def delete(self, conversation_id: str) -> int:
        """Delete a conversation and its messages; returns how many messages went."""
        with self._lock:
            # Kept writes of this conversation (its row and its messages) go too.
            self._pending = [w for w in self._pending if w[1][0] != conversation_id]
            self._pending_conversations.pop(conversation_id, None)
            try:
                self._db.execute("BEGIN IMMEDIATE")
                self._db.execute("DELETE FROM ratings WHERE conversation_id = ?", (conversation_id,))
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
        """Write what is kept (waiting the full timeout); if the database is still locked,
        the kept messages (and ratings) go to ``<database>.unwritten-<pid>.jsonl`` and a one-line warning
        says where, so nothing the user saw is lost."""
        with self._lock:
            try:
                self._flush_pending()
                if self._pending and not self.in_memory:
                    rescue = self.path.with_name(f"{self.path.name}.unwritten-{os.getpid()}.jsonl")
                    with rescue.open("a", encoding="utf-8") as fh:
                        for _, _, kept in self._pending:
                            if kept is not None:
                                fh.write(kept.model_dump_json() + "\n")
                    print(f"duma: warning: the log database {self.path} stayed locked; {len(self._pending)} "
                          f"unwritten messages were saved to {rescue}", file=sys.stderr)
                    self._pending.clear()
            finally:
                self._db.close()


class _ProcessTurnLocks:
    """The turn locks of this process: one thread lock per conversation and database, and
    one open ``<database>.turns`` file per database for the locks between processes. POSIX
    record locks belong to the whole process (another thread "gets" a lock the process
    holds, and closing any descriptor of the file drops them all), so they are taken and
    released only here, by the thread that holds the conversation's thread lock."""

    def __init__(self) -> None:
        self._guard = threading.Lock()
        self._files: dict[str, int | None] = {}
        # Held only while a turn runs: a conversation nobody is using drops its lock.
        self._threads: weakref.WeakValueDictionary[tuple[str, str], _TurnLock] = weakref.WeakValueDictionary()

    def _file(self, database: str) -> int | None:
        if database not in self._files:
            try:
                self._files[database] = os.open(f"{database}.turns", os.O_RDWR | os.O_CREAT, 0o644)
            except OSError:
                self._files[database] = None  # a read-only log: nothing will be written anyway
        return self._files[database]

    @contextmanager
    def hold(self, database: str, conversation_id: str, *, between_processes: bool) -> Iterator[None]:
        with self._guard:
            thread_lock = self._threads.get((database, conversation_id))
            if thread_lock is None:
                thread_lock = self._threads[(database, conversation_id)] = _TurnLock()
            fd = self._file(database) if between_processes and os.name == "posix" else None
        with thread_lock:
            if fd is None:
                yield
                return
            import fcntl

            offset = zlib.crc32(conversation_id.encode("utf-8"))
            fcntl.lockf(fd, fcntl.LOCK_EX, 1, offset)
            try:
                yield
            finally:
                fcntl.lockf(fd, fcntl.LOCK_UN, 1, offset)


class _TurnLock:
    """A lock that can be weakly referenced (``threading.Lock`` cannot)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()

    def __enter__(self) -> _TurnLock:
        self._lock.acquire()
        return self

    def __exit__(self, *exc: object) -> None:
        self._lock.release()


_TURN_LOCKS = _ProcessTurnLocks()


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
