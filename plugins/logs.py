"""``duma logs``: read the conversation log (the SQLite database the agent writes every turn to).

The database is config ``logging.database`` or DUMA_HOME/logs.db. A locked or corrupt
database is a one-line :class:`duma.errors.LogStoreError`. Reading never creates a database where
there is none.
"""

from __future__ import annotations

import json
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from duma import hookimpl, pass_state
from duma.errors import DumaError

if TYPE_CHECKING:
    from duma.cli import CliState
    from duma.logstore import LogStore


def database_path(state: CliState) -> Path:
    """The log database of the effective configuration (file, environment, global flags)."""
    from duma.logstore import default_path

    configured = state.config.logging.database
    return Path(configured) if configured else default_path()


def open_existing_store(state: CliState) -> LogStore | None:
    """The log store, or None when nothing has been logged yet (no file is created)."""
    from duma.logstore import LogStore

    path = database_path(state)
    if not path.exists():
        return None
    return LogStore(path)


def format_time(timestamp: float) -> str:
    return datetime.fromtimestamp(timestamp).strftime("%Y-%m-%d %H:%M:%S")


@click.group(name="logs")
def logs_group() -> None:
    """Read the conversation log."""


@logs_group.command(name="list")
@click.option("-n", "--count", default=20, show_default=True, type=click.IntRange(min=1),
              help="How many conversations, most recent first.")
@click.option("--json", "as_json", is_flag=True, help="Print a JSON list.")
@pass_state
def logs_list(state: CliState, count: int, as_json: bool) -> None:
    """List recent conversations: ID, time, message count, the first message, model.
    Conversations without messages are left out."""
    store = open_existing_store(state)
    summaries = store.conversations(limit=count) if store is not None else []
    if store is not None:
        store.close()
    if as_json:
        click.echo(json.dumps([s.model_dump(mode="json") for s in summaries], indent=2))
        return
    if not summaries:
        click.echo("No conversations logged yet.")
        return
    from rich.console import Console
    from rich.table import Table

    table = Table(title="duma conversations")
    for column in ("id", "started", "messages", "first message", "model"):
        table.add_column(column, justify="right" if column == "messages" else "left")
    for s in summaries:
        table.add_row(s.id, format_time(s.created), str(s.messages), s.preview, s.model or "")
    Console(highlight=False).print(table)


@logs_group.command(name="show")
@click.argument("conversation_id", metavar="[ID]", required=False)
@click.option("-c", "--current", "latest", is_flag=True, help="The most recent conversation (the default).")
@click.option("--json", "as_json", is_flag=True, help="Print the conversation as JSON.")
@pass_state
def logs_show(state: CliState, conversation_id: str | None, latest: bool, as_json: bool) -> None:
    """Show the messages of conversation ID (default: the most recent one)."""
    if conversation_id and latest:
        raise DumaError("ID and -c/--current: give one of them, not both")
    store = open_existing_store(state)
    if store is None:
        raise DumaError(f"no conversations logged yet in {database_path(state)}",
                        "chat with 'duma chat' first")
    try:
        if conversation_id is None:
            conversation_id = store.last_conversation()
            if conversation_id is None:
                raise DumaError("no conversations logged yet", "chat with 'duma chat' first")
        elif not store.exists(conversation_id):
            raise DumaError(f"unknown conversation ID '{conversation_id}'",
                            "see 'duma logs list' for the logged conversations")
        messages = store.messages(conversation_id)
        summary = store.conversation(conversation_id)
    finally:
        store.close()
    if as_json:
        data: dict[str, Any] = {
            "id": conversation_id,
            "model": summary.model if summary else None,
            "created": summary.created if summary else None,
            "messages": [m.model_dump(mode="json") for m in messages],
        }
        click.echo(json.dumps(data, indent=2, ensure_ascii=False))
        return
    from rich.console import Console
    from rich.markdown import Markdown

    console = Console(highlight=False)
    model = f" ({summary.model})" if summary and summary.model else ""
    console.print(f"[bold]Conversation {conversation_id}[/bold]{model}")
    for m in messages:
        when = format_time(m.created)
        kind = m.meta.get("kind")
        # The agent tags interim replies and slow-mind results; plain replies need no label.
        label = f"{m.role} ({kind})" if kind and kind not in (m.role, "reply") else m.role
        if m.meta.get("interrupted"):
            label += " (interrupted)"
        console.print(f"\n[bold]{label}[/bold] [dim]{when}[/dim]")
        for step in m.meta.get("trace") or []:
            for line in _describe_step(step):
                console.print(line, style="dim", markup=False)
        console.print(Markdown(m.content) if m.role == "assistant" else m.content, markup=False)


def _describe_step(step: dict[str, Any]) -> list[str]:
    from duma.events import SlowStep
    from duma.plugins.chat import describe_slow_step

    return describe_slow_step(SlowStep(**step))


@logs_group.command(name="search")
@click.argument("text")
@click.option("-n", "--count", default=20, show_default=True, type=click.IntRange(min=1),
              help="How many matching messages, most recent first.")
@click.option("--json", "as_json", is_flag=True, help="Print a JSON list.")
@pass_state
def logs_search(state: CliState, text: str, count: int, as_json: bool) -> None:
    """Find the messages (yours and the replies) that contain TEXT."""
    if not text.strip():
        raise DumaError("TEXT is empty", "give the words to look for")
    store = open_existing_store(state)
    found = store.search(text, limit=count) if store is not None else []
    if store is not None:
        store.close()
    if as_json:
        click.echo(json.dumps([{"conversation_id": c.id, "role": m.role, "content": m.content,
                                "created": m.created} for c, m in found], indent=2, ensure_ascii=False))
        return
    if not found:
        click.echo(f"No message contains {text!r}.")
        return
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"messages containing {text!r}")
    for column in ("conversation", "time", "role", "message"):
        table.add_column(column)
    for conversation, message in found:
        table.add_row(conversation.id, format_time(message.created), message.role,
                      " ".join(message.content.split())[:80])
    Console(highlight=False).print(table)


@logs_group.command(name="delete")
@click.argument("conversation_id", metavar="ID")
@click.option("-y", "--yes", is_flag=True, help="Do not ask for confirmation.")
@pass_state
def logs_delete(state: CliState, conversation_id: str, yes: bool) -> None:
    """Delete conversation ID and its messages."""
    store = open_existing_store(state)
    if store is None or not store.exists(conversation_id):
        if store is not None:
            store.close()
        raise DumaError(f"unknown conversation ID '{conversation_id}'",
                        "see 'duma logs list' for the logged conversations")
    try:
        count = len(store.messages(conversation_id))
        if not yes and not click.confirm(f"Delete conversation {conversation_id} ({count} messages)?"):
            raise DumaError("nothing deleted", "pass -y to delete without asking")
        deleted = store.delete(conversation_id)
    finally:
        store.close()
    click.echo(f"deleted conversation {conversation_id} ({deleted} messages)")


@logs_group.command(name="path")
@pass_state
def logs_path(state: CliState) -> None:
    """Print where the log database is."""
    click.echo(str(database_path(state)))


@hookimpl
def register_commands(cli: Any) -> None:
    cli.add_command(logs_group)
