"""``duma logs``: list, show and path over the SQLite conversation log, and its errors."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import pytest


from duma.logstore import LogStore
from duma.testing import run_cli
from duma.types import Message


def make_log(path: Path) -> tuple[str, str]:
    """Two conversations; the second one is the most recent."""
    store = LogStore(path)
    first = store.new_conversation(model="tiny")
    store.add_message(first, Message(role="user", content="hello"))
    store.add_message(first, Message(role="assistant", content="hi **there**"), model="tiny")
    second = store.new_conversation(model="other")
    store.add_message(second, Message(role="user", content="what is 2+2?"))
    store.close()
    return first, second


def test_path_defaults_to_duma_home_and_follows_config(duma_home: Path, tmp_path: Path, monkeypatch) -> None:
    code, out, _ = run_cli(["logs", "path"])
    assert code == 0 and out.strip() == str(duma_home / "logs.db")
    monkeypatch.setenv("DUMA_LOGGING__DATABASE", str(tmp_path / "elsewhere.db"))
    code, out, _ = run_cli(["logs", "path"])
    assert code == 0 and out.strip() == str(tmp_path / "elsewhere.db")


def test_empty_log_lists_nothing_and_creates_no_file(duma_home: Path) -> None:
    code, out, _ = run_cli(["logs", "list", "--json"])
    assert code == 0 and json.loads(out) == []
    code, out, _ = run_cli(["logs", "list"])
    assert code == 0 and "No conversations" in out
    code, out, err = run_cli(["logs", "show"])
    assert code == 1 and out == "" and err.count("\n") == 1 and "no conversations logged yet" in err
    assert not (duma_home / "logs.db").exists()


def test_list_and_show(duma_home: Path) -> None:
    first, second = make_log(duma_home / "logs.db")
    code, out, _ = run_cli(["logs", "list", "--json"])
    rows = json.loads(out)
    assert code == 0 and [r["id"] for r in rows] == [second, first]
    assert rows[1]["model"] == "tiny" and rows[1]["messages"] == 2

    code, out, _ = run_cli(["logs", "list", "--json", "-n", "1"])
    assert [r["id"] for r in json.loads(out)] == [second]

    code, out, _ = run_cli(["logs", "list"])
    assert code == 0 and first in out and second in out and "tiny" in out

    code, out, _ = run_cli(["logs", "show", first, "--json"])
    data = json.loads(out)
    assert code == 0 and data["id"] == first and data["model"] == "tiny"
    assert [(m["role"], m["content"]) for m in data["messages"]] == [("user", "hello"),
                                                                      ("assistant", "hi **there**")]

    for latest in (["logs", "show", "--json"], ["logs", "show", "-c", "--json"]):
        code, out, _ = run_cli(latest)
        assert code == 0 and json.loads(out)["id"] == second

    code, out, _ = run_cli(["logs", "show", first])
    assert code == 0 and "hello" in out and "there" in out and "**" not in out  # Markdown rendered


def test_unknown_id_is_one_line_error(duma_home: Path) -> None:
    make_log(duma_home / "logs.db")
    code, out, err = run_cli(["logs", "show", "nope"])
    assert code == 1 and out == ""
    assert err.strip().splitlines() == [err.strip()] and "unknown conversation ID 'nope'" in err


def test_corrupt_database_is_one_line_log_store_error(duma_home: Path) -> None:
    duma_home.mkdir(parents=True, exist_ok=True)
    (duma_home / "logs.db").write_bytes(b"this is not a database at all\x00\x01\x02" * 200)
    for args in (["logs", "list"], ["logs", "show", "x"], ["logs", "list", "--json"]):
        code, out, err = run_cli(args)
        assert code == 1 and out == ""
        assert err.count("\n") == 1 and "unreadable" in err and "Traceback" not in err


@pytest.mark.timeout(60)
def test_locked_database_is_one_line_log_store_error(duma_home: Path) -> None:
    path = duma_home / "logs.db"
    make_log(path)
    holder = sqlite3.connect(str(path), isolation_level=None)
    holder.execute("PRAGMA locking_mode=EXCLUSIVE")
    holder.execute("BEGIN EXCLUSIVE")  # no other connection can even read now
    try:
        code, out, err = run_cli(["logs", "list"])
    finally:
        holder.close()
    assert code == 1 and out == "" and err.count("\n") == 1 and "locked" in err


def test_list_previews_the_first_message_and_hides_empty_conversations(duma_home: Path) -> None:
    first, second = make_log(duma_home / "logs.db")
    store = LogStore(duma_home / "logs.db")
    empty = store.new_conversation(model="tiny")
    store.close()
    code, out, _ = run_cli(["logs", "list", "--json"])
    rows = json.loads(out)
    assert [r["id"] for r in rows] == [second, first] and empty not in out
    assert rows[0]["preview"] == "what is 2+2?"
    code, out, _ = run_cli(["logs", "list"])
    assert "what is 2+2?" in out and "hello" in out


def test_search_and_delete(duma_home: Path) -> None:
    first, second = make_log(duma_home / "logs.db")
    code, out, _ = run_cli(["logs", "search", "THERE", "--json"])
    assert code == 0 and [(r["conversation_id"], r["content"]) for r in json.loads(out)] == [(first, "hi **there**")]
    code, out, _ = run_cli(["logs", "search", "100%"])
    assert code == 0 and "No message contains" in out
    code, out, err = run_cli(["logs", "delete", first, "-y"])
    assert code == 0 and "2 messages" in out
    code, out, _ = run_cli(["logs", "list", "--json"])
    assert [r["id"] for r in json.loads(out)] == [second]
    code, _, err = run_cli(["logs", "delete", first, "-y"])
    assert code == 1 and "unknown conversation ID" in err and err.count("\n") == 1


def test_show_lists_the_slow_minds_steps_and_marks_interrupted_replies(duma_home: Path, tmp_path: Path) -> None:
    from duma.agents import Agent
    from duma.testing import ScriptedBackend

    fast = ScriptedBackend(replies=["Response[Let me check.] Invoke[True]", "Response[It is 4.] Invoke[False]"])
    slow = ScriptedBackend(replies=["Reason[add them] Act[calculator(2+2)]", "Reason[done] Finish[4]"])
    agent = Agent({"agent": {"router": "duma"}}, fast_backend=fast, slow_backend=slow)
    reply = agent.chat("what is 2+2?")
    agent.log_store.close()
    code, out, _ = run_cli(["logs", "show", reply.conversation_id])
    assert code == 0 and "Act: calculator(2+2)" in out and "Obs: 4" in out and "It is 4." in out
    code, out, _ = run_cli(["logs", "show", reply.conversation_id, "--json"])
    [slow_result] = [m for m in json.loads(out)["messages"] if m["meta"].get("kind") == "slow_mind"]
    assert slow_result["meta"]["trace"][0]["action"] == "calculator(2+2)"
