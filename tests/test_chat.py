"""``duma chat`` and ``duma prompt``: rendering the event stream, input handling, option
validation, and the real agent end to end (scripted backend in-process, the tiny random model
in subprocesses)."""

from __future__ import annotations

import io
import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from duma import events as ev
from duma.plugins import chat
from duma.testing import run_cli


# --------------------------------------------------------------------------- helpers


def fast_turn(reply: str, cid: str = "c1") -> list[object]:
    words = reply.split(" ")
    tokens = [ev.FastToken(text=w if i == 0 else " " + w, conversation_id=cid) for i, w in enumerate(words)]
    return [*tokens, ev.FastDone(text=reply, invoke=False, conversation_id=cid),
            ev.FinalDone(text=reply, slow_ran=False, conversation_id=cid)]


def slow_turn(interim: str, final: str, cid: str = "c1") -> list[object]:
    return [
        ev.FastToken(text=interim, conversation_id=cid),
        ev.FastDone(text=interim, invoke=True, conversation_id=cid),
        ev.SlowStep(index=1, reason="need arithmetic", action="calculator(0.17*2340)", observation="397.8",
                    conversation_id=cid),
        ev.SlowDone(result="397.8", steps=1, conversation_id=cid),
        ev.FinalToken(text=final, conversation_id=cid),
        ev.FinalDone(text=final, slow_ran=True, conversation_id=cid),
    ]


def terminal_console() -> tuple[object, io.StringIO]:
    from rich.console import Console

    buffer = io.StringIO()
    return Console(file=buffer, force_terminal=True, width=80, color_system="standard"), buffer


def strip_ansi(text: str) -> str:
    import re

    return re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", text)


# --------------------------------------------------------------------------- units


def test_generation_options_are_validated_naming_the_option() -> None:
    assert chat.parse_generation_options([("temperature", "0.7"), ("max_tokens", "20"), ("stop", "###"),
                                          ("stop", "END")]) == {
        "temperature": 0.7, "max_tokens": 20, "stop": ["###", "END"]}
    cases = {
        ("temperature", "9"): "-o temperature: must be <= 5 (got 9)",
        ("top_p", "0"): "-o top_p: must be > 0 (got 0)",
        ("max_tokens", "lots"): "-o max_tokens: must be an integer (got 'lots')",
    }
    for pair, message in cases.items():
        with pytest.raises(chat.OptionError) as info:
            chat.parse_generation_options([pair])
        assert info.value.message == message
    with pytest.raises(chat.OptionError) as info:
        chat.parse_generation_options([("foo", "1")])
    assert info.value.message.startswith("-o foo: unknown option; allowed: max_tokens, temperature")


def test_user_messages_multi_line_blank_and_exit() -> None:
    lines = iter(["", "hello", "  ", "!multi", "line a", "", "line b", "!end", "!multi EOF", "x", "!end",
                  "EOF-less", "!end EOF", "quit", "never"])
    read = lambda _prompt: next(lines, None)  # noqa: E731
    assert list(chat.iter_user_messages(read)) == ["hello", "line a\n\nline b", "x\n!end\nEOF-less"]
    lines2 = iter(["one", "!multi", "unfinished"])  # end of input inside a block sends it
    assert list(chat.iter_user_messages(lambda _p: next(lines2, None))) == ["one", "unfinished"]


def test_plain_renderer_prints_only_final_replies() -> None:
    out, err = io.StringIO(), io.StringIO()
    renderer = chat.PlainRenderer(out, err, show_slow=True)
    assert renderer.render(iter(fast_turn("Paris is the capital."))).text == "Paris is the capital."
    final = renderer.render(iter([ev.Notice(message="history trimmed"), *slow_turn("Let me check.", "It is 397.8.")]))
    assert final.slow_ran
    assert out.getvalue() == "Paris is the capital.\nIt is 397.8.\n"
    assert "history trimmed" in err.getvalue() and "Act: calculator(0.17*2340)" in err.getvalue()
    assert renderer.render(iter([ev.FastToken(text="Hm"), ev.ErrorEvent(message="backend died")])) is None
    assert renderer.error == "backend died" and "Error: backend died" in err.getvalue()
    assert out.getvalue().count("\n") == 2


def test_rich_renderer_streams_tokens_as_they_arrive() -> None:
    console, buffer = terminal_console()
    renderer = chat.RichRenderer(console, markdown=True, stream=True)
    seen_while_streaming: list[str] = []

    def events() -> Iterator[object]:
        turn = fast_turn("The **capital** of France is Paris.")
        yield turn[0]
        seen_while_streaming.append(strip_ansi(buffer.getvalue()))  # before the next token exists
        yield from turn[1:]

    final = renderer.render(events())
    assert final.text == "The **capital** of France is Paris."
    assert "The" in seen_while_streaming[0]
    # The finished reply is re-rendered as Markdown: bold, without the asterisks.
    last_frame = strip_ansi(buffer.getvalue()).rsplit("The", 1)[-1]
    assert "capital of France is Paris." in last_frame and "**" not in last_frame
    assert "\x1b[1m" in buffer.getvalue()


def test_rich_renderer_slow_path_interim_spinner_steps_final() -> None:
    console, buffer = terminal_console()
    renderer = chat.RichRenderer(console, show_slow=True)
    final = renderer.render(iter(slow_turn("Let me work that out.", "17% of 2,340 is **397.8**.")))
    text = strip_ansi(buffer.getvalue())
    assert final.slow_ran
    interim, steps, answer = (text.find("Let me work that out."), text.find("Reason: need arithmetic"),
                              text.rfind("17% of 2,340 is 397.8."))
    assert -1 < interim < steps < answer
    assert "Act: calculator(0.17*2340)" in text and "Obs: 397.8" in text
    assert "\x1b[2m" in buffer.getvalue()  # steps are dimmed

    console, buffer = terminal_console()
    chat.RichRenderer(console, show_slow=False, stream=False).render(iter(slow_turn("Wait.", "Done.")))
    text = strip_ansi(buffer.getvalue())
    assert "Wait." in text and "Done." in text and "Reason" not in text


def test_rich_renderer_reports_an_error_event() -> None:
    console, buffer = terminal_console()
    renderer = chat.RichRenderer(console)
    assert renderer.render(iter([ev.FastToken(text="Hm"), ev.ErrorEvent(message="model crashed")])) is None
    assert "Error: model crashed" in strip_ansi(buffer.getvalue())


def test_option_errors_are_one_line_exit_2() -> None:
    for args, message in ((["chat", "-o", "temperature", "9"], "Error: -o temperature: must be <= 5"),
                          (["prompt", "-o", "foo", "1", "hi"], "Error: -o foo: unknown option; allowed: "),
                          (["chat", "-c", "--cid", "x"], "Error: -c/--continue and --cid")):
        code, out, err = run_cli(args, input="hello\n")
        assert code == 2 and out == "" and err.count("\n") == 1 and err.startswith(message), err


def test_help_does_not_import_torch_rich_or_prompt_toolkit() -> None:
    code = ("import sys; from duma.cli import main\n"
            "try:\n    main(['chat', '--help'])\nexcept SystemExit: pass\n"
            "bad = [m for m in ('torch', 'rich', 'prompt_toolkit', 'duma.agents') if m in sys.modules]\n"
            "assert not bad, bad\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "--show-slow" in done.stdout


# --------------------------------------------------------------------------- the real agent, scripted


class ScriptedBackendPlugin:
    """Registers duma.testing.ScriptedBackend in-process (a subprocess cannot select it)."""

    @staticmethod
    def register_backends(register) -> None:
        from duma.testing import ScriptedBackend

        register(ScriptedBackend)


@pytest.fixture
def scripted() -> Iterator[list[str]]:
    """Use the scripted backend for the top-level model; returns the argument list that
    selects it with two replies."""
    import duma
    from duma import host
    from duma.cli import load_plugin_commands
    from duma.models import clear_backends

    load_plugin_commands()
    plugin = ScriptedBackendPlugin()
    plugin.register_backends = duma.hookimpl(ScriptedBackendPlugin.register_backends)
    host.register_plugin(plugin, "scripted-test")
    clear_backends()
    yield ["--backend", "scripted", "-m", json.dumps(["reply one", "reply two"])]
    clear_backends()


def run_fresh(args: list[str], input: str | None = None) -> tuple[int, str, str]:
    """``run_duma`` as a new process would: loaded backends are cached per process, so a
    scripted backend would otherwise go on with the next reply."""
    from duma.models import clear_backends

    clear_backends()
    return run_cli(args, input)


def logged(duma_home: Path) -> list[tuple[str, list[tuple[str, str]]]]:
    """Every logged conversation, oldest first, as (id, [(role, content), ...])."""
    from duma.logstore import LogStore

    store = LogStore(duma_home / "logs.db")
    try:
        return [(s.id, [(m.role, m.content) for m in store.messages(s.id)])
                for s in reversed(store.conversations(limit=100))]
    finally:
        store.close()


def test_piped_chat_prints_one_reply_per_line_and_logs(scripted: list[str], duma_home: Path) -> None:
    code, out, err = run_fresh(["chat", *scripted], input="hello\n\n   \nsecond question\n")
    assert code == 0, err
    assert out == "reply one\nreply two\n"  # replies only: no prompt, banner or ANSI
    [(cid, messages)] = logged(duma_home)
    assert messages == [("user", "hello"), ("assistant", "reply one"),
                        ("user", "second question"), ("assistant", "reply two")]


def test_chat_multi_line_and_exit(scripted: list[str], duma_home: Path) -> None:
    code, out, err = run_fresh(["chat", *scripted], input="!multi\nline a\n\nline b\n!end\nexit\nnever sent\n")
    assert code == 0, err
    assert out == "reply one\n"
    [(_cid, messages)] = logged(duma_home)
    assert messages == [("user", "line a\n\nline b"), ("assistant", "reply one")]


def test_chat_continue_cid_and_no_log(scripted: list[str], duma_home: Path) -> None:
    run_fresh(["chat", *scripted], input="first\n")
    run_fresh(["chat", *scripted], input="other conversation\n")
    [(first, _), (second, _)] = logged(duma_home)
    code, out, err = run_fresh(["chat", *scripted, "--cid", first], input="back to the first\n")
    assert code == 0 and out == "reply one\n", err
    code, out, err = run_fresh(["chat", *scripted, "-c"], input="and again\n")
    assert code == 0, err
    # -c continues the conversation last written to: the first one, since --cid wrote to it.
    conversations = dict(logged(duma_home))
    assert [m[1] for m in conversations[first]] == ["first", "reply one", "back to the first", "reply one",
                                                     "and again", "reply one"]
    assert [m[1] for m in conversations[second]] == ["other conversation", "reply one"]
    code, out, err = run_fresh(["chat", *scripted, "-c", "-n"], input="not logged\n")
    assert code == 0 and out == "reply one\n", err
    assert all("not logged" not in c for m in logged(duma_home) for _, c in m[1])

    code, out, err = run_fresh(["chat", *scripted, "--cid", "nope"], input="x\n")
    assert code == 1 and out == "" and err.count("\n") == 1 and "unknown conversation ID 'nope'" in err


def test_no_log_creates_no_database(scripted: list[str], duma_home: Path) -> None:
    code, out, err = run_fresh(["chat", *scripted, "-n"], input="hello\n")
    assert code == 0 and out == "reply one\n", err
    code, out, err = run_fresh(["prompt", *scripted, "-n", "hello"])
    assert code == 0 and out == "reply one\n", err
    assert not (duma_home / "logs.db").exists()
    code, out, err = run_fresh(["chat", *scripted, "-c"], input="hello\n")
    assert code == 1 and "no logged conversation to continue" in err


def test_prompt_answers_once_from_argument_or_stdin(scripted: list[str], duma_home: Path) -> None:
    code, out, err = run_fresh(["prompt", *scripted, "Name three primes."])
    assert code == 0 and out == "reply one\n", err
    code, out, err = run_fresh(["prompt", *scripted, "-"], input="from stdin\n")
    assert code == 0 and out == "reply one\n", err
    code, out, err = run_fresh(["prompt", *scripted], input="no argument\n")
    assert code == 0 and out == "reply one\n", err
    users = [c for _cid, m in logged(duma_home) for r, c in m if r == "user"]
    assert sorted(users) == sorted(["Name three primes.", "from stdin", "no argument"])
    code, out, err = run_fresh(["prompt", *scripted, "-"], input="  \n")
    assert code == 2 and "TEXT: the prompt is empty" in err


def test_interactive_chat_streams_markdown(scripted: list[str], duma_home: Path, monkeypatch) -> None:
    """The terminal mode, with the terminal faked: banner, streamed reply, Markdown, exit."""
    from rich.console import Console

    monkeypatch.setattr(chat, "stdin_is_terminal", lambda: True)
    monkeypatch.setattr(chat, "terminal_line_reader", lambda: chat.stream_line_reader(sys.stdin))
    monkeypatch.setattr(chat, "make_console",
                        lambda: Console(file=sys.stdout, force_terminal=True, width=80, color_system="standard"))
    args = ["chat", "--backend", "scripted", "-m", json.dumps(["Some **bold** words", "second"])]
    code, out, err = run_fresh(args, input="hello\nquit\n")
    assert code == 0, err
    text = strip_ansi(out)
    assert "duma chat" in text and "exit" in text  # the banner
    assert "Some bold words" in text and "**" not in text.split("Some bold words")[-1]
    assert "\x1b[1m" in out and "second" not in text.split("Some bold words", 1)[1]  # 'quit' left


# --------------------------------------------------------------------------- real processes, tiny model


def duma_process(args: list[str], input: str | None = None, timeout: float = 300) -> subprocess.CompletedProcess:
    """``python -m duma ...`` as a user runs it, stdin piped; DUMA_HOME is the test's."""
    return subprocess.run([sys.executable, "-m", "duma", *args], input=input, capture_output=True, text=True,
                          env=dict(os.environ), timeout=timeout)


TINY_OPTIONS = ["-o", "max_tokens", "12"]


def test_piped_chat_on_the_tiny_model_continue_and_logs(tiny_model: Path, duma_home: Path) -> None:
    first = duma_process(["chat", "-m", str(tiny_model), *TINY_OPTIONS],
                         input="What is the capital of France?\n\nAnd of Germany?\n")
    assert first.returncode == 0, first.stderr
    listed = duma_process(["logs", "list", "--json"])
    [conversation] = json.loads(listed.stdout)
    assert conversation["messages"] == 4
    shown = json.loads(duma_process(["logs", "show", "--json"]).stdout)
    assert shown["id"] == conversation["id"]
    replies = [m["content"] for m in shown["messages"] if m["role"] == "assistant"]
    assert [m["content"] for m in shown["messages"] if m["role"] == "user"] == [
        "What is the capital of France?", "And of Germany?"]
    # Exactly the two replies, each ended by one newline: nothing else on standard output.
    assert first.stdout == "".join(r.rstrip("\n") + "\n" for r in replies)
    assert "\x1b[" not in first.stdout

    second = duma_process(["chat", "-m", str(tiny_model), *TINY_OPTIONS, "-c"], input="Thanks!\n")
    assert second.returncode == 0, second.stderr
    shown = json.loads(duma_process(["logs", "show", conversation["id"], "--json"]).stdout)
    assert [m["role"] for m in shown["messages"]] == ["user", "assistant"] * 3
    assert shown["messages"][4]["content"] == "Thanks!"
    assert len(json.loads(duma_process(["logs", "list", "--json"]).stdout)) == 1

    unknown = duma_process(["chat", "-m", str(tiny_model), "--cid", "does-not-exist"], input="hi\n")
    assert unknown.returncode == 1 and unknown.stdout == ""
    assert unknown.stderr.strip() == unknown.stderr.strip().splitlines()[0]
    assert "unknown conversation ID 'does-not-exist'" in unknown.stderr


def test_no_log_on_the_tiny_model_writes_nothing(tiny_model: Path, duma_home: Path) -> None:
    done = duma_process(["chat", "-n", "-m", str(tiny_model), *TINY_OPTIONS], input="hello\n")
    assert done.returncode == 0, done.stderr
    assert done.stdout.endswith("\n")
    assert not (duma_home / "logs.db").exists()


def _wait_for(condition, timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.005)


def test_killed_mid_turn_keeps_the_log_intact(tiny_model: Path, duma_home: Path) -> None:
    """SIGKILL while a turn generates: the database stays intact, earlier turns and the
    killed turn's user message are there."""
    database = duma_home / "logs.db"

    def logged_rows() -> list[tuple[str, str]]:
        if not database.exists():
            return []
        try:
            db = sqlite3.connect(f"file:{database}?mode=ro", uri=True, timeout=1)
            try:
                return db.execute("SELECT role, content FROM messages ORDER BY id").fetchall()
            finally:
                db.close()
        except sqlite3.OperationalError:
            return []  # the writer is creating the database right now

    proc = subprocess.Popen([sys.executable, "-m", "duma", "chat", "-m", str(tiny_model),
                             "-o", "max_tokens", "1000", "-o", "temperature", "1.5", "-o", "seed", "2"],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env=dict(os.environ))
    killed_message = None
    try:
        proc.stdin.write("first turn\n")
        proc.stdin.flush()
        _wait_for(lambda: len(logged_rows()) >= 2, 240, "the first turn")
        # The kill must land after the user message is written and before the reply is: a
        # turn that finished first (the tiny model may stop at once) is retried.
        for attempt in range(5):
            message = f"the turn that gets killed ({attempt})"
            proc.stdin.write(message + "\n")
            proc.stdin.flush()
            _wait_for(lambda: (message, "user") in {(c, r) for r, c in logged_rows()}, 60, "the user message")
            if logged_rows()[-1] == ("user", message):
                proc.send_signal(signal.SIGKILL)
                killed_message = message
                break
            _wait_for(lambda: logged_rows()[-1][0] == "assistant", 60, "the reply")
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert killed_message is not None, "every turn finished before the kill"
    assert proc.returncode == -signal.SIGKILL
    db = sqlite3.connect(str(database))
    try:
        assert db.execute("PRAGMA integrity_check").fetchone() == ("ok",)
        rows = db.execute("SELECT role, content FROM messages ORDER BY id").fetchall()
    finally:
        db.close()
    assert rows[0] == ("user", "first turn") and rows[1][0] == "assistant"
    assert ("user", killed_message) in rows
    shown = duma_process(["logs", "show", "--json"])
    assert shown.returncode == 0
    assert json.loads(shown.stdout)["messages"][-1]["content"] in (killed_message, rows[-1][1])


SLOW_SCRIPT = ["Reason[need arithmetic]\nAct[calculator(2+2)]", "Reason[got it]\nFinish[4]",
               "Response[It is 4.]\nInvoke[False]"]


def test_piped_slow_turn_prints_only_the_final_reply(scripted: list[str], duma_home: Path) -> None:
    args = ["chat", "--backend", "scripted", "-m", json.dumps(SLOW_SCRIPT), "--router", "always-slow"]
    code, out, err = run_fresh([*args, "--show-slow"], input="What is 2+2?\n")
    assert code == 0, err
    assert out == "It is 4.\n"  # not the interim reply
    assert "Reason: need arithmetic" in err and "Act: calculator(2+2)" in err and "Obs: 4" in err
    [(_cid, messages)] = logged(duma_home)
    assert messages[0] == ("user", "What is 2+2?") and messages[-1] == ("assistant", "It is 4.")


def test_interactive_slow_turn_shows_interim_steps_and_final(scripted: list[str], duma_home: Path,
                                                            monkeypatch) -> None:
    from rich.console import Console

    monkeypatch.setattr(chat, "stdin_is_terminal", lambda: True)
    monkeypatch.setattr(chat, "terminal_line_reader", lambda: chat.stream_line_reader(sys.stdin))
    monkeypatch.setattr(chat, "make_console", lambda: Console(file=sys.stdout, force_terminal=True, width=100))
    args = ["chat", "--backend", "scripted", "-m", json.dumps(SLOW_SCRIPT), "--router", "always-slow",
            "--show-slow"]
    code, out, err = run_fresh(args, input="What is 2+2?\n")
    assert code == 0, err
    text = strip_ansi(out)
    interim, step, final = text.find("Let me look into that."), text.find("Act: calculator(2+2)"), text.rfind("It is 4.")
    assert -1 < interim < step < final, text
