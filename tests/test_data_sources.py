"""Data sources and duma.data.iter_records: records, file:line errors, skip-invalid, streaming."""

from __future__ import annotations

import itertools
import json
from pathlib import Path

import pytest

from duma import data
from duma.data import Conversation, InvalidDataError, PreferenceRecord, ReadStats, TextRecord, iter_records
from duma.errors import DumaError
from duma.types import Message

FIXTURES = Path(__file__).parent / "data" / "train"
SEED_TASKS = Path(__file__).resolve().parents[2] / "shared" / "data" / "belle" / "zh_seed_tasks.json"


def msgs(*pairs: tuple[str, str]) -> list[Message]:
    return [Message(role=r, content=c) for r, c in pairs]  # type: ignore[arg-type]


def located(source: str, path: Path, **kwargs) -> list[data.Located]:
    return list(data.iter_located(source, path, **kwargs))


def first_error(source: str, path: Path) -> str:
    with pytest.raises(InvalidDataError) as info:
        list(iter_records(source, path))
    return info.value.message


# ----------------------------------------------------------------------------- good records

def test_belle_good_records():
    items = located("belle", FIXTURES / "belle_good.jsonl")
    assert [i.line for i in items] == [1, 2, 4]  # the blank line 3 is skipped, numbering kept
    assert items[0].record == Conversation(id="b1", messages=msgs(
        ("user", "What is the capital of France?"), ("assistant", "Paris.")))
    assert [m.role for m in items[1].record.messages] == ["system", "user", "assistant", "user", "assistant"]
    third = items[2].record
    assert third.id == "3" and third.category == "open qa"  # numeric ids become strings
    assert third.messages == msgs(("user", "你好"), ("assistant", "你好！有什么可以帮你？"))


def test_alpaca_good_records_json_list_lines_and_flattened_multi_turn():
    items = located("alpaca", FIXTURES / "alpaca_good.json")
    assert [i.line for i in items] == [2, 3, 8]  # the line where each list item starts
    assert items[0].record == Conversation(category="translation", messages=msgs(
        ("user", "Translate to English\n你好"), ("assistant", "Hello")))
    assert items[2].record.messages == msgs(
        ("user", "Hello"), ("assistant", "Hi, how can I help?"), ("user", "Tell me a joke"),
        ("assistant", "Why did the chicken cross the road?"))
    assert items[2].record.category == "generation"


def test_sharegpt_both_variants_and_top_level_system():
    records = list(iter_records("sharegpt", FIXTURES / "sharegpt_good.jsonl"))
    assert records[0].messages == msgs(("system", "Be brief."), ("user", "Hi"), ("assistant", "Hello."))
    assert records[1] == Conversation(id="s2", messages=msgs(("user", "2+2?"), ("assistant", "4")))
    assert records[2].messages[0] == Message(role="system", content="Be kind.")


def test_text_jsonl_and_plain_text_paragraphs():
    assert list(iter_records("text", FIXTURES / "text_good.jsonl")) == [
        TextRecord(text="The quick brown fox jumps over the lazy dog."), TextRecord(text="北京是中国的首都。")]
    items = located("text", FIXTURES / "text_good.txt")
    assert [(i.line, i.record.text) for i in items] == [
        (1, "First paragraph, line one.\nFirst paragraph, line two."),
        (4, "Second paragraph."),
        (7, "Third paragraph."),
    ]


def test_plain_text_is_only_for_the_text_source():
    with pytest.raises(DumaError, match="plain-text files are read only by the 'text' source"):
        list(iter_records("belle", FIXTURES / "text_good.txt"))


def test_preference_records():
    records = list(iter_records("preference", FIXTURES / "preference_good.jsonl"))
    assert records[0] == PreferenceRecord(prompt="Human: \nWhat is 2+2?\n\nAssistant: \n", chosen="4", rejected="5")
    assert len(records) == 2


# ----------------------------------------------------------------------------- bad records

BAD = {
    "belle": ("belle_bad.jsonl", [1, 7], [
        "2: conversations.1.from: must be one of 'human', 'assistant', 'gpt', 'user' or 'system' (got 'bot')",
        "3: conversations: needs at least one assistant turn",
        "4: json: not valid JSON (Expecting value at column 1)",
        "5: conversations.1: empty assistant reply",
        "6: record: expected a JSON object, got list",
    ]),
    "alpaca": ("alpaca_bad.json", [2], [
        "3: output: missing (alpaca records have instruction, input, output)",
        "4: output: empty",
        "5: instruction: the flattened dialogue must end with 'Assistant:' (the reply is the output)",
    ]),
    "sharegpt": ("sharegpt_bad.jsonl", [1], [
        "2: messages.0.role: must be one of 'system', 'user' or 'assistant' (got 'tool')",
        "3: conversations: missing (sharegpt records have conversations: [{from, value}] or messages: [{role, content}])",
    ]),
    "text": ("text_bad.jsonl", [1], [
        "2: text: empty text",
        "3: text: missing (text records have text)",
    ]),
    "preference": ("preference_bad.jsonl", [1], [
        "2: rejected: missing (found 'reject': the key is 'rejected')",
        "3: chosen: empty",
    ]),
}


@pytest.mark.parametrize("source", sorted(BAD))
def test_first_bad_record_raises_file_line_field_problem(source):
    name, _, errors = BAD[source]
    path = FIXTURES / name
    assert first_error(source, path) == f"{path}:{errors[0]}"


@pytest.mark.parametrize("source", sorted(BAD))
def test_skip_invalid_counts_and_writes_rejects(source, tmp_path):
    name, good_lines, errors = BAD[source]
    path = FIXTURES / name
    stats = ReadStats()
    rejects = tmp_path / "rejects" / "bad.jsonl"
    items = located(source, path, skip_invalid=True, rejects_path=rejects, stats=stats)
    assert [i.line for i in items] == good_lines
    assert (stats.files, stats.records, stats.invalid) == (1, len(good_lines), len(errors))
    assert stats.rejects_path == rejects
    lines = [json.loads(line) for line in rejects.read_text(encoding="utf-8").splitlines()]
    assert [r["error"] for r in lines] == [f"{path}:{e}" for e in errors]
    assert all(r["file"] == str(path) for r in lines)
    assert [r["line"] for r in lines] == [int(e.split(":")[0]) for e in errors]
    assert lines[0]["record"] is not None  # the raw record, to fix by hand


def test_rejects_keep_the_raw_record(tmp_path):
    rejects = tmp_path / "r.jsonl"
    located("belle", FIXTURES / "belle_bad.jsonl", skip_invalid=True, rejects_path=rejects)
    first = json.loads(rejects.read_text(encoding="utf-8").splitlines()[0])
    assert first["record"]["id"] == "bad2"
    assert first["field"] == "conversations.1.from"


def test_skip_invalid_without_rejects_path_only_counts():
    stats = ReadStats()
    assert len(list(iter_records("belle", FIXTURES / "belle_bad.jsonl", skip_invalid=True, stats=stats))) == 2
    assert stats.invalid == 5 and stats.rejects_path is None
    assert stats.invalid_by_field["conversations.1.from"] == 1


def test_wrong_source_names_expected_fields_and_suggests_the_right_one():
    path = FIXTURES / "alpaca_good.json"
    with pytest.raises(InvalidDataError) as info:
        list(iter_records("belle", path))
    assert str(info.value) == (f"{path}:2: conversations: missing (belle records have id, conversations: "
                               "[{from, value}]) (this looks like 'alpaca' data: use source 'alpaca')")
    with pytest.raises(InvalidDataError, match="this looks like 'preference' data"):
        list(iter_records("alpaca", FIXTURES / "preference_good.jsonl"))
    with pytest.raises(InvalidDataError, match="this looks like 'text' data"):
        list(iter_records("sharegpt", FIXTURES / "text_good.jsonl"))


def test_no_suggestion_after_good_records():
    # A bad record in the middle of a file of the right source is a bad record, not a wrong source.
    with pytest.raises(InvalidDataError) as info:
        list(iter_records("belle", FIXTURES / "belle_bad.jsonl"))
    assert info.value.hint is None


def test_missing_file_is_one_line_naming_it(tmp_path):
    missing = tmp_path / "nope.jsonl"
    with pytest.raises(DumaError) as info:
        # even a good first file is not read when a later one is missing
        list(iter_records("belle", [FIXTURES / "belle_good.jsonl", missing]))
    assert str(info.value) == f"data file {missing} does not exist (check the path)"
    with pytest.raises(DumaError, match="is a folder"):
        list(iter_records("belle", tmp_path))


def test_unknown_source_lists_the_known_ones():
    with pytest.raises(DumaError, match="unknown data source 'nope'.*belle"):
        list(iter_records("nope", FIXTURES / "belle_good.jsonl"))


def test_several_files_in_order():
    stats = ReadStats()
    records = list(iter_records("belle", [FIXTURES / "belle_good.jsonl", FIXTURES / "belle_good.jsonl"], stats=stats))
    assert len(records) == 6 and stats.files == 2 and records[0] == records[3]


# ----------------------------------------------------------------------------- streaming

def _belle(i: int) -> dict:
    # Brackets, commas, escaped quotes and newlines inside strings must not confuse the reader.
    return {"id": f"c{i}", "conversations": [
        {"from": "human", "value": f'question {i}: "quoted", [bracket] {{brace}}\nsecond line'},
        {"from": "assistant", "value": f"answer {i} " + "x" * (i % 37)}]}


def test_json_list_streams_in_small_chunks_with_item_lines(tmp_path, monkeypatch):
    monkeypatch.setattr(data, "_CHUNK_CHARS", 64)  # items straddle many chunk borders
    path = tmp_path / "big.json"
    items = [_belle(i) for i in range(300)]
    path.write_text("[\n" + ",\n".join(json.dumps(x, indent=1) for x in items) + "\n]\n", encoding="utf-8")
    got = located("belle", path)
    assert [g.record.id for g in got] == [f"c{i}" for i in range(300)]
    lines_per_item = json.dumps(items[0], indent=1).count("\n") + 1
    assert [g.line for g in got[:3]] == [2, 2 + lines_per_item, 2 + 2 * lines_per_item]


def test_json_list_is_read_lazily_and_a_broken_tail_is_reported_at_its_line(tmp_path, monkeypatch):
    monkeypatch.setattr(data, "_CHUNK_CHARS", 128)
    path = tmp_path / "broken.json"
    body = ",\n".join(json.dumps(_belle(i)) for i in range(50))
    path.write_text("[\n" + body + ',\n{"id": "c50", "conversations": [\n', encoding="utf-8")
    # the first records arrive before the reader reaches the broken end
    assert [r.id for r in itertools.islice(iter_records("belle", path), 3)] == ["c0", "c1", "c2"]
    with pytest.raises(InvalidDataError) as info:
        list(iter_records("belle", path))
    assert info.value.invalid.line == 52
    assert info.value.invalid.field == "json"


def test_json_that_is_not_a_list_of_records(tmp_path):
    path = tmp_path / "x.json"
    path.write_text('[{"text": "a"} {"text": "b"}]', encoding="utf-8")
    with pytest.raises(InvalidDataError, match=r"x.json:1: json: expected ',' or '\]' between list items"):
        list(iter_records("text", path))
    path.write_text("[]", encoding="utf-8")
    assert list(iter_records("text", path)) == []


def test_jsonl_streams_line_by_line(tmp_path):
    path = tmp_path / "big.jsonl"
    lines = [json.dumps(_belle(i)) for i in range(2000)] + ["{broken"]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    first = list(itertools.islice(iter_records("belle", path), 5))
    assert [r.id for r in first] == ["c0", "c1", "c2", "c3", "c4"]
    stats = ReadStats()
    assert sum(1 for _ in iter_records("belle", path, skip_invalid=True, stats=stats)) == 2000
    assert stats.invalid == 1


def test_jsonl_named_json_is_detected(tmp_path):
    path = tmp_path / "belle_style.json"  # BELLE ships JSON Lines under a .json name
    path.write_text(json.dumps(_belle(1)) + "\n" + json.dumps(_belle(2)) + "\n", encoding="utf-8")
    assert [r.id for r in iter_records("belle", path)] == ["c1", "c2"]


def test_parquet_rows_in_batches(tmp_path):
    pa = pytest.importorskip("pyarrow")
    pq = pytest.importorskip("pyarrow.parquet")
    rows = [_belle(i) for i in range(2500)]
    rows[1700]["conversations"][1]["from"] = "bot"
    path = tmp_path / "d.parquet"
    pq.write_table(pa.Table.from_pylist(rows), str(path), row_group_size=1000)
    stats = ReadStats()
    got = located("belle", path, skip_invalid=True, stats=stats)
    assert len(got) == 2499 and stats.invalid == 1
    with pytest.raises(InvalidDataError) as info:
        list(iter_records("belle", path))
    assert str(info.value).startswith(f"{path}:1701: conversations.1.from:")


# ----------------------------------------------------------------------------- duma logs, seed tasks

def test_duma_logs_become_conversations(tmp_path):
    from duma.logstore import LogStore

    db = tmp_path / "logs.db"
    store = LogStore(db)
    first = store.new_conversation(model="m")
    store.add_message(first, Message(role="user", content="hi"))
    store.add_message(first, Message(role="assistant", content="hello"))
    store.add_message(first, Message(role="user", content="bye"))  # unanswered: trimmed
    unanswered = store.new_conversation()
    store.add_message(unanswered, Message(role="user", content="anyone?"))
    third = store.new_conversation()
    store.add_message(third, Message(role="system", content="be brief"))
    store.add_message(third, Message(role="user", content="2+2"))
    store.add_message(third, Message(role="assistant", content="4"))
    store.new_conversation()  # empty
    store.close()

    items = located("duma-logs", db)
    assert [i.record.id for i in items] == [first, third]
    assert [i.line for i in items] == [1, 3]
    assert items[0].record.messages == msgs(("user", "hi"), ("assistant", "hello"))
    assert items[1].record.messages == msgs(("system", "be brief"), ("user", "2+2"), ("assistant", "4"))
    assert data.detect_source(db) == "duma-logs"


def test_duma_logs_rejects_other_files(tmp_path):
    with pytest.raises(DumaError, match="not a duma chat log"):
        list(iter_records("duma-logs", FIXTURES / "belle_good.jsonl"))


@pytest.mark.skipif(not SEED_TASKS.exists(), reason="BELLE seed tasks not available")
def test_seed_tasks_real_file():
    stats = ReadStats()
    records = list(iter_records("seed-tasks", SEED_TASKS, stats=stats))
    assert len(records) == stats.records >= 100 and stats.invalid == 0
    assert records[0].id == "seed_task_8" and records[0].category == "english_haiku_generation"
    assert records[0].messages[0].content.startswith("请以下面词语为主题写一首诗\n")
    assert data.detect_source(SEED_TASKS) == "seed-tasks"


# ----------------------------------------------------------------------------- detection, writers

@pytest.mark.parametrize(("name", "source"), [
    ("belle_good.jsonl", "belle"), ("alpaca_good.json", "alpaca"), ("sharegpt_good.jsonl", "belle"),
    ("text_good.jsonl", "text"), ("text_good.txt", "text"), ("preference_good.jsonl", "preference"),
])
def test_detect_source(name, source):
    # sharegpt's first record is also valid BELLE (BELLE accepts 'gpt'): both read it the same way
    assert data.detect_source(FIXTURES / name) == source


def test_record_writer_formats(tmp_path):
    items = [{"text": "a"}, {"text": "b"}]
    for suffix in (".jsonl", ".json"):
        with data.RecordWriter(tmp_path / f"out{suffix}") as writer:
            writer.write_all(items)
        assert writer.count == 2
        assert list(iter_records("text", tmp_path / f"out{suffix}")) == [TextRecord(text="a"), TextRecord(text="b")]
    assert json.loads((tmp_path / "out.json").read_text()) == items


def test_flat_text():
    conv = Conversation(messages=msgs(("user", "q"), ("assistant", "a")))
    assert data.flat_text(conv) == "user: q\nassistant: a"
    assert data.flat_text(PreferenceRecord(prompt="p", chosen="c", rejected="r")) == "p\nc\nr"


def test_a_single_pretty_printed_object_is_explained(tmp_path):
    path = tmp_path / "one.json"
    path.write_text('{\n  "text": "a"\n}\n', encoding="utf-8")
    with pytest.raises(InvalidDataError) as info:
        list(iter_records("text", path))
    assert str(info.value) == (f"{path}:1: json: not valid JSON (Expecting property name enclosed in double quotes"
                               " at column 2); a data file holds one JSON object per line, or a JSON list")


def test_a_chat_log_read_as_json_points_to_duma_logs(tmp_path):
    from duma.logstore import LogStore

    db = tmp_path / "logs.db"
    LogStore(db).close()
    with pytest.raises(DumaError, match="read a duma chat log with source 'duma-logs'"):
        list(iter_records("belle", db))


def test_record_writer_never_leaves_a_half_written_file(tmp_path):
    out = tmp_path / "out.jsonl"
    out.write_text('{"text": "old"}\n')
    try:
        with data.RecordWriter(out) as writer:
            writer.write({"text": "new"})
            assert out.read_text() == '{"text": "old"}\n'  # nothing replaced while writing
            raise RuntimeError("killed half way")
    except RuntimeError:
        pass
    assert out.read_text() == '{"text": "old"}\n' and sorted(p.name for p in tmp_path.iterdir()) == ["out.jsonl"]
    with data.RecordWriter(out) as writer:
        writer.write({"text": "new"})
    assert out.read_text() == '{"text": "new"}\n'
