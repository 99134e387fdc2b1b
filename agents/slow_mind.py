"""The slow mind: a ReAct loop over tools that never talks to the user.

Each step the model writes ``Reason[...]`` and ``Act[tool(args)]`` (or ``Finish[...]``) as an
assistant turn; duma runs the tool and answers with ``Obs[...]`` as the next user turn. Tool
failures, unknown tools, bad arguments, hanging tools and garbage output all become
observations or a stop with what was found so far: they never crash the turn.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

from duma.backend import Backend, generate_checked
from duma.errors import first_line
from duma.events import SlowDone, SlowStep
from duma.types import GenerationOptions, Message, Usage

from . import grammar, protocol

# Short on purpose: it is sent on every step, and it is most of each training trace.
DEFAULT_SLOW_PROMPT = """You are the slow mind: you use tools and report facts, never talk to the user.
Each step write Reason[thinking] then Act[tool(arguments)]; you get Obs[result].
When done write Reason[...] then Finish[the answer with the facts found].
Tools:
{tools}"""

# Consecutive outputs with neither Act nor Finish after which the slow mind gives up.
MAX_GARBLED_STEPS = 2
OBSERVATION_LIMIT_CHARS = 2000


def tool_arg_names(tool: Any) -> list[str]:
    """A langchain tool's argument names, in order."""
    return list(grammar.tool_args(tool))


def describe_tools(tools: dict[str, Any]) -> str:
    """One line per tool: ``- name(arg1, arg2): first line of the description``."""
    lines = []
    for name, tool in sorted(tools.items()):
        desc = (getattr(tool, "description", "") or "").strip().splitlines()
        lines.append(f"- {name}({', '.join(tool_arg_names(tool))}): {desc[0] if desc else ''}".rstrip(": "))
    return "\n".join(lines) or "(no tools)"


def run_with_timeout(fn: Callable[[], Any], timeout_s: float) -> tuple[bool, Any]:
    """Run ``fn`` in a daemon thread: ``(True, result)``, or ``(False, None)`` when it did not
    return in time (the thread is abandoned; a daemon thread never blocks process exit).
    An exception raised by ``fn`` is re-raised here."""
    box: dict[str, Any] = {}

    def target() -> None:
        try:
            box["result"] = fn()
        except BaseException as exc:  # handed back to the caller
            box["error"] = exc

    worker = threading.Thread(target=target, name="duma-tool", daemon=True)
    worker.start()
    worker.join(timeout_s)
    if worker.is_alive():
        return False, None
    if "error" in box:
        raise box["error"]
    return True, box.get("result")


def _as_text(value: Any) -> str:
    if isinstance(value, str):
        return value
    content = getattr(value, "content", None)  # a ToolMessage
    if isinstance(content, str):
        return content
    try:
        return json.dumps(value, ensure_ascii=False, default=str)
    except (TypeError, ValueError):
        return str(value)


@dataclass
class SlowResult:
    """What the slow mind hands back to the fast mind."""

    result: str
    finished: bool
    steps: list[SlowStep] = field(default_factory=list)
    usage: Usage = field(default_factory=Usage)
    stop_reason: str | None = None


class SlowMind:
    """Runs the ReAct loop of one turn. Stateless between turns: safe to share."""

    def __init__(self, backend: Backend, tools: dict[str, Any], *, system_prompt: str | None = None,
                 options: GenerationOptions | None = None, max_steps: int = 6, timeout_s: float = 60.0,
                 tool_timeout_s: float = 10.0) -> None:
        self.backend = backend
        self.tools = tools
        self.options = options or GenerationOptions()
        self.max_steps = max_steps
        self.timeout_s = timeout_s
        self.tool_timeout_s = tool_timeout_s
        template = system_prompt or DEFAULT_SLOW_PROMPT
        listing = describe_tools(tools)
        self.system_prompt = template.replace("{tools}", listing) if "{tools}" in template \
            else f"{template}\nTools:\n{listing}"
        # Each step is held to the protocol: an Act names one of these tools, with arguments
        # that parse for it (enforced while decoding, or checked: see generate_checked).
        self.step_pattern = grammar.slow_step_pattern(tools)

    # ------------------------------------------------------------------ tools
    def run_tool(self, action: str) -> str:
        """Run one ``Act[...]``: the observation text (errors included, never raised)."""
        try:
            call = protocol.parse_action(action)
        except protocol.ActionError as exc:
            return f"Error: {exc}"
        tool = self.tools.get(call.name)
        if tool is None:
            known = ", ".join(sorted(self.tools)) or "none"
            return f"Error: unknown tool '{call.name}'; tools: {known}"
        try:
            arguments = protocol.bind_arguments(call, tool_arg_names(tool))
        except protocol.ActionError as exc:
            return f"Error: {exc}"
        try:
            ok, value = run_with_timeout(lambda: tool.invoke(arguments), self.tool_timeout_s)
        except Exception as exc:  # a tool's own failure is something to react to
            return f"Error: {call.name} failed: {first_line(exc, with_type=True)}"
        if not ok:
            return f"Error: {call.name} timed out after {self.tool_timeout_s:g} s"
        text = _as_text(value).strip()
        if len(text) > OBSERVATION_LIMIT_CHARS:
            text = text[:OBSERVATION_LIMIT_CHARS] + " ...(truncated)"
        return text or "(empty result)"

    # ------------------------------------------------------------------ loop
    def run(self, retrospect: str, conversation_id: str | None = None,
            fit: Callable[[list[Message]], list[Message]] | None = None,
            cancel: threading.Event | None = None) -> Iterator[SlowStep | SlowDone]:
        """Yield a ``SlowStep`` per step and one ``SlowDone`` at the end. ``cancel`` stops the
        step being generated at its next token (the run then ends unfinished)."""
        deadline = time.monotonic() + self.timeout_s
        messages = [Message(role="system", content=self.system_prompt),
                    Message(role="user", content=retrospect)]
        options = self.options.model_copy(
            update={"stop": list(dict.fromkeys([*self.options.stop, *protocol.SLOW_STOP])),
                    "constraint": self.step_pattern})
        usage = Usage()
        steps: list[SlowStep] = []
        seen_actions: set[str] = set()
        found: list[str] = []  # successful observations: "what was found so far"
        garbled_in_a_row = 0

        def done(result: str, finished: bool, reason: str | None) -> SlowDone:
            if not finished:
                # Only tool results count as findings: a rambling model's raw text is not one.
                so_far = "; ".join(found) if found else "nothing useful yet"
                note = {"steps": f"stopped after {self.max_steps} steps",
                        "timeout": f"stopped after {self.timeout_s:g} s",
                        "loop": "stopped because it repeated the same action",
                        "garbled": "stopped because its output did not follow the protocol"}.get(reason or "", "stopped")
                result = f"(unfinished: {note}) What was found so far: {so_far}"
            return SlowDone(conversation_id=conversation_id, result=result, finished=finished,
                            steps=len(steps), usage=usage)

        for index in range(self.max_steps):
            if time.monotonic() >= deadline:
                yield done("", False, "timeout")
                return
            prompt = fit(messages) if fit else messages
            # A model that fails (an endpoint down, say) fails the turn: an error event, not a
            # reply made up from nothing; a failing tool is an observation instead.
            completion = generate_checked(self.backend, prompt, options, cancel=cancel, until=deadline)
            usage.prompt_tokens += completion.usage.prompt_tokens
            usage.completion_tokens += completion.usage.completion_tokens
            raw = completion.text
            if completion.finish_reason == "cancelled" or time.monotonic() >= deadline:
                yield done("", False, "timeout")
                return
            out = protocol.parse_slow(raw)
            if out.finish is not None:
                step = SlowStep(conversation_id=conversation_id, index=index, reason=out.reason)
                steps.append(step)
                yield step
                yield done(out.finish or "; ".join(found) or out.reason, True, None)
                return
            if out.garbled:
                garbled_in_a_row += 1
                observation = "Error: write Act[tool(arguments)] or Finish[answer]"
            else:
                garbled_in_a_row = 0
                key = " ".join(out.action.split()) if out.action else ""
                if key in seen_actions:
                    step = SlowStep(conversation_id=conversation_id, index=index, reason=out.reason,
                                    action=out.action)
                    steps.append(step)
                    yield step
                    yield done("", False, "loop")
                    return
                seen_actions.add(key)
                observation = self.run_tool(out.action or "")
                if not observation.startswith("Error:"):
                    found.append(f"{out.action} -> {observation}")
            step = SlowStep(conversation_id=conversation_id, index=index, reason=out.reason,
                            action=out.action, observation=observation)
            steps.append(step)
            yield step
            if garbled_in_a_row >= MAX_GARBLED_STEPS:
                yield done("", False, "garbled")
                return
            messages = [*messages,
                        Message(role="assistant", content=protocol.format_slow_step(out.reason, out.action)
                                if out.action else raw.strip()),
                        Message(role="user", content=protocol.format_observation(observation))]
        yield done("", False, "steps")


def collect(events: Sequence[SlowStep | SlowDone]) -> SlowResult:
    """Summarise the events of one run."""
    steps = [e for e in events if isinstance(e, SlowStep)]
    final = next(e for e in events if isinstance(e, SlowDone))
    return SlowResult(final.result, final.finished, steps, final.usage)


__all__ = ["DEFAULT_SLOW_PROMPT", "SlowMind", "SlowResult", "collect", "describe_tools",
           "run_with_timeout", "tool_arg_names"]
