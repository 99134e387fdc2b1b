"""Generate the fast and slow minds' training data from templates, reproducibly from a seed.

Every sample is built with the agent's own functions (``fast_mind.build_context``,
``fast_view``, ``SlowMind.run_tool``, the protocol formatters), so training data and inference
prompts cannot drift apart. Tool outputs are real: each action runs through the same
``SlowMind.run_tool`` the agent uses, with today's date fixed by ``DUMA_TODAY``.

Output (sharegpt ``messages`` form, which keeps the system message):
``fast_train.jsonl``, ``fast_eval.jsonl``, ``slow_train.jsonl``, ``slow_eval.jsonl``,
``routing_eval.jsonl`` (per held-out fast-mind turn), ``router_train.jsonl`` (``{"text","slow"}``),
``fast_invoke_pairs.jsonl`` (the routing decisions of fast_train as DPO pairs),
``slow_prompts.jsonl`` (slow_train's questions with their answers, for GRPO)
and ``summary.json``; with ``general`` > 0 also ``general.jsonl``: the untrained model's own
replies to general prompts (self-distillation), which the fast-mind dialogues mix in so the fast
mind keeps what the base model already did. That file doubles as a cache: a second run with
the same model reuses its replies instead of decoding them again.
"""

from __future__ import annotations

import json
import os
import random
import re
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel

from .templates import (
    CHAT_FAMILIES,
    FAST_FOLLOWUP_FAMILIES,
    FAST_SLOW_FAMILIES,
    FINAL_REPLIES,
    FOLLOWUP_FAMILIES,
    FOLLOWUP_REPLIES,
    FOLLOWUPS,
    GENERAL_HELD,
    GENERAL_PROMPTS,
    GENERAL_ZH,
    GENERAL_ZH_HELD,
    INJECTION_PREFIXES,
    INJECTIONS,
    INJECTIONS_HELD,
    INTERIMS,
    NUMBER_FOLLOWUPS,
    SIMPLE_QA,
    SIMPLE_QA_HELD,
    SLOW_FAMILIES,
    TRANSLATE_FOLLOWUPS,
    WRITING,
    WRITING_HELD,
    Family,
    SlowTask,
    held_out,
    promises_lookup,
    template_id,
)

if TYPE_CHECKING:
    from duma.agents.slow_mind import SlowMind

KNOWLEDGE_DIR = Path(__file__).resolve().parents[2] / "examples" / "knowledge"
DEFAULT_TODAY = "2025-06-16"
MEMORY_TURNS = 20  # the agent's default dialogue memory (AgentConfig.memory_turns)
CHARS_PER_TOKEN = 3.5
# Tokens per word, digit, punctuation mark, Chinese character and message (its chat template),
# fitted on the default data against the embedded tokenizer (within 1% per file: SmolLM2 splits
# numbers into digits and has few Chinese pieces).
TOKEN_WEIGHTS = {"word": 1.19, "digit": 1.17, "punct": 0.83, "cjk": 1.88, "message": 5.2}
ZH_SHARE = 0.25  # Chinese dialogues and traces
# Slow traces: share that follow up an earlier computation ("And 18%?"), and share whose
# retrospect holds an earlier question of the same family (its numbers must not leak).
SLOW_FOLLOWUP_SHARE = 0.14
SLOW_SAME_FAMILY_SHARE = 0.12
GENERAL_MAX_TOKENS = 96
MIN_DISTINCT_TRIGRAMS = 0.8  # general replies repeating more of their word trigrams are dropped
# Fast dialogues: share of slow turns (not last in their dialogue) drawn from the families a
# new-computation follow-up can build on, so that "And 18%?" turns are frequent enough.
BASE_PREFERENCE = 0.5
INJECTED_QUESTION_SHARE = 0.05  # fast-mind questions prefixed with an attempt to keep them fast
MAX_REDRAWS = 100  # draws of one record that may hit --exclude messages before generation stops


class GenerateSummary(BaseModel):
    out: str
    seed: int
    today: str
    files: dict[str, int]  # file name -> records
    tokens_estimate: dict[str, int]  # file name -> chars / 3.5
    tokens_with_template: dict[str, int]  # file name -> estimated tokens with the chat template (what training sees)
    eval_templates: list[str]
    train_templates: list[str]
    zh_share: dict[str, float] = {}  # file name -> share of records (turns for routing files) in Chinese
    invoke_share: dict[str, float] = {}  # fast files -> share of user turns answered with Invoke[True]
    general: int = 0  # general replies available (self-distilled) for the fast dialogues


@contextmanager
def fixed_today(today: str) -> Iterator[None]:
    """Fix the date tools' clock (``DUMA_TODAY``) for the duration of the generation."""
    old = os.environ.get("DUMA_TODAY")
    os.environ["DUMA_TODAY"] = today
    try:
        yield
    finally:
        if old is None:
            os.environ.pop("DUMA_TODAY", None)
        else:
            os.environ["DUMA_TODAY"] = old


def load_generation_tools(knowledge_dir: Path = KNOWLEDGE_DIR) -> dict[str, Any]:
    """The registered tools, as the agent loads them, with search_knowledge over the examples."""
    return generation_tool_runner(knowledge_dir).tools


def generation_tool_runner(knowledge_dir: Path = KNOWLEDGE_DIR) -> SlowMind:
    """The runner whose observations the traces hold (``SlowMind.run_tool``, as inference)."""
    from duma.agents.agent import tool_runner

    # A generous tool timeout: building the knowledge index on a busy machine must not turn
    # into a timed-out observation in the data (the observations are otherwise identical).
    return tool_runner(knowledge_dir, tool_timeout_s=300.0)


# --------------------------------------------------------------------------- template pools

Pool = list[tuple[Family, int]]


@dataclass
class TemplatePools:
    """Templates per (split, lang): (family, phrasing index)."""

    slow: dict[tuple[str, str], Pool]
    chat: dict[tuple[str, str], Pool]
    followup: dict[tuple[str, str], Pool] = field(default_factory=dict)
    # The fast generator's extra slow turns and follow-ups (never in the slow traces).
    fast_slow: dict[tuple[str, str], Pool] = field(default_factory=dict)
    fast_followup: dict[tuple[str, str], Pool] = field(default_factory=dict)

    def fast_slow_pool(self, split: str, lang: str) -> Pool:
        return self.slow[(split, lang)] + self.fast_slow.get((split, lang), [])

    def fast_followup_pool(self, split: str, lang: str) -> Pool:
        return self.followup[(split, lang)] + self.fast_followup.get((split, lang), [])


def _template_pools(families: list[Family]) -> dict[tuple[str, str], Pool]:
    pools: dict[tuple[str, str], Pool] = {}
    for family in families:
        for lang, phrasings in family.phrasings.items():
            for i in range(len(phrasings)):
                split = "eval" if held_out(family, lang, i) else "train"
                pools.setdefault((split, lang), []).append((family, i))
    return pools


def _pick(rng: random.Random, pool: Pool, mind: str = "slow") -> tuple[Family, int]:
    """A family by its draw weight, then one of its phrasings in the pool."""
    families: list[Family] = []
    for family, _ in pool:
        if family not in families:
            families.append(family)
    weights = [f.draw_weight(mind) for f in families]
    family = rng.choices(families, weights)[0]
    return family, rng.choice([i for f, i in pool if f is family])


def draw_task(rng: random.Random, pool: Pool, lang: str, runner: SlowMind, mind: str = "slow"
              ) -> tuple[str, SlowTask]:
    family, i = _pick(rng, pool, mind)
    assert family.build is not None
    task = family.build(rng, family.phrasings[lang][i], runner.run_tool, lang)
    task.family = family.name
    return template_id(family, lang, i), task


def draw_followup(rng: random.Random, pool: Pool, lang: str, runner: SlowMind, base: SlowTask
                  ) -> tuple[str, SlowTask] | None:
    """A new computation on ``base`` ("And 18%?"), or None when no follow-up family fits it."""
    fitting = [(f, i) for f, i in pool if f.follows(base)]
    if not fitting:
        return None
    family, i = _pick(rng, fitting)
    assert family.follow is not None
    task = family.follow(rng, family.phrasings[lang][i], runner.run_tool, lang, base)
    task.family = base.family  # a follow-up can be followed up in turn
    return template_id(family, lang, i), task


def language_schedule(rng: random.Random, n: int) -> list[str]:
    """The language of each of ``n`` records: exactly ZH_SHARE of them Chinese, in a seeded
    order (a share drawn record by record strays too far on small runs)."""
    n_zh = round(n * ZH_SHARE)
    languages = ["zh"] * n_zh + ["en"] * (n - n_zh)
    rng.shuffle(languages)
    return languages


def final_reply(rng: random.Random, lang: str, answer: str) -> str:
    return rng.choice(FINAL_REPLIES[lang]).format(answer=answer)


# --------------------------------------------------------------------------- slow traces

def slow_messages(system_prompt: str, previous: list[tuple[str, str]], task: SlowTask) -> list[dict[str, str]]:
    """The exact message list ``SlowMind.run`` builds, ending with the Finish step."""
    from duma.agents import protocol

    messages = [{"role": "system", "content": system_prompt},
                {"role": "user", "content": protocol.format_retrospect(previous, task.query)}]
    for step in task.steps:
        messages.append({"role": "assistant", "content": protocol.format_slow_step(step.reason, step.action)})
        messages.append({"role": "user", "content": protocol.format_observation(step.observation)})
    messages.append({"role": "assistant",
                     "content": protocol.format_slow_step(task.finish_reason, finish=task.answer)})
    return messages


def _slow_record(rng: random.Random, split: str, lang: str, pools: TemplatePools, runner: SlowMind
                 ) -> tuple[list[str], list[tuple[str, str]], SlowTask]:
    """One slow trace: its template ids, the retrospect's earlier (question, answer) pairs and
    the task."""
    slow_pool = pools.slow[(split, lang)]
    previous: list[tuple[str, str]] = []
    draw = rng.random()
    if draw < SLOW_FOLLOWUP_SHARE:
        # A follow-up: the retrospect holds the earlier question and its answer.
        bases = {b for f, _ in pools.followup[(split, lang)] for b in f.base}
        base_template, base = draw_task(rng, [(f, i) for f, i in slow_pool if f.name in bases], lang, runner)
        drawn = draw_followup(rng, pools.followup[(split, lang)], lang, runner, base)
        assert drawn is not None
        template, task = drawn
        previous.append((base.query, final_reply(rng, lang, base.answer)))
        return [base_template, template], previous, task
    template, task = draw_task(rng, slow_pool, lang, runner)
    if draw < SLOW_FOLLOWUP_SHARE + SLOW_SAME_FAMILY_SHARE:
        # An earlier question of the same family: other numbers, which must not leak.
        same = [(f, i) for f, i in slow_pool if f.name == task.family]
        _, earlier = draw_task(rng, same, lang, runner)
        previous.append((earlier.query, final_reply(rng, lang, earlier.answer)))
    elif draw < 0.5:  # some traces start mid-dialogue (the retrospect has history)
        chat_family, chat_index = rng.choice(pools.chat[(split, lang)])
        previous.append((chat_family.phrasings[lang][chat_index], rng.choice(chat_family.responses[lang])))
    elif draw < 0.6:  # after an earlier looked-up answer of any family
        _, earlier = draw_task(rng, slow_pool, lang, runner)
        previous.append((earlier.query, final_reply(rng, lang, earlier.answer)))
    return [template], previous, task


def generate_slow(rng: random.Random, n: int, eval_fraction: float, pools: TemplatePools, runner: SlowMind,
                  system_prompt: str, excluded: frozenset[str] = frozenset()
                  ) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    train: list[dict[str, Any]] = []
    evals: list[dict[str, Any]] = []
    languages = language_schedule(rng, n)
    for k in range(n):
        split = "eval" if rng.random() < eval_fraction else "train"
        lang = languages[k]
        for _ in range(MAX_REDRAWS):  # drawn again while a user message is one of the excluded ones
            templates, previous, task = _slow_record(rng, split, lang, pools, runner)
            if not _excluded_hit([task.query, *(q for q, _ in previous)], excluded):
                break
        else:
            raise _redraws_exhausted(task.query)
        target = evals if split == "eval" else train
        target.append({"id": f"slow-{split}-{k:05d}:" + "+".join(templates), "category": f"slow/{split}",
                       "messages": slow_messages(system_prompt, previous, task),
                       "expected": task.expected})
    return train, evals


# --------------------------------------------------------------------------- general replies

_SENTENCE_END = re.compile(r"[.!?。！？](?=\s|$)|\n")


def clean_general_reply(text: str, finish_reason: str) -> str | None:
    """A distilled reply fit for training, or None. A reply cut at the token cap (or by the
    repetition guard) ends at its last full sentence or line; a repeated sentence ends it there;
    a reply that repeats itself a lot (under MIN_DISTINCT_TRIGRAMS of its word trigrams
    distinct), has protocol markup or promises to look something up is dropped."""
    from duma.agents.protocol import PROTOCOL_FIELDS

    text = text.strip()
    cut = finish_reason == "length"
    kept: list[str] = []
    seen: set[str] = set()
    start = 0
    pending = ""  # a list marker ("2.") belongs to the sentence after it
    for match in _SENTENCE_END.finditer(text):
        segment = pending + text[start:match.end()]
        start = match.end()
        if re.fullmatch(r"\s*\d+[.)]", segment):
            pending = segment
            continue
        pending = ""
        key = segment.strip()
        if len(key) > 10 and key in seen:
            cut = True
            break
        seen.add(key)
        kept.append(segment)
    else:
        if not cut:
            kept.append(pending + text[start:])  # the last sentence, complete when the model stopped itself
    reply = "".join(kept).strip()
    if len(reply) < 2:
        return None
    words = re.findall(r"\w+", reply.lower())
    trigrams = list(zip(words, words[1:], words[2:]))
    if len(trigrams) >= 8 and len(set(trigrams)) < MIN_DISTINCT_TRIGRAMS * len(trigrams):
        return None  # a reply that goes round in circles teaches looping
    if promises_lookup(reply) or re.search(r"\b(" + "|".join(PROTOCOL_FIELDS) + r")\[", reply):
        return None
    return reply


def general_prompts(n: int) -> tuple[list[int], list[int]]:
    """Indices into GENERAL_PROMPTS to distill for ``n``: (train, eval). The last GENERAL_HELD
    prompts are eval-only; about one in ten of the ``n`` is held out."""
    n_train_all = len(GENERAL_PROMPTS) - GENERAL_HELD
    n_eval = min(GENERAL_HELD, max(1, n // 10)) if n > 0 else 0
    n_train = min(n_train_all, max(n - n_eval, 0))
    return list(range(n_train)), list(range(n_train_all, n_train_all + n_eval))


def _general_key(model: str, backend: str, max_tokens: int) -> str:
    return f"{model}|{backend}|{max_tokens}"


def _read_cache(path: Path) -> list[dict[str, Any]]:
    rows = []
    if path.exists():
        for line in path.read_text(encoding="utf-8").splitlines():
            try:
                row = json.loads(line)
            except ValueError:
                continue  # a line cut by an interrupted run
            if isinstance(row, dict) and {"key", "prompt", "raw", "finish_reason"} <= set(row):
                rows.append(row)
    return rows


def distill_general(out: Path, n: int, model: str = "embedded", backend: str = "onnxruntime",
                    max_tokens: int = GENERAL_MAX_TOKENS, progress: Callable[[str], None] | None = None
                    ) -> dict[int, str]:
    """The base model's own greedy replies to ``n`` general prompts (plain chat, no system
    prompt of duma's), cleaned; cached in ``out/general.jsonl`` per (model, backend, cap), one
    line per reply as soon as it is decoded (an interrupted run keeps what it did).
    Returns prompt index -> reply (prompts whose reply was dropped are absent)."""
    train, evals = general_prompts(n)
    wanted = train + evals
    if not wanted:
        return {}
    key = _general_key(model, backend, max_tokens)
    path = out / "general.jsonl"
    rows = _read_cache(path)
    cached = {r["prompt"]: r for r in rows if r["key"] == key}
    missing = [i for i in wanted if GENERAL_PROMPTS[i] not in cached]
    if missing:
        from duma import models
        from duma.backend import stream_guarded
        from duma.types import GenerationOptions, Message, ModelSpec

        llm = models.load_backend(ModelSpec(model=model, backend=backend))
        options = GenerationOptions(max_tokens=max_tokens, temperature=0.0)
        with path.open("a", encoding="utf-8", newline="\n") as cache:
            for count, i in enumerate(missing, 1):
                prompt = GENERAL_PROMPTS[i]
                parts: list[str] = []
                finish = "stop"
                for chunk in stream_guarded(llm, [Message(role="user", content=prompt)], options):
                    parts.append(chunk.text)
                    if chunk.done:
                        finish = chunk.finish_reason or "stop"
                raw = "".join(parts)
                row = {"key": key, "prompt": prompt, "raw": raw, "finish_reason": finish,
                       "reply": clean_general_reply(raw, finish)}
                cached[prompt] = row
                cache.write(json.dumps(row, ensure_ascii=False) + "\n")
                cache.flush()
                if progress:
                    progress(f"general replies: {count}/{len(missing)}")
        # Rewrite in prompt order (rows of other models stay), so the file does not depend on
        # how often the runs before were interrupted.
        order = {p: k for k, p in enumerate(GENERAL_PROMPTS)}
        others = [r for r in rows if r["key"] != key]
        mine = sorted(cached.values(), key=lambda r: order.get(r["prompt"], len(order)))
        _write_jsonl(path, others + mine)
    # Cleaned from the raw text each time: a change to the cleaning needs no new decoding.
    replies = {i: clean_general_reply(cached[GENERAL_PROMPTS[i]]["raw"], cached[GENERAL_PROMPTS[i]]["finish_reason"])
               for i in wanted}
    return {i: reply for i, reply in replies.items() if reply}


# --------------------------------------------------------------------------- fast dialogues

def logged_message(role: str, content: str, kind: str, index: int) -> Any:
    """A message as the agent's log store would hold it (the agent builds its contexts from
    those)."""
    from duma.logstore import LoggedMessage

    return LoggedMessage(id=index, conversation_id="gen", role=role, content=content, meta={"kind": kind},
                         created=0.0)


@dataclass
class Turn:
    template: str
    text: str
    slow: bool
    expected: str
    outputs: list[tuple[str, str, str]]  # (role, content, kind) logged after the user message
    kind: str = ""  # slow, newcalc, recall, chat, ack, joke, writing, general, simple, injection
    question: str = ""  # a handed-over question without the injection prefix before it (text)


@dataclass
class DialogueState:
    last_slow: SlowTask | None = None  # the latest slow-mind task of the dialogue
    previous: str = ""  # the kind of the turn before ("" for the first)


def _pool_indices(n: int, held: int, split: str) -> list[int]:
    return list(range(n - held, n)) if split == "eval" else list(range(n - held))


def _phrasing(rng: random.Random, phrasings: list[str], split: str) -> int:
    """A phrasing index of a list whose last entry is held out."""
    n = len(phrasings)
    return n - 1 if split == "eval" else rng.randrange(n - 1)


_NUMBER = re.compile(r"^-?\d[\d,]*(?:\.\d+)?$")
_CHAT_WEIGHTS = {"first": {"greet": 5, "smalltalk": 4, "thanks": 0.5, "bye": 0.5},
                 "later": {"greet": 1, "smalltalk": 2.5, "thanks": 4.5, "bye": 2}}


def _turn_weights(state: DialogueState, first: bool, has_general: bool) -> dict[str, float]:
    after_slow = state.previous in ("slow", "newcalc")
    # Direct turns outnumber slow ones (a fast mind trained on 43% slow turns, then DPO, sent
    # 84% of real users' turns, small talk included, to the slow mind).
    if first:
        weights = {"slow": 0.36, "chat": 0.18, "joke": 0.06, "writing": 0.08, "general": 0.22, "simple": 0.10,
                   "injection": 0.03}
    elif after_slow:
        weights = {"slow": 0.12, "newcalc": 0.30, "recall": 0.19, "ack": 0.14, "chat": 0.10, "joke": 0.03,
                   "writing": 0.03, "general": 0.04, "simple": 0.03, "injection": 0.02}
    else:
        weights = {"slow": 0.34, "recall": 0.04 if state.last_slow else 0, "ack": 0.10, "chat": 0.12, "joke": 0.06,
                   "writing": 0.06, "general": 0.18, "simple": 0.10, "injection": 0.03}
    if not has_general:  # its share goes to the other direct replies
        extra = weights.pop("general", 0) / 4
        for kind in ("chat", "joke", "writing", "simple"):
            weights[kind] = weights.get(kind, 0) + extra
    return {k: v for k, v in weights.items() if v > 0}


def _slow_turn(rng: random.Random, split: str, lang: str, template: str, task: SlowTask, kind: str) -> Turn:
    from duma.agents import fast_mind

    interims = INTERIMS[lang] if split == "eval" else INTERIMS[lang][:-1]
    text = task.query
    if rng.random() < INJECTED_QUESTION_SHARE:
        text = rng.choice(INJECTION_PREFIXES[lang]) + text
    return Turn(template, text, True, task.expected,
                [("assistant", rng.choice(interims), fast_mind.KIND_INTERIM),
                 ("system", task.answer, fast_mind.KIND_SLOW),
                 ("assistant", final_reply(rng, lang, task.answer), fast_mind.KIND_REPLY)], kind, task.query)


def _direct(template: str, text: str, reply: str, expected: str, kind: str) -> Turn:
    from duma.agents import fast_mind

    if promises_lookup(reply):
        raise AssertionError(f"a direct reply promises a lookup: {reply!r}")
    return Turn(template, text, False, expected, [("assistant", reply, fast_mind.KIND_REPLY)], kind)


def _draw_turn(rng: random.Random, split: str, lang: str, pools: TemplatePools, runner: SlowMind,
               state: DialogueState, first: bool, general: dict[int, str], last_turn: bool = False) -> Turn:
    general_pool = [i for i in general if (i >= len(GENERAL_PROMPTS) - GENERAL_HELD) == (split == "eval")]
    weights = _turn_weights(state, first, bool(general_pool) or lang == "zh")
    kind = rng.choices(list(weights), list(weights.values()))[0]
    last = state.last_slow
    if kind == "newcalc" and last is not None:
        drawn = draw_followup(rng, pools.fast_followup_pool(split, lang), lang, runner, last)
        if drawn is not None:
            template, task = drawn
            state.last_slow = task
            return _slow_turn(rng, split, lang, template, task, "newcalc")
        kind = "slow"
    if kind in ("slow", "newcalc"):
        pool = pools.fast_slow_pool(split, lang)
        if not last_turn and rng.random() < BASE_PREFERENCE:  # a question a follow-up can build on
            bases = {b for f, _ in pools.fast_followup_pool(split, lang) for b in f.base}
            pool = [(f, i) for f, i in pool if f.name in bases]
        template, task = draw_task(rng, pool, lang, runner, mind="fast")
        state.last_slow = task
        return _slow_turn(rng, split, lang, template, task, "slow")
    if kind == "recall" and last is not None:
        # Answered from the dialogue: the answer again, only its number, or in the other language.
        options = ["repeat"] + (["number"] if _NUMBER.match(last.expected) else []) + \
            (["translate"] if last.answer_alt else [])
        which = rng.choice(options)
        if which == "number":
            i = _phrasing(rng, NUMBER_FOLLOWUPS[lang], split)
            return _direct(f"recall_number/{lang}{i}", NUMBER_FOLLOWUPS[lang][i], last.expected, last.expected,
                           "recall")
        if which == "translate":
            assert last.answer_alt is not None
            i = _phrasing(rng, TRANSLATE_FOLLOWUPS[lang], split)
            return _direct(f"recall_lang/{lang}{i}", TRANSLATE_FOLLOWUPS[lang][i], last.answer_alt, last.expected,
                           "recall")
        i = _phrasing(rng, FOLLOWUPS[lang], split)
        reply = rng.choice(FOLLOWUP_REPLIES[lang]).format(answer=last.answer)
        return _direct(f"followup/{lang}{i}", FOLLOWUPS[lang][i], reply, last.expected, "recall")
    if kind == "injection":
        i = rng.choice(_pool_indices(len(INJECTIONS[lang]), INJECTIONS_HELD[lang], split))
        prompt, reply = INJECTIONS[lang][i]
        return _direct(f"injection/{lang}{i}", prompt, reply, "", "injection")
    if kind == "simple":
        i = rng.choice(_pool_indices(len(SIMPLE_QA[lang]), SIMPLE_QA_HELD[lang], split))
        question, answer, key = SIMPLE_QA[lang][i]
        return _direct(f"simple_qa/{lang}{i}", question, answer, key, "simple")
    if kind == "writing":
        i = rng.choice(_pool_indices(len(WRITING[lang]), WRITING_HELD[lang], split))
        prompt, reply = WRITING[lang][i]
        return _direct(f"writing/{lang}{i}", prompt, reply, "", "writing")
    if kind == "general" and lang == "zh":
        i = rng.choice(_pool_indices(len(GENERAL_ZH), GENERAL_ZH_HELD, split))
        prompt, reply = GENERAL_ZH[i]
        return _direct(f"general/zh{i}", prompt, reply, "", "general")
    if kind == "general" and general_pool:
        i = rng.choice(general_pool)
        return _direct(f"general/en{i}", GENERAL_PROMPTS[i], general[i], "", "general")
    # Chat families: chit-chat, acknowledgements and jokes have no single right answer (any
    # direct reply counts: "" is in every text).
    chat_pool = pools.chat[(split, lang)]
    if kind in ("ack", "joke"):
        candidates = [(f, i) for f, i in chat_pool if f.name == kind]
    else:
        table = _CHAT_WEIGHTS["first" if first else "later"]
        names = [name for name in table if any(f.name == name for f, _ in chat_pool)]
        name = rng.choices(names, [table[n] for n in names])[0]
        candidates = [(f, i) for f, i in chat_pool if f.name == name]
    family, i = rng.choice(candidates)
    return _direct(template_id(family, lang, i), family.phrasings[lang][i], rng.choice(family.responses[lang]), "",
                   kind if kind in ("ack", "joke") else "chat")


def fast_messages(system_prompt: str, turns: list[Turn]) -> tuple[list[dict[str, str]], list[list[Any]]]:
    """The message list of a whole dialogue, built with the agent's own ``build_context``
    (for the last user turn) and ``fast_view`` (for what the turn adds); also the logged
    history before each turn (for routing_eval)."""
    from duma.agents import fast_mind

    history: list[Any] = []
    before: list[list[Any]] = []
    for turn in turns:
        before.append(list(history))
        history.append(logged_message("user", turn.text, fast_mind.KIND_USER, len(history)))
        for role, content, kind in turn.outputs:
            history.append(logged_message(role, content, kind, len(history)))
    last_start = len(before[-1])
    context = fast_mind.build_context(system_prompt, before[-1], turns[-1].text, MEMORY_TURNS)
    tail = [fast_mind.fast_view(m) for m in history[last_start + 1:]]
    messages = [m.model_dump() for m in context] + [m.model_dump() for m in tail if m is not None]
    return [{"role": m["role"], "content": m["content"]} for m in messages], before


def _history_json(history: list[Any]) -> list[dict[str, str]]:
    return [{"role": m.role, "content": m.content, "kind": m.meta.get("kind", "")} for m in history]


def generate_fast(rng: random.Random, n: int, eval_fraction: float, pools: TemplatePools, runner: SlowMind,
                  system_prompt: str, general: dict[int, str] | None = None, excluded: frozenset[str] = frozenset()
                  ) -> tuple[list[dict[str, Any]], list[dict[str, Any]], list[dict[str, Any]], list[dict[str, Any]]]:
    train: list[dict[str, Any]] = []
    evals: list[dict[str, Any]] = []
    routing_eval: list[dict[str, Any]] = []
    router_train: list[dict[str, Any]] = []
    languages = language_schedule(rng, n)
    for k in range(n):
        split = "eval" if rng.random() < eval_fraction else "train"
        lang = languages[k]
        n_turns = rng.choice([1, 2, 2, 3, 3])
        turns: list[Turn] = []
        state = DialogueState()
        for j in range(n_turns):
            last_slow = state.last_slow
            for _ in range(MAX_REDRAWS):  # drawn again while the user message is an excluded one
                state.last_slow = last_slow
                turn = _draw_turn(rng, split, lang, pools, runner, state, j == 0, general or {}, j == n_turns - 1)
                if not _excluded_hit([turn.text, turn.question], excluded):
                    break
            else:
                raise _redraws_exhausted(turn.text)
            state.previous = turn.kind
            turns.append(turn)
        messages, before = fast_messages(system_prompt, turns)
        rid = f"fast-{split}-{k:05d}"
        # The id names the templates (``fast-train-00003:greet/en0+percent/en1``); the category
        # is the split, so ``duma data stats`` groups by it.
        record = {"id": f"{rid}:" + "+".join(t.template for t in turns), "category": f"fast/{split}",
                  "messages": messages}
        (evals if split == "eval" else train).append(record)
        for j, turn in enumerate(turns):
            if split == "eval":
                routing_eval.append({"id": f"{rid}-t{j}", "dialogue": record["id"], "template": turn.template,
                                     "kind": turn.kind, "lang": lang, "text": turn.text,
                                     "history": _history_json(before[j]), "slow": turn.slow,
                                     "expected": turn.expected})
            else:
                router_train.append({"text": turn.text, "slow": turn.slow})
    return train, evals, routing_eval, router_train


# --------------------------------------------------------------------------- driver

def _excluded_hit(messages: list[str], excluded: frozenset[str]) -> bool:
    """Whether a user message, as the minds see it (markup neutralised), is one of the excluded
    ones. They hold each test message both as written and neutralised, and neutralising twice
    changes nothing, so a message equal to either form is caught."""
    from duma.agents.protocol import neutralize_markup

    return bool(excluded) and any(m and neutralize_markup(m).strip() in excluded for m in messages)


def _redraws_exhausted(message: str) -> Exception:
    from duma.errors import DumaError

    return DumaError(f"--exclude: {MAX_REDRAWS} draws in a row hit excluded messages (last: {message!r})",
                     "exclude a test set, not the templates' own wordings")


def excluded_messages(path: Path) -> frozenset[str]:
    """The user messages of a test set: each JSONL record's ``user`` values (at any depth, as in
    the hand-written set's ``turns``) and its ``text``, each also as the minds see it (markup
    neutralised)."""
    from duma.agents.protocol import neutralize_markup
    from duma.data import RecordProblem, iter_raw
    from duma.errors import DumaError

    found: set[str] = set()

    def collect(value: Any) -> None:
        if isinstance(value, dict):
            for key, item in value.items():
                if key in ("user", "text") and isinstance(item, str):
                    found.add(item.strip())
                else:
                    collect(item)
        elif isinstance(value, list):
            for item in value:
                collect(item)

    for line, raw in iter_raw(path):
        if isinstance(raw, RecordProblem):
            raise DumaError(f"{path}:{line}: {raw.problem}", "the test set to exclude must be JSONL")
        collect(raw)
    return frozenset(found | {neutralize_markup(m).strip() for m in found})


def template_ids(record_id: str) -> list[str]:
    """The template ids a record was built from (they follow the ``:`` of its id)."""
    return record_id.split(":", 1)[1].split("+")


def _write_jsonl(path: Path, records: list[dict[str, Any]]) -> None:
    with path.open("w", encoding="utf-8", newline="\n") as f:
        for r in records:
            f.write(json.dumps(r, ensure_ascii=False) + "\n")


_CJK = re.compile(r"[\u3000-\u303f\u3400-\u4dbf\u4e00-\u9fff\uff00-\uffef]")


def estimate_tokens(text: str) -> float:
    """Tokens of one message's ``text`` for the embedded tokenizer, its chat template included
    (an estimate)."""
    w = TOKEN_WEIGHTS
    cjk = len(_CJK.findall(text))
    rest = _CJK.sub(" ", text)
    return (w["word"] * len(re.findall(r"[^\W\d_]+", rest)) + w["digit"] * len(re.findall(r"\d", rest))
            + w["punct"] * len(re.findall(r"[^\w\s]", rest)) + w["cjk"] * cjk + w["message"])


def _message_chars(records: list[dict[str, Any]]) -> int:
    return sum(len(m["content"]) for r in records for m in r.get("messages", []))


def _message_tokens(records: list[dict[str, Any]]) -> int:
    return round(sum(estimate_tokens(m["content"]) for r in records for m in r.get("messages", [])))


def _is_zh(text: str) -> bool:
    return bool(_CJK.search(text))


def _zh_share(name: str, records: list[dict[str, Any]]) -> float:
    if not records:
        return 0.0
    if name.startswith("rout"):
        return round(sum(_is_zh(r["text"]) for r in records) / len(records), 3)
    # A record is Chinese when its first user text is.
    firsts = [next((m["content"] for m in r["messages"] if m["role"] == "user"), "") for r in records]
    return round(sum(_is_zh(t) for t in firsts) / len(records), 3)


def _invoke_share(records: list[dict[str, Any]]) -> float:
    from duma.agents import protocol

    turns = invoked = 0
    for r in records:
        messages = r["messages"]
        for prev, message in zip(messages, messages[1:]):
            if message["role"] == "assistant" and prev["content"].startswith("User["):
                turns += 1
                invoked += protocol.parse_fast(message["content"]).invoke
    return round(invoked / turns, 3) if turns else 0.0


def invoke_pairs(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The fast mind's routing decisions as preference pairs (data source ``preference``, for
    ``method: dpo`` after SFT): at each first pass of a turn, the right output against the same
    reply with the other decision, so that only the decision differs. A handoff's interim with
    ``Invoke[False]`` is the promise never kept; a direct reply with ``Invoke[True]`` is the
    needless handoff. (Opposing a direct reply to a fixed interim taught the cheaper lesson
    "not that interim" and pushed every decision towards Invoke[True].)"""
    from duma.agents import protocol

    pairs = []
    for record in records:
        messages = record["messages"]
        for i, message in enumerate(messages):
            if message["role"] != "assistant" or messages[i - 1]["content"].startswith("SlowMind["):
                continue  # a handoff's final pass follows the slow mind: no decision left to make
            out = protocol.parse_fast(message["content"])
            if not out.parse_ok:
                continue
            pairs.append({"messages": messages[:i], "chosen": message["content"],
                          "rejected": protocol.format_fast_output(out.response, not out.invoke)})
    return pairs


def generate(out: Path, seed: int = 0, n_fast: int = 700, n_slow: int = 900, eval_fraction: float = 0.15,
             today: str = DEFAULT_TODAY, knowledge_dir: Path = KNOWLEDGE_DIR, general: int = 0,
             general_model: str = "embedded", general_backend: str = "onnxruntime",
             exclude: Path | None = None, progress: Callable[[str], None] | None = None) -> GenerateSummary:
    """Write the data files to ``out``; same arguments (and, with ``general``, the same model)
    give byte-identical files.

    ``general``: how many general prompts to answer with ``general_model``'s own greedy replies
    (self-distillation, cached in ``out/general.jsonl``) and mix into the fast dialogues; 0 for
    none. ``general_backend``: onnxruntime by default, the int8 build ``duma chat`` runs on a CPU
    (the same machine gives the same replies; about five times faster here than float32
    transformers).

    ``exclude``: a test set (JSONL) whose user messages no generated user message may equal
    (a turn or trace that draws one is drawn again), so that it stays unseen in training."""
    from duma.agents import fast_mind

    excluded = excluded_messages(exclude) if exclude else frozenset()
    out.mkdir(parents=True, exist_ok=True)
    pools = TemplatePools(slow=_template_pools(SLOW_FAMILIES), chat=_template_pools(CHAT_FAMILIES),
                          followup=_template_pools(FOLLOWUP_FAMILIES), fast_slow=_template_pools(FAST_SLOW_FAMILIES),
                          fast_followup=_template_pools(FAST_FOLLOWUP_FAMILIES))
    replies = distill_general(out, general, general_model, general_backend, progress=progress) if general else {}
    with fixed_today(today):
        runner = generation_tool_runner(knowledge_dir)
        fast_system = fast_mind.fast_system_prompt(None, None)
        # Separate streams: changing --fast does not change the slow traces.
        slow_train, slow_eval = generate_slow(random.Random(f"{seed}-slow"), n_slow, eval_fraction, pools,
                                              runner, runner.system_prompt, excluded)
        fast_train, fast_eval, routing_eval, router_train = generate_fast(
            random.Random(f"{seed}-fast"), n_fast, eval_fraction, pools, runner, fast_system, replies, excluded)
    # "expected" is for measurement only: kept out of the training records (a side file).
    slow_expected = {r["id"]: r.pop("expected") for r in slow_train + slow_eval}
    files = {"fast_train.jsonl": fast_train, "fast_eval.jsonl": fast_eval, "slow_train.jsonl": slow_train,
             "slow_eval.jsonl": slow_eval, "routing_eval.jsonl": routing_eval, "router_train.jsonl": router_train,
             "fast_invoke_pairs.jsonl": invoke_pairs(fast_train),
             # The slow traces' questions with their answers: GRPO's prompts (data source prompts).
             "slow_prompts.jsonl": [{"messages": r["messages"][:2], "answer": slow_expected[r["id"]]}
                                    for r in slow_train]}
    for name, records in files.items():
        _write_jsonl(out / name, records)
    _write_jsonl(out / "slow_expected.jsonl",
                 [{"id": k, "expected": v} for k, v in slow_expected.items() if k.startswith("slow-eval")])
    by_split: dict[str, set[str]] = {"train": set(), "eval": set()}
    for r in fast_train + fast_eval + slow_train + slow_eval:
        by_split[r["category"].split("/")[1]].update(template_ids(r["id"]))
    summary = GenerateSummary(
        out=str(out), seed=seed, today=today, files={n: len(r) for n, r in files.items()},
        tokens_estimate={n: round(_message_chars(r) / CHARS_PER_TOKEN) for n, r in files.items() if n.startswith(("fast", "slow"))},
        tokens_with_template={n: _message_tokens(r) for n, r in files.items() if n.startswith(("fast", "slow"))},
        eval_templates=sorted(by_split["eval"]), train_templates=sorted(by_split["train"]),
        zh_share={n: _zh_share(n, r) for n, r in files.items()},
        invoke_share={n: _invoke_share(r) for n, r in files.items() if n in ("fast_train.jsonl", "fast_eval.jsonl")},
        general=len(replies))
    (out / "summary.json").write_text(json.dumps(summary.model_dump(), ensure_ascii=False, indent=1) + "\n",
                                      encoding="utf-8")
    return summary
