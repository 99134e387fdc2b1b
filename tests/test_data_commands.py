"""``duma data``: validate, stats (+ histogram), convert, dedup and split."""

from __future__ import annotations

import json
import random
import shutil
from pathlib import Path

import pytest

from duma.data import Conversation, iter_records
from duma.plugins.data_commands import (
    DedupCounts,
    NearDuplicateFilter,
    choose_eval,
    dedup_records,
    normalise_for_dedup,
    shingles,
)
from duma.testing import run_cli
from duma.types import Message

FIXTURES = Path(__file__).parent / "data" / "train"
SEED_TASKS = Path(__file__).resolve().parents[2] / "shared" / "data" / "belle" / "zh_seed_tasks.json"


def run(*args: str) -> tuple[int, str, str]:
    """The duma CLI in-process: (exit code, stdout, stderr)."""
    return run_cli(args)


# ----------------------------------------------------------------------------- validate

def test_validate_good_file_positional_source(capsys):
    code, out, _ = run("data", "validate", "belle", str(FIXTURES / "belle_good.jsonl"))
    assert code == 0
    assert out.strip() == "belle: 3 valid records in 1 file"


def test_validate_format_option_and_several_files(capsys):
    code, out, _ = run("data", "validate", "-f", "alpaca", str(FIXTURES / "alpaca_good.json"),
                       str(FIXTURES / "alpaca_good.json"))
    assert code == 0 and out.strip() == "alpaca: 6 valid records in 2 files"


def test_validate_bad_file_exits_1_with_one_line(capsys):
    path = FIXTURES / "belle_bad.jsonl"
    code, out, err = run("data", "validate", "belle", str(path))
    assert code == 1
    assert err.strip() == (f"Error: {path}:2: conversations.1.from: must be one of 'human', 'assistant', "
                           "'gpt', 'user' or 'system' (got 'bot')")


def test_validate_wrong_source_suggests_the_right_one(capsys):
    code, _, err = run("data", "validate", "--format", "belle", str(FIXTURES / "alpaca_good.json"))
    assert code == 1 and "use source 'alpaca'" in err and len(err.strip().splitlines()) == 1


def test_validate_skip_invalid_reports_counts_and_rejects(capsys, tmp_path):
    rejects = tmp_path / "rej.jsonl"
    code, out, _ = run("data", "validate", "belle", str(FIXTURES / "belle_bad.jsonl"),
                       "--skip-invalid", "--rejects", str(rejects))
    assert code == 0
    assert out.splitlines() == ["belle: 2 valid records in 1 file, 5 invalid", f"rejects written to {rejects}"]
    assert len(rejects.read_text(encoding="utf-8").splitlines()) == 5


def _fixture_copy(name: str, folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    return Path(shutil.copy(FIXTURES / name, folder / name))


@pytest.mark.parametrize("command", [
    ["validate", "-f", "text"], ["stats", "-f", "text"], ["convert", "--to", "jsonl"],
    ["dedup", "-f", "text"], ["split", "-f", "text"]])
def test_skip_invalid_writes_rejects_beside_the_input_not_in_cwd(capsys, tmp_path, monkeypatch, command):
    cwd, data = tmp_path / "cwd", tmp_path / "data"
    cwd.mkdir()
    monkeypatch.chdir(cwd)
    src = _fixture_copy("text_bad.jsonl", data)
    name, *options = command
    args = {"convert": [str(src), str(tmp_path / "out" / "o.jsonl")],
            "dedup": [str(src), "--out", str(tmp_path / "out" / "o.jsonl")],
            "split": [str(src), "--out-dir", str(tmp_path / "out")]}.get(name, [str(src)])
    code, out, err = run("data", name, *args, *options, "--skip-invalid")
    assert code == 0, err
    rejects = data / "text_bad.rejects.jsonl"
    assert rejects.is_file() and str(rejects) in out
    assert list(cwd.iterdir()) == []


def test_split_rejects_option_is_written_once(capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    src = _fixture_copy("text_bad.jsonl", tmp_path / "data")
    rejects = tmp_path / "r" / "bad.jsonl"
    code, out, _ = run("data", "split", str(src), "--skip-invalid", "--rejects", str(rejects),
                       "--out-dir", str(tmp_path / "out"))
    assert code == 0 and f"rejects written to {rejects}" in out
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data", "out", "r"]
    assert sorted(p.name for p in (tmp_path / "data").iterdir()) == ["text_bad.jsonl"]


def test_validate_missing_file(capsys, tmp_path):
    code, _, err = run("data", "validate", "belle", str(tmp_path / "nope.jsonl"))
    assert code == 1 and err.strip() == f"Error: data file {tmp_path / 'nope.jsonl'} does not exist (check the path)"


@pytest.mark.skipif(not SEED_TASKS.exists(), reason="BELLE seed tasks not available")
def test_validate_real_belle_seed_tasks(capsys):
    code, out, _ = run("data", "validate", "seed-tasks", str(SEED_TASKS))
    assert code == 0 and out.startswith("seed-tasks: ") and "invalid" not in out


def test_sources_lists_builtins(capsys):
    code, out, _ = run("data", "sources", "--json")
    names = {row["name"]: row for row in json.loads(out)}
    assert code == 0
    assert {"belle", "alpaca", "sharegpt", "text", "preference", "seed-tasks", "duma-logs"} <= set(names)
    assert names["duma-logs"]["writes"] is False and names["belle"]["writes"] is True


# ----------------------------------------------------------------------------- convert

def test_convert_round_trip_belle_sharegpt_belle(capsys, tmp_path):
    original = list(iter_records("belle", FIXTURES / "belle_good.jsonl"))
    share, back = tmp_path / "s.json", tmp_path / "b.jsonl"
    code, out, _ = run("data", "convert", str(FIXTURES / "belle_good.jsonl"), str(share),
                       "--from", "belle", "--to", "sharegpt")
    assert code == 0 and out.startswith("wrote 3 records")
    assert isinstance(json.loads(share.read_text(encoding="utf-8")), list)
    assert json.loads(share.read_text(encoding="utf-8"))[0]["conversations"][1]["from"] == "gpt"
    code, _, _ = run("data", "convert", str(share), str(back), "--from", "sharegpt", "--to", "belle")
    assert code == 0
    assert list(iter_records("belle", back)) == original


def test_convert_alpaca_round_trip_keeps_multi_turn(capsys, tmp_path):
    original = list(iter_records("alpaca", FIXTURES / "alpaca_good.json"))
    belle, alpaca = tmp_path / "b.jsonl", tmp_path / "a.jsonl"
    assert run("data", "convert", str(FIXTURES / "alpaca_good.json"), str(belle), "--to", "belle")[0] == 0
    assert run("data", "convert", str(belle), str(alpaca), "--to", "alpaca")[0] == 0
    assert list(iter_records("alpaca", alpaca)) == original


def test_convert_to_native_jsonl_reads_back_with_sharegpt(capsys, tmp_path):
    out = tmp_path / "native.jsonl"
    assert run("data", "convert", str(FIXTURES / "belle_good.jsonl"), str(out), "--to", "jsonl")[0] == 0
    first = json.loads(out.read_text(encoding="utf-8").splitlines()[0])
    assert first == {"id": "b1", "messages": [{"role": "user", "content": "What is the capital of France?"},
                                              {"role": "assistant", "content": "Paris."}]}
    assert list(iter_records("sharegpt", out)) == list(iter_records("belle", FIXTURES / "belle_good.jsonl"))


def test_convert_parquet(capsys, tmp_path):
    pytest.importorskip("pyarrow")
    out = tmp_path / "b.parquet"
    assert run("data", "convert", str(FIXTURES / "belle_good.jsonl"), str(out), "--to", "belle")[0] == 0
    assert list(iter_records("belle", out)) == list(iter_records("belle", FIXTURES / "belle_good.jsonl"))


def test_convert_kind_mismatch_is_one_line(capsys, tmp_path):
    code, _, err = run("data", "convert", str(FIXTURES / "belle_good.jsonl"), str(tmp_path / "t.jsonl"),
                       "--to", "text")
    assert code == 1 and "cannot hold Conversation records" in err


# ----------------------------------------------------------------------------- dedup

WORDS = ("alpha bravo charlie delta echo foxtrot golf hotel india juliet kilo lima mike november oscar "
         "papa quebec romeo sierra tango uniform victor whiskey xray yankee zulu").split()


def _sentence(rng: random.Random, n: int = 60) -> str:
    return " ".join(rng.choice(WORDS) for _ in range(n))


def _crafted_dedup_file(path: Path) -> None:
    """10 distinct conversations + 3 exact duplicates (case/space variants) + 2 near duplicates."""
    rng = random.Random(7)
    answers = [_sentence(rng) for _ in range(10)]
    rows = [{"instruction": f"Question {i}", "input": "", "output": a} for i, a in enumerate(answers)]
    rows.append({"instruction": "question 3", "input": "", "output": answers[3].upper()})
    rows.append({"instruction": "Question  5", "input": "", "output": "  " + answers[5].replace(" ", "   ")})
    rows.append(dict(rows[0]))
    words = answers[7].split()
    words[30] = "changed"  # one word of sixty
    rows.append({"instruction": "Question 7", "input": "", "output": " ".join(words)})
    rows.append({"instruction": "Question 8", "input": "", "output": answers[8] + " extra"})
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n", encoding="utf-8")


def test_dedup_counts_exact_and_near(capsys, tmp_path):
    src, out = tmp_path / "d.jsonl", tmp_path / "kept.jsonl"
    _crafted_dedup_file(src)
    code, stdout, _ = run("data", "dedup", str(src), "-f", "alpaca", "--out", str(out))
    assert code == 0
    assert stdout.strip() == f"15 records: removed 3 exact and 2 near duplicates, kept 10 -> {out}"
    kept = list(iter_records("alpaca", out))
    assert [r.messages[0].content for r in kept] == [f"Question {i}" for i in range(10)]


def test_dedup_exact_only_and_strict_threshold(capsys, tmp_path):
    src = tmp_path / "d.jsonl"
    _crafted_dedup_file(src)
    _, stdout, _ = run("data", "dedup", str(src), "--out", str(tmp_path / "a.jsonl"), "--exact-only")
    assert "removed 3 exact and 0 near" in stdout
    _, stdout, _ = run("data", "dedup", str(src), "--out", str(tmp_path / "b.jsonl"), "--threshold", "1.0")
    assert "removed 3 exact and 0 near" in stdout


def test_minhash_estimates_jaccard():
    near_filter = NearDuplicateFilter(threshold=0.5, num_perm=256, shingle=5)
    rng = random.Random(3)
    text = normalise_for_dedup(_sentence(rng, 200))
    other = normalise_for_dedup(_sentence(rng, 200))
    exact = len(shingles(text, 5) & shingles(other, 5)) / len(shingles(text, 5) | shingles(other, 5))
    assert near_filter.signature(text).jaccard(near_filter.signature(text)) == 1.0
    assert abs(near_filter.signature(text).jaccard(near_filter.signature(other)) - exact) < 0.05
    assert near_filter.add_if_new(text) and not near_filter.add_if_new(text) and near_filter.add_if_new(other)


def _with_words_changed(text: str, positions: list[int]) -> str:
    words = text.split()
    for i in positions:
        words[i] = "changed"
    return " ".join(words)


def test_near_duplicates_found_and_distinct_texts_kept():
    rng = random.Random(11)
    originals = [_sentence(rng, 80) for _ in range(20)]
    variants = [_with_words_changed(text, [10, 40, 70]) for text in originals]  # 3 words of 80
    conversations = [Conversation(messages=[Message(role="user", content="Summarise this."),
                                            Message(role="assistant", content=text)])
                     for text in originals + variants]
    counts = DedupCounts()
    kept = list(dedup_records(conversations, counts))
    assert kept == conversations[:20]  # the first of each near-duplicate pair, in order
    assert (counts.exact, counts.near, counts.kept) == (0, 20, 20)


def test_near_duplicate_results_do_not_depend_on_the_run(capsys, tmp_path):
    src = tmp_path / "d.jsonl"
    _crafted_dedup_file(src)
    for name in ("one", "two"):
        assert run("data", "dedup", str(src), "--out", str(tmp_path / f"{name}.jsonl"), "--threshold", "0.6",
                   "--num-perm", "16")[0] == 0
    assert (tmp_path / "one.jsonl").read_bytes() == (tmp_path / "two.jsonl").read_bytes()


def test_high_thresholds_and_few_permutations_work():
    """Where one LSH band would be best (datasketch takes two or more)."""
    rng = random.Random(5)
    text, other = normalise_for_dedup(_sentence(rng)), normalise_for_dedup(_sentence(rng))
    for threshold, num_perm in ((1.0, 128), (0.99, 8), (0.8, 8)):
        near_filter = NearDuplicateFilter(threshold=threshold, num_perm=num_perm)
        assert near_filter.add_if_new(text) and not near_filter.add_if_new(text) and near_filter.add_if_new(other)


def test_dedup_records_api():
    conv = Conversation(messages=[Message(role="user", content="Hi"), Message(role="assistant", content="Hello")])
    counts = DedupCounts()
    assert list(dedup_records([conv, conv, conv], counts)) == [conv]
    assert (counts.seen, counts.exact, counts.near, counts.kept) == (3, 2, 0, 1)


# ----------------------------------------------------------------------------- split

def _categorised_file(path: Path) -> None:
    rows = [{"id": f"r{i}", "category": "a" if i < 60 else "b", "conversations": [
        {"from": "human", "value": f"q{i}"}, {"from": "assistant", "value": f"a{i}"}]} for i in range(100)]
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n", encoding="utf-8")


def _ids(path: Path) -> list[str]:
    return [r.id for r in iter_records("belle", path)]


def test_split_is_deterministic_with_the_ratio(capsys, tmp_path):
    src = tmp_path / "all.jsonl"
    _categorised_file(src)
    for name in ("one", "two"):
        code, out, _ = run("data", "split", str(src), "--eval-ratio", "0.1", "--seed", "0",
                           "--out-dir", str(tmp_path / name))
        assert code == 0 and "90 train" in out and "10 eval" in out
    assert _ids(tmp_path / "one" / "eval.jsonl") == _ids(tmp_path / "two" / "eval.jsonl")
    train, evals = _ids(tmp_path / "one" / "train.jsonl"), _ids(tmp_path / "one" / "eval.jsonl")
    assert sorted(train + evals, key=lambda s: int(s[1:])) == [f"r{i}" for i in range(100)]
    assert train == sorted(train, key=lambda s: int(s[1:]))  # file order kept
    run("data", "split", str(src), "--eval-ratio", "0.1", "--seed", "1", "--out-dir", str(tmp_path / "three"))
    assert _ids(tmp_path / "three" / "eval.jsonl") != evals


def test_split_stratified_by_category(capsys, tmp_path):
    src = tmp_path / "all.jsonl"
    _categorised_file(src)
    code, _, _ = run("data", "split", str(src), "-f", "belle", "--eval-ratio", "0.2", "--by", "category",
                     "--out-dir", str(tmp_path / "s"))
    assert code == 0
    evals = list(iter_records("belle", tmp_path / "s" / "eval.jsonl"))
    assert sum(r.category == "a" for r in evals) == 12 and sum(r.category == "b" for r in evals) == 8


def test_choose_eval_small_strata():
    assert choose_eval([None] * 10, 0.0, 0) == set()
    assert len(choose_eval(["x", "x", "y"], 0.05, 0)) == 1  # two or more records: at least one
    assert choose_eval(["x"] * 5, 0.4, 3) == choose_eval(["x"] * 5, 0.4, 3)


def test_choose_eval_keeps_groups_on_one_side():
    groups = [i % 7 for i in range(70)]  # 7 distinct records, 10 copies each
    for seed in range(5):
        chosen = choose_eval([None] * 70, 0.3, seed, groups=groups)
        assert len(chosen) == 20  # two whole groups: 30% of 70 rounds to 21, a third group overshoots
        assert {groups[i] for i in chosen}.isdisjoint({groups[i] for i in range(70) if i not in chosen})
    assert choose_eval([None] * 70, 0.3, 1, groups=groups) == choose_eval([None] * 70, 0.3, 1, groups=groups)
    assert choose_eval(["a", "a"], 0.5, 0, groups=[1, 1]) == set()  # one record twice: cannot split


def test_split_keeps_repeated_records_out_of_eval(capsys, tmp_path):
    from duma.data import flat_text

    rng = random.Random(5)
    rows, distinct = [], set()
    for i in range(120):
        q = rng.randrange(40)  # at most 40 distinct questions, most of them repeated
        distinct.add(q)
        spacing = " " * rng.randrange(1, 3)  # the same after normalisation
        question = f"Question{spacing}{q}" if rng.random() < 0.5 else f"QUESTION {q}"
        rows.append({"id": f"r{i}", "conversations": [
            {"from": "human", "value": question}, {"from": "assistant", "value": f"Answer {q}."}]})
    src = tmp_path / "repeated.jsonl"
    src.write_text("\n".join(json.dumps(r) for r in rows) + "\n", encoding="utf-8")
    for seed in ("0", "1"):
        out = tmp_path / f"split-{seed}"
        code, stdout, _ = run("data", "split", str(src), "--eval-ratio", "0.2", "--seed", seed, "--out-dir", str(out))
        assert code == 0, stdout
        train = {normalise_for_dedup(flat_text(r)) for r in iter_records("belle", out / "train.jsonl")}
        evals = [normalise_for_dedup(flat_text(r)) for r in iter_records("belle", out / "eval.jsonl")]
        assert 18 <= len(evals) <= 24 and not train & set(evals)
        assert len(train) + len(set(evals)) == len(distinct)
    again = tmp_path / "again"
    run("data", "split", str(src), "--eval-ratio", "0.2", "--seed", "1", "--out-dir", str(again))
    assert (again / "eval.jsonl").read_text() == (tmp_path / "split-1" / "eval.jsonl").read_text()


# ----------------------------------------------------------------------------- stats

def test_stats_counts(capsys):
    code, out, _ = run("data", "stats", str(FIXTURES / "alpaca_good.json"), "--json")
    summary = json.loads(out)
    assert code == 0
    assert summary["source"] == "alpaca" and summary["records"] == 3
    assert summary["turns"] == 8 and summary["turns_by_role"] == {"user": 4, "assistant": 4}
    assert summary["multi_turn_conversations"] == 1
    assert summary["categories"] == {"translation": 1, "(none)": 1, "generation": 1}
    assert summary["characters"] == sum(len(m.content) for r in iter_records("alpaca", FIXTURES / "alpaca_good.json")
                                        for m in r.messages)


def test_stats_token_histogram_png(capsys, tmp_path, tiny_model):
    png = tmp_path / "hist.png"
    code, out, _ = run("data", "stats", str(FIXTURES / "belle_good.jsonl"), "-f", "belle",
                       "--tokenizer", str(tiny_model), "--out", str(png))
    assert code == 0, out
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "tokens      total" in out and f"histogram   {png}" in out


def test_stats_token_histogram_defaults_beside_the_input(capsys, tmp_path, monkeypatch, tiny_model):
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    monkeypatch.chdir(cwd)
    src = _fixture_copy("belle_good.jsonl", tmp_path / "data")
    code, out, _ = run("data", "stats", str(src), "--tokenizer", str(tiny_model))
    png = tmp_path / "data" / "belle_good.token_lengths.png"
    assert code == 0 and png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert f"histogram   {png}" in out and list(cwd.iterdir()) == []
    assert [p.name for p in png.parent.iterdir() if p.name.startswith(".")] == []  # no temporary file left


def test_stats_char_histogram_without_tokenizer(capsys, tmp_path):
    png = tmp_path / "chars.png"
    code, out, _ = run("data", "stats", str(FIXTURES / "text_good.txt"), "--out", str(png))
    assert code == 0 and png.exists() and "records     3" in out
