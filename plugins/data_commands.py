"""``duma data``: validate, inspect, convert, de-duplicate and split training data.

Every command streams its input through :func:`duma.data.iter_located`, so a bad record stops
it with ``file:line: field: problem`` (or, with ``--skip-invalid``, is counted and written to a
rejects file). Output files take their format from their suffix: ``.jsonl`` JSON Lines,
``.json`` a JSON list, ``.parquet`` Parquet. Files a command writes unasked (rejects, the
histogram) go beside the first input file, never into the working folder.
"""

from __future__ import annotations

import hashlib
import json
import random
import re
import unicodedata
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

import duma
from duma.errors import DumaError
from duma.paths import path_beside, write_atomically

if TYPE_CHECKING:
    from datasketch import MinHash, MinHashLSH

    from duma.data import DataSource, Located, ReadStats, Record

NATIVE = "jsonl"  # --to jsonl: duma's own record shape (model_dump)


# ----------------------------------------------------------------------------- helpers

def _source_for(files: list[Path], name: str | None) -> str:
    from duma.data import detect_source

    return name or detect_source(files[0])


def _stats_and_reader(source: str, files: list[Path], skip_invalid: bool, rejects: Path | None, *,
                      write_rejects: bool = True) -> tuple[ReadStats, Iterator[Located]]:
    """Read stats and the located records; with ``skip_invalid`` the invalid ones go to
    ``rejects`` (default beside the first file) unless ``write_rejects`` is off (a second pass)."""
    from duma.data import ReadStats, iter_located

    stats = ReadStats()
    if not (skip_invalid and write_rejects):
        rejects = None
    elif rejects is None:
        rejects = path_beside(files[0], "rejects.jsonl")
    return stats, iter_located(source, files, skip_invalid=skip_invalid, rejects_path=rejects, stats=stats)


def _has_writer(source: DataSource) -> bool:
    from duma import DataSource

    return type(source).to_raw is not DataSource.to_raw


def record_writer(to: str) -> Callable[[Record], dict[str, Any]]:
    """Turns a record into the raw item of the format ``to`` (a source name, or ``jsonl`` for
    duma's own shape, which the ``sharegpt``/``text``/``preference`` sources read back)."""
    if to == NATIVE:
        return lambda record: record.model_dump(exclude_none=True)
    from duma.data import get_source

    source = get_source(to)
    if not _has_writer(source):
        raise DumaError(f"data source '{to}' cannot write records", "pick another format with --to")
    return source.to_raw


def default_output_format(source_name: str) -> str:
    """Write in the input's own format when its source can write, else in duma's shape."""
    from duma.data import get_source

    return source_name if _has_writer(get_source(source_name)) else NATIVE


def _report_invalid(stats: ReadStats) -> None:
    if stats.invalid:
        where = f"; rejects written to {stats.rejects_path}" if stats.rejects_path else ""
        click.echo(f"skipped {stats.invalid} invalid record{'s' * (stats.invalid != 1)}{where}")


def _files_arg(files: tuple[str, ...]) -> list[Path]:
    if not files:
        raise click.UsageError("give at least one data file")
    return [Path(f) for f in files]


_skip_option = click.option("--skip-invalid", is_flag=True,
                            help="Count bad records, write them to the rejects file and go on.")
_rejects_option = click.option("--rejects", type=click.Path(dir_okay=False, path_type=Path), default=None,
                               help="Rejects file for --skip-invalid (default: FILE.rejects.jsonl beside the first "
                                    "input file).")
_format_option = click.option("--format", "-f", "source", default=None, metavar="SOURCE",
                              help="Data source (belle, alpaca, sharegpt, text, preference, seed-tasks, "
                                   "duma-logs, ...); default: detected from the first record.")


# ----------------------------------------------------------------------------- statistics

@dataclass
class DataStatsReport:
    """What ``duma data stats`` reports."""

    records: int = 0
    kinds: Counter[str] = field(default_factory=Counter)
    turns: int = 0
    turns_by_role: Counter[str] = field(default_factory=Counter)
    multi_turn: int = 0
    characters: int = 0
    categories: Counter[str] = field(default_factory=Counter)
    token_lengths: list[int] = field(default_factory=list)
    char_lengths: list[int] = field(default_factory=list)  # kept only when a histogram is drawn
    truncated: int = 0

    def add(self, record: Record, tokenizer: Any = None, max_length: int | None = None,
            keep_char_lengths: bool = False) -> None:
        from duma.data import Conversation, PreferenceRecord, TextRecord, flat_text

        self.records += 1
        self.kinds[type(record).__name__] += 1
        if isinstance(record, Conversation):
            self.turns += len(record.messages)
            self.turns_by_role.update(m.role for m in record.messages)
            self.multi_turn += sum(m.role == "assistant" for m in record.messages) > 1
            self.characters += sum(len(m.content) for m in record.messages)
            self.categories[record.category or "(none)"] += 1
        elif isinstance(record, TextRecord):
            self.characters += len(record.text)
        elif isinstance(record, PreferenceRecord):
            self.characters += len(record.prompt) + len(record.chosen) + len(record.rejected)
        else:
            self.characters += len(flat_text(record))
        if tokenizer is not None:
            self.token_lengths.append(token_length(tokenizer, record))
            if max_length and self.token_lengths[-1] > max_length:
                self.truncated += 1
        if keep_char_lengths:
            self.char_lengths.append(len(flat_text(record)))

    def summary(self) -> dict[str, Any]:
        out: dict[str, Any] = {"records": self.records, "kinds": dict(self.kinds),
                               "characters": self.characters}
        if self.turns:
            out |= {"turns": self.turns, "turns_by_role": dict(self.turns_by_role),
                    "multi_turn_conversations": self.multi_turn,
                    "categories": dict(self.categories.most_common())}
        if self.token_lengths:
            lengths = sorted(self.token_lengths)
            out["tokens"] = {
                "total": sum(lengths), "mean": round(sum(lengths) / len(lengths), 1),
                "p50": lengths[len(lengths) // 2], "p95": lengths[min(len(lengths) - 1, int(len(lengths) * 0.95))],
                "max": lengths[-1],
            }
            if self.truncated:
                out["tokens"]["over_max_length"] = self.truncated
        return out


def token_length(tokenizer: Any, record: Record) -> int:
    """Tokens of a record as training sees it (conversations through ``render_training``)."""
    from duma.data import Conversation, PreferenceRecord, TextRecord, flat_text
    from duma.rendering import render_training

    if isinstance(record, Conversation):
        return len(render_training(tokenizer, record.messages).input_ids)
    if isinstance(record, PreferenceRecord):
        text = record.prompt + record.chosen  # one side of the pair: what one training row holds
    else:
        text = record.text if isinstance(record, TextRecord) else flat_text(record)
    return len(tokenizer(text, add_special_tokens=False)["input_ids"])


def write_histogram(lengths: list[int], out: Path, title: str, xlabel: str) -> None:
    """A length histogram PNG (matplotlib's Agg canvas: no display, no pyplot state)."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(8, 4.5), dpi=100)
    ax = fig.subplots()
    ax.hist(lengths, bins=min(50, max(1, len(set(lengths)))), color="#4878a8", edgecolor="white")
    ax.set_title(title)
    ax.set_xlabel(xlabel)
    ax.set_ylabel("records")
    fig.tight_layout()
    write_atomically(out, lambda tmp: fig.savefig(str(tmp), format="png"))


# ----------------------------------------------------------------------------- de-duplication

def normalise_for_dedup(text: str) -> str:
    """Case-, width- and whitespace-insensitive form used by both duplicate checks."""
    return re.sub(r"\s+", " ", unicodedata.normalize("NFKC", text)).strip().lower()


def shingles(text: str, size: int) -> set[str]:
    """The character ``size``-grams of ``text`` (a shorter text is its own single shingle)."""
    return {text[i:i + size] for i in range(max(1, len(text) - size + 1))}


class NearDuplicateFilter:
    """Near-duplicate detection with datasketch: MinHash signatures of character shingles,
    LSH buckets to find candidates, then the signature estimate of Jaccard similarity
    against ``threshold``. The first of a group of near duplicates is kept."""

    def __init__(self, threshold: float = 0.8, num_perm: int = 128, shingle: int = 5, seed: int = 1) -> None:
        from datasketch import MinHash

        if not 0.0 < threshold <= 1.0:
            raise DumaError(f"threshold {threshold} is out of range", "use a Jaccard similarity in (0, 1]")
        self.threshold, self.shingle = threshold, shingle
        # Every signature is a copy of this empty one: the permutations are drawn once, from ``seed``.
        self._empty = MinHash(num_perm=num_perm, seed=seed)
        self._index = _lsh_index(threshold, num_perm)
        self._kept: list[MinHash] = []

    def signature(self, text: str) -> MinHash:
        """The MinHash of ``text``'s shingles."""
        signature = self._empty.copy()
        signature.update_batch([s.encode("utf-8") for s in shingles(text, self.shingle)])
        return signature

    def add_if_new(self, text: str) -> bool:
        """True (and remembered) if no kept text is a near duplicate of ``text``."""
        signature = self.signature(text)
        if any(signature.jaccard(self._kept[i]) >= self.threshold for i in self._index.query(signature)):
            return False
        self._index.insert(len(self._kept), signature)
        self._kept.append(signature)
        return True


def _lsh_index(threshold: float, num_perm: int) -> MinHashLSH:
    """datasketch's LSH index with the bands and rows it finds best for ``threshold``."""
    from datasketch import MinHashLSH

    try:
        return MinHashLSH(threshold=threshold, num_perm=num_perm)
    except ValueError:
        # Near a threshold of 1 the best split is a single band, which datasketch refuses; two
        # bands of half the rows find every candidate that one band would (and the Jaccard
        # check decides).
        return MinHashLSH(threshold=threshold, num_perm=num_perm, params=(2, num_perm // 2))


@dataclass
class DedupCounts:
    """Records seen and removed by :func:`dedup_records`, filled in as they stream."""

    seen: int = 0
    exact: int = 0
    near: int = 0

    @property
    def kept(self) -> int:
        return self.seen - self.exact - self.near


def dedup_records(records: Iterable[Record], counts: DedupCounts, *, threshold: float = 0.8,
                  num_perm: int = 128, shingle: int = 5, near: bool = True) -> Iterator[Record]:
    """The records without exact duplicates (same normalised text) and, with ``near``, without
    near duplicates (MinHash Jaccard >= ``threshold`` on character shingles); the first
    occurrence is kept. ``counts`` is filled in as the records stream."""
    from duma.data import flat_text

    seen_hashes: set[bytes] = set()
    near_filter = NearDuplicateFilter(threshold, num_perm, shingle) if near else None
    for record in records:
        counts.seen += 1
        text = normalise_for_dedup(flat_text(record))
        digest = _text_digest(text)
        if digest in seen_hashes:
            counts.exact += 1
            continue
        seen_hashes.add(digest)
        if near_filter is not None and not near_filter.add_if_new(text):
            counts.near += 1
            continue
        yield record


def _text_digest(normalised: str) -> bytes:
    return hashlib.blake2b(normalised.encode("utf-8"), digest_size=16).digest()


def record_digest(record: Record) -> bytes:
    """Equal for records that exact de-duplication counts as the same (normalised text)."""
    from duma.data import flat_text

    return _text_digest(normalise_for_dedup(flat_text(record)))


# ----------------------------------------------------------------------------- split

def choose_eval(strata: list[Any], eval_ratio: float, seed: int, groups: list[Any] | None = None) -> set[int]:
    """Indices of the eval records: ``round(n * eval_ratio)`` of each stratum (at least one
    when the stratum has two or more records and the ratio is positive), drawn with ``seed``.

    Records with the same ``groups`` key (identical records) land on the same side, so eval
    never repeats a training record: whole groups are drawn, in a seeded order, while they
    fit in the stratum's count (a group belongs to the stratum of its first record)."""
    keys = groups if groups is not None else list(range(len(strata)))
    members_of: dict[Any, list[int]] = {}
    for i, key in enumerate(keys):
        members_of.setdefault(key, []).append(i)
    by_stratum: dict[Any, list[Any]] = {}
    for key, members in members_of.items():
        by_stratum.setdefault(strata[members[0]], []).append(key)
    rng = random.Random(seed)
    chosen: set[int] = set()
    for stratum in sorted(by_stratum, key=lambda k: (k is None, str(k))):
        group_keys = by_stratum[stratum]
        size = sum(len(members_of[g]) for g in group_keys)
        k = round(size * eval_ratio)
        if eval_ratio > 0 and k == 0 and size >= 2:
            k = 1
        taken = 0
        for g in rng.sample(group_keys, len(group_keys)):
            if taken == k:
                break
            if taken + len(members_of[g]) <= k:
                chosen.update(members_of[g])
                taken += len(members_of[g])
    return chosen


# ----------------------------------------------------------------------------- commands

@click.group(name="data")
def data_group() -> None:
    """Validate, inspect, convert, de-duplicate and split training data."""


@data_group.command(name="sources")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def sources_command(as_json: bool) -> None:
    """List the data sources: name, record kind and shape."""
    from duma import host
    from duma.data import get_source

    rows = []
    for name, comp in sorted(host.components("data_source").items()):
        src = get_source(name)
        rows.append({"name": name, "kind": src.kind, "writes": _has_writer(src),
                     "plugin": comp.plugin, "description": src.description})
    if as_json:
        click.echo(json.dumps(rows, indent=2))
        return
    for r in rows:
        click.echo(f"{r['name']:<12} {r['kind']:<13} {r['description']}")


@data_group.command(name="validate")
@click.argument("args", nargs=-1, metavar="[SOURCE] FILE...")
@_format_option
@_skip_option
@_rejects_option
def validate_command(args: tuple[str, ...], source: str | None, skip_invalid: bool,
                     rejects: Path | None) -> None:
    """Check that every record of FILE... validates.

    The source is -f/--format or the first argument ('duma data validate belle a.jsonl').
    Stops at the first bad record with 'file:line: field: problem' (exit 1); with
    --skip-invalid counts them and writes them to the rejects file.
    """
    from duma.data import source_names

    names = args
    if source is None and names and names[0] in source_names() and not Path(names[0]).exists():
        source, names = names[0], names[1:]
    files = _files_arg(names)
    source = _source_for(files, source)
    stats, reader = _stats_and_reader(source, files, skip_invalid, rejects)
    for _ in reader:
        pass
    plural = "s" * (stats.files != 1)
    click.echo(f"{source}: {stats.records} valid records in {stats.files} file{plural}"
               + (f", {stats.invalid} invalid" if stats.invalid else ""))
    if stats.invalid and stats.rejects_path:
        click.echo(f"rejects written to {stats.rejects_path}")


@data_group.command(name="stats")
@click.argument("files", nargs=-1, type=click.Path(path_type=Path), metavar="FILE...")
@_format_option
@_skip_option
@_rejects_option
@click.option("--tokenizer", default=None, metavar="PATH|embedded",
              help="Count tokens as training renders them and draw a token-length histogram.")
@click.option("--out", "out", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Histogram PNG (default with --tokenizer: FILE.token_lengths.png beside the first "
                   "input file).")
@click.option("--max-length", type=int, default=None, help="Also count records over this many tokens.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def stats_command(files: tuple[Path, ...], source: str | None, skip_invalid: bool, rejects: Path | None,
                  tokenizer: str | None, out: Path | None, max_length: int | None, as_json: bool) -> None:
    """Records, turns, characters and categories of FILE... (and token lengths)."""
    paths = _files_arg(tuple(str(f) for f in files))
    source = _source_for(paths, source)
    from duma.models import load_tokenizer

    tok = load_tokenizer(tokenizer) if tokenizer else None
    stats, reader = _stats_and_reader(source, paths, skip_invalid, rejects)
    result = DataStatsReport()
    for located in reader:
        result.add(located.record, tok, max_length, keep_char_lengths=out is not None and tok is None)
    summary = {"source": source, **result.summary()}
    if tok is not None or out is not None:
        out = out or path_beside(paths[0], "token_lengths.png")
        if tok is not None:
            lengths, label = result.token_lengths, "tokens per record"
        else:  # without a tokenizer, a character-length histogram
            lengths, label = result.char_lengths, "characters per record"
        write_histogram(lengths, out, f"{', '.join(str(p.name) for p in paths)[:80]} ({source})", label)
        summary["histogram"] = str(out)
    if stats.invalid:
        summary["invalid"] = stats.invalid
        if stats.rejects_path:
            summary["rejects"] = str(stats.rejects_path)
    if as_json:
        click.echo(json.dumps(summary, indent=2, ensure_ascii=False))
        return
    click.echo(f"source      {source}")
    click.echo(f"records     {result.records}")
    if result.turns:
        roles = ", ".join(f"{k} {v}" for k, v in sorted(result.turns_by_role.items()))
        click.echo(f"turns       {result.turns} ({roles}); multi-turn conversations {result.multi_turn}")
    click.echo(f"characters  {result.characters}")
    if "tokens" in summary:
        t = summary["tokens"]
        click.echo(f"tokens      total {t['total']}, mean {t['mean']}, p50 {t['p50']}, p95 {t['p95']}, max {t['max']}"
                   + (f", over {max_length}: {t['over_max_length']}" if t.get("over_max_length") else ""))
    if result.categories and set(result.categories) != {"(none)"}:
        click.echo("categories")
        for name, count in result.categories.most_common():
            click.echo(f"  {name:<20} {count}")
    if "histogram" in summary:
        click.echo(f"histogram   {summary['histogram']}")
    _report_invalid(stats)


@data_group.command(name="convert")
@click.argument("in_path", metavar="IN", type=click.Path(path_type=Path))
@click.argument("out_path", metavar="OUT", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--from", "from_source", default=None, metavar="SOURCE",
              help="Source of IN (default: detected).")
@click.option("--to", "to", required=True, metavar="FORMAT",
              help="belle, sharegpt, alpaca, text, preference, or jsonl (duma's own shape).")
@_skip_option
@_rejects_option
def convert_command(in_path: Path, out_path: Path, from_source: str | None, to: str, skip_invalid: bool,
                    rejects: Path | None) -> None:
    """Convert IN to OUT in another format (OUT's suffix picks .jsonl, .json or .parquet)."""
    from duma.data import RecordWriter

    source = _source_for([in_path], from_source)
    to_raw = record_writer(to)
    if out_path.resolve() == in_path.resolve():
        raise DumaError(f"{out_path} is also the input", "write to another file")
    stats, reader = _stats_and_reader(source, [in_path], skip_invalid, rejects)
    with RecordWriter(out_path) as writer:
        for located in reader:
            writer.write(to_raw(located.record))
    click.echo(f"wrote {writer.count} records to {out_path} ({source} -> {to})")
    _report_invalid(stats)


@data_group.command(name="dedup")
@click.argument("files", nargs=-1, type=click.Path(path_type=Path), metavar="FILE...")
@_format_option
@click.option("--out", "out", required=True, type=click.Path(dir_okay=False, path_type=Path),
              help="Where the kept records go.")
@click.option("--to", "to", default=None, metavar="FORMAT", help="Output format (default: the input's).")
@click.option("--threshold", type=click.FloatRange(0.0, 1.0, min_open=True), default=0.8, show_default=True,
              help="Jaccard similarity (character shingles) at which two records are near duplicates.")
@click.option("--num-perm", type=click.IntRange(8, 1024), default=128, show_default=True,
              help="MinHash permutations.")
@click.option("--shingle", type=click.IntRange(1, 64), default=5, show_default=True,
              help="Characters per shingle.")
@click.option("--exact-only", is_flag=True, help="Only remove exact duplicates.")
@_skip_option
@_rejects_option
def dedup_command(files: tuple[Path, ...], source: str | None, out: Path, to: str | None, threshold: float,
                  num_perm: int, shingle: int, exact_only: bool, skip_invalid: bool, rejects: Path | None) -> None:
    """Remove exact duplicates (normalised text hash) and near duplicates (MinHash + LSH)."""
    from duma.data import RecordWriter

    paths = _files_arg(tuple(str(f) for f in files))
    source = _source_for(paths, source)
    to_raw = record_writer(to or default_output_format(source))
    stats, reader = _stats_and_reader(source, paths, skip_invalid, rejects)
    counts = DedupCounts()
    with RecordWriter(out) as writer:
        for record in dedup_records((loc.record for loc in reader), counts, threshold=threshold,
                                    num_perm=num_perm, shingle=shingle, near=not exact_only):
            writer.write(to_raw(record))
    click.echo(f"{counts.seen} records: removed {counts.exact} exact and {counts.near} near duplicates, "
               f"kept {counts.kept} -> {out}")
    _report_invalid(stats)


@data_group.command(name="split")
@click.argument("files", nargs=-1, type=click.Path(path_type=Path), metavar="FILE...")
@_format_option
@click.option("--eval-ratio", type=click.FloatRange(0.0, 1.0), default=0.05, show_default=True)
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--out-dir", required=True, type=click.Path(file_okay=False, path_type=Path),
              help="Gets train.jsonl and eval.jsonl (or --suffix).")
@click.option("--by", type=click.Choice(["category"]), default=None,
              help="Stratify: the eval ratio holds within each category.")
@click.option("--to", "to", default=None, metavar="FORMAT", help="Output format (default: the input's).")
@click.option("--suffix", type=click.Choice([".jsonl", ".json", ".parquet"]), default=".jsonl", show_default=True)
@_skip_option
@_rejects_option
def split_command(files: tuple[Path, ...], source: str | None, eval_ratio: float, seed: int, out_dir: Path,
                  by: str | None, to: str | None, suffix: str, skip_invalid: bool, rejects: Path | None) -> None:
    """Split FILE... into train and eval sets, deterministically for a seed (two passes:
    count, then write, so the input streams). Identical records (after the normalisation
    dedup uses) stay on one side: eval never repeats a training record."""
    from duma.data import Conversation, RecordWriter

    paths = _files_arg(tuple(str(f) for f in files))
    source = _source_for(paths, source)
    to_raw = record_writer(to or default_output_format(source))
    strata: list[Any] = []
    digests: list[bytes] = []
    stats, reader = _stats_and_reader(source, paths, skip_invalid, rejects)
    for located in reader:
        record = located.record
        if by == "category":
            if not isinstance(record, Conversation):
                raise DumaError(f"--by category needs conversation records, {source} has none",
                                "leave out --by")
            strata.append(record.category)
        else:
            strata.append(None)
        digests.append(record_digest(record))
    eval_ids = choose_eval(strata, eval_ratio, seed, groups=digests)
    _, reader = _stats_and_reader(source, paths, skip_invalid, None, write_rejects=False)
    train_path, eval_path = out_dir / f"train{suffix}", out_dir / f"eval{suffix}"
    with RecordWriter(train_path) as train, RecordWriter(eval_path) as evals:
        for i, located in enumerate(reader):
            (evals if i in eval_ids else train).write(to_raw(located.record))
    click.echo(f"{len(strata)} records: {train.count} train -> {train_path}, {evals.count} eval -> {eval_path}")
    _report_invalid(stats)


@duma.hookimpl
def register_commands(cli: Any) -> None:
    cli.add_command(data_group)
