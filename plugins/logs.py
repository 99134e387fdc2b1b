"""``duma logs``: read the conversation log (the SQLite database the agent writes every turn to),
and export the replies the user rated (``!good``/``!bad`` in ``duma chat``) as training data.

The database is config ``logging.database`` or DUMA_HOME/logs.db. A locked or corrupt
database is a one-line :class:`duma.errors.LogStoreError`. Reading never creates a database where
there is none.

``duma logs export`` writes one of three record shapes (what the trainers read):

* ``sft``: ``{"messages": [...context, {"role": "assistant", "content": good reply}]}``, the
  ``!good`` replies only (readable with the ``sharegpt`` data source);
* ``dpo``: ``{"messages": [...context ending with the user message], "chosen", "rejected"}``: a
  good and a bad reply whose contexts are exactly equal (the same history up to and including
  the user message, e.g. two conversations that started from one history), every good/bad
  combination with different texts;
* ``kto``: ``{"messages": [...context], "completion", "label": true|false}`` for every rating.

The context is the rated reply's conversation before it as the chosen mind sees it:
``--mind plain`` the dialogue (each earlier turn's user message and its last reply; empty
messages left out; the system prompt is not logged, so there is none), ``--mind fast`` the
fast mind's protocol (``agents/fast_mind.build_context`` with the configured fast system prompt;
for the final reply of a handoff turn the context goes on with the interim
``Response[...] Invoke[True]`` and ``SlowMind[...]``; completions are
``Response[...]\nInvoke[...]``). A rated interim reply (the last thing shown of a cut turn)
is the fast mind's first pass.

Routing preferences (``--mind fast --format dpo``, added to the pairs above):

* a ``!bad`` reply the fast mind kept fast although it promised a lookup ("Let me check...",
  ``fast_mind.promises_lookup``; only with ``agent.keep_promises`` off, since by default the
  agent hands such a turn over): prefer ``Response[<interim>] Invoke[True]`` to what it wrote
  (it should have handed the turn to the slow mind; a bad reply without such a promise may be
  bad for any reason, so it makes no routing pair);
* a ``!good`` final reply of a handoff whose slow mind finished without calling a tool: prefer
  answering at once (``Response[final] Invoke[False]``) to the handoff (the answer needed no
  lookup, so the slow mind was invoked for nothing);
* a ``!good`` final reply of a handoff the agent made only to keep the fast mind's promise
  (``agent.keep_promises``: the interim promised a lookup but the fast mind wrote
  ``Invoke[False]``): prefer ``Response[<interim>] Invoke[True]`` to the fast mind's own
  ``Response[<interim>] Invoke[False]`` (the user liked the answer the handoff brought).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from duma import hookimpl, pass_state
from duma.errors import DumaError

if TYPE_CHECKING:
    from duma.cli import CliState
    from duma.config import DumaConfig
    from duma.logstore import LoggedMessage, LogStore, Rating


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
    """Read the conversation log, and export rated replies as training data.

    Rate replies in 'duma chat' with '!good' or '!bad [note]'; 'duma logs export --format
    sft|dpo|kto --out FILE' turns the ratings into records for 'duma train' (method sft or dpo).
    """


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
        ratings = {r.message_id: r for r in store.ratings(conversation_id)}
    finally:
        store.close()
    if as_json:
        data: dict[str, Any] = {
            "id": conversation_id,
            "model": summary.model if summary else None,
            "created": summary.created if summary else None,
            "messages": [m.model_dump(mode="json") for m in messages],
            "ratings": [r.model_dump(mode="json") for r in ratings.values()],
        }
        click.echo(json.dumps(data, indent=2, ensure_ascii=False))
        return
    from rich.console import Console
    from rich.markdown import Markdown
    from rich.markup import escape

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
        if m.id in ratings:
            rating = ratings[m.id]
            note = f": {escape(rating.note)}" if rating.note else ""  # the user's text, not markup
            label += f" (rated {'good' if rating.score > 0 else 'bad'}{note})"
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


EXPORT_FORMATS = ("sft", "dpo", "kto")
EXPORT_MINDS = ("plain", "fast")


@dataclass
class RatedReply:
    """One rated assistant message, rendered for the mind being trained."""

    rating: Rating
    message: LoggedMessage
    context: list[dict[str, str]]  # ends with the user message (or SlowMind[...] for a final pass)
    completion: str
    first_pass: list[dict[str, str]] | None = None  # --mind fast, a handoff's final: the first pass
    interim: str | None = None  # --mind fast, a handoff's final: the interim reply
    tool_free: bool = False  # a handoff whose slow mind finished without calling a tool
    promise_kept: bool = False  # a handoff the agent made to keep the interim's promise


def parse_since(value: str | None) -> float | None:
    """``--since`` as a timestamp: a date (YYYY-MM-DD, midnight) or an ISO time; local time
    unless it names a zone, as ``duma logs list`` shows times."""
    if value is None:
        return None
    from duma.plugins.chat import OptionError

    try:
        return datetime.fromisoformat(value.strip()).timestamp()
    except ValueError:
        raise OptionError(f"--since: expected a date (YYYY-MM-DD) or an ISO time, got {value!r}") from None


def _plain_context(before: Sequence[LoggedMessage]) -> list[dict[str, str]]:
    """The dialogue as the user had it: each turn's user message and its last reply (an
    interim reply only where the turn has nothing after it); empty messages left out."""
    from duma.agents import fast_mind

    out: list[dict[str, str]] = []
    for turn in fast_mind.logged_turns(before):
        replies = [m for m in turn if m.role == "assistant"]
        for m in [m for m in turn if m.role == "user"] + replies[-1:]:
            if m.content.strip():
                out.append({"role": m.role, "content": m.content})
    return out


def rated_replies(store: LogStore, config: DumaConfig, *, mind: str = "plain",
                  since: float | None = None) -> list[RatedReply]:
    """Every rated assistant message (its newest rating, made at or after ``since``) with its
    context as ``mind`` sees it, oldest rating first. Replies with no text are left out."""
    from duma.agents import fast_mind, protocol

    system = fast_mind.fast_system_prompt(config.mind("fast").system_prompt, None)
    history: dict[str, list[LoggedMessage]] = {}
    out: list[RatedReply] = []
    for rating in store.ratings(since=since):
        if rating.conversation_id not in history:
            history[rating.conversation_id] = store.messages(rating.conversation_id)
        logged = history[rating.conversation_id]
        at = next((i for i, m in enumerate(logged) if m.id == rating.message_id), None)
        if at is None or logged[at].role != "assistant" or not logged[at].content.strip():
            continue
        start = next((i for i in range(at, -1, -1) if logged[i].role == "user"), None)
        if start is None:
            continue  # an imported reply with no question before it: no context to learn from
        message, user, before, turn = logged[at], logged[start], logged[:start], logged[start:at]
        if mind == "plain":
            context = [*_plain_context(before), {"role": "user", "content": user.content}]
            out.append(RatedReply(rating, message, context, message.content))
            continue
        first_pass = [m.model_dump() for m in
                      fast_mind.build_context(system, before, user.content, config.agent.memory_turns)]
        kind = message.meta.get("kind")
        interim = next((m for m in turn if m.meta.get("kind") == fast_mind.KIND_INTERIM), None)
        slow = next((m for m in turn if m.meta.get("kind") == fast_mind.KIND_SLOW), None)
        if kind == fast_mind.KIND_INTERIM:
            out.append(RatedReply(rating, message, first_pass, protocol.format_fast_output(message.content, True)))
        elif interim is not None and slow is not None:  # the final pass of a handoff
            context = [*first_pass,
                       {"role": "assistant", "content": protocol.format_fast_output(interim.content, True)},
                       {"role": "user", "content": protocol.format_slow_mind(slow.content)}]
            tool_free = bool(slow.meta.get("finished")) and not any(
                step.get("action") for step in slow.meta.get("trace") or [])
            out.append(RatedReply(rating, message, context, protocol.format_fast_output(message.content, False),
                                  first_pass=first_pass, interim=interim.content, tool_free=tool_free,
                                  promise_kept=bool(interim.meta.get("promise_kept"))))
        else:
            out.append(RatedReply(rating, message, first_pass, protocol.format_fast_output(message.content, False)))
    return out


def export_records(replies: Sequence[RatedReply], fmt: str, mind: str) -> list[dict[str, Any]]:
    """The training records of ``fmt`` (``sft``, ``dpo``, ``kto``) from rated replies; see the
    module's docstring for the shapes and the pairing rules."""
    if fmt == "sft":
        return [{"messages": [*r.context, {"role": "assistant", "content": r.completion}]}
                for r in replies if r.rating.score > 0]
    if fmt == "kto":
        return [{"messages": r.context, "completion": r.completion, "label": r.rating.score > 0} for r in replies]
    records: list[dict[str, Any]] = []
    seen: set[str] = set()

    def pair(messages: list[dict[str, str]], chosen: str, rejected: str) -> None:
        record = {"messages": messages, "chosen": chosen, "rejected": rejected}
        key = json.dumps(record, sort_keys=True)
        if chosen != rejected and key not in seen:
            seen.add(key)
            records.append(record)

    groups: dict[str, list[RatedReply]] = {}
    for r in replies:  # "the same context": exactly equal messages
        groups.setdefault(json.dumps(r.context), []).append(r)
    for group in groups.values():
        for good in (r for r in group if r.rating.score > 0):
            for bad in (r for r in group if r.rating.score < 0):
                pair(good.context, good.completion, bad.completion)
    if mind == "fast":
        from duma.agents import fast_mind, protocol

        for r in replies:
            # A finished turn the fast mind itself kept fast (not a cut, imported or plain one).
            meta = r.message.meta
            kept_fast = meta.get("kind") == fast_mind.KIND_REPLY and meta.get("slow_ran") is False \
                and not meta.get("plain")
            if r.rating.score < 0 and kept_fast and fast_mind.promises_lookup(r.message.content):
                pair(r.context, protocol.format_fast_output(fast_mind.INTERIM_TEMPLATE, True), r.completion)
            elif r.rating.score > 0 and r.first_pass is not None and r.interim is not None:
                if r.tool_free:
                    pair(r.first_pass, r.completion, protocol.format_fast_output(r.interim, True))
                elif r.promise_kept:
                    pair(r.first_pass, protocol.format_fast_output(r.interim, True),
                         protocol.format_fast_output(r.interim, False))
    return records


@logs_group.command(name="export")
@click.option("--format", "fmt", required=True, type=click.Choice(EXPORT_FORMATS),
              help="sft: the good replies; dpo: good/bad pairs for one context; kto: every rated reply.")
@click.option("--out", "out", required=True, type=click.Path(dir_okay=False, path_type=Path),
              help="The file to write (.jsonl, .json or .parquet by its suffix); replaced if it exists.")
@click.option("--since", metavar="DATE", help="Only ratings made since DATE (YYYY-MM-DD or an ISO time).")
@click.option("--mind", type=click.Choice(EXPORT_MINDS), default="plain", show_default=True,
              help="plain: the dialogue as the user saw it; fast: the fast mind's protocol "
                   "(Response[...] Invoke[...]), with routing preferences in dpo.")
@pass_state
def logs_export(state: CliState, fmt: str, out: Path, since: str | None, mind: str) -> None:
    """Write the rated replies ('!good'/'!bad' in 'duma chat') as training records.

    sft records read with data source 'sharegpt' ('duma train' method sft), dpo records with
    'preference' (method dpo). The file is written whole or not at all.
    """
    from duma.data import RecordWriter

    since_ts = parse_since(since)
    store = open_existing_store(state)
    if store is None:
        raise DumaError(f"no conversations logged yet in {database_path(state)}", "chat with 'duma chat' first")
    try:
        if out.resolve() == store.path.resolve():
            raise DumaError(f"--out {out} is the log database", "write to another file")
        replies = rated_replies(store, state.config, mind=mind, since=since_ts)
    finally:
        store.close()
    records = export_records(replies, fmt, mind)
    with RecordWriter(out) as writer:
        writer.write_all(records)
    click.echo(f"wrote {writer.count} {fmt} records ({mind} mind) from {len(replies)} rated replies to {out}")
    if not records:
        hint = ("rate replies in 'duma chat' with !good or !bad" if not replies else
                "a dpo pair needs a good and a bad reply to the same context" if fmt == "dpo" else
                "sft keeps only the !good replies")
        click.echo(f"note: no records ({hint})", err=True)


@logs_group.command(name="path")
@pass_state
def logs_path(state: CliState) -> None:
    """Print where the log database is."""
    click.echo(str(database_path(state)))


@hookimpl
def register_commands(cli: Any) -> None:
    cli.add_command(logs_group)
