"""Nothing a user saw is lost, and nothing blocks: a locked log, slow or abandoned readers,
kills mid-reply, undecodable input and two processes on one conversation. Real threads and
real processes throughout."""

from __future__ import annotations

import gc
import json
import signal
import sqlite3
import subprocess
import threading
import sys
import time
from pathlib import Path

import pytest

from duma.agents import Agent
from duma.logstore import LogStore
from duma.testing import ScriptedBackend
from plugins_fixtures.installer import REPO, clean_env, install_fixture_plugins

WORDS = " ".join(f"w{i}" for i in range(40))
LONG_REPLY = f"Response[{WORDS}] Invoke[False]"


def scripted_agent(tmp_path: Path, replies: list[str], *, delay_s: float = 0.0,
                   store: LogStore | None = None) -> Agent:
    backend = ScriptedBackend(replies=replies, delay_s=delay_s)
    config = {"agent": {"router": "always-fast"}, "logging": {"database": str(tmp_path / "logs.db")}}
    return Agent(config, log_store=store, fast_backend=backend, slow_backend=backend)


# --- in process: the log and the stream --------------------------------------------------------

def test_a_locked_log_keeps_the_reply_and_writes_it_with_the_next_turn(tmp_path):
    store = LogStore(tmp_path / "logs.db", timeout_s=0.2)
    agent = scripted_agent(tmp_path, ["Response[first] Invoke[False]", "Response[second] Invoke[False]"],
                           store=store)
    cid = agent.new_conversation()
    holder = sqlite3.connect(str(tmp_path / "logs.db"), isolation_level=None)
    holder.execute("BEGIN EXCLUSIVE")  # another process holding the database
    events = list(agent.stream("hello", cid))
    notices = [e.message for e in events if e.type == "notice"]
    assert events[-1].type == "final_done" or events[-2].type == "final_done"
    assert len(notices) == 1 and "locked" in notices[0] and "kept in memory" in notices[0]
    assert [m.content for m in agent.log_store.messages(cid)] == ["hello", "first"]  # this process sees it
    holder.execute("ROLLBACK")
    holder.close()

    agent.chat("again", cid)
    reader = LogStore(tmp_path / "logs.db")  # what another process reads from the file
    assert [m.content for m in reader.messages(cid)] == ["hello", "first", "again", "second"]
    assert store.unwritten == 0


def test_a_paused_reader_does_not_block_other_conversations(tmp_path, tiny_model):
    config = {"model": {"model": str(tiny_model), "options": {"max_tokens": 48}},
              "agent": {"router": "always-fast"}, "logging": {"database": str(tmp_path / "logs.db")}}
    agent = Agent.from_config(config)
    agent.load()
    agent.chat("warm up")
    paused = agent.stream("the first conversation")
    first = next(paused)  # read one event, then stop reading for a while
    assert first.conversation_id
    started = time.perf_counter()
    other = agent.chat("another conversation")
    assert other.text and time.perf_counter() - started < 15
    rest = list(paused)  # the paused turn finished meanwhile; its events were kept
    assert rest[-1].type == "final_done"


def test_an_abandoned_stream_stops_generating_and_logs_what_was_shown(tmp_path):
    agent = scripted_agent(tmp_path, [LONG_REPLY], delay_s=0.05)
    stream = agent.stream("tell me a long story")
    shown = "".join(next(stream).text for _ in range(3))
    cid = stream.conversation_id
    started = time.perf_counter()
    del stream
    gc.collect()
    deadline = time.time() + 5
    while time.time() < deadline and len(agent.log_store.messages(cid)) < 2:
        time.sleep(0.02)
    messages = agent.log_store.messages(cid)
    assert [m.role for m in messages] == ["user", "assistant"]
    assert messages[1].meta["interrupted"] is True
    assert messages[1].content.startswith(shown.strip())
    assert len(messages[1].content.split()) < 20  # generation stopped well before the end
    assert time.perf_counter() - started < 2
    assert agent.chat("next", cid).text == WORDS  # the conversation goes on, well formed


def test_closing_a_stream_waits_until_the_partial_reply_is_logged(tmp_path):
    agent = scripted_agent(tmp_path, [LONG_REPLY], delay_s=0.05)
    stream = agent.stream("hi")
    next(stream)
    stream.close()
    [_, reply] = agent.log_store.messages(stream.conversation_id)
    assert reply.meta["interrupted"] is True and reply.content.startswith("w0")


def test_an_empty_message_leaves_no_conversation_behind(tmp_path):
    agent = scripted_agent(tmp_path, ["Response[x] Invoke[False]"])
    with pytest.raises(Exception, match="empty message"):
        agent.chat("")
    assert agent.log_store.conversations(include_empty=True) == []


def test_lone_surrogates_from_undecodable_input_are_replaced_not_fatal(tmp_path):
    agent = scripted_agent(tmp_path, ["Response[ok] Invoke[False]"])
    reply = agent.chat("caf\udce9 au lait")
    [user, _] = agent.log_store.messages(reply.conversation_id)
    assert user.content == "caf? au lait"


# --- real processes -------------------------------------------------------------------------------

@pytest.fixture
def slow_chat(tmp_path):
    """Start ``duma chat`` processes on the 'fixture_slow' backend (one word per 0.2 s)."""
    paths = install_fixture_plugins(tmp_path / "site", ["fixture_slow"])
    database = tmp_path / "logs.db"
    settings = ["-S", f"logging.database={database}", "-S", "model.backend=fixture_slow",
                "-S", "agent.router=always-fast"]

    def start(replies: list[str], *args: str, delay_s: float = 0.2) -> subprocess.Popen[bytes]:
        command = [sys.executable, "-m", "duma", *settings, "-S", f"model.model={json.dumps(replies)}",
                   "chat", *args]
        return subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                env=clean_env(paths, DUMA_FIXTURE_DELAY_S=str(delay_s)), cwd=str(REPO))

    start.database = database  # type: ignore[attr-defined]
    return start


def wait_for_messages(database: Path, count: int, timeout_s: float = 60) -> list[tuple[str, str, str]]:
    deadline = time.time() + timeout_s
    rows: list[tuple[str, str, str]] = []
    while time.time() < deadline:
        if database.exists():
            with sqlite3.connect(str(database)) as db:
                try:
                    rows = db.execute("SELECT role, content, meta FROM messages ORDER BY id").fetchall()
                except sqlite3.OperationalError:
                    rows = []
            if len(rows) >= count:
                return rows
        time.sleep(0.1)
    raise AssertionError(f"expected {count} logged messages, have {rows}")


def test_sigterm_mid_reply_logs_the_partial_reply(slow_chat):
    chat = slow_chat([LONG_REPLY])
    chat.stdin.write(b"tell me everything\n")
    chat.stdin.flush()
    wait_for_messages(slow_chat.database, 1)
    time.sleep(1.5)  # a few words are out
    chat.send_signal(signal.SIGTERM)
    assert chat.wait(30) == 143  # 128 + SIGTERM
    rows = wait_for_messages(slow_chat.database, 2)
    role, content, meta = rows[1]
    assert role == "assistant" and json.loads(meta)["interrupted"] is True
    assert content.startswith("w0 w1") and len(content.split()) < 40


def test_sigkill_mid_reply_then_continuing_gives_a_well_formed_conversation(slow_chat):
    chat = slow_chat([LONG_REPLY])
    chat.stdin.write(b"first question\n")
    chat.stdin.flush()
    wait_for_messages(slow_chat.database, 1)
    time.sleep(0.6)
    chat.kill()
    chat.wait(30)
    # -c keeps the model the conversation started with (the -S model here is another one).
    again = slow_chat(["Response[fine] Invoke[False]"], "-c", delay_s=0.0)
    out, err = again.communicate(b"second question\n", timeout=120)
    assert again.returncode == 0, err.decode()
    assert out.decode().strip() == WORDS
    rows = wait_for_messages(slow_chat.database, 4)
    assert [r[0] for r in rows] == ["user", "assistant", "user", "assistant"]
    assert json.loads(rows[1][2])["interrupted"] is True


def test_invalid_utf8_on_stdin_is_replaced_and_logged(slow_chat):
    chat = slow_chat(["Response[ok] Invoke[False]"], delay_s=0.0)
    out, err = chat.communicate(b"caf\xe9 \xff au lait\nsecond line\n", timeout=120)
    assert chat.returncode == 0, err.decode()
    assert out.decode().split() == ["ok", "ok"]
    rows = wait_for_messages(slow_chat.database, 4)
    assert rows[0][1] == "caf\ufffd \ufffd au lait" and rows[2][1] == "second line"
    with sqlite3.connect(str(slow_chat.database)) as db:
        assert db.execute("SELECT COUNT(*) FROM conversations").fetchone()[0] == 1


def test_two_processes_on_one_conversation_take_turns(slow_chat):
    first = slow_chat(["Response[one two three four five] Invoke[False]"], delay_s=0.0)
    out, err = first.communicate(b"start\n", timeout=120)
    assert first.returncode == 0, err.decode()
    with sqlite3.connect(str(slow_chat.database)) as db:
        [(cid,)] = db.execute("SELECT id FROM conversations").fetchall()
    writers = [slow_chat(["Response[one two three four five] Invoke[False]"], "--cid", cid) for _ in range(2)]
    for i, writer in enumerate(writers):
        writer.stdin.write(f"from process {i}\n".encode())
        writer.stdin.close()
    for writer in writers:
        assert writer.wait(120) == 0, writer.stderr.read().decode()
    rows = wait_for_messages(slow_chat.database, 6)
    assert [r[0] for r in rows] == ["user", "assistant"] * 3


# --- the model cache ---------------------------------------------------------------------------

def test_a_conversion_killed_midway_leaves_nothing_behind_after_the_next_run(tmp_path, monkeypatch):
    from duma import models

    monkeypatch.setenv("DUMA_MODEL_CACHE", str(tmp_path / "models"))
    cache = models.model_cache_dir()
    cache.mkdir(parents=True, exist_ok=True)
    script = ("import os, sys, time; from pathlib import Path; "
              "tmp = Path(sys.argv[1]) / f'.smollm2.tmp-{os.getpid()}-0000'; tmp.mkdir(); "
              "(tmp / 'model.safetensors').write_bytes(b'0' * 1000); print('ready', flush=True); time.sleep(60)")
    converting = subprocess.Popen([sys.executable, "-c", script, str(cache)], stdout=subprocess.PIPE)
    assert converting.stdout.readline().strip() == b"ready"
    alive = cache / f".other.tmp-{__import__('os').getpid()}-1111"  # a conversion still running
    alive.mkdir()
    assert models.remove_stale_conversions(cache) == []  # the killed-to-be one is still alive
    converting.kill()
    converting.wait()
    [removed] = models.remove_stale_conversions(cache)
    assert removed.name.startswith(".smollm2.tmp-") and not removed.exists()
    assert alive.exists()


def test_a_truncated_cached_model_says_to_delete_it(tiny_model, tmp_path, monkeypatch):
    import shutil

    from duma import models
    from duma.errors import ModelLoadError

    monkeypatch.setenv("DUMA_MODEL_CACHE", str(tmp_path / "models"))
    cached = models.model_cache_dir() / "tiny"
    shutil.copytree(tiny_model, cached)
    weights = cached / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:1000])
    with pytest.raises(ModelLoadError) as info:
        models.load_model(str(cached))
    assert f"delete {cached}" in str(info.value) and "\n" not in str(info.value)


def test_a_locked_log_waits_once_not_at_every_write_and_keeps_what_it_cannot_write(tmp_path):
    from duma.types import Message

    store = LogStore(tmp_path / "logs.db", timeout_s=1.0)
    cid = store.new_conversation()
    holder = sqlite3.connect(str(tmp_path / "logs.db"), isolation_level=None)
    holder.execute("BEGIN EXCLUSIVE")
    started = time.perf_counter()
    for i in range(5):
        store.add_message(cid, Message(role="user", content=f"m{i}"))
    assert time.perf_counter() - started < 2.5  # one full wait, then short retries
    assert store.unwritten == 5 and [m.content for m in store.messages(cid)] == [f"m{i}" for i in range(5)]
    store.close()  # still locked: the kept messages go to a recovery file
    holder.execute("ROLLBACK")
    holder.close()
    [rescue] = tmp_path.glob("logs.db.unwritten-*.jsonl")
    assert [json.loads(line)["content"] for line in rescue.read_text().splitlines()] == [f"m{i}" for i in range(5)]


def test_two_stores_on_one_log_in_one_process_take_turns(tmp_path):
    first, second = LogStore(tmp_path / "logs.db"), LogStore(tmp_path / "logs.db")
    order: list[str] = []
    entered = threading.Event()

    def hold() -> None:
        with first.turn_lock("c"):
            entered.set()
            time.sleep(0.3)
            order.append("first done")

    worker = threading.Thread(target=hold)
    worker.start()
    entered.wait(5)
    with second.turn_lock("c"):
        order.append("second in")
    worker.join()
    assert order == ["first done", "second in"]
    first.close()
    with second.turn_lock("c"):  # closing one store releases nothing the other holds
        pass


def test_the_repetition_guard_leaves_rules_and_laughter_alone():
    from duma.backend import RepetitionGuard

    def loops(text: str) -> bool:
        guard = RepetitionGuard(4)
        return any(guard.feed(text[i:i + 3]) for i in range(0, len(text), 3))

    assert not loops("-" * 100) and not loops("ha " * 40) and not loops("=" * 80)
    assert loops("I checked: " * 10) and loops("Paris is the capital.\n" * 6)
    # Four Chinese characters are a phrase, not laughter: "聊天查查，" written over and over.
    assert loops("我是一个助手，可以帮你" + "聊天查查，" * 8) and not loops("哈哈" * 40)


def test_a_log_folder_that_cannot_be_made_is_a_one_line_error_with_the_cause(tmp_path):
    from duma.errors import LogStoreError

    blocker = tmp_path / "not-a-folder"
    blocker.write_text("a file where DUMA_HOME should be")
    with pytest.raises(LogStoreError) as info:
        LogStore(blocker / "logs.db")
    message = str(info.value)
    assert "cannot create the log folder" in message and "writable" in message and "\n" not in message
    assert "unreadable" not in message and "move it away" not in message
