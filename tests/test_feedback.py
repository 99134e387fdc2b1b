"""The feedback flywheel: ratings of replies (``Agent.feedback``, ``!good``/``!bad`` in
``duma chat``) kept in the log beside the message they rate, and ``duma logs export`` turning
them into sft/dpo/kto records, for the dialogue or as the fast mind sees it."""

from __future__ import annotations

import json
import sqlite3
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from duma.agents import Agent
from duma.errors import DumaError
from duma.logstore import LogStore
from duma.testing import ScriptedBackend, run_cli
from duma.types import Message

# The tables as duma created them before ratings existed (copied, not imported: the point is
# a file written by the older code).
OLD_SCHEMA = """
CREATE TABLE conversations (id TEXT PRIMARY KEY, name TEXT, model TEXT, created REAL NOT NULL, setup TEXT);
CREATE TABLE messages (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    conversation_id TEXT NOT NULL REFERENCES conversations(id),
    role TEXT NOT NULL, content TEXT NOT NULL, model TEXT, options TEXT, prompt_tokens INTEGER,
    completion_tokens INTEGER, first_token_s REAL, total_s REAL, meta TEXT, created REAL NOT NULL
);
CREATE INDEX messages_by_conversation ON messages(conversation_id, id);
"""


def make_agent(store: LogStore, fast: list[str], slow: list[str] | None = None, *,
               keep_promises: bool = False) -> Agent:
    from langchain_core.tools import tool

    @tool
    def calculator(expression: str) -> str:
        """Evaluate an arithmetic expression."""
        return "4"

    # keep_promises off by default: the broken-promise export needs a promise the agent kept fast.
    return Agent({"agent": {"keep_promises": keep_promises}}, log_store=store, fast_backend=ScriptedBackend(replies=fast),
                 slow_backend=ScriptedBackend(replies=slow or ["Finish[nothing]"]),
                 tools={"calculator": calculator})


def one_line(exc: pytest.ExceptionInfo[DumaError]) -> str:
    text = str(exc.value)
    assert "\n" not in text
    return text


# --------------------------------------------------------------------------- the API


def test_feedback_rates_the_last_reply_and_checks_its_input(tmp_path: Path) -> None:
    store = LogStore(tmp_path / "log.db")
    agent = make_agent(store, ["Response[Four.] Invoke[False]", "Response[Six.] Invoke[False]"])
    first = agent.chat("What is 2+2?")
    cid = first.conversation_id
    agent.chat("And 3+3?", cid)
    replies = [m for m in store.messages(cid) if m.role == "assistant"]

    rating = agent.feedback(cid, "good")
    assert (rating.message_id, rating.score, rating.note) == (replies[-1].id, 1, None)
    agent.feedback(cid, -1, note="  not what I asked  ")  # rated again: the newest counts
    agent.feedback(cid, "+1", message_id=replies[0].id)
    newest = {r.message_id: (r.score, r.note) for r in store.ratings(cid)}
    assert newest == {replies[0].id: (1, None), replies[-1].id: (-1, "not what I asked")}

    for score in ("great", 0, 2, True, None):
        with pytest.raises(DumaError) as info:
            agent.feedback(cid, score)  # type: ignore[arg-type]
        assert one_line(info).startswith("score must be +1/-1 or 'good'/'bad'")
    with pytest.raises(DumaError) as info:
        agent.feedback("nope", "good")
    assert "conversation nope does not exist" in one_line(info)
    with pytest.raises(DumaError) as info:
        agent.feedback(agent.new_conversation(), "bad")
    assert "has no reply to rate yet" in one_line(info)
    user_message = store.messages(cid)[0].id
    with pytest.raises(DumaError) as info:
        agent.feedback(cid, "good", message_id=user_message)
    assert "is not an assistant message" in one_line(info)
    store.close()


def test_a_handoff_rates_its_final_reply_and_a_cut_turn_its_interim(tmp_path: Path) -> None:
    store = LogStore(tmp_path / "log.db")
    agent = make_agent(store, ["Response[Let me check.] Invoke[True]", "Response[It is 4.] Invoke[False]"],
                       ["Finish[4]"])
    cid = agent.chat("What is 2+2?").conversation_id
    assert store.messages(cid)[-1].content == "It is 4."
    assert agent.feedback(cid, "good").message_id == store.messages(cid)[-1].id
    # A turn cut during the slow mind ends with its interim reply: the last thing shown.
    store.add_message(cid, Message(role="user", content="And 3+3?"))
    interim = store.add_message(cid, Message(role="assistant", content="One moment."), meta={"kind": "interim"})
    assert agent.feedback(cid, "bad").message_id == interim
    store.close()


def test_a_rating_waits_with_its_message_while_the_log_is_locked(tmp_path: Path) -> None:
    store = LogStore(tmp_path / "logs.db", timeout_s=0.2)
    cid = store.new_conversation()
    holder = sqlite3.connect(str(tmp_path / "logs.db"), isolation_level=None)
    holder.execute("BEGIN EXCLUSIVE")
    kept = store.add_message(cid, Message(role="assistant", content="kept reply"))
    rating = store.add_rating(cid, kept, -1, "slow")
    assert kept < 0 and rating.id < 0 and store.unwritten == 2
    assert [(r.message_id, r.score) for r in store.ratings(cid)] == [(kept, -1)]  # seen while kept
    holder.execute("ROLLBACK")
    holder.close()
    store.add_message(cid, Message(role="user", content="next"))  # writes the kept ones first
    assert store.unwritten == 0
    [written] = store.ratings(cid)
    [reply] = [m for m in store.messages(cid) if m.content == "kept reply"]
    assert (written.message_id, written.score, written.note) == (reply.id, -1, "slow")
    assert store.delete(cid) == 2 and store.ratings() == []
    store.close()


def test_an_old_database_opens_and_gains_ratings(tmp_path: Path, duma_home: Path) -> None:
    path = duma_home / "logs.db"
    path.parent.mkdir(parents=True, exist_ok=True)
    db = sqlite3.connect(str(path))
    db.executescript(OLD_SCHEMA)
    db.execute("INSERT INTO conversations (id, model, created) VALUES ('old', 'm', 1.0)")
    db.executemany("INSERT INTO messages (conversation_id, role, content, meta, created) VALUES (?, ?, ?, ?, ?)",
                   [("old", "user", "hi", '{"kind": "user"}', 2.0),
                    ("old", "assistant", "hello", '{"kind": "reply"}', 3.0)])
    db.commit()
    db.close()

    store = LogStore(path)
    assert store.ratings() == []
    agent = make_agent(store, ["Response[x] Invoke[False]"])
    rating = agent.feedback("old", "good", note="friendly")
    assert [m.content for m in agent.history("old")] == ["hi", "hello"]
    store.close()
    tables = {r[0] for r in sqlite3.connect(str(path)).execute("SELECT name FROM sqlite_master")}
    assert "ratings" in tables
    code, out, err = run_cli(["logs", "show", "old", "--json"])
    assert code == 0, err
    assert json.loads(out)["ratings"][0]["message_id"] == rating.message_id
    code, out, err = run_cli(["logs", "show", "old"])
    assert code == 0 and "(rated good: friendly)" in out, err


# --------------------------------------------------------------------------- duma chat


class ScriptedBackendPlugin:
    """Registers duma.testing.ScriptedBackend in-process (as tests/test_chat.py does)."""

    @staticmethod
    def register_backends(register) -> None:  # type: ignore[no-untyped-def]
        register(ScriptedBackend)


@pytest.fixture
def scripted() -> Iterator[list[str]]:
    import duma
    from duma import host
    from duma.cli import load_plugin_commands
    from duma.models import clear_backends

    load_plugin_commands()
    plugin = ScriptedBackendPlugin()
    plugin.register_backends = duma.hookimpl(ScriptedBackendPlugin.register_backends)  # type: ignore[method-assign]
    host.register_plugin(plugin, "scripted-test")
    clear_backends()
    yield ["--backend", "scripted", "-m", json.dumps(["reply one", "reply two"])]
    clear_backends()


def logged_ratings(duma_home: Path) -> list[tuple[str, int, str | None]]:
    """(rated content, score, note) of every rating, oldest first."""
    store = LogStore(duma_home / "logs.db")
    try:
        contents = {m.id: m.content for s in store.conversations(100) for m in store.messages(s.id)}
        return [(contents[r.message_id], r.score, r.note) for r in store.ratings()]
    finally:
        store.close()


def test_piped_chat_good_and_bad_are_quiet_and_logged(scripted: list[str], duma_home: Path) -> None:
    code, out, err = run_cli(["chat", *scripted],
                             input="!good\nhello\n!bad too short\nsecond\n!good\n!multi\n!good\n!end\n")
    assert code == 0, err
    # Standard output carries the replies only; a rating before any reply is a note on stderr.
    assert out == "reply one\nreply two\nreply one\n"
    assert err == "note: nothing to rate yet: !good and !bad rate the last reply\n"
    # Inside !multi, "!good" is text: the third message.
    assert logged_ratings(duma_home) == [("reply one", -1, "too short"), ("reply two", 1, None)]


def test_interactive_chat_confirms_a_rating(scripted: list[str], duma_home: Path, monkeypatch) -> None:
    from rich.console import Console

    from duma.plugins import chat

    monkeypatch.setattr(chat, "stdin_is_terminal", lambda: True)
    monkeypatch.setattr(chat, "terminal_line_reader", lambda: chat.stream_line_reader(sys.stdin))
    monkeypatch.setattr(chat, "make_console", lambda: Console(file=sys.stdout, width=100))
    code, out, err = run_cli(["chat", *scripted], input="!bad\nhello\n!bad rude\nbye\nquit\n")
    assert code == 0, err
    assert "nothing to rate yet" in out and "rated the last reply bad" in out and "!good" in out  # banner
    assert logged_ratings(duma_home) == [("reply one", -1, "rude")]


# --------------------------------------------------------------------------- export


def export(*args: str) -> tuple[int, str, str]:
    return run_cli(["logs", "export", *args])


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


@pytest.fixture
def rated_log(duma_home: Path) -> dict[str, object]:
    """A log with rated turns: a bad and a good reply to one context (two conversations that
    share a history), a kept-fast bad reply, a tool-free handoff rated good and a handoff
    with a tool rated good."""
    duma_home.mkdir(parents=True, exist_ok=True)
    store = LogStore(duma_home / "logs.db")
    agent = make_agent(store, ["Response[Paris.] Invoke[False]", "Response[Let me check: Lyon.] Invoke[False]",
                               "Response[Marseille.] Invoke[False]",
                               "Response[Let me think.] Invoke[True]", "Response[Blue.] Invoke[False]",
                               "Response[Checking.] Invoke[True]", "Response[It is 4.] Invoke[False]"],
                       ["Reason[I know this.] Finish[blue]", "Reason[Add.] Act[calculator(2+2)]", "Finish[4]"])
    first = agent.chat("Capital of France?").conversation_id
    agent.chat("And its second city?", first)  # "Let me check: Lyon." (a broken promise)
    agent.feedback(first, "good", message_id=store.messages(first)[1].id)
    agent.feedback(first, "bad", note="wrong")
    # A second conversation from the same history: the same context, another reply.
    second = agent.new_conversation(history=[Message(role="user", content="Capital of France?"),
                                             Message(role="assistant", content="Paris.")])
    agent.chat("And its second city?", second)
    agent.feedback(second, "good")
    tool_free = agent.chat("Colour of the sky?").conversation_id
    agent.feedback(tool_free, "good")
    with_tool = agent.chat("What is 2+2?").conversation_id
    agent.feedback(with_tool, "good")
    store.close()
    # The fast mind's calls: 0-2 the city turns, 3-4 the tool-free handoff, 5-6 the other one.
    return {"fast_calls": agent.fast_backend.calls}


def test_export_sft_kto_and_dpo_for_the_dialogue(rated_log: dict, tmp_path: Path) -> None:
    from duma.data import iter_records

    out = tmp_path / "sft.jsonl"
    code, stdout, err = export("--format", "sft", "--out", str(out))
    assert code == 0, err
    assert stdout == f"wrote 4 sft records (plain mind) from 5 rated replies to {out}\n"
    records = read_jsonl(out)
    assert records[0] == {"messages": [{"role": "user", "content": "Capital of France?"},
                                       {"role": "assistant", "content": "Paris."}]}
    assert records[1]["messages"][-2:] == [{"role": "user", "content": "And its second city?"},
                                          {"role": "assistant", "content": "Marseille."}]
    # A handoff's reply follows the user message (the interim reply is not part of the context).
    assert records[2]["messages"] == [{"role": "user", "content": "Colour of the sky?"},
                                      {"role": "assistant", "content": "Blue."}]
    assert [len(r.messages) for r in iter_records("sharegpt", out)] == [2, 4, 2, 2]

    code, _, err = export("--format", "kto", "--out", str(tmp_path / "kto.jsonl"))
    assert code == 0, err
    kto = read_jsonl(tmp_path / "kto.jsonl")
    assert [(r["completion"], r["label"]) for r in kto] == [
        ("Paris.", True), ("Let me check: Lyon.", False), ("Marseille.", True), ("Blue.", True), ("It is 4.", True)]
    assert kto[1]["messages"] == kto[2]["messages"] == [
        {"role": "user", "content": "Capital of France?"}, {"role": "assistant", "content": "Paris."},
        {"role": "user", "content": "And its second city?"}]

    dpo_path = tmp_path / "dpo.jsonl"
    code, _, err = export("--format", "dpo", "--out", str(dpo_path))
    assert code == 0, err
    [pair] = read_jsonl(dpo_path)
    assert pair == {"messages": kto[1]["messages"], "chosen": "Marseille.", "rejected": "Let me check: Lyon."}

    # The dpo file is what the preference source (and method: dpo) reads.
    [record] = list(iter_records("preference", dpo_path))
    assert [m.content for m in record.messages] == ["Capital of France?", "Paris.", "And its second city?"]
    assert (record.chosen, record.rejected) == ("Marseille.", "Let me check: Lyon.")


def test_export_for_the_fast_mind_with_routing_preferences(rated_log: dict, tmp_path: Path) -> None:
    out = tmp_path / "fast-kto.jsonl"
    code, _, err = export("--format", "kto", "--mind", "fast", "--out", str(out))
    assert code == 0, err
    kto = read_jsonl(out)
    # The context is exactly what the fast mind was given for that reply.
    fast_calls = rated_log["fast_calls"]
    assert kto[0]["messages"] == [m.model_dump() for m in fast_calls[0]]
    assert kto[1]["messages"] == [m.model_dump() for m in fast_calls[1]]
    assert kto[1]["completion"] == "Response[Let me check: Lyon.]\nInvoke[False]" and kto[1]["label"] is False
    # A handoff's final reply: the fast mind's second pass, after SlowMind[...].
    final_pass = fast_calls[4]
    assert kto[3]["messages"] == [m.model_dump() for m in final_pass]
    assert kto[3]["messages"][-1]["content"] == "SlowMind[blue]"
    assert kto[3]["completion"] == "Response[Blue.]\nInvoke[False]"

    dpo_path = tmp_path / "fast-dpo.jsonl"
    code, _, err = export("--format", "dpo", "--mind", "fast", "--out", str(dpo_path))
    assert code == 0, err
    pairs = read_jsonl(dpo_path)
    assert [(p["chosen"], p["rejected"]) for p in pairs] == [
        ("Response[Marseille.]\nInvoke[False]", "Response[Let me check: Lyon.]\nInvoke[False]"),  # same context
        # !bad on a turn kept fast that promised a lookup: it should have handed over.
        ("Response[Let me look into that.]\nInvoke[True]", "Response[Let me check: Lyon.]\nInvoke[False]"),
        # !good on a handoff whose slow mind used no tool: it could have answered at once.
        ("Response[Blue.]\nInvoke[False]", "Response[Let me think.]\nInvoke[True]"),
    ]
    assert pairs[1]["messages"] == kto[1]["messages"]
    assert pairs[2]["messages"] == [m.model_dump() for m in fast_calls[3]]
    assert pairs[2]["messages"][-1] == {"role": "user", "content": "User[Colour of the sky?]"}


def test_export_for_the_fast_mind_prefers_a_kept_promise_the_user_liked(duma_home: Path, tmp_path: Path) -> None:
    duma_home.mkdir(parents=True, exist_ok=True)
    store = LogStore(duma_home / "logs.db")
    # keep_promises on (the default): the fast mind promised a lookup but wrote Invoke[False].
    agent = make_agent(store, ["Response[Let me work that out.] Invoke[False]", "Response[It is 4.] Invoke[False]",
                               "Response[Let me check.] Invoke[False]", "Response[Still 4.] Invoke[False]"],
                       ["Reason[Add.] Act[calculator(2+2)]", "Finish[4]"] * 2, keep_promises=True)
    liked = agent.chat("What is 2+2?")
    assert liked.slow_ran and liked.text == "It is 4."
    agent.feedback(liked.conversation_id, "good")
    disliked = agent.chat("What is 2+2, again?")
    agent.feedback(disliked.conversation_id, "bad")  # a bad answer says nothing about the routing
    store.close()

    out = tmp_path / "fast-dpo.jsonl"
    code, _, err = export("--format", "dpo", "--mind", "fast", "--out", str(out))
    assert code == 0, err
    [pair] = read_jsonl(out)
    assert pair == {"messages": [m.model_dump() for m in agent.fast_backend.calls[0]],
                    "chosen": "Response[Let me work that out.]\nInvoke[True]",
                    "rejected": "Response[Let me work that out.]\nInvoke[False]"}


def test_export_since_and_bad_options(rated_log: dict, tmp_path: Path) -> None:
    out = tmp_path / "later.jsonl"
    code, stdout, err = export("--format", "kto", "--since", "2999-01-01", "--out", str(out))
    assert code == 0 and stdout.startswith("wrote 0 kto records") and "!good or !bad" in err
    assert out.read_text() == ""
    code, stdout, _ = export("--format", "kto", "--since", "2000-01-01T00:00:00", "--out", str(out))
    assert code == 0 and stdout.startswith("wrote 5 kto records")

    code, stdout, err = export("--format", "kto", "--since", "last week", "--out", str(out))
    assert code == 2 and stdout == "" and err.count("\n") == 1
    assert err.startswith("Error: --since: expected a date (YYYY-MM-DD) or an ISO time, got 'last week'")
    assert len(read_jsonl(out)) == 5  # a refused export leaves the file as it was
    code, _, err = export("--format", "csv", "--out", str(out))
    assert code == 2 and "--format" in err


def test_export_of_an_empty_home_is_one_line(tmp_path: Path) -> None:
    code, stdout, err = export("--format", "sft", "--out", str(tmp_path / "x.jsonl"))
    assert code == 1 and stdout == "" and err.count("\n") == 1 and "no conversations logged yet" in err
    assert not (tmp_path / "x.jsonl").exists()
