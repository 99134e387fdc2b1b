"""Generate the fast and slow minds' training data from templates, reproducibly from a seed.

Every sample is built with the agent's own functions (``fast_mind.build_context``,
``fast_view``, ``SlowMind.run_tool``, the protocol formatters), so training data and inference
prompts cannot drift apart. Tool outputs are real: each action runs through the same
``SlowMind.run_tool`` the agent uses, with today's date fixed by ``DUMA_TODAY``.

Output (sharegpt ``messages`` form, which keeps the system message):
``fast_train.jsonl``, ``fast_eval.jsonl``, ``slow_train.jsonl``, ``slow_eval.jsonl``,
``routing_eval.jsonl`` (per held-out fast-mind turn), ``router_train.jsonl`` (``{"text","slow"}``)
and ``summary.json``.
"""

from __future__ import annotations

import json
import os
import random
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel

from .templates import (
    CHAT_FAMILIES,
    FINAL_REPLIES,
    FOLLOWUP_REPLIES,
    FOLLOWUPS,
    INTERIMS,
    SIMPLE_QA,
    SIMPLE_QA_HELD,
    SLOW_FAMILIES,
    Family,
    SlowTask,
    held_out,
    template_id,
)

if TYPE_CHECKING:
    from duma.agents.slow_mind import SlowMind

KNOWLEDGE_DIR = Path(__file__).resolve().parents[2] / "examples" / "knowledge"
DEFAULT_TODAY = "2025-06-16"
MEMORY_TURNS = 20  # the agent's default dialogue memory (AgentConfig.memory_turns)
CHARS_PER_TOKEN = 3.5
# Measured on the default data with the embedded tokenizer, chat template included.
CHARS_PER_TOKEN_WITH_TEMPLATE = 2.6
ZH_SHARE = 0.12


class GenerateSummary(BaseModel):
    out: str
    seed: int
    today: str
    files: dict[str, int]  # file name -> records
    tokens_estimate: dict[str, int]  # file name -> chars / 3.5
    tokens_with_template: dict[str, int]  # file name -> chars / 2.6 (what training sees)
    eval_templates: list[str]
    train_templates: list[str]


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
    from duma.agents.agent import load_tools
    from duma.config import DumaConfig

    return load_tools(DumaConfig(agent={"knowledge_dir": knowledge_dir}))


def tool_runner(tools: dict[str, Any]) -> SlowMind:
    """A SlowMind without a model: its ``run_tool`` runs actions exactly as inference does."""
    from duma.agents.slow_mind import SlowMind

    return SlowMind(None, tools)  # type: ignore[arg-type]  # run_tool never touches the backend


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


@dataclass
class TemplatePools:
    """Templates per (split, lang): (family, phrasing index)."""

    slow: dict[tuple[str, str], list[tuple[Family, int]]]
    chat: dict[tuple[str, str], list[tuple[Family, int]]]


def _template_pools(families: list[Family]) -> dict[tuple[str, str], list[tuple[Family, int]]]:
    pools: dict[tuple[str, str], list[tuple[Family, int]]] = {}
    for family in families:
        for lang, phrasings in family.phrasings.items():
            for i in range(len(phrasings)):
                split = "eval" if held_out(family, lang, i) else "train"
                pools.setdefault((split, lang), []).append((family, i))
    return pools


def draw_task(rng: random.Random, pool: list[tuple[Family, int]], lang: str, runner: SlowMind
              ) -> tuple[str, SlowTask]:
    family, i = rng.choice(pool)
    assert family.build is not None
    task = family.build(rng, family.phrasings[lang][i], runner.run_tool, lang)
    return template_id(family, lang, i), task


def _draw_language(rng: random.Random) -> str:
    return "zh" if rng.random() < ZH_SHARE else "en"


def generate_slow(rng: random.Random, n: int, eval_fraction: float, pools: TemplatePools, runner: SlowMind,
                  system_prompt: str) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    train: list[dict[str, Any]] = []
    evals: list[dict[str, Any]] = []
    for k in range(n):
        split = "eval" if rng.random() < eval_fraction else "train"
        lang = _draw_language(rng)
        template, task = draw_task(rng, pools.slow[(split, lang)], lang, runner)
        previous: list[tuple[str, str]] = []
        context_draw = rng.random()
        if context_draw < 0.25:  # some traces start mid-dialogue (the retrospect has history)
            chat_family, chat_index = rng.choice(pools.chat[(split, lang)])
            previous.append((chat_family.phrasings[lang][chat_index], rng.choice(chat_family.responses[lang])))
        elif context_draw < 0.4:  # after an earlier looked-up answer (its final reply)
            _, earlier = draw_task(rng, pools.slow[(split, lang)], lang, runner)
            previous.append((earlier.query, rng.choice(FINAL_REPLIES[lang]).format(answer=earlier.answer)))
        target = evals if split == "eval" else train
        target.append({"id": f"slow-{split}-{k:05d}:{template}", "category": f"slow/{split}",
                       "messages": slow_messages(system_prompt, previous, task),
                       "expected": task.expected})
    return train, evals


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


def _simple_qa_indices(split: str, lang: str) -> list[int]:
    n, held = len(SIMPLE_QA[lang]), SIMPLE_QA_HELD[lang]
    return list(range(n - held, n)) if split == "eval" else list(range(n - held))


def _draw_turn(rng: random.Random, split: str, lang: str, pools: TemplatePools, runner: SlowMind,
               last_slow: SlowTask | None, first: bool) -> tuple[Turn, SlowTask | None]:
    from duma.agents import fast_mind

    kinds = ["slow", "slow", "chat", "simple"] + (["followup", "followup"] if last_slow else [])
    kind = "chat" if first and rng.random() < 0.25 else rng.choice(kinds)
    if kind == "slow":
        template, task = draw_task(rng, pools.slow[(split, lang)], lang, runner)
        interim = rng.choice(INTERIMS[lang])
        final = rng.choice(FINAL_REPLIES[lang]).format(answer=task.answer)
        return Turn(template, task.query, True, task.expected,
                    [("assistant", interim, fast_mind.KIND_INTERIM), ("system", task.answer, fast_mind.KIND_SLOW),
                     ("assistant", final, fast_mind.KIND_REPLY)]), task
    if kind == "followup" and last_slow is not None:
        # Followups are a template family too: the last phrasing is held out.
        n = len(FOLLOWUPS[lang])
        i = n - 1 if split == "eval" else rng.randrange(n - 1)
        reply = rng.choice(FOLLOWUP_REPLIES[lang]).format(answer=last_slow.answer)
        return Turn(f"followup/{lang}{i}", FOLLOWUPS[lang][i], False, last_slow.expected,
                    [("assistant", reply, fast_mind.KIND_REPLY)]), last_slow
    if kind == "simple":
        i = rng.choice(_simple_qa_indices(split, lang))
        question, answer, key = SIMPLE_QA[lang][i]
        return Turn(f"simple_qa/{lang}{i}", question, False, key,
                    [("assistant", answer, fast_mind.KIND_REPLY)]), last_slow
    family, i = rng.choice(pools.chat[(split, lang)])
    reply = rng.choice(family.responses[lang])
    # Chit-chat has no single right answer: any direct reply counts ("" is in every text).
    return Turn(template_id(family, lang, i), family.phrasings[lang][i], False, "",
                [("assistant", reply, fast_mind.KIND_REPLY)]), last_slow


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
                  system_prompt: str) -> tuple[list[dict[str, Any]], list[dict[str, Any]], list[dict[str, Any]],
                                               list[dict[str, Any]]]:
    train: list[dict[str, Any]] = []
    evals: list[dict[str, Any]] = []
    routing_eval: list[dict[str, Any]] = []
    router_train: list[dict[str, Any]] = []
    for k in range(n):
        split = "eval" if rng.random() < eval_fraction else "train"
        lang = _draw_language(rng)
        n_turns = rng.choice([1, 2, 2, 3])
        turns: list[Turn] = []
        last_slow: SlowTask | None = None
        for j in range(n_turns):
            turn, last_slow = _draw_turn(rng, split, lang, pools, runner, last_slow, first=j == 0)
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
                                     "text": turn.text,
                                     "history": _history_json(before[j]), "slow": turn.slow,
                                     "expected": turn.expected})
            else:
                router_train.append({"text": turn.text, "slow": turn.slow})
    return train, evals, routing_eval, router_train


# --------------------------------------------------------------------------- driver

def template_ids(record_id: str) -> list[str]:
    """The template ids a record was built from (they follow the ``:`` of its id)."""
    return record_id.split(":", 1)[1].split("+")


def _write_jsonl(path: Path, records: list[dict[str, Any]]) -> None:
    with path.open("w", encoding="utf-8", newline="\n") as f:
        for r in records:
            f.write(json.dumps(r, ensure_ascii=False) + "\n")


def _message_chars(records: list[dict[str, Any]]) -> int:
    return sum(len(m["content"]) for r in records for m in r.get("messages", []))


def generate(out: Path, seed: int = 0, n_fast: int = 600, n_slow: int = 650, eval_fraction: float = 0.15,
             today: str = DEFAULT_TODAY, knowledge_dir: Path = KNOWLEDGE_DIR) -> GenerateSummary:
    """Write the data files to ``out``; same arguments give byte-identical files."""
    from duma.agents import fast_mind

    out.mkdir(parents=True, exist_ok=True)
    pools = TemplatePools(slow=_template_pools(SLOW_FAMILIES), chat=_template_pools(CHAT_FAMILIES))
    with fixed_today(today):
        tools = load_generation_tools(knowledge_dir)
        runner = tool_runner(tools)
        fast_system = fast_mind.fast_system_prompt(None, None)
        # Separate streams: changing --fast does not change the slow traces.
        slow_train, slow_eval = generate_slow(random.Random(f"{seed}-slow"), n_slow, eval_fraction, pools,
                                              runner, runner.system_prompt)
        fast_train, fast_eval, routing_eval, router_train = generate_fast(
            random.Random(f"{seed}-fast"), n_fast, eval_fraction, pools, runner, fast_system)
    # "expected" is for measurement only: kept out of the training records (a side file).
    slow_expected = {r["id"]: r.pop("expected") for r in slow_train + slow_eval}
    files = {"fast_train.jsonl": fast_train, "fast_eval.jsonl": fast_eval, "slow_train.jsonl": slow_train,
             "slow_eval.jsonl": slow_eval, "routing_eval.jsonl": routing_eval, "router_train.jsonl": router_train}
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
        tokens_with_template={n: round(_message_chars(r) / CHARS_PER_TOKEN_WITH_TEMPLATE) for n, r in files.items()
                              if n.startswith(("fast", "slow"))},
        eval_templates=sorted(by_split["eval"]), train_templates=sorted(by_split["train"]))
    (out / "summary.json").write_text(json.dumps(summary.model_dump(), ensure_ascii=False, indent=1) + "\n",
                                      encoding="utf-8")
    return summary
