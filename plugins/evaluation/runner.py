"""The resumable runner of ``duma eval``: answer every item of a set, judge every answer and
append one record per item to a JSONL file as soon as it is judged.

An *answerer* turns a question into an :class:`Answer` (the text, the seconds taken and, for
the agent, its routing) or raises; :func:`backend_answerer` and :func:`agent_answerer` make
one from a model backend or an agent. A run may ask several answerers per item: ``duma eval
run`` asks one (:class:`AnswerRecord`, a line of ``answers.jsonl``), ``duma eval agent`` asks
the agent, its fast mind alone and its slow path alone (``AgentTurnRecord``, a line of
``agent_turns.jsonl``).

A failing answerer is retried, then its answer is marked with ``answer_error``; a judge that
raises marks the answer with a ``failed:`` judge error. Each record is flushed as soon as it is
written, so an interrupted run loses at most the item in flight. With ``resume`` the records
already in the file are read back: finished items are skipped, and of an unfinished one only
the answers that failed are redone (an answer whose judge failed is judged again, not asked
again). At the end the file is rewritten with exactly one line per id, in set order.
"""

from __future__ import annotations

import sys
import time
from abc import abstractmethod
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, Self, TypeVar

from pydantic import BaseModel, ValidationError

from duma.errors import first_line
from duma.judge import FAILED_PREFIX, Judge, JudgeResult
from duma.plugins.evaluation.dataset import EvalItem
from duma.plugins.evaluation.report import EvalReport, ScoredItem, score_items

if TYPE_CHECKING:
    from duma.agents import Reply
    from duma.backend import Backend
    from duma.types import GenerationOptions

ANSWERS_FILE = "answers.jsonl"
ANSWER = "answer"  # the one answerer of ``duma eval run``


class Answer(BaseModel):
    """One answerer's answer to one item, and its judgement."""

    answer: str | None = None
    answer_error: str | None = None
    latency_s: float | None = None
    slow_ran: bool | None = None  # set by agent answerers
    router_score: float | None = None  # set by agent answerers when the router scores turns
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
        run keeps it. Failures (of the answerer or of the judge) are tried again."""
        if not self.answered:
            return False
        return self.score is not None or not (self.judge_error or "").startswith(FAILED_PREFIX)


Answerer = Callable[[str], Answer]
"""Turns a question into an :class:`Answer` with ``answer`` and ``latency_s`` set; may raise."""


class ItemRecord(BaseModel):
    """One line of a run's JSONL file: the item and the answers of the run's answerers."""

    id: str
    klass: str
    question: str
    std_answer: str = ""

    @abstractmethod
    def answers(self) -> dict[str, Answer]:
        """The answers by answerer name."""

    @classmethod
    @abstractmethod
    def from_answers(cls, item: EvalItem, answers: dict[str, Answer]) -> Self:
        """The record of ``item`` with these answers (one per answerer name)."""

    @staticmethod
    def item_fields(item: EvalItem) -> dict[str, Any]:
        return item.model_dump(include=set(ItemRecord.model_fields))

    @property
    def finished(self) -> bool:
        """Every answer is done: a resumed run skips the item."""
        return all(answer.done for answer in self.answers().values())


class AnswerRecord(Answer, ItemRecord):
    """One line of ``answers.jsonl``: the item and its one answer, flat."""

    def answers(self) -> dict[str, Answer]:
        return {ANSWER: self}

    @classmethod
    def from_answers(cls, item: EvalItem, answers: dict[str, Answer]) -> Self:
        return cls(**cls.item_fields(item), **answers[ANSWER].model_dump(include=set(Answer.model_fields)))

    def scored(self) -> ScoredItem:
        error = self.judge_error
        if not self.answered:
            error = f"{FAILED_PREFIX}answer: {self.answer_error}"
        return ScoredItem(id=self.id, klass=self.klass, score=self.score, error=error)


RecordT = TypeVar("RecordT", bound=ItemRecord)


def read_records(path: Path, record_type: type[RecordT]) -> dict[str, RecordT]:
    """Records already in a run's file (a later line for an id wins). A line cut short by an
    interruption, or otherwise unreadable, is skipped with one warning: that item runs again."""
    records: dict[str, RecordT] = {}
    if not path.exists():
        return records
    bad: list[int] = []
    for lineno, line in enumerate(path.read_text(encoding="utf-8", errors="replace").splitlines(), 1):
        if not line.strip():
            continue
        try:
            record = record_type.model_validate_json(line)
        except ValidationError:
            bad.append(lineno)
            continue
        records[record.id] = record
    if bad:
        print(f"duma: warning: {path}: skipped {len(bad)} unreadable line(s) (first: line {bad[0]}); "
              "those items are run again", file=sys.stderr)
    return records


def _write_all(path: Path, records: Sequence[ItemRecord]) -> None:
    from duma.paths import write_atomically

    text = "".join(record.model_dump_json() + "\n" for record in records)
    write_atomically(path, lambda tmp: tmp.write_text(text, encoding="utf-8"))


def answer_with_retries(answerer: Answerer, question: str, retries: int) -> Answer:
    """The answerer's answer; when it raises it is tried ``retries`` more times, then the
    answer carries the last error."""
    error = ""
    for _ in range(retries + 1):
        try:
            return answerer(question)
        except KeyboardInterrupt:
            raise
        except Exception as exc:  # a failing answerer marks the item; the run goes on
            error = first_line(exc, with_type=True)
    return Answer(answer_error=f"{error} (after {retries + 1} attempts)")


def judge_answer(judge: Judge, item: EvalItem, answer: Answer) -> Answer:
    """``answer`` with the judge's score (an answered one only); a judge that raises marks the
    answer with a ``failed:`` judge error, not the run."""
    if not answer.answered:
        return answer.model_copy(update={"judge": judge.name})
    try:
        result = judge.score(item.question, answer.answer or "", item.std_answer, item.klass)
    except KeyboardInterrupt:
        raise
    except Exception as exc:
        result = JudgeResult(error=f"{FAILED_PREFIX}{first_line(exc, with_type=True)}")
    return answer.model_copy(update={"judge": judge.name, "score": result.score, "judge_raw": result.raw,
                                     "judge_error": result.error})


def answer_and_judge(items: Sequence[EvalItem], answerers: Mapping[str, Answerer], judge: Judge, path: Path,
                     record_type: type[RecordT], *, resume: bool = True, retries: int = 2,
                     on_record: Callable[[RecordT, int], None] | None = None) -> list[RecordT]:
    """Ask every answerer about every item, judge the answers and append the records to
    ``path`` (see the module docstring for resuming). ``on_record(record, position)`` is
    called for each new record, ``position`` being the item's 1-based place in ``items``.
    Returns the records of ``items``, in order."""
    path.parent.mkdir(parents=True, exist_ok=True)
    previous = read_records(path, record_type) if resume else {}
    if not resume and path.exists():
        path.unlink()
    wanted = {item.id for item in items}
    results: dict[str, RecordT] = {k: v for k, v in previous.items() if k in wanted}
    try:
        with path.open("a", encoding="utf-8") as fh:
            for position, item in enumerate(items, 1):
                old = previous.get(item.id)
                if old is not None and old.finished:
                    continue
                kept = old.answers() if old is not None else {}
                answers = {}
                for name, answerer in answerers.items():
                    answer = kept.get(name)
                    if answer is None or not answer.done:
                        if answer is None or not answer.answered:
                            answer = answer_with_retries(answerer, item.question, retries)
                        answer = judge_answer(judge, item, answer)
                    answers[name] = answer
                record = record_type.from_answers(item, answers)
                fh.write(record.model_dump_json() + "\n")
                fh.flush()
                results[item.id] = record
                if on_record is not None:
                    on_record(record, position)
    finally:
        # One line per id, in set order, whatever happened; records of ids outside this
        # run's selection are kept after them.
        ordered = [results[i.id] for i in items if i.id in results]
        _write_all(path, ordered + [r for k, r in previous.items() if k not in wanted])
    return [results[i.id] for i in items if i.id in results]


def run_judged_eval(items: Sequence[EvalItem], answerer: Answerer, judge: Judge, out_dir: str | Path, *,
                    resume: bool = True, retries: int = 2, bootstrap: int = 1000, seed: int = 0,
                    set_name: str | None = None, model: str | None = None,
                    on_record: Callable[[AnswerRecord, int], None] | None = None) -> EvalReport:
    """``duma eval run``: answer and judge ``items`` into ``out_dir/answers.jsonl`` and score
    them as BELLE does."""
    records = answer_and_judge(items, {ANSWER: answerer}, judge, Path(out_dir) / ANSWERS_FILE, AnswerRecord,
                               resume=resume, retries=retries, on_record=on_record)
    return score_items([r.scored() for r in records], bootstrap=bootstrap, seed=seed, set_name=set_name,
                       model=model, judge=judge.name)


# --- answerers ----------------------------------------------------------------------------

class ChatAgent(Protocol):
    """What an agent answerer needs of :class:`duma.agents.Agent`."""

    def chat(self, text: str, conversation_id: str | None = None) -> Reply: ...


def backend_answerer(backend: Backend, options: GenerationOptions) -> Answerer:
    """A model answering each question alone, as the only user message."""
    from duma.types import Message

    def answer(question: str) -> Answer:
        start = time.perf_counter()
        text = backend.generate([Message(role="user", content=question)], options).text
        return Answer(answer=text, latency_s=time.perf_counter() - start)

    return answer


def agent_answerer(agent: ChatAgent) -> Answerer:
    """The agent answering each question in a fresh conversation; records whether the slow
    mind ran, the router's score and the turn's latency."""

    def answer(question: str) -> Answer:
        start = time.perf_counter()
        reply = agent.chat(question)
        return Answer(answer=reply.text, latency_s=reply.total_s or time.perf_counter() - start,
                      slow_ran=reply.slow_ran, router_score=reply.router_score)

    return answer
