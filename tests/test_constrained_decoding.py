"""Constrained decoding of the DUMA protocol: the patterns the protocol declares (from the
registered tools and their argument schemas), the token masks that hold a real backend to them
on a tiny model, and the check-and-resample path of backends that cannot constrain."""

from __future__ import annotations

import re
from contextlib import contextmanager

import pytest
import regex
from langchain_core.tools import tool

from duma.agents import grammar, protocol
from duma.agents.slow_mind import SlowMind, tool_arg_names
from duma.backend import (RESAMPLE_TEMPERATURE, BackendCapabilities, TokenConstraint, generate_checked,
                          match_constraint, stream_guarded)
from duma.errors import DumaError
from duma.testing import ScriptedBackend
from duma.types import GenerationOptions, Message, ModelSpec

SLOW_PROMPT = [Message(role="system", content="You are the slow mind."),
               Message(role="user", content="Query 0: What is the square root of two?")]
FAST_PROMPT = [Message(role="system", content="You are the fast mind."),
               Message(role="user", content="User[Hello!]"),
               Message(role="assistant", content=protocol.RESPONSE_OPEN)]

VALID_CALLS = ["calculator(4,821 * 3)", "calculator((3+4)*2)", "calculator(17% of 2,340)", "calculator(expression=2+2)",
               "date_diff(2025-01-01, 2025-03-01)", "add_days(2025-06-16, 30)", "add_days(2025-06-16, -3)",
               "add_days(2025-06-16, days=30)", "add_days(date=2025-06-16, days=30)", "weekday(2025-06-16)",
               "today()", "today", "convert_units(5, km, mi)", "convert_units(5 km, mi)", "convert_units(5 km to mi)",
               "search_knowledge(return policy)", 'search_knowledge("warranty, returns")']
INVALID_CALLS = ["sqrt(2)", "add_days(2025-06-16, soon)", "add_days(2025-06-16)", "add_days(date=2025-06-16, 30)",
                 "today(1)", "calculator()", "date_diff(1, 2, 3)", "weekday", "calculator(x=5)",
                 'calculator({"expression": "1"})', "search_knowledge(a]"]


@pytest.fixture(scope="module")
def tools():
    """The agent's real tools (search_knowledge built from the default config)."""
    from duma.agents.agent import load_tools
    from duma.config import DumaConfig

    return load_tools(DumaConfig())


@pytest.fixture(scope="module")
def slow_pattern(tools) -> str:
    return grammar.slow_step_pattern(tools)


# --- the patterns ----------------------------------------------------------------------------

def test_every_protocol_output_matches_its_pattern(tools, slow_pattern):
    for call in VALID_CALLS:
        step = protocol.format_slow_step("I need a tool.", call)
        assert re.fullmatch(slow_pattern, step), step
        assert re.fullmatch(slow_pattern, step.replace("\n", " "))  # what scripted minds write
        # ... and every call it lets through parses and binds for its tool's schema.
        parsed = protocol.parse_action(protocol.parse_slow(step).action)
        bound = protocol.bind_arguments(parsed, tool_arg_names(tools[parsed.name]))
        tools[parsed.name].args_schema.model_validate(bound)
    for step in (protocol.format_slow_step("需要计算百分比。", "calculator(20% of 80)"),
                 protocol.format_slow_step("Done.", finish="4,821 × 3 = 14463."),
                 protocol.format_slow_step("", finish="It is 42.")):
        assert re.fullmatch(slow_pattern, step), step
    for invoke in (True, False):
        reply = protocol.format_fast_output("Sure, here it is:\n- one\n- two", invoke)
        assert re.fullmatch(grammar.fast_output_pattern(), reply)
        assert re.fullmatch(grammar.fast_output_pattern(prefilled=True), reply[len(protocol.RESPONSE_OPEN):])


def test_unknown_tools_bad_arguments_and_markup_do_not_match(slow_pattern):
    for call in INVALID_CALLS:
        assert not re.fullmatch(slow_pattern, protocol.format_slow_step("r", call)), call
    for text in ("Reason[r]", "Reason[r]\nObs[4]", "Reason[a [b] c]\nFinish[x]", " Reason[r]\nFinish[x]"):
        assert not re.fullmatch(slow_pattern, text), text
    fast = grammar.fast_output_pattern()
    for text in ("Response[hi]", "Response[hi]\nInvoke[maybe]", "Hello!", "Response[a [b]]\nInvoke[False]",
                 "Response[Bonjour!)\nInvoke\nFalse]\nInvoke[False]"):
        assert not re.fullmatch(fast, text), text


def test_text_without_a_word_is_exactly_the_text_that_lacks_it():
    """Every string of up to 6 characters over the word's letters, a bracket and another
    letter: the pattern matches exactly those without the word and without brackets; partial
    matches right before the word do not hide it; Python's backtracking stays fast on long runs
    of partial matches."""
    import itertools
    import time

    for word in ("Invoke", "Act", "Ab"):
        pattern = re.compile(grammar.text_without(word))
        alphabet = sorted(set(word) | {"x", "[", "]"})
        for n in range(7):
            for letters in itertools.product(alphabet, repeat=n):
                text = "".join(letters)
                assert bool(pattern.fullmatch(text)) == (word not in text and not set("[]") & set(text)), text
    reply = re.compile(grammar.RESPONSE_TEXT)
    for text in ("InvInvoke", "IInvoke", "InvokInvoke", "In Invoked", "xInvoke"):
        assert not reply.fullmatch(text), text
    for text in ("InvokI", "IIIn", "Invite, Inv. and Invok", "invoke"):
        assert reply.fullmatch(text), text
    fast = re.compile(grammar.fast_output_pattern())
    start = time.perf_counter()
    for body in ("I" * 5000 + "[", "In" * 3000 + "[", "Invok" * 2000 + "[", "In" * 3000):
        assert not fast.fullmatch("Response[" + body)
    assert fast.fullmatch("Response[" + "InI" * 2000 + "]\nInvoke[False]")
    assert time.perf_counter() - start < 2.0  # exponential backtracking would take hours
    for word in ("I", "InvI", "a]b"):
        with pytest.raises(ValueError):
            grammar.text_without(word)


def test_argument_forms_follow_the_schema():
    @tool
    def lookup(code: str, limit: int = 10, exact: bool = False, unit: str = "m") -> str:
        """A tool with typed and optional arguments."""
        return code

    pattern = grammar.slow_step_pattern({"lookup": lookup, "bad name": lookup})
    ok = ["lookup(ab)", "lookup(ab, 3)", "lookup(ab, 3, true)", "lookup(ab, limit=3)", "lookup(code=ab, exact=False)",
          "lookup(ab, 3, False, km)", 'lookup("a b", -2)']
    bad = ["lookup()", "lookup(ab, three)", "lookup(ab, 3, yes)", "lookup(ab, limit=3, 4)", "lookup(a(b))",
           "bad name(ab)", "lookup(ab, 1, true, km, x)"]
    for call in ok:
        assert re.fullmatch(pattern, f"Act[{call}]"), call
    for call in bad:
        assert not re.fullmatch(pattern, f"Act[{call}]"), call
    # No tools: only Finish.
    assert re.fullmatch(grammar.slow_step_pattern({}), "Reason[r]\nFinish[done]")
    assert not re.fullmatch(grammar.slow_step_pattern({}), "Reason[r]\nAct[today]")


def test_llguidance_reads_the_patterns_as_python_does(tiny_model, slow_pattern):
    """The token masks use llguidance's regex engine: it accepts exactly the valid steps."""
    from duma.models import load_tokenizer

    tokenizer = load_tokenizer(str(tiny_model))
    eos = [tokenizer.eos_token_id]
    for text, pattern in [*((protocol.format_slow_step("r", c), slow_pattern) for c in [*VALID_CALLS, *INVALID_CALLS]),
                          (protocol.format_fast_output("Hi, there.", True), grammar.fast_output_pattern()),
                          ("Response[Oui! Invoked\nInvoke]\nInvoke[False]", grammar.fast_output_pattern()),
                          ("Response[Invite Inv. Invok]\nInvoke[True]", grammar.fast_output_pattern())]:
        constraint = TokenConstraint(tokenizer, pattern, eos)
        ids = tokenizer.encode(text, add_special_tokens=False)
        ok = True
        for token in ids:
            ok = ok and bool(constraint.allowed(len(tokenizer))[token])
            constraint.advance(token)
        assert (ok and constraint.complete) == bool(re.fullmatch(pattern, text)), text


# --- token masks on a real backend -----------------------------------------------------------

@pytest.fixture(scope="module")
def backend(tiny_model):
    from duma.plugins.backends.transformers import TransformersBackend

    return TransformersBackend(ModelSpec(model=str(tiny_model), device="cpu"))


@contextmanager
def steered(backend, target: str, bias: float = 50.0):
    """For one generation, make the model want to write ``target``: while what it wrote is a
    prefix of ``target``, every token that continues it gets ``bias`` (plus its length, so the
    longest wins) on its logit. A forward hook on the real model: the backend's own decoding,
    and its constraint, run unchanged."""
    tokenizer = backend.tokenizer
    pieces = {i: tokenizer.decode([i]) for i in range(len(tokenizer))}
    written: list[int] | None = None

    def hook(module, args, kwargs, output):
        nonlocal written
        written = [] if written is None else written + kwargs["input_ids"][0].tolist()  # first: the prompt
        text = tokenizer.decode(written)
        if target.startswith(text):
            rest = target[len(text):]
            for i, piece in pieces.items():
                if piece and rest.startswith(piece):
                    output.logits[0, -1, i] += bias + len(piece)
        return output

    handle = backend.model.register_forward_hook(hook, with_kwargs=True)
    try:
        yield
    finally:
        handle.remove()


def test_sampled_steps_follow_the_pattern(backend, slow_pattern):
    assert backend.capabilities.constrained_decoding
    for seed in range(3):
        options = GenerationOptions(temperature=1.0, seed=seed, max_tokens=32, constraint=slow_pattern, max_repeats=None)
        done = backend.generate(SLOW_PROMPT, options)
        assert regex.fullmatch(slow_pattern, done.text, partial=True), done.text
        if done.finish_reason == "stop":
            assert re.fullmatch(slow_pattern, done.text), done.text
    fast = grammar.fast_output_pattern(prefilled=True)
    for seed in range(2):
        options = GenerationOptions(temperature=1.0, seed=seed, max_tokens=32, constraint=fast, max_repeats=None)
        done = backend.generate(FAST_PROMPT, options)
        assert regex.fullmatch(fast, done.text, partial=True), done.text


def test_an_unknown_tool_cannot_be_written_even_when_the_model_wants_it(backend, tools, slow_pattern):
    target = "Reason[root]\nAct[sqrt(2)]"
    with steered(backend, target):
        free = backend.generate(SLOW_PROMPT, GenerationOptions(max_tokens=30, max_repeats=None))
    assert free.text.startswith(target)  # the steering works: unconstrained, the model writes the call
    for seed in range(3):
        options = GenerationOptions(temperature=1.0 if seed else 0.0, seed=seed, max_tokens=40,
                                    constraint=slow_pattern, max_repeats=None)
        with steered(backend, target):
            done = backend.generate(SLOW_PROMPT, options)
        assert done.text.startswith("Reason[root]\nAct[") and "sqrt" not in done.text
        assert regex.fullmatch(slow_pattern, done.text, partial=True), done.text
        if done.finish_reason == "stop":
            name = protocol.parse_action(protocol.parse_slow(done.text).action).name
            assert name in tools


def test_a_complete_pattern_ends_the_reply_without_decoding_more(backend, slow_pattern):
    target = "Reason[add]\nAct[calculator(2+2)]\nObs[4] and more text"
    with steered(backend, target):
        done = backend.generate(SLOW_PROMPT, GenerationOptions(max_tokens=60, constraint=slow_pattern,
                                                               max_repeats=None))
    assert done.text == "Reason[add]\nAct[calculator(2+2)]" and done.finish_reason == "stop"
    # Every decoded token is in the text: the end came from the pattern, not from an EOS token.
    assert done.usage.completion_tokens == len(backend.tokenizer.encode(done.text, add_special_tokens=False))


def test_the_repetition_guard_still_stops_a_constrained_loop(backend, slow_pattern):
    target = "Reason[" + "I checked it again. " * 12
    options = GenerationOptions(max_tokens=120, constraint=slow_pattern, max_repeats=3)
    with steered(backend, target):
        chunks = list(stream_guarded(backend, SLOW_PROMPT, options))
    text = "".join(c.text for c in chunks)
    assert chunks[-1].finish_reason == "length" and text.startswith("Reason[I checked it again. ")
    assert text.count("I checked it again.") <= 3 and len(text) < len(target)


def test_a_backend_compiles_a_constraint_once_and_ahead_of_use(backend, slow_pattern):
    from duma.backend import AdapterView, _compiled_constraint

    AdapterView(backend, "some-adapter").prepare_constraint(slow_pattern)  # what Agent.load does
    compiled = _compiled_constraint(backend.tokenizer, tuple(sorted(backend._eos_ids)), slow_pattern)
    assert _compiled_constraint(backend.tokenizer, tuple(sorted(backend._eos_ids)), slow_pattern) is compiled
    ScriptedBackend().prepare_constraint(slow_pattern)  # nothing to prepare


def test_a_pattern_llguidance_cannot_read_is_a_one_line_error(backend):
    with pytest.raises(ValueError, match="not a regular expression"):
        GenerationOptions(constraint="Act[")
    with pytest.raises(DumaError, match="constraint cannot be decoded") as info:
        backend.generate(SLOW_PROMPT, GenerationOptions(constraint=r"(?=a)a", max_tokens=4))
    assert "\n" not in str(info.value)


def test_the_llamacpp_mask_processor_masks_scores(backend, slow_pattern):
    """llama.cpp runs the same mask as a logits processor (llama.cpp itself may be absent)."""
    import numpy as np

    from duma.plugins.backends.llamacpp import mask_processor

    assert mask_processor(None) is None
    constraint = TokenConstraint(backend.tokenizer, slow_pattern, [backend.tokenizer.eos_token_id])
    (process,) = mask_processor(constraint)
    scores = process(np.zeros(4), np.zeros(len(backend.tokenizer), dtype=np.float32))
    allowed = {backend.tokenizer.decode([i]) for i in np.flatnonzero(np.isfinite(scores))}
    assert allowed and all("Reason[".startswith(t) or "Act[".startswith(t) or "Finish[".startswith(t)
                           for t in allowed), allowed


# --- backends that cannot constrain: check and sample once more ------------------------------

class RecordingBackend(ScriptedBackend):
    """A scripted backend that records the options of each call."""

    def __init__(self, replies: list[str], constrained: bool = False) -> None:
        super().__init__(replies=replies)
        self.capabilities = BackendCapabilities(constrained_decoding=constrained)
        self.options: list[GenerationOptions] = []

    def stream(self, messages, options=None, **kwargs):
        self.options.append(options)
        return super().stream(messages, options, **kwargs)


def test_a_mismatch_is_sampled_once_more(slow_pattern):
    backend = RecordingBackend(["Reason[r] Act[sqrt(2)]", "Reason[r] Act[calculator(sqrt(2))]"])
    options = GenerationOptions(constraint=slow_pattern)
    done = generate_checked(backend, SLOW_PROMPT, options)
    assert done.text == "Reason[r] Act[calculator(sqrt(2))]" and len(backend.calls) == 2
    assert done.usage.completion_tokens == 4  # both tries count
    # A greedy call is sampled the second time; a seeded one with the next seed.
    assert backend.options[1].temperature == RESAMPLE_TEMPERATURE and backend.options[1].seed is None
    backend = RecordingBackend(["Act[sqrt(2)]", "Act[sqrt(3)]"])
    done = generate_checked(backend, SLOW_PROMPT, options.model_copy(update={"seed": 7, "temperature": 0.5}))
    assert done.text == "Act[sqrt(3)]" and len(backend.calls) == 2  # kept: the lenient parser reads it
    assert (backend.options[1].seed, backend.options[1].temperature) == (8, 0.5)


def test_a_match_is_kept_and_cut_where_it_ends(slow_pattern):
    backend = RecordingBackend(["Reason[r] Act[today()] Obs[made up] more"])
    done = generate_checked(backend, SLOW_PROMPT, GenerationOptions(constraint=slow_pattern))
    assert done.text == "Reason[r] Act[today()]" and done.finish_reason == "stop" and len(backend.calls) == 1
    assert match_constraint(slow_pattern, "\n Finish[x] \n") == "Finish[x]"
    assert match_constraint(slow_pattern, "Act[sqrt(2)]") is None


def test_no_second_try_when_the_backend_constrains_or_was_cancelled(slow_pattern):
    import threading

    options = GenerationOptions(constraint=slow_pattern)
    backend = RecordingBackend(["Act[sqrt(2)]", "Finish[x]"], constrained=True)
    assert generate_checked(backend, SLOW_PROMPT, options).text == "Act[sqrt(2)]" and len(backend.calls) == 1
    backend = RecordingBackend(["Act[sqrt(2)]", "Finish[x]"])
    cancel = threading.Event()
    cancel.set()
    assert generate_checked(backend, SLOW_PROMPT, options, cancel=cancel).finish_reason == "cancelled"
    assert len(backend.calls) == 1
    backend = RecordingBackend(["Act[sqrt(2)]", "Finish[x]"])
    assert generate_checked(backend, SLOW_PROMPT, GenerationOptions()).text == "Act[sqrt(2)]"  # no constraint
    assert len(backend.calls) == 1


def test_the_slow_mind_holds_its_steps_to_its_tools(tools):
    backend = RecordingBackend(["Reason[root] Act[sqrt(2)]", "Reason[root] Act[calculator(sqrt(2))]",
                                "Reason[done] Finish[about 1.41421]"])
    events = list(SlowMind(backend, tools).run("Query 0: square root of two?"))
    assert backend.options[0].constraint == grammar.slow_step_pattern(tools)
    first = events[0]
    assert first.action == "calculator(sqrt(2))" and first.observation.startswith("1.414")
    assert events[-1].finished and events[-1].result == "about 1.41421"
