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
from click.testing import CliRunner

from duma import events as ev
from duma.plugins import chat


# --------------------------------------------------------------------------- helpers


def run_duma(args: list[str], input: str | None = None) -> tuple[int, str, str]:
    """Run the real entry point (its one-line error handling included) in-process."""
    from duma.cli import main

    runner = CliRunner()
    with runner.isolation(input=input) as (out, err, _):
        try:
            main(args)
            code = 0
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else 1
        return code, out.getvalue().decode(), err.getvalue().decode()


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
        ("temperature", "9"): "-o temperature: must be <= 5",
        ("top_p", "0"): "-o top_p: must be > 0",
        ("max_tokens", "lots"): "-o max_tokens: must be an integer, got 'lots'",
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
        code, out, err = run_duma(args, input="hello\n")
        assert code == 2 and out == "" and err.count("\n") == 1 and err.startswith(message), err


def test_help_does_not_import_torch_rich_or_prompt_toolkit() -> None:
    code = ("import sys; from duma.cli import main\n"
            "try:\n    main(['chat', '--help'])\nexcept SystemExit: pass\n"
            "bad = [m for m in ('torch', 'rich', 'prompt_toolkit', 'duma.agents') if m in sys.modules]\n"
            "assert not bad, bad\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "--show-slow" in done.stdout
