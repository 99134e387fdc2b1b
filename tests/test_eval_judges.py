"""Judges: rule judges, the LLM judge's prompt and score parsing, class names on BELLE's files."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pytest

from duma import host
from duma.errors import DumaError
from duma.judge import Judge, JudgeResult
from duma.plugins.evaluation.builtin_judges import (DEFAULT_PROMPTS, ContainsJudge, ExactJudge, LLMJudge, NumericJudge,
                                                    build_judge_prompt, load_judge_prompts, parse_numbers, parse_score)
from duma.plugins.evaluation.dataset import normalise_class
from duma.testing import ScriptedBackend

BELLE = Path(__file__).resolve().parents[2] / "shared" / "data" / "belle"


def test_builtin_judges_are_registered():
    assert set(host.components("judge")) >= {"llm", "exact", "contains", "numeric"}
    assert issubclass(host.get("judge", "exact"), Judge)
    assert JudgeResult(score=1.0).score == 1.0


# --- rule judges --------------------------------------------------------------------------

def test_exact_judge():
    judge = ExactJudge()
    assert judge.score("q", "  Positive. ", "positive", "classification").score == 1.0
    assert judge.score("q", "ＰＯＳＩＴＩＶＥ", "positive", "classification").score == 1.0  # full width
    assert judge.score("q", "negative", "positive", "classification").score == 0.0
    assert judge.score("q", "It is positive", "positive", "classification").score == 0.0
    no_ref = judge.score("q", "x", "  ", "generation")
    assert no_ref.score is None and "std_answer" in no_ref.error


def test_contains_judge():
    judge = ContainsJudge()
    assert judge.score("q", "I think it is Positive.", "positive", "classification").score == 1.0
    assert judge.score("q", "负面", "正面", "classification").score == 0.0
    assert judge.score("q", "答案是：正面。", "正面", "classification").score == 1.0


@pytest.mark.parametrize(("answer", "reference", "expected"), [
    ("2 + 3 = 5", "5", 1.0),
    ("The answer is 5.0", "答案是5", 1.0),
    ("It is 2,340 km", "2340", 1.0),
    ("17% of 2,340 is 397.8", "397.8", 1.0),
    ("so x = 3/4", "0.75", 1.0),
    ("about 45%", "0.45", 1.0),
    ("答案：１２", "12", 1.0),  # full-width digits
    ("It is 6", "5", 0.0),
    ("no number here", "5", 0.0),
    ("-3", "−3", 1.0),
])
def test_numeric_judge(answer, reference, expected):
    assert NumericJudge().score("q", answer, reference, "math").score == expected


def test_numeric_judge_without_a_reference_number():
    result = NumericJudge().score("q", "5", "five", "math")
    assert result.score is None and "no number" in result.error


def test_parse_numbers():
    assert parse_numbers("1,000 and 2.5, then 3/4 or 50%") == [1000.0, 2.5, 0.75, 0.5]


# --- the LLM judge's score parsing --------------------------------------------------------

@pytest.mark.parametrize(("reply", "expected"), [
    ("得分: 0.8", 0.8),
    ("得分：0.8分。模型回答基本正确。", 0.8),  # full-width colon
    ("得分:1分。模型回答与标准答案完全一致，翻译准确无误。", 1.0),
    ("得分为0.5", 0.5),
    ("Score: 0.7", 0.7),
    ("score = 1", 1.0),
    ("SCORE：.9", 0.9),
    ("Score: 80%", 0.8),
    ("得分: 60%", 0.6),
    ("Score: 0.8/1", 0.8),
    ("Score: 4/5", 0.8),
    ("**Score:** 0.25", 0.25),
    ("The answer misses a step.\nScore: 0.6", 0.6),
    ("得分: 0.2 ... 重新考虑后，得分: 0.4", 0.4),  # the last verdict wins
    ("０.５", 0.5),  # only a number (full width)
    ("0.3", 0.3),
    ("1/2", 0.5),
    ("得分：０．７", 0.7),
])
def test_parse_score(reply, expected):
    assert parse_score(reply) == pytest.approx(expected)


@pytest.mark.parametrize("reply", [
    "",
    "The answer is good.",
    "请按照\"得分:\"这样的形式输出分数",  # the instruction echoed, no number
    "得分: 8",  # out of 0-1: not guessed
    "Score: 150%",
    "Score: 3/0",
    "I would give it a 5 out of 10",
])
def test_parse_score_rejects(reply):
    assert parse_score(reply) is None


# --- the LLM judge ------------------------------------------------------------------------

def test_llm_judge_prompt_layout_and_reference_left_out():
    backend = ScriptedBackend(replies=["得分: 0.9", "Score: 0.4"])
    judge = LLMJudge(backend=backend, retry_delay_s=0)
    assert judge.score("2+3?", "5", "5", "math").score == 0.9
    assert judge.score("写首诗", "海风", "", "generation").score == 0.4
    first, second = (call[-1].content for call in backend.calls)
    assert first.startswith("你是一位数学老师")
    assert first.endswith("问题: 2+3?\n标准回答: 5\n模型回答: 5")
    assert "标准回答" not in second and second.endswith("问题: 写首诗\n模型回答: 海风")


def test_build_judge_prompt_strips():
    assert build_judge_prompt("Judge.", " q ", " a ", "  ") == "Judge.\n问题: q\n模型回答: a"


def test_llm_judge_unparsed_reply_is_reported_not_raised():
    judge = LLMJudge(backend=ScriptedBackend(replies=["Looks fine to me."]), retry_delay_s=0)
    result = judge.score("q", "a", "r", "open qa")
    assert result.score is None and result.unparsed and not result.failed
    assert result.raw == "Looks fine to me."


class FlakyBackend(ScriptedBackend):
    """Raises on the first ``failures`` calls, then replays its replies."""

    def __init__(self, failures: int, replies: list[str]) -> None:
        super().__init__(replies=replies)
        self.failures = failures
        self.attempts = 0

    def stream(self, messages, options=None, *, adapter=None, cancel=None):
        self.attempts += 1
        if self.attempts <= self.failures:
            raise ConnectionError("judge server unreachable")
        return super().stream(messages, options)


def test_llm_judge_retries_then_marks_the_item():
    recovers = FlakyBackend(failures=2, replies=["得分: 1"])
    assert LLMJudge(backend=recovers, retries=2, retry_delay_s=0).score("q", "a", "r", "math").score == 1.0
    down = FlakyBackend(failures=99, replies=["得分: 1"])
    result = LLMJudge(backend=down, retries=2, retry_delay_s=0).score("q", "a", "r", "math")
    assert down.attempts == 3
    assert result.score is None and result.failed and "unreachable" in result.error


def test_llm_judge_uses_class_prompts_and_a_generic_one_for_unknown_classes():
    judge = LLMJudge(backend=ScriptedBackend(replies=["得分: 1"]), prompts={"Closed\u00a0QA": "CLOSED"})
    assert judge.prompt_for("closed qa") == "CLOSED"
    assert judge.prompt_for("poetry") != "CLOSED" and "得分" in judge.prompt_for("poetry")


# --- class names on BELLE's real files ----------------------------------------------------

needs_belle = pytest.mark.skipif(not (BELLE / "eval_set.json").exists(), reason="../shared/data/belle is missing")


@needs_belle
def test_belle_classes_normalise_to_the_prompt_classes():
    set_classes = Counter()
    for line in (BELLE / "eval_set.json").read_text(encoding="utf-8").splitlines():
        if line.strip():
            set_classes[normalise_class(json.loads(line)["class"])] += 1
    prompts = load_judge_prompts(BELLE / "eval_prompt.json")
    assert set(set_classes) <= set(prompts)  # every set class has its judge prompt
    assert set_classes["closed qa"] == 52 and set_classes["open qa"] == 285
    assert sum(set_classes.values()) == 1000 and len(set_classes) == 10
    assert "translation" in prompts and len(prompts) == 11
    # duma's own prompts cover the same classes
    assert set(prompts) == set(DEFAULT_PROMPTS)


def test_normalise_class():
    assert normalise_class("closed\u00a0QA") == "closed qa"
    assert normalise_class("  Open \t QA ") == "open qa"
    assert normalise_class("Ｍａｔｈ") == "math"


def test_judge_prompts_errors_name_the_line(tmp_path):
    bad = tmp_path / "p.jsonl"
    bad.write_text('{"class": "math", "prompt": "x"}\n{"class": "code"}\n')
    with pytest.raises(DumaError, match=r"p.jsonl:2: .*'class' and 'prompt'"):
        load_judge_prompts(bad)
    broken = tmp_path / "q.jsonl"
    broken.write_text('{"class": "math",\n')
    with pytest.raises(DumaError, match=r"q.jsonl:1: json: not valid JSON"):
        load_judge_prompts(broken)
