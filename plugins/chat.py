"""``duma chat`` and ``duma prompt``: talk to the DUMA agent from the terminal.

Both commands consume the agent's event stream (:mod:`duma.events`). In a terminal the reply
streams through rich (re-rendered as Markdown when finished), the slow mind shows a spinner
(and its steps with ``--show-slow``). When standard input is not a terminal, every input line is
one user message and only the replies are printed, as plain text, one per turn.

This module is imported when the CLI starts: the agent, rich and prompt_toolkit are imported
inside the functions that need them so that ``duma --help`` stays fast and torch-free.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

import click

from duma import hookimpl, pass_state
from duma.errors import DumaError

if TYPE_CHECKING:
    from rich.console import Console

    from duma.cli import CliState
    from duma.config import DumaConfig
    from duma.events import FinalDone
    from duma.logstore import LogStore

EXIT_WORDS = ("exit", "quit")
MULTI_START = "!multi"
MULTI_END = "!end"
FEEDBACK_WORDS = {"!good": 1, "!bad": -1}
PROMPT = "> "
CONTINUATION_PROMPT = "... "


# --------------------------------------------------------------------------- options


class OptionError(click.ClickException):
    """A bad command-line value, reported as one line naming the option (exit code 2, like
    click's usage errors, but without the usage banner)."""

    exit_code = 2


def parse_generation_options(pairs: Iterable[tuple[str, str]]) -> dict[str, Any]:
    """``-o KEY VALUE`` pairs -> a dict validated against :class:`GenerationOptions`.

    Values are read as YAML scalars (``0.7``, ``200``, ``null``); ``stop`` may be repeated and
    collects a list. Only the keys given are returned, so the configured defaults still apply
    to the rest. A bad pair is a one-line :class:`OptionError` naming the option.
    """
    import yaml
    from pydantic import ValidationError

    from duma.errors import validation_problems
    from duma.types import GenerationOptions

    allowed = list(GenerationOptions.model_fields)
    options: dict[str, Any] = {}
    for key, raw in pairs:
        if key not in GenerationOptions.model_fields:
            raise OptionError(f"-o {key}: unknown option; allowed: {', '.join(allowed)}")
        if key == "stop":  # a list: each -o stop VALUE adds one stop string, kept verbatim
            options.setdefault("stop", []).append(raw)
            continue
        try:
            value = yaml.safe_load(raw) if raw.strip() else raw
        except yaml.YAMLError:
            value = raw
        options[key] = value
    try:
        GenerationOptions.model_validate(options)
    except ValidationError as exc:
        key, problem = validation_problems(exc)[0]
        raise OptionError(f"-o {key.split('.')[0] or '?'}: {problem}") from None
    return options


def shared_options(func: Callable[..., Any]) -> Callable[..., Any]:
    """Options common to ``chat`` and ``prompt`` (the model, the agent, logging)."""
    decorators = [
        click.option("-s", "--system", help="System prompt for this conversation (config chat.system)."),
        click.option("-m", "--model", "model_ref",
                     help="Model: 'embedded', an HF model folder or a .gguf file (config model.model)."),
        click.option("--backend", help="Inference backend name (config model.backend)."),
        click.option("-o", "--option", "option_pairs", type=(str, str), multiple=True, metavar="KEY VALUE",
                     help="Generation option of the replies (the fast mind; the slow mind keeps its config), "
                          "e.g. -o temperature 0.7 -o max_tokens 200 (repeatable)."),
        click.option("--router", help="Router that decides when the slow mind runs (config agent.router)."),
        click.option("--agent", "mode", flag_value="duma", default=None,
                     help="Run the fast/slow minds' protocol whatever the model (config agent.mode=duma)."),
        click.option("--plain", "mode", flag_value="plain",
                     help="Chat with the model as it is, without the minds' protocol (agent.mode=plain)."),
        click.option("--show-slow", is_flag=True, help="Show the slow mind's Reason/Act/Obs steps."),
        click.option("--no-stream", is_flag=True, help="Wait for the whole reply instead of streaming it."),
        click.option("-c", "--continue", "continue_last", is_flag=True,
                     help="Continue the most recent logged conversation."),
        click.option("--cid", "conversation_id", metavar="ID", help="Continue the conversation with this ID."),
        click.option("-n", "--no-log", is_flag=True, help="Do not log this conversation."),
    ]
    for decorator in reversed(decorators):
        func = decorator(func)
    return func


def build_overrides(*, system: str | None, router: str | None, no_stream: bool,
                    no_log: bool, mode: str | None = None) -> dict[str, Any]:
    """The command's flags as configuration overrides (the highest layer); ``-m/--backend``
    are applied by :meth:`duma.cli.CliState.config_with`."""
    overrides: dict[str, Any] = {}

    def put(section: str, key: str, value: Any) -> None:
        overrides.setdefault(section, {})[key] = value

    if system is not None:
        put("chat", "system", system)
    if router is not None:
        put("agent", "router", router)
    if mode is not None:
        put("agent", "mode", mode)
    if no_stream:
        put("chat", "stream", False)
    if no_log:
        put("logging", "enabled", False)
    return overrides


def log_database_path(config: DumaConfig) -> Path:
    """``logging.database`` or DUMA_HOME/logs.db."""
    from duma.logstore import default_path

    return Path(config.logging.database) if config.logging.database else default_path()


def command_config(state: CliState, flag_overrides: dict[str, Any], *, model_ref: str | None,
                   backend: str | None, continue_last: bool, conversation_id: str | None
                   ) -> tuple[DumaConfig, LogStore | None, str | None]:
    """The configuration, log store and conversation of ``chat``/``prompt``. A continued
    conversation keeps the minds it was started with, unless ``-m``/``--backend`` is given."""
    from duma.config import merge

    config = state.config_with(flag_overrides, model=model_ref, backend=backend)
    store, cid = resolve_conversation(config, continue_last=continue_last, conversation_id=conversation_id)
    if cid is not None and store is not None and model_ref is None and backend is None:
        setup = store.conversation_setup(cid)
        if setup:
            kept = {"agent": {"mode": setup["mode"], "fast": setup["fast"], "slow": setup["slow"]}}
            try:
                config = state.config_with(merge(kept, flag_overrides))
            except DumaError as exc:
                raise DumaError(f"conversation {cid} was started with minds this duma cannot load ({exc})",
                                "continue it with another model: -m MODEL") from None
    return config, store, cid


def resolve_conversation(config: DumaConfig, *, continue_last: bool, conversation_id: str | None
                         ) -> tuple[LogStore | None, str | None]:
    """Open the log store (unless logging is off and nothing is resumed) and find the
    conversation to continue. Unknown IDs and an empty log are one-line errors."""
    from duma.logstore import LogStore

    if continue_last and conversation_id:
        raise OptionError("-c/--continue and --cid: give one of them, not both")
    resuming = continue_last or conversation_id is not None
    path = log_database_path(config)
    if not config.logging.enabled and not resuming:
        return None, None  # -n: do not even create the database
    if resuming and not path.exists():
        what = f"conversation '{conversation_id}'" if conversation_id else "logged conversation to continue"
        raise DumaError(f"no {what}: the log {path} does not exist", "start a new chat without -c/--cid")
    store = LogStore(path)
    if continue_last:
        conversation_id = store.last_conversation()
        if conversation_id is None:
            raise DumaError(f"no logged conversation to continue in {path}", "start a new chat without -c")
    elif conversation_id is not None and not store.exists(conversation_id):
        store.close()
        raise DumaError(f"unknown conversation ID '{conversation_id}'",
                        "see 'duma logs list' for the logged conversations")
    if not config.logging.enabled:
        # -n with -c/--cid: the agent writes every turn to the store it is given, so it gets
        # an in-memory copy of the conversation: its history, and no writes to the file.
        memory = copy_conversation(store, conversation_id, LogStore(":memory:"))
        store.close()
        return memory, conversation_id
    return store, conversation_id


def copy_conversation(source: LogStore, conversation_id: str, target: LogStore) -> LogStore:
    """Copy one conversation (messages with their metadata) into another store."""
    from duma.types import Message

    summary = source.conversation(conversation_id)
    target.new_conversation(model=summary.model if summary else None, name=summary.name if summary else None,
                            setup=source.conversation_setup(conversation_id),
                            conversation_id=conversation_id)
    for m in source.messages(conversation_id):
        target.add_message(conversation_id, Message(role=m.role, content=m.content),  # type: ignore[arg-type]
                           model=m.model, options=m.options, prompt_tokens=m.prompt_tokens,
                           completion_tokens=m.completion_tokens, first_token_s=m.first_token_s,
                           total_s=m.total_s, meta=m.meta)
    return target


def build_agent(config: DumaConfig, store: LogStore | None) -> Any:
    """The agent for this config. It writes every turn to ``store`` itself; without one
    (logging off) it keeps the conversation in memory."""
    from duma.agents import Agent

    return Agent.from_config(config, log_store=store, log=config.logging.enabled)


# --------------------------------------------------------------------------- input


@dataclass(frozen=True)
class Feedback:
    """A ``!good [note]`` or ``!bad [note]`` line: a rating of the last reply, not a message."""

    score: int
    note: str | None = None


def iter_user_messages(read_line: Callable[[str], str | None]) -> Iterator[str | Feedback]:
    """User messages from a line reader: one per line, blank lines skipped, ``!multi`` ...
    ``!end`` joined into one message (``!multi X`` ends at ``!end X``), ``!good``/``!bad [note]``
    as :class:`Feedback` (inside a ``!multi`` block they are text), ``exit``/``quit`` or end of
    input (``None``) stop."""
    while True:
        line = read_line(PROMPT)
        if line is None:
            return
        text = line.strip()
        if not text:
            continue
        if text.lower() in EXIT_WORDS:
            return
        first = text.split()[0]
        if first in FEEDBACK_WORDS:
            yield Feedback(FEEDBACK_WORDS[first], text[len(first):].strip() or None)
            continue
        if first == MULTI_START:
            marker = text[len(MULTI_START):].strip()
            end = f"{MULTI_END} {marker}" if marker else MULTI_END
            lines: list[str] = []
            while True:
                part = read_line(CONTINUATION_PROMPT)
                if part is None or part.strip() == end:
                    break
                lines.append(part.rstrip("\r\n"))
            block = "\n".join(lines).strip("\n")
            if block.strip():
                yield block
            if part is None:
                return
            continue
        yield text


def text_stdin() -> IO[str]:
    """Standard input as UTF-8 text; bytes that are not UTF-8 become U+FFFD, so one bad byte
    never makes a turn (or the log) fail."""
    import io

    buffer = getattr(sys.stdin, "buffer", None)
    if buffer is None:  # already text (a test's StringIO)
        return sys.stdin
    return io.TextIOWrapper(buffer, encoding="utf-8", errors="replace")


class Terminated(KeyboardInterrupt):
    """SIGTERM: stop the turn as Ctrl-C does, then leave (Ctrl-C alone returns to the prompt)."""


def exit_code_of(interrupt: KeyboardInterrupt) -> int:
    """The shell's exit code for a process stopped by a signal: 128 + SIGTERM or SIGINT."""
    return 143 if isinstance(interrupt, Terminated) else 130


@contextmanager
def stop_on_sigterm() -> Iterator[None]:
    """Turn SIGTERM into :class:`Terminated` while a command runs, so a terminated chat
    stops its turn the way Ctrl-C does: the reply shown so far is logged, the log closed."""
    import signal
    import threading

    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def interrupt(signum: int, frame: Any) -> None:
        raise Terminated

    previous = signal.signal(signal.SIGTERM, interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def stream_line_reader(stream: IO[str]) -> Callable[[str], str | None]:
    """Read lines from a pipe, one at a time (so a co-process gets each reply at once)."""

    def read_line(_prompt: str) -> str | None:
        line = stream.readline()
        return None if line == "" else line.rstrip("\r\n")

    return read_line


def terminal_line_reader() -> Callable[[str], str | None]:
    """prompt_toolkit input with history kept in DUMA_HOME/chat_history."""
    from prompt_toolkit import PromptSession
    from prompt_toolkit.history import FileHistory

    from duma.paths import duma_home

    session: PromptSession[str] = PromptSession(history=FileHistory(str(duma_home() / "chat_history")))

    def read_line(prompt: str) -> str | None:
        while True:
            try:
                return session.prompt(prompt)
            except Terminated:
                raise
            except KeyboardInterrupt:  # Ctrl-C at the prompt clears the line, like a shell
                continue
            except EOFError:
                return None

    return read_line


def stdin_is_terminal() -> bool:
    """Interactive mode needs a terminal on both ends; anything else is the plain pipe mode."""
    return sys.stdin.isatty() and sys.stdout.isatty()


# --------------------------------------------------------------------------- rendering


class PlainRenderer:
    """For pipes: prints each turn's final reply as plain text, one reply per turn.

    Notices, errors and (with ``show_slow``) the slow mind's steps go to standard error, so
    standard output holds only replies.
    """

    def __init__(self, out: IO[str], err: IO[str], show_slow: bool = False) -> None:
        self.out = out
        self.err = err
        self.show_slow = show_slow
        self.error: str | None = None

    def render(self, events: Iterable[Any]) -> FinalDone | None:
        """Consume one turn; returns its ``final_done`` (None when the turn failed)."""
        self.error = None
        for event in events:
            if event.type == "final_done":
                self.out.write(event.text.rstrip("\n") + "\n")
                self.out.flush()
                return event
            if event.type == "error":
                self.error = event.message
                self.note(f"Error: {event.message}")
                return None
            if event.type == "notice":
                self.note(f"note: {event.message}")
            elif event.type == "slow_step" and self.show_slow:
                for line in describe_slow_step(event):
                    self.note(line)
        self.error = "the turn ended without a reply"
        self.note(f"Error: {self.error}")
        return None

    def note(self, text: str) -> None:
        """A line on standard error (standard output holds only replies)."""
        self.err.write(text + "\n")
        self.err.flush()


def describe_slow_step(event: Any) -> list[str]:
    """A slow-mind step's ``Reason``/``Act``/``Obs`` lines, indented under the reply."""
    return [f"  {line}" for line in event.describe()]


class SlowProgress:
    """The status line while the slow mind works: elapsed time and its latest step, redrawn
    by the spinner's own refresh (so the clock moves between steps too)."""

    def __init__(self) -> None:
        self.started = time.monotonic()
        self.step = ""

    def __rich__(self) -> Any:
        from rich.text import Text

        elapsed = time.monotonic() - self.started
        step = f" · {self.step[:80]}" if self.step else ""
        return Text(f"Thinking it through… {elapsed:.0f} s{step}", style="dim")


class RichRenderer:
    """For terminals: streams tokens in a rich Live view and re-renders each finished reply
    as Markdown; a spinner runs while the slow mind works."""

    REFRESH_S = 0.05  # at most ~20 redraws a second: a redraw re-parses the Markdown

    def __init__(self, console: Console, *, markdown: bool = True, stream: bool = True,
                 show_slow: bool = False) -> None:
        self.console = console
        self.markdown = markdown
        self.stream = stream
        self.show_slow = show_slow
        self.error: str | None = None
        self._live: Any = None
        self._status: Any = None
        self._slow_progress: SlowProgress | None = None
        self._buffer: list[str] = []
        self._last_refresh = 0.0

    def _view(self, text: str) -> Any:
        from rich.markdown import Markdown
        from rich.text import Text

        return Markdown(text) if self.markdown else Text(text)

    def _add_token(self, text: str) -> None:
        if not self.stream:
            return
        from rich.live import Live

        self._buffer.append(text)
        if self._live is None:
            self._live = Live(console=self.console, auto_refresh=False, vertical_overflow="visible")
            self._live.start()
        now = time.monotonic()
        if now - self._last_refresh >= self.REFRESH_S:
            self._last_refresh = now
            self._live.update(self._view("".join(self._buffer)), refresh=True)

    def _finish_reply(self, text: str) -> None:
        """End a streamed block with its full text as Markdown (or print it when not streamed)."""
        if self._live is not None:
            self._live.update(self._view(text), refresh=True)
            self._live.stop()
            self._live = None
        elif text.strip():
            self.console.print(self._view(text))
        self._buffer = []
        self._last_refresh = 0.0

    def _start_status(self) -> None:
        self._slow_progress = SlowProgress()
        self._status = self.console.status(self._slow_progress, spinner="dots")
        self._status.start()

    def _stop_status(self) -> None:
        if self._status is not None:
            self._status.stop()
            self._status = None

    def close(self) -> None:
        """Stop any live display (after an interrupt or an error)."""
        self._stop_status()
        if self._live is not None:
            self._live.stop()
            self._live = None
        self._buffer = []

    def render(self, events: Iterable[Any]) -> FinalDone | None:
        """Consume one turn; returns its ``final_done`` (None when the turn failed)."""
        self.error = None
        fast_shown = False
        try:
            for event in events:
                kind = event.type
                if kind in ("fast_token", "final_token"):
                    self._add_token(event.text)
                elif kind == "fast_done":
                    self._finish_reply(event.text)
                    fast_shown = True
                    if event.invoke:
                        self._start_status()
                elif kind == "slow_step":
                    if self._slow_progress is not None:
                        self._slow_progress.step = (f"Act: {event.action}" if event.action
                                                    else f"Reason: {event.reason}" if event.reason else "")
                    if self.show_slow:
                        for line in describe_slow_step(event):
                            self.console.print(line, style="dim", markup=False, highlight=False)
                elif kind == "slow_done":
                    self._stop_status()
                    if self.show_slow and not event.finished:
                        self.console.print("  (the slow mind stopped at its step or time limit)", style="dim")
                elif kind == "final_done":
                    self._stop_status()
                    if event.slow_ran or not fast_shown:
                        self._finish_reply(event.text)
                    return event
                elif kind == "notice":
                    self.console.print(f"note: {event.message}", style="yellow", markup=False)
                elif kind == "error":
                    self.close()
                    self.error = event.message
                    self.console.print(f"Error: {event.message}", style="bold red", markup=False)
                    return None
        finally:
            self.close()
        self.error = "the turn ended without a reply"
        self.console.print(f"Error: {self.error}", style="bold red", markup=False)
        return None


def make_console() -> Console:
    from rich.console import Console

    return Console(highlight=False)


# --------------------------------------------------------------------------- commands


def rate_last_reply(agent: Any, conversation_id: str | None, feedback: Feedback, *, kept: bool) -> tuple[bool, str]:
    """Apply a ``!good``/``!bad``: ``(whether it was rated, a one-line message)``. A rating
    that cannot be made (no reply yet) is a message, not an error: the chat goes on."""
    if conversation_id is None:
        return False, "nothing to rate yet: !good and !bad rate the last reply"
    try:
        agent.feedback(conversation_id, feedback.score, feedback.note)
    except DumaError as exc:
        return False, str(exc)
    word = "good" if feedback.score > 0 else "bad"
    return True, f"rated the last reply {word}" + ("" if kept else " (not kept: this chat is not logged)")


def run_turn(agent: Any, renderer: PlainRenderer | RichRenderer, text: str, conversation_id: str | None,
             *, system: str | None, options: dict[str, Any]) -> tuple[FinalDone | None, str | None]:
    """One turn through the renderer; returns the final event and the conversation ID
    (taken from the events, so a new conversation's ID is kept for the next turn)."""
    seen_id = [conversation_id]

    def tracked() -> Iterator[Any]:
        events = agent.stream(text, conversation_id, system=system, options=options or None)
        try:
            for event in events:
                if getattr(event, "conversation_id", None):
                    seen_id[0] = event.conversation_id
                yield event
        finally:
            close = getattr(events, "close", None)
            if close is not None:
                close()  # stop generation when the renderer stops early (Ctrl-C)

    final = renderer.render(tracked())
    return final, seen_id[0]


@click.command(name="chat")
@shared_options
@pass_state
def chat_command(state: CliState, system: str | None, model_ref: str | None, backend: str | None,
                 option_pairs: tuple[tuple[str, str], ...], router: str | None, mode: str | None, show_slow: bool,
                 no_stream: bool, continue_last: bool, conversation_id: str | None, no_log: bool) -> None:
    """Chat with the DUMA agent.

    In a terminal: replies stream and render as Markdown; '!multi' ... '!end' sends several
    lines as one message; '!good' or '!bad [note]' rates the last reply (training data: see
    'duma logs export'); 'exit', 'quit' or Ctrl-D leaves; Ctrl-C stops a reply. With piped
    input, every line is one message and only the replies are printed (a rating prints
    nothing; a rating that cannot be made says so on standard error).
    """
    options = parse_generation_options(option_pairs)
    config, store, cid = command_config(
        state, build_overrides(system=system, router=router, no_stream=no_stream, no_log=no_log, mode=mode),
        model_ref=model_ref, backend=backend, continue_last=continue_last, conversation_id=conversation_id)
    stopped_by: int | None = None
    with stop_on_sigterm():
        try:
            if stdin_is_terminal():
                failed = _chat_interactive(config, store, cid, options, show_slow)
            else:
                failed = _chat_piped(config, store, cid, options, show_slow)
        except KeyboardInterrupt as exc:  # the turn in progress has logged what it had
            failed, stopped_by = True, exit_code_of(exc)
        finally:
            if store is not None:
                store.close()
    if stopped_by is not None:
        sys.exit(stopped_by)
    if failed:
        sys.exit(1)


def _chat_piped(config: DumaConfig, store: LogStore | None, cid: str | None, options: dict[str, Any],
                show_slow: bool) -> bool:
    """Plain mode: replies only, one per input message. Returns whether any turn failed."""
    agent = build_agent(config, store)
    renderer = PlainRenderer(sys.stdout, sys.stderr, show_slow)
    failed = False
    for text in iter_user_messages(stream_line_reader(text_stdin())):
        if isinstance(text, Feedback):  # standard output carries replies only
            rated, message = rate_last_reply(agent, cid, text, kept=config.logging.enabled)
            if not rated:
                renderer.note(f"note: {message}")
            continue
        final, cid = run_turn(agent, renderer, text, cid, system=config.chat.system, options=options)
        failed = failed or final is None
    return failed


def _chat_interactive(config: DumaConfig, store: LogStore | None, cid: str | None, options: dict[str, Any],
                      show_slow: bool, console: Console | None = None,
                      read_line: Callable[[str], str | None] | None = None) -> bool:
    """Terminal mode: a prompt with history, streamed Markdown replies, a spinner for the slow
    mind. Ctrl-C stops the current reply and returns to the prompt."""
    console = console or make_console()
    with console.status(f"[dim]Loading {config.model.model} ({config.model.backend})…[/dim]", spinner="dots"):
        agent = build_agent(config, store)
        agent.load()  # load the weights now, under the spinner, not in the first turn
    fast = config.mind("fast")
    how = (f"router {config.agent.router}" if agent.runs_minds
           else "plain chat (not a fast/slow mind; --agent runs the protocol anyway)")
    console.print(f"[bold]duma chat[/bold] with {agent.fast_label} ({fast.backend}), {how}", highlight=False)
    if cid is not None:
        count = len(store.messages(cid)) if store is not None else 0
        console.print(f"Continuing conversation {cid} ({count} messages)", style="dim", markup=False)
    console.print("Type 'exit' or Ctrl-D to leave, '!multi' for multi-line input, '!good'/'!bad [note]' to "
                  "rate a reply, Ctrl-C to stop a reply.", style="dim", markup=False)
    renderer = RichRenderer(console, markdown=config.chat.markdown, stream=config.chat.stream,
                            show_slow=show_slow)
    read_line = read_line or terminal_line_reader()
    for text in iter_user_messages(read_line):
        if isinstance(text, Feedback):
            rated, message = rate_last_reply(agent, cid, text, kept=config.logging.enabled)
            console.print(message, style="dim" if rated else "yellow", markup=False)
            continue
        try:
            _final, cid = run_turn(agent, renderer, text, cid, system=config.chat.system, options=options)
        except Terminated:
            renderer.close()
            raise
        except KeyboardInterrupt:
            renderer.close()
            console.print("(stopped)", style="dim", markup=False)
        except DumaError as exc:  # a failed turn is reported; the chat goes on
            renderer.close()
            console.print(f"Error: {exc}", style="bold red", markup=False)
        console.print()
    return False


@click.command(name="prompt")
@click.argument("text", required=False)
@shared_options
@pass_state
def prompt_command(state: CliState, text: str | None, system: str | None, model_ref: str | None, backend: str | None,
                   option_pairs: tuple[tuple[str, str], ...], router: str | None, mode: str | None, show_slow: bool,
                   no_stream: bool, continue_last: bool, conversation_id: str | None, no_log: bool) -> None:
    """Answer TEXT once and print the reply ('-' or no TEXT reads standard input)."""
    options = parse_generation_options(option_pairs)
    if text is None or text == "-":
        if text is None and sys.stdin.isatty():
            raise OptionError("TEXT: give it, or pipe the prompt on standard input")
        text = text_stdin().read()
    if not text.strip():
        raise OptionError("TEXT: the prompt is empty")
    config, store, cid = command_config(
        state, build_overrides(system=system, router=router, no_stream=no_stream, no_log=no_log, mode=mode),
        model_ref=model_ref, backend=backend, continue_last=continue_last, conversation_id=conversation_id)
    renderer: PlainRenderer | RichRenderer
    if sys.stdout.isatty():
        renderer = RichRenderer(make_console(), markdown=config.chat.markdown, stream=config.chat.stream,
                                show_slow=show_slow)
    else:
        renderer = PlainRenderer(sys.stdout, sys.stderr, show_slow)
    agent = build_agent(config, store)
    with stop_on_sigterm():
        try:
            final, _cid = run_turn(agent, renderer, text.strip(), cid, system=config.chat.system, options=options)
        except KeyboardInterrupt as exc:  # the turn has logged what it had
            sys.exit(exit_code_of(exc))
        finally:
            if store is not None:
                store.close()
    if final is None:
        sys.exit(1)  # the renderer has already reported the error in one line


@hookimpl
def register_commands(cli: Any) -> None:
    cli.add_command(chat_command)
    cli.add_command(prompt_command)
