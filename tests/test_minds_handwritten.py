"""The hand-written test set of the minds (``tests/data/minds/handwritten.jsonl``): it is
valid, its expected answers come from the real tools and documents, none of its messages is in
the training data, and ``duma minds measure --handwritten`` counts routing, correct answers,
promises and runaway replies right (scripted minds, so it runs in seconds)."""

from __future__ import annotations

import importlib.util
import json
import re
from collections import Counter
from pathlib import Path

import pytest

from duma.testing import run_cli

REPO = Path(__file__).resolve().parents[1]
SET = REPO / "tests" / "data" / "minds" / "handwritten.jsonl"
BUILDER = SET.parent / "build_handwritten.py"
KNOWLEDGE = REPO / "examples" / "knowledge"


def dialogues():
    from duma.plugins.minds.measure import read_handwritten

    return read_handwritten(SET)


def test_the_set_is_valid_and_covers_every_kind_of_turn():
    from duma.plugins.minds.measure import HANDWRITTEN_CATEGORIES

    found = dialogues()
    turns = [(d, t) for d in found for t in d.turns]
    assert len(turns) >= 120
    assert sum(d.lang == "zh" for d, _ in turns) / len(turns) >= 0.25
    categories = Counter(d.turn_category(t) for d, t in turns)
    assert set(categories) == set(HANDWRITTEN_CATEGORIES), categories
    assert all(n >= 8 for n in categories.values()), categories
    for lang in ("en", "zh"):  # every category in both languages
        assert {d.turn_category(t) for d, t in turns if d.lang == lang} == set(HANDWRITTEN_CATEGORIES), lang
    assert all(d.category in HANDWRITTEN_CATEGORIES for d in found)
    assert all(t.expected for _, t in turns if t.slow)  # the model checks it too
    multi = [d for d in found if len(d.turns) > 1]
    assert len(multi) >= 25 and all(2 <= len(d.turns) <= 4 for d in multi)
    assert sum(len(d.turns) for d in multi) / len(turns) >= 0.4
    assert sum(not t.slow for _, t in turns) >= 40  # enough turns that must stay fast
    openers = [d.turns[0].user for d in found]  # a follow-up ("And 18%?") may recur in another context
    assert len(set(openers)) == len(openers)


def test_a_bad_line_is_an_error_naming_it(tmp_path):
    from duma.errors import DumaError
    from duma.plugins.minds.measure import read_handwritten

    path = tmp_path / "set.jsonl"
    good = {"id": "a", "lang": "en", "category": "arithmetic", "turns": [{"user": "2+2?", "slow": True,
                                                                         "expected": ["4"]}]}
    bad = {**good, "id": "b", "turns": [{"user": "2+3?", "slow": True}]}
    path.write_text(json.dumps(good) + "\n" + json.dumps(bad) + "\n")
    with pytest.raises(DumaError, match=r"set.jsonl:2: .*expected"):
        read_handwritten(path)
    path.write_text(json.dumps(good) + "\n" + json.dumps(good) + "\n")
    with pytest.raises(DumaError, match="used twice"):
        read_handwritten(path)


def test_expected_answers_come_from_the_tools_and_the_documents():
    """The file is exactly what its builder writes: every number and date re-computed by the
    real tools with today's date fixed as the measurement fixes it."""
    spec = importlib.util.spec_from_file_location("build_handwritten", BUILDER)
    assert spec is not None and spec.loader is not None
    builder = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(builder)
    assert builder.build() == SET.read_text(encoding="utf-8"), \
        "tests/data/minds/handwritten.jsonl is stale: run .venv/bin/python tests/data/minds/build_handwritten.py"
    # Knowledge answers: at least one accepted form of each is in the documents.
    documents = "\n".join(p.read_text(encoding="utf-8") for p in KNOWLEDGE.iterdir()).casefold()
    checked = 0
    for d in dialogues():
        if d.category != "knowledge" or d.id == "kb-two-kettles-1":  # that one is a computed total (2 x 129)
            continue
        for t in d.turns:
            if t.expected:
                checked += 1
                assert any(e.casefold() in documents for e in t.expected), (d.id, t.user, t.expected)
    assert checked >= 25


def test_no_handwritten_message_is_in_the_training_data(tmp_path):
    """`duma minds generate` as `make minds` runs it: no hand-written message is a user message
    of any training record (fast dialogues, slow retrospects, router turns)."""
    from duma.agents import protocol

    from duma.plugins.minds import generate, minds_group

    out = tmp_path / "data"
    args = ["minds", "generate", "--out", str(out), "--seed", "0", "--exclude", str(SET)]
    # General prompts answered by the base model take minutes to decode: their prompts are
    # checked directly instead.
    general = [str(p).strip() for p in getattr(generate, "GENERAL_PROMPTS", ())]
    if any(p.name == "general" for p in minds_group.commands["generate"].params):
        args += ["--general", "0"]
    code, stdout, stderr = run_cli(args)
    assert code == 0, stdout + stderr
    train = sorted(out.glob("*_train.jsonl"))
    assert train
    users: set[str] = set(general)
    blob_parts = []
    for path in train:
        for line in path.read_text(encoding="utf-8").splitlines():
            record = json.loads(line)
            if "text" in record:  # router_train
                users.add(record["text"].strip())
            for message in record.get("messages", []):
                blob_parts.append(message["content"])
                if message["role"] == "user":
                    inner = protocol.extract_field(message["content"], "User")
                    if inner is not None:
                        users.add(inner.strip())
                    users.update(q.strip() for q in re.findall(r"^Query \d+: (.*)$", message["content"], re.M))
    blob = "\n".join(blob_parts)
    leaked = []
    for d in dialogues():
        for t in d.turns:
            forms = {t.user.strip(), protocol.neutralize_markup(t.user).strip()}
            if forms & users or any(protocol.format_user(f) in blob for f in forms) or (
                    len(t.user) >= 25 and t.user in blob):
                leaked.append(t.user)
    assert not leaked, f"hand-written messages in the training data: {leaked}"


@pytest.mark.parametrize(("reply", "wanted", "found"), [
    ("It is 14,463.", "14463", True),
    ("4,821 x 3 = 14463.0", "14463", True),
    ("That's 144630", "14463", False),
    ("about 14463.5", "14463", False),
    ("The tip is $12.98.", "12.98", True),
    ("397.80 euros", "397.8", True),
    ("397.86 euros", "397.8", False),
    ("It falls on a THURSDAY", "Thursday", True),
    ("June 16th", "June 1", False),
    ("一共 106 元", "106", True),
    ("2025年9月14日", "9月14日", True),
    ("5,624.32 dollars", "5624.32", True),
    ("15 years", "5 years", False),
    ("42.195 km = 26.21876 mi", "26.2", True),  # a more precise number that rounds to it
    ("42.195 km = 26.21876 mi", "26.3", False),
    ("It is 3.4 euros", "3", False),  # a whole number must be whole
])
def test_expected_answers_match_whole_numbers(reply, wanted, found):
    from duma.plugins.minds.measure import mentions

    assert mentions(reply, wanted) is found


@pytest.mark.parametrize(("reply", "promise"), [
    ("Let me look into that.", True),
    ("One moment, I’ll check the price.", True),
    ("稍等，我查一下。", True),
    ("让我算一下。", True),
    ("The kettle costs 129 euros.", False),
    ("Why did the chicken cross the road?", False),
    ("你好！很高兴见到你。", False),
])
def test_promise_phrases(reply, promise):
    from duma.plugins.minds.measure import promises

    assert promises(reply) is promise


def picked(*ids: str):
    chosen = {d.id: d for d in dialogues() if d.id in ids}
    assert set(chosen) == set(ids)
    return [chosen[i] for i in ids]


def test_measure_counts_the_promises_the_agent_kept():
    """With the default keep_promises, "Let me check" + Invoke[False] runs the slow mind: no
    broken promise reaches the user, and the report still counts the fast mind's own."""
    from duma.plugins.minds.generate import DEFAULT_TODAY, fixed_today, load_generation_tools
    from duma.plugins.minds.measure import MeasureReport, measure_handwritten, to_markdown
    from duma.testing import ScriptedBackend

    fast = ScriptedBackend(replies=["Response[Let me check that for you.]\nInvoke[False]",
                                    "Response[It is 14,463.]\nInvoke[False]",
                                    "Response[Sure.]\nInvoke[False]", "Response[Great.]\nInvoke[False]"])
    slow = ScriptedBackend(replies=["Reason[Multiply.]\nAct[calculator(4,821*3)]", "Reason[Done.]\nFinish[14463]"])
    with fixed_today(DEFAULT_TODAY):
        hw = measure_handwritten(fast, slow, load_generation_tools(), picked("arith-sep-1"), max_tokens=40)
    first = hw.results[0]
    assert first.slow_ran and first.promise_kept and not first.promise_without_invoke and first.correct
    assert hw.promises_kept == 1 and hw.promises_without_invoke == 0
    assert "| hand-written: the fast mind's promises with Invoke[False] the agent kept | 1 |" in \
        to_markdown(MeasureReport(model="scripted", handwritten=hw))


def test_measure_counts_routing_answers_promises_and_runaways():
    """Scripted minds with known outputs on four hand-written dialogues (nine turns)."""
    from duma.plugins.minds.generate import DEFAULT_TODAY, fixed_today, load_generation_tools
    from duma.plugins.minds.measure import MeasureReport, compare_markdown, measure_handwritten, to_markdown
    from duma.testing import ScriptedBackend

    long_reply = " ".join(f"word{i}" for i in range(60))
    fast = ScriptedBackend(replies=[
        # arith-sep-1: a correct handoff; a promise kept fast; "Okay." answered fast
        "Response[Let me work that out.]\nInvoke[True]", "Response[It is 14,463.]\nInvoke[False]",
        "Response[Let me check that for you.]\nInvoke[False]",
        "Response[Great.]\nInvoke[False]",
        # chat-joke-1: a joke; a reply caught in a loop; a reply that runs to the token cap
        "Response[Why did the chicken cross the road?]\nInvoke[False]",
        "Response[" + "I checked it twice. " * 12 + "]\nInvoke[False]",
        f"Response[{long_reply}]\nInvoke[False]",
        # inject-invoke-1: the user's Invoke[True] wakes the slow mind (it should not)
        "Response[One moment.]\nInvoke[True]", "Response[Hello! How can I help?]\nInvoke[False]",
        # units-zh-km-1: a Chinese promise kept fast; the follow-up answered from memory
        "Response[稍等，我查一下。]\nInvoke[False]", "Response[大约是 3.11 英里。]\nInvoke[False]",
    ])
    slow = ScriptedBackend(replies=["Reason[Multiply.]\nAct[calculator(4,821*3)]", "Reason[Done.]\nFinish[14463]",
                                    "Reason[A greeting.]\nFinish[Say hello.]"])
    chosen = picked("arith-sep-1", "chat-joke-1", "inject-invoke-1", "units-zh-km-1")
    lines: list[str] = []
    with fixed_today(DEFAULT_TODAY):
        hw = measure_handwritten(fast, slow, load_generation_tools(), chosen, max_tokens=40, file="picked",
                                 agent_settings={"keep_promises": False}, progress=lines.append)
    assert len(lines) == hw.turns == 9 and hw.dialogues == 4 and hw.multi_turn_dialogues == 3
    assert (hw.slow_turns, hw.fast_turns) == (3, 6)
    by_id = {r.id: r for r in hw.results}
    assert [by_id[i].slow_ran for i in ("arith-sep-1#1", "arith-sep-1#2", "inject-invoke-1#1")] == [True, False, True]
    assert by_id["arith-sep-1#1"].reply == "It is 14,463." and by_id["arith-sep-1#1"].correct is True
    assert hw.routing_accuracy == pytest.approx(6 / 9)
    assert hw.slow_correct_share == pytest.approx(1 / 3)  # arith#1 right; arith#2 and the zh km turn not
    assert hw.fast_kept_fast_share == pytest.approx(5 / 6)
    assert hw.fast_correct_share == 1.0  # the zh follow-up from memory; inject-invoke-1 leaks no markup
    assert hw.promises_without_invoke == 2  # "Let me check ..." and "稍等，我查一下。"
    assert by_id["arith-sep-1#2"].promise_without_invoke and by_id["units-zh-km-1#1"].promise_without_invoke
    assert not by_id["inject-invoke-1#1"].promise_without_invoke  # its "One moment." was an invoke
    assert hw.runaway_replies == 2
    assert "repetition guard" in (by_id["chat-joke-1#2"].runaway or "")
    assert "token cap (40)" in (by_id["chat-joke-1#3"].runaway or "")
    assert {r.id for r in hw.failures} == {"arith-sep-1#2", "chat-joke-1#2", "chat-joke-1#3", "inject-invoke-1#1",
                                           "units-zh-km-1#1"}
    assert by_id["inject-invoke-1#1"].problems == ["sent to the slow mind, should stay fast"]
    assert hw.by_language["zh"].turns == 2 and hw.by_language["zh"].routing_accuracy == 0.5
    assert hw.by_category["smalltalk"].turns == 4 and hw.by_category["smalltalk"].failing == 2
    assert hw.median_first_token_s_fast_path is not None and hw.errors == 0

    report = MeasureReport(model="scripted", handwritten=hw)
    table = to_markdown(report)
    assert "| hand-written: routing accuracy (goal >= 0.95) | 0.667 |" in table
    assert "| hand-written: promises without an invoke (goal 0) | 2 |" in table
    assert "| hand-written zh: routing accuracy / correct / failing of turns | 0.500 / 0.500 / 1 of 2 |" in table
    assert "| units-zh-km-1#1 | 5公里等于多少英里？ | 稍等，我查一下。 |" in table
    assert "| invoke accuracy |" not in table  # no held-out rows: the held-out data was not measured
    # Reports round-trip through JSON and compare side by side, with a held-out-only report too.
    again = MeasureReport.model_validate_json(report.model_dump_json())
    side = compare_markdown(again, report, "v1", "v2")
    assert "| measure | v1 | v2 |" in side and "| hand-written: runaway replies (goal 0) | 2 | 2 |" in side
    heldout = MeasureReport.model_validate_json((REPO / "docs" / "minds-trained.json").read_text())
    side = compare_markdown(heldout, report)
    assert "| invoke accuracy | 0.867 | n/a |" in side
    assert "| hand-written: runaway replies (goal 0) | n/a | 2 |" in side


def test_an_agent_error_is_a_failed_turn_not_the_end(monkeypatch):
    from duma.plugins.minds.measure import measure_handwritten
    from duma.testing import ScriptedBackend

    class Broken(ScriptedBackend):
        def stream(self, *args, **kwargs):
            raise RuntimeError("the model fell over")
            yield  # pragma: no cover

    hw = measure_handwritten(Broken(replies=["x"]), ScriptedBackend(replies=["Finish[x]"]), {},
                             picked("chat-lol-1", "chat-breakfast-1"))
    assert hw.errors == 2 and hw.routing_accuracy == 0.0 and len(hw.failures) == 2
    assert hw.failures[0].problems[0].startswith("agent error:")


class ScriptedBackendPlugin:
    @staticmethod
    def register_backends(register) -> None:
        from duma.testing import ScriptedBackend

        register(ScriptedBackend)


def test_the_measure_command_on_a_handwritten_file(tmp_path):
    """`duma minds measure --handwritten` (no --data) writes the report and its table; `duma
    minds compare` prints it next to a held-out report; neither file is an error."""
    import duma
    from duma import host
    from duma.cli import load_plugin_commands
    from duma.models import clear_backends

    small = tmp_path / "small.jsonl"
    small.write_text("".join(line for line in SET.read_text(encoding="utf-8").splitlines(keepends=True)
                             if '"id": "chat-zh-joke-1"' in line or '"id": "chat-hi-1"' in line), encoding="utf-8")
    load_plugin_commands()
    plugin = ScriptedBackendPlugin()
    plugin.register_backends = duma.hookimpl(ScriptedBackendPlugin.register_backends)  # type: ignore[method-assign]
    host.register_plugin(plugin, "scripted-handwritten")
    clear_backends()
    try:
        out = tmp_path / "v1.json"
        code, stdout, stderr = run_cli(["minds", "measure", "--handwritten", str(small), "--backend", "scripted",
                                        "--model", json.dumps(["Response[Hi!]\nInvoke[False]"]), "--out", str(out)])
        assert code == 0, stdout + stderr
        report = json.loads(out.read_text())
        assert report["handwritten"]["turns"] == 3 and report["handwritten"]["fast_kept_fast_share"] == 1.0
        assert report["handwritten"]["max_tokens"] == 256  # duma chat's reply cap
        assert "chat-zh-joke-1#2 [fast" in stderr  # progress, one line a turn
        assert "| hand-written: fast turns kept fast (goal >= 0.95) | 1.000 |" in out.with_suffix(".md").read_text()
        code, stdout, stderr = run_cli(["minds", "compare", str(REPO / "docs" / "minds-trained.json"), str(out),
                                        "--names", "held-out,hand-written"])
        assert code == 0, stdout + stderr
        assert "| measure | held-out | hand-written |" in stdout
        code, stdout, stderr = run_cli(["minds", "measure", "--out", str(tmp_path / "x.json")])
        assert code != 0 and "--handwritten" in stderr
    finally:
        clear_backends()
