"""`duma eval run`: reading sets, scoring, resuming an interrupted run, the CLI end to end."""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from pathlib import Path

import pytest
from click.testing import CliRunner

import duma
from duma import host
from duma.backend import Backend
from duma.cli import cli, load_plugin_commands
from duma.errors import DumaError
from duma.plugins.evaluation.builtin_judges import ContainsJudge, LLMJudge, NumericJudge
from duma.plugins.evaluation.dataset import read_eval_set
from duma.plugins.evaluation.report import ScoredItem, score_items
from duma.plugins.evaluation.runner import ANSWERS_FILE, Answer, run_judged_eval
from duma.testing import ScriptedBackend
from duma.types import GenerationChunk, Message

DATA = Path(__file__).parent / "data" / "eval"
BELLE = Path(__file__).resolve().parents[2] / "shared" / "data" / "belle"


def load_records_json(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


# --- reading sets -------------------------------------------------------------------------

def test_read_eval_set_normalises_classes_and_gives_stable_ids():
    items = read_eval_set(DATA / "small_set.jsonl")
    assert [i.id for i in items] == ["q1", "q2", "q3", "q4", "q5", "q6"]
    assert [i.klass for i in items] == ["math", "classification", "generation", "closed qa", "colours quiz", "math"]
    math_only = read_eval_set(DATA / "small_set.jsonl", classes=["MATH"], limit=5)
    assert [i.id for i in math_only] == ["q1", "q6"]  # ids keep their place in the file
    assert [i.id for i in read_eval_set(DATA / "small_set.jsonl", limit=2)] == ["q1", "q2"]


def test_read_eval_set_accepts_a_json_list(tmp_path):
    path = tmp_path / "set.json"
    path.write_text(json.dumps([{"question": "a?", "std_answer": None, "class": "Open QA", "id": 7}]))
    [item] = read_eval_set(path)
    assert item.id == "7" and item.std_answer == "" and item.klass == "open qa"


def test_bad_sets_are_one_line_errors(tmp_path):
    with pytest.raises(DumaError, match=r"bad_set.jsonl:2: question: empty \(each item needs a non-empty question"):
        read_eval_set(DATA / "bad_set.jsonl")
    empty = tmp_path / "empty.jsonl"
    empty.write_text("\n\n")
    with pytest.raises(DumaError, match="has no items"):
        read_eval_set(empty)
    with pytest.raises(DumaError, match="no items in classes code"):
        read_eval_set(DATA / "small_set.jsonl", classes=["code"])
    with pytest.raises(DumaError, match="does not exist"):
        read_eval_set(tmp_path / "nope.jsonl")
    broken = tmp_path / "broken.jsonl"
    broken.write_text('{"question": "a", "class": "math"}\n{"question": \n')
    with pytest.raises(DumaError, match=r"broken.jsonl:2: json: not valid JSON"):
        read_eval_set(broken)


@pytest.mark.skipif(not (BELLE / "eval_set.json").exists(), reason="../shared/data/belle is missing")
def test_the_real_belle_set_reads():
    items = read_eval_set(BELLE / "eval_set.json")
    assert len(items) == 1000
    assert sum(i.klass == "closed qa" for i in items) == 52
    assert sum(not i.std_answer.strip() for i in items if i.klass == "brainstorming") > 100


# --- scores -------------------------------------------------------------------------------

def test_scores_by_hand():
    items = [ScoredItem(id="1", klass="math", score=1.0), ScoredItem(id="2", klass="math", score=0.0),
             ScoredItem(id="3", klass="open qa", score=0.8), ScoredItem(id="4", klass="code", score=0.2),
             ScoredItem(id="5", klass="poetry", score=0.6),
             ScoredItem(id="6", klass="open qa", error="unparsed: no score"),
             ScoredItem(id="7", klass="open qa", error="failed: timeout")]
    report = score_items(items, bootstrap=200, seed=1)
    means = {c.klass: c.mean for c in report.classes}
    assert means == pytest.approx({"math": 0.5, "open qa": 0.8, "code": 0.2, "poetry": 0.6})
    assert report.macro == pytest.approx((0.5 + 0.8 + 0.2 + 0.6) / 4)
    assert report.score_wo_others == pytest.approx((0.8 + 0.6) / 2)  # math and code left out
    assert report.unknown_classes == ["poetry"]
    assert (report.n, report.n_scored, report.n_unparsed, report.n_failed) == (7, 5, 1, 1)
    math = next(c for c in report.classes if c.klass == "math")
    assert 0.0 <= math.ci95.low <= 0.5 <= math.ci95.high <= 1.0
    assert report.macro_ci95.low <= report.macro <= report.macro_ci95.high
    # seeded: the same intervals again
    assert score_items(items, bootstrap=200, seed=1).macro_ci95 == report.macro_ci95


# --- resuming -----------------------------------------------------------------------------

class Interrupt(KeyboardInterrupt):
    pass


def counting_answerer(answers: dict[str, str], calls: list[str], stop_after: int | None = None,
                      failing: Sequence[str] = ()):
    def answer(question: str) -> Answer:
        if stop_after is not None and len(calls) >= stop_after:
            raise Interrupt()
        calls.append(question)
        if question in failing:
            raise RuntimeError("model crashed")
        return Answer(answer=answers.get(question, "I do not know"), latency_s=0.01)

    return answer


ANSWERS = {"What is 2 + 3?": "5", "Is 'I love it' positive or negative?": "positive",
           "Where is Paris?": "Paris is in France.", "What is 10% of 50?": "5"}


def test_an_interrupted_run_resumes_without_duplicates(tmp_path):
    items = read_eval_set(DATA / "small_set.jsonl")
    calls: list[str] = []
    with pytest.raises(KeyboardInterrupt):
        run_judged_eval(items, counting_answerer(ANSWERS, calls, stop_after=3), ContainsJudge(), tmp_path,
                        bootstrap=0)
    assert len(load_records_json(tmp_path / ANSWERS_FILE)) == 3
    # A line cut short by a kill is ignored (and that item run again).
    with (tmp_path / ANSWERS_FILE).open("a") as fh:
        fh.write('{"id": "q4", "klass": "closed qa", "ques')
    calls.clear()
    report = run_judged_eval(items, counting_answerer(ANSWERS, calls), ContainsJudge(), tmp_path, bootstrap=0)
    assert calls == [i.question for i in items[3:]]  # only the unanswered ones
    records = load_records_json(tmp_path / ANSWERS_FILE)
    assert [r["id"] for r in records] == [i.id for i in items]  # one line per id, in order
    assert report.n == 6
    # generation and the unknown class have no reference: the contains judge cannot score them
    assert report.n_scored == 4 and report.n_no_reference == 2 and report.n_failed == 0
    # math: q1 "5" contains "5" (1), q6 "5" does not contain "10% of 50 is 5" (0) -> 0.5;
    # classification 1, closed qa 1 -> macro (0.5 + 1 + 1) / 3
    assert report.macro == pytest.approx(2.5 / 3)


def test_failed_answers_and_judges_are_retried_on_resume(tmp_path):
    items = read_eval_set(DATA / "small_set.jsonl", classes=["math", "classification"])
    calls: list[str] = []
    failing = ["What is 10% of 50?"]
    judge_backend = FlakyJudgeBackend(fail_on_call=2)  # the second judgement fails (3 attempts)
    judge = LLMJudge(backend=judge_backend, retries=2, retry_delay_s=0)
    first = run_judged_eval(items, counting_answerer(ANSWERS, calls, failing=failing), judge, tmp_path,
                            retries=1, bootstrap=0)
    assert first.n_failed == 2 and first.n_scored == 1
    records = {r["id"]: r for r in load_records_json(tmp_path / ANSWERS_FILE)}
    assert records["q6"]["answer_error"].startswith("RuntimeError: model crashed")
    assert records["q2"]["judge_error"].startswith("failed: ")
    calls.clear()
    second = run_judged_eval(items, counting_answerer(ANSWERS, calls), judge, tmp_path, bootstrap=0)
    assert calls == ["What is 10% of 50?"]  # q2 is judged again without answering again
    assert second.n_scored == 3 and second.n_failed == 0
    assert len(load_records_json(tmp_path / ANSWERS_FILE)) == 3


def test_a_resumed_run_on_fewer_items_keeps_the_others(tmp_path):
    items = read_eval_set(DATA / "small_set.jsonl")
    calls: list[str] = []
    run_judged_eval(items, counting_answerer(ANSWERS, calls), NumericJudge(), tmp_path, bootstrap=0)
    report = run_judged_eval(items[:2], counting_answerer(ANSWERS, calls), NumericJudge(), tmp_path, bootstrap=0)
    assert len(calls) == 6 and report.n == 2
    assert [r["id"] for r in load_records_json(tmp_path / ANSWERS_FILE)] == [i.id for i in items]


def test_no_resume_starts_afresh(tmp_path):
    items = read_eval_set(DATA / "small_set.jsonl", limit=2)
    calls: list[str] = []
    run_judged_eval(items, counting_answerer(ANSWERS, calls), NumericJudge(), tmp_path, bootstrap=0)
    run_judged_eval(items, counting_answerer(ANSWERS, calls), NumericJudge(), tmp_path, resume=False, bootstrap=0)
    assert len(calls) == 4 and len(load_records_json(tmp_path / ANSWERS_FILE)) == 2


class FlakyJudgeBackend(ScriptedBackend):
    """Judges "得分: 1"; every attempt of its ``fail_on_call``-th judgement raises."""

    def __init__(self, fail_on_call: int) -> None:
        super().__init__(replies=["得分: 1"])
        self.fail_on_call = fail_on_call
        self.prompts: list[str] = []

    def stream(self, messages, options=None, *, adapter=None, cancel=None):
        prompt = messages[-1].content
        if prompt not in self.prompts:
            self.prompts.append(prompt)
        if len(self.prompts) == self.fail_on_call and not getattr(self, "healed", False):
            self.healed_after = getattr(self, "healed_after", 0) + 1
            if self.healed_after >= 3:
                self.healed = True
            raise TimeoutError("judge timed out")
        return super().stream(messages, options)


# --- the CLI end to end -------------------------------------------------------------------

class EvalBackend(Backend):
    """Answers from a table; as a judge (a prompt with 模型回答:) gives 得分: 1 to answers
    containing the reference, 得分：0.5 to the others and an unreadable verdict to colours."""

    name = "eval-test"

    def stream(self, messages: Sequence[Message], options=None, *, adapter=None, cancel=None) -> Iterator[GenerationChunk]:
        prompt = messages[-1].content
        if "模型回答:" in prompt:
            if "Name a colour" in prompt:
                reply = "A fine colour."
            elif "标准回答:" in prompt and prompt.split("标准回答: ")[1].split("\n")[0] in prompt.split("模型回答: ")[1]:
                reply = "得分: 1分"
            else:
                reply = "得分：0.5"
        else:
            reply = ANSWERS.get(prompt, "Blue.")
        yield GenerationChunk(text=reply)
        yield GenerationChunk(done=True, finish_reason="stop")


class EvalBackendPlugin:
    @staticmethod
    @duma.hookimpl
    def register_backends(register) -> None:
        register(EvalBackend)


@pytest.fixture
def eval_backend() -> Iterator[None]:
    from duma.models import clear_backends

    load_plugin_commands()
    host.register_plugin(EvalBackendPlugin, "eval-test-backend")
    clear_backends()
    yield
    clear_backends()


def test_eval_run_end_to_end(eval_backend, tmp_path):
    out = tmp_path / "out"
    args = ["eval", "run", "--set", str(DATA / "small_set.jsonl"), "--backend", "eval-test", "-m", "table",
            "--out", str(out), "--bootstrap", "100"]
    result = CliRunner().invoke(cli, [*args, "--limit", "3"])
    assert result.exit_code == 0, result.output
    assert len(load_records_json(out / ANSWERS_FILE)) == 3
    result = CliRunner().invoke(cli, args)  # resumes: only q4..q6 are new
    assert result.exit_code == 0, result.output
    assert result.stderr.count("] q") == 3
    records = load_records_json(out / ANSWERS_FILE)
    assert [r["id"] for r in records] == ["q1", "q2", "q3", "q4", "q5", "q6"]
    report = json.loads((out / "report.json").read_text())
    means = {c["klass"]: c["mean"] for c in report["classes"]}
    # math: q1's answer "5" contains its reference (1), q6's "5" does not contain "10% of 50
    # is 5" (0.5); generation has no reference (0.5); colours' verdict is unreadable.
    assert means == {"math": 0.75, "classification": 1.0, "generation": 0.5, "closed qa": 1.0,
                     "colours quiz": None}
    assert report["n_unparsed"] == 1 and report["unknown_classes"] == ["colours quiz"]
    assert report["macro"] == pytest.approx((0.75 + 1.0 + 0.5 + 1.0) / 4)
    assert report["score_wo_others"] == pytest.approx((1.0 + 0.5 + 1.0) / 3)
    assert "macro 0.812" in result.stdout
    assert "| colours quiz (unknown) | 1 | 0 | 1 | 0 | 0 | - | - |" in (out / "report.md").read_text()
    assert (out / "scores.png").read_bytes()[:4] == b"\x89PNG"


def test_eval_run_with_a_rule_judge_and_a_separate_judge_model(eval_backend, tmp_path):
    result = CliRunner().invoke(cli, ["eval", "run", "--set", str(DATA / "small_set.jsonl"), "--backend", "eval-test",
                                      "--judge", "numeric", "--classes", "math", "--out", str(tmp_path),
                                      "--bootstrap", "0"])
    assert result.exit_code == 0, result.output
    report = json.loads((tmp_path / "report.json").read_text())
    assert report["judge"] == "numeric" and report["macro"] == 1.0 and report["n"] == 2


def test_eval_run_errors_are_one_line(eval_backend, tmp_path):
    from duma.cli import main

    def run(args):
        with pytest.raises(SystemExit) as exc:
            main(args)
        return exc.value.code

    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    assert run(["eval", "run", "--set", str(empty), "--backend", "eval-test", "--out", str(tmp_path)]) == 1
    assert run(["eval", "run", "--set", str(DATA / "small_set.jsonl"), "--backend", "eval-test",
                "--judge", "nosuch", "--out", str(tmp_path)]) == 1


def test_eval_run_errors_print_one_line(eval_backend, tmp_path, capsys):
    from duma.cli import main

    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    with pytest.raises(SystemExit):
        main(["eval", "run", "--set", str(empty), "--backend", "eval-test", "--out", str(tmp_path)])
    err = capsys.readouterr().err.strip()
    assert err.startswith("Error: evaluation set") and "has no items" in err and "\n" not in err
