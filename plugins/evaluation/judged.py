"""``duma eval run``: answer every question of a set, judge every answer, score.

Each finished item is appended to ``answers.jsonl`` as soon as it is judged (and flushed), so
an interrupted run loses at most the item in flight. A rerun with ``--resume`` (the default)
reads the file back and skips the ids already answered and judged; an item whose answer or
judge failed is tried again (a failed judgement reuses the stored answer). At the end the
file is rewritten with exactly one line per id, in set order.
"""

from __future__ import annotations

import json
import os
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from pydantic import BaseModel, ValidationError

from duma.plugins.evaluation.dataset import EvalItem
from duma.plugins.evaluation.judging import FAILED_PREFIX, Judge, JudgeResult
from duma.plugins.evaluation.report import EvalReport, ScoredItem, score_items

ANSWERS_FILE = "answers.jsonl"

# An answerer turns a question into (answer text, seconds taken); it may raise.
Answerer = Callable[[str], tuple[str, float]]


class AnswerRecord(BaseModel):
    """One line of ``answers.jsonl``."""

    id: str
    klass: str
    question: str
    std_answer: str = ""
    answer: str | None = None
    answer_error: str | None = None
    latency_s: float | None = None
    judge: str | None = None
    score: float | None = None
    judge_raw: str = ""
    judge_error: str | None = None

    @property
    def answered(self) -> bool:
        return self.answer is not None and self.answer_error is None

    @property
    def done(self) -> bool:
        """Answered and judged (a score, or a judge reply that could not be read): a resumed
        run skips it. Failures (answer or judge) are tried again."""
        if not self.answered:
            return False
        return self.score is not None or not (self.judge_error or "").startswith(FAILED_PREFIX)

    def scored(self) -> ScoredItem:
        error = self.judge_error
        if not self.answered:
            error = f"{FAILED_PREFIX}answer: {self.answer_error}"
        return ScoredItem(id=self.id, klass=self.klass, score=self.score, error=error)


def read_answers(path: Path) -> dict[str, AnswerRecord]:
    """Records already in ``answers.jsonl`` (a later line for an id wins). A line cut short by
    an interruption, or otherwise unreadable, is skipped with one warning."""
    records: dict[str, AnswerRecord] = {}
    if not path.exists():
        return records
    bad: list[int] = []
    for lineno, line in enumerate(path.read_text(encoding="utf-8", errors="replace").splitlines(), 1):
        if not line.strip():
            continue
        try:
            record = AnswerRecord.model_validate_json(line)
        except (ValidationError, ValueError):
            bad.append(lineno)
            continue
        records[record.id] = record
    if bad:
        print(f"duma: warning: {path}: skipped {len(bad)} unreadable line(s) (first: line {bad[0]}); "
              "those items are run again", file=sys.stderr)
    return records


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip() or type(exc).__name__
    return f"{type(exc).__name__}: {text.splitlines()[0][:200]}"


def answer_with_retries(answerer: Answerer, question: str, retries: int = 2) -> tuple[str | None, float | None, str | None]:
    """``(answer, seconds, error)``: the answerer is retried ``retries`` times when it raises."""
    error = None
    for _ in range(retries + 1):
        try:
            text, seconds = answerer(question)
            return text, seconds, None
        except KeyboardInterrupt:
            raise
        except Exception as exc:  # a failing model marks the item; the run goes on
            error = _first_line(exc)
    return None, None, f"{error} (after {retries + 1} attempts)"


def _write_all(path: Path, records: Sequence[AnswerRecord]) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with tmp.open("w", encoding="utf-8") as fh:
        for record in records:
            fh.write(record.model_dump_json() + "\n")
    os.replace(tmp, path)


class RunProgress(BaseModel):
    total: int
    skipped: int = 0
    answered: int = 0
    judged: int = 0


def run_judged_eval(items: Sequence[EvalItem], answerer: Answerer, judge: Judge, out_dir: str | Path, *,
                    resume: bool = True, retries: int = 2, bootstrap: int = 1000, seed: int = 0,
                    set_name: str | None = None, model: str | None = None,
                    on_item: Callable[[AnswerRecord, RunProgress], None] | None = None) -> EvalReport:
    """Answer and judge ``items`` into ``out_dir/answers.jsonl`` and score them.

    With ``resume`` the records already in the file are kept and their ids skipped;
    without it the file is started afresh.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    path = out / ANSWERS_FILE
    previous = read_answers(path) if resume else {}
    if not resume and path.exists():
        path.unlink()
    progress = RunProgress(total=len(items))
    wanted = {item.id for item in items}
    results: dict[str, AnswerRecord] = {k: v for k, v in previous.items() if k in wanted}
    try:
        with path.open("a", encoding="utf-8") as fh:
            for item in items:
                old = previous.get(item.id)
                if old is not None and old.done:
                    progress.skipped += 1
                    continue
                record = AnswerRecord(id=item.id, klass=item.klass, question=item.question,
                                      std_answer=item.std_answer, judge=judge.name)
                if old is not None and old.answered:
                    record.answer, record.latency_s = old.answer, old.latency_s  # only the judge failed
                else:
                    record.answer, record.latency_s, record.answer_error = answer_with_retries(
                        answerer, item.question, retries)
                    progress.answered += 1
                if record.answered:
                    result = _judge(judge, item, record.answer or "")
                    record.score, record.judge_raw, record.judge_error = result.score, result.raw, result.error
                    progress.judged += 1
                fh.write(record.model_dump_json() + "\n")
                fh.flush()
                results[item.id] = record
                if on_item is not None:
                    on_item(record, progress)
    finally:
        # One line per id, in set order, whatever happened (records of ids outside this
        # run's selection are kept after them).
        ordered = [results[i.id] for i in items if i.id in results]
        ordered += [r for k, r in previous.items() if k not in wanted]
        _write_all(path, ordered)
    scored = [results[i.id].scored() for i in items if i.id in results]
    return score_items(scored, bootstrap=bootstrap, seed=seed, set_name=set_name, model=model, judge=judge.name)


def _judge(judge: Judge, item: EvalItem, answer: str) -> JudgeResult:
    try:
        return judge.score(item.question, answer, item.std_answer, item.klass)
    except KeyboardInterrupt:
        raise
    except Exception as exc:  # a third-party judge that raises marks the item, not the run
        return JudgeResult(error=f"{FAILED_PREFIX}{_first_line(exc)}")


def timed(generate: Callable[[str], str]) -> Answerer:
    """Wrap ``question -> text`` into an :data:`Answerer` that also measures seconds."""

    def answer(question: str) -> tuple[str, float]:
        start = time.perf_counter()
        text = generate(question)
        return text, time.perf_counter() - start

    return answer


def load_records_json(path: Path) -> list[dict]:
    """Plain dicts of ``answers.jsonl`` (for tests and notebooks)."""
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
