"""The built-in answer judges of ``duma eval`` (registered by :mod:`duma.plugins.judges`): an
LLM judge (BELLE-style, any backend) and rule judges, and the loading of judge prompts.

A judge scores one answer 0-1 (``Judge.score``). It never raises for a bad reply: a judge
model's reply without a readable score gives ``JudgeResult(score=None, error="unparsed: ...")``
and a judge backend that keeps failing gives ``error="failed: ..."``; the evaluation counts
and reports both.

Judges:

- ``llm``: asks a model with one prompt per class in the format of BELLE's
  ``eval_prompt.json`` (instruction, then the question, the reference answer when there is
  one, and the model's answer); the score is read after ``得分:`` or ``Score:``.
- ``exact``: 1 when the answer equals the reference (case, white space and trailing
  punctuation ignored), else 0. For classification labels.
- ``contains``: 1 when the normalised reference occurs in the normalised answer.
- ``numeric``: 1 when the last number of the answer equals the last number of the reference
  (``2,340``, ``3/4``, ``45%`` and full-width digits understood). For math.

The hook in :mod:`duma.plugins.judges` imports this module when judges are first needed,
so that ``duma --help`` does not import pydantic.
"""

from __future__ import annotations

import math
import re
import time
import unicodedata
from abc import abstractmethod
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, ConfigDict, Field

from duma.data import read_validated
from duma.errors import DumaError, first_line
from duma.judge import FAILED_PREFIX, NO_REFERENCE_PREFIX, UNPARSED_PREFIX, Judge, JudgeResult
from duma.plugins.evaluation.dataset import normalise_class

if TYPE_CHECKING:
    from duma.backend import Backend


# --- rule judges ------------------------------------------------------------------------

_TRAILING_PUNCT = " \t\n.。!！?？,，;；:：'\"“”‘’`"


def normalise_answer(text: str) -> str:
    """NFKC (full-width to half-width), case-folded, white space collapsed, outer
    punctuation stripped: what the rule judges compare."""
    text = " ".join(unicodedata.normalize("NFKC", text or "").split()).casefold()
    return text.strip(_TRAILING_PUNCT)


class ReferenceJudge(Judge):
    """A rule judge that compares the answer with a reference answer: an item without one is
    reported (``no reference: ...``), not scored."""

    def score(self, question: str, answer: str, reference: str, klass: str) -> JudgeResult:
        if not (reference or "").strip():
            return JudgeResult(error=f"{NO_REFERENCE_PREFIX}the '{self.name}' judge needs a std_answer")
        return self.compare(answer, reference)

    @abstractmethod
    def compare(self, answer: str, reference: str) -> JudgeResult:
        """Score an answer against a non-empty reference."""


class ExactJudge(ReferenceJudge):
    """1 when answer and reference are equal after :func:`normalise_answer`, else 0."""

    name = "exact"

    def compare(self, answer: str, reference: str) -> JudgeResult:
        return JudgeResult(score=float(normalise_answer(answer) == normalise_answer(reference)))


class ContainsJudge(ReferenceJudge):
    """1 when the normalised reference occurs in the normalised answer, else 0."""

    name = "contains"

    def compare(self, answer: str, reference: str) -> JudgeResult:
        return JudgeResult(score=float(normalise_answer(reference) in normalise_answer(answer)))


_NUMBER = re.compile(r"[-−]?\d+(?:,\d{3})*(?:\.\d+)?(?:\s*/\s*\d+(?:\.\d+)?)?\s*%?")


def parse_numbers(text: str) -> list[float]:
    """Every number in the text, in order: ``2,340`` -> 2340, ``3/4`` -> 0.75, ``45%`` -> 0.45."""
    out = []
    for match in _NUMBER.finditer(unicodedata.normalize("NFKC", text or "")):
        token = match.group(0).replace("−", "-").replace(",", "").replace(" ", "")
        percent = token.endswith("%")
        token = token.rstrip("%")
        try:
            if "/" in token:
                num, den = token.split("/")
                value = float(num) / float(den) if float(den) != 0 else math.nan
            else:
                value = float(token)
        except ValueError:
            continue
        if not math.isnan(value):
            out.append(value / 100 if percent else value)
    return out


def numbers_equal(a: float, b: float) -> bool:
    return math.isclose(a, b, rel_tol=1e-6, abs_tol=1e-9)


class NumericJudge(ReferenceJudge):
    """1 when the answer's last number equals the reference's last number (the final result,
    as BELLE's math prompt asks), else 0. A reference without a number is an error."""

    name = "numeric"

    def compare(self, answer: str, reference: str) -> JudgeResult:
        expected = parse_numbers(reference)
        if not expected:
            return JudgeResult(error=f"{NO_REFERENCE_PREFIX}the reference has no number")
        got = parse_numbers(answer)
        return JudgeResult(score=float(bool(got) and numbers_equal(got[-1], expected[-1])))


# --- the LLM judge ----------------------------------------------------------------------

# duma's own judge instructions, one per BELLE class, in the format of BELLE's
# eval_prompt.json (``--judge-prompts`` loads BELLE's file or your own instead).
DEFAULT_PROMPTS: dict[str, str] = {
    "math": "你是一位数学老师。请判断模型回答是否正确地解答了下面的数学问题，给出0到1之间的分数。"
            "最终结果必须与标准答案一致，解题过程可以不同但必须正确。请按照\"得分:\"的形式输出分数。",
    "code": "你是一位编程老师。请判断模型回答的代码能否解决下面的问题，给出0到1之间的分数。"
            "标准答案只作参考，代码写法可以不同但必须正确。请按照\"得分:\"的形式输出分数。",
    "classification": "请参考标准答案给模型回答打分，最高1分，最低0分。模型回答与标准答案越一致分数越高。"
                      "请按照\"得分:\"的形式输出分数。",
    "extract": "请参考标准答案给模型回答打分，最高1分，最低0分。抽取的内容必须来自问题给出的上下文，"
               "并且回答了问题。请按照\"得分:\"的形式输出分数。",
    "open qa": "请参考标准答案给模型回答打分，最高1分，最低0分。模型回答越接近标准答案分数越高。"
               "请按照\"得分:\"的形式输出分数。",
    "closed qa": "请参考标准答案给模型回答打分，最高1分，最低0分。模型回答要接近标准答案，"
                 "并且只使用问题中提供的信息。请按照\"得分:\"的形式输出分数。",
    "generation": "请按评价标准给模型回答打分，最高1分，最低0分。回答要通顺、符合问题要求、"
                  "真实且没有恶意。请按照\"得分:\"的形式输出分数。",
    "brainstorming": "请按评价标准给模型回答打分，最高1分，最低0分。回答要对问题有帮助、"
                     "真实且没有恶意。请按照\"得分:\"的形式输出分数。",
    "rewrite": "请按评价标准给模型回答打分，最高1分，最低0分。回答要满足问题中提出的改写要求。"
               "请按照\"得分:\"的形式输出分数。",
    "translation": "你是一位语言学家。请参考标准答案给模型译文打分，最高1分，最低0分。"
                   "译文要保持原意，越通顺分数越高。请按照\"得分:\"的形式输出分数。",
    "summarization": "请参考标准答案给模型回答打分，最高1分，最低0分。摘要要包含输入文本的要点。"
                     "请按照\"得分:\"的形式输出分数。",
}
# For classes without a prompt of their own (scored under their own name).
GENERIC_PROMPT = ("请判断模型回答是否很好地完成了问题的要求，有标准答案时参考标准答案，给出0到1之间的分数。"
                  "请按照\"得分:\"的形式输出分数。")

# ``得分: 0.8``, ``Score：80%``, ``score = 4/5``, ``得分为1分``: the marker, a separator, a number,
# then an optional percent sign or "/ denominator".
_SCORE = re.compile(
    r"(?:得分|分数|评分|score)\s*(?:[:：=]|为|是|is)?\s*\**\s*"
    r"(?P<num>[-+]?\d+(?:\.\d+)?|[-+]?\.\d+)\s*(?:(?P<pct>%)|/\s*(?P<den>\d+(?:\.\d+)?))?",
    re.IGNORECASE,
)
_BARE_NUMBER = re.compile(r"^\s*\**\s*(?P<num>\d+(?:\.\d+)?|\.\d+)\s*(?:(?P<pct>%)|/\s*(?P<den>\d+(?:\.\d+)?))?"
                          r"\s*分?\s*[.。]?\s*$")


def _value(match: re.Match[str]) -> float | None:
    value = float(match.group("num"))
    if match.group("pct"):
        value /= 100
    elif match.group("den"):
        den = float(match.group("den"))
        if den == 0:
            return None
        value /= den
    return value


def parse_score(reply: str) -> float | None:
    """The 0-1 score in a judge's reply, or None when there is none (or it is out of range).

    The last ``得分:``/``Score:`` marker wins (judges restate their verdict at the end);
    full-width colons and digits, ``80%``, ``0.8/1``, ``4/5`` and ``得分为1分`` are read. A reply
    that is only a number (``0.7``) counts too. Values outside [0, 1] are rejected rather
    than guessed at (is ``8`` out of 10 or of 100?).
    """
    text = unicodedata.normalize("NFKC", reply or "")
    matches = list(_SCORE.finditer(text))
    match = matches[-1] if matches else _BARE_NUMBER.match(text)
    if match is None:
        return None
    value = _value(match)
    if value is None or not 0.0 <= value <= 1.0:
        return None
    return value


def build_judge_prompt(instruction: str, question: str, answer: str, reference: str) -> str:
    """BELLE's layout: the class instruction, ``问题:``, ``标准回答:`` (left out when the
    reference is empty, as BELLE does for generation, brainstorming and rewrite) and
    ``模型回答:``."""
    parts = [instruction.strip(), f"问题: {question.strip()}"]
    if (reference or "").strip():
        parts.append(f"标准回答: {reference.strip()}")
    parts.append(f"模型回答: {(answer or '').strip()}")
    return "\n".join(parts)


class JudgePrompt(BaseModel):
    """One line of a judge prompts file (BELLE's ``eval_prompt.json``)."""

    model_config = ConfigDict(extra="ignore", populate_by_name=True)

    klass: str = Field(alias="class", min_length=1)
    prompt: str = Field(min_length=1)


def load_judge_prompts(path: str | Path) -> dict[str, str]:
    """Judge prompts from a file in the format of BELLE's ``eval_prompt.json``: JSONL (or a
    JSON list) of ``{"class", "prompt"}``; keys are normalised class names."""
    hint = "each item needs string fields 'class' and 'prompt', as in BELLE's eval_prompt.json"
    prompts = {normalise_class(row.klass): row.prompt for _, row in read_validated(path, JudgePrompt, hint=hint)}
    if not prompts:
        raise DumaError(f"{path}: no judge prompts", "write one {\"class\", \"prompt\"} object per line")
    return prompts


class LLMJudge(Judge):
    """A model as judge (BELLE's method). Options: ``backend`` (required), ``prompts``
    (class -> instruction; default :data:`DEFAULT_PROMPTS`), ``retries`` (extra attempts
    when the backend raises, default 2), ``retry_delay_s``, ``max_tokens``."""

    name = "llm"
    needs_backend = True

    def __init__(self, backend: Backend | None = None, prompts: dict[str, str] | None = None,
                 retries: int = 2, retry_delay_s: float = 0.5, max_tokens: int = 128, **options: Any) -> None:
        super().__init__(**options)
        if backend is None:
            raise DumaError("the 'llm' judge needs a judge model", "pass --judge-model (default: the answering model)")
        self.backend = backend
        self.prompts = {normalise_class(k): v for k, v in (prompts or DEFAULT_PROMPTS).items()}
        self.retries = max(0, int(retries))
        self.retry_delay_s = retry_delay_s
        self.max_tokens = max_tokens

    def prompt_for(self, klass: str) -> str:
        return self.prompts.get(normalise_class(klass), GENERIC_PROMPT)

    def score(self, question: str, answer: str, reference: str, klass: str) -> JudgeResult:
        from duma.types import GenerationOptions, Message

        prompt = build_judge_prompt(self.prompt_for(klass), question, answer, reference)
        options = GenerationOptions(max_tokens=self.max_tokens, temperature=0.0)
        error = ""
        for attempt in range(self.retries + 1):
            try:
                reply = self.backend.generate([Message(role="user", content=prompt)], options).text
            except Exception as exc:  # a judge that fails is retried, then the item is marked
                error = first_line(exc, with_type=True)
                if attempt < self.retries and self.retry_delay_s:
                    time.sleep(self.retry_delay_s * (attempt + 1))
                continue
            value = parse_score(reply)
            if value is None:
                return JudgeResult(raw=reply, error=f"{UNPARSED_PREFIX}no 0-1 score after 得分:/Score: in the reply")
            return JudgeResult(score=value, raw=reply)
        return JudgeResult(error=f"{FAILED_PREFIX}{error} (after {self.retries + 1} attempts)")


BUILTIN_JUDGES: tuple[type[Judge], ...] = (LLMJudge, ExactJudge, ContainsJudge, NumericJudge)
