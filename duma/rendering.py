"""The one conversation rendering, shared by training and inference.

With a chat template, the tokenizer's template renders the conversation; without one, BELLE's
template does: a human turn is ``Human: \\n{text}\\n\\nAssistant: \\n``, the assistant turn follows
as-is and ends with EOS. Training labels cover every assistant turn (its EOS included) and
nothing else (-100), and the prompt for inference is exactly the training prefix of the reply.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from duma.types import Message

IGNORE_INDEX = -100
BELLE_HUMAN = "Human: \n{text}\n\nAssistant: \n"


def _as_dicts(messages: Sequence[Message | dict[str, Any]]) -> list[dict[str, str]]:
    return [m.model_dump() if isinstance(m, Message) else {"role": m["role"], "content": m["content"]}
            for m in messages]


def has_chat_template(tokenizer: Any) -> bool:
    return bool(getattr(tokenizer, "chat_template", None))


def _belle_text(messages: list[dict[str, str]], eos: str, add_generation_prompt: bool) -> str:
    parts: list[str] = []
    for m in messages:
        if m["role"] == "system":
            parts.append(m["content"] + "\n\n")
        elif m["role"] == "user":
            parts.append(BELLE_HUMAN.format(text=m["content"]))
        else:
            parts.append(m["content"] + eos)
    text = "".join(parts)
    if not add_generation_prompt and messages and messages[-1]["role"] == "user":
        text = text[: -len("Assistant: \n")]
    return text


def render_text(tokenizer: Any, messages: Sequence[Message | dict[str, Any]],
                add_generation_prompt: bool = True) -> str:
    """The conversation as model input text; with ``add_generation_prompt`` it ends where the
    next assistant reply begins."""
    msgs = _as_dicts(messages)
    if not msgs:
        return ""  # the prefix before a leading message (templates refuse empty conversations)
    if has_chat_template(tokenizer):
        return tokenizer.apply_chat_template(msgs, add_generation_prompt=add_generation_prompt, tokenize=False)
    return _belle_text(msgs, tokenizer.eos_token or "", add_generation_prompt)


def _ids(tokenizer: Any, text: str) -> list[int]:
    # The rendered text already holds every special token (BOS included where the template has it).
    return tokenizer(text, add_special_tokens=False)["input_ids"] if text else []


def _segments(tokenizer: Any, msgs: list[dict[str, str]], add_generation_prompt: bool
              ) -> list[tuple[str, int | None]]:
    """Split the rendered text into context and reply pieces: ``(text, assistant index or None)``.

    Each piece is tokenized on its own, so a prompt's ids are exactly a prefix of the training
    ids of any conversation that continues it (no BPE merge across a prompt/reply seam).
    """
    pieces: list[tuple[str, int | None]] = []
    done = ""
    for i, m in enumerate(msgs):
        if m["role"] != "assistant":
            continue
        before = render_text(tokenizer, msgs[:i], add_generation_prompt=True)
        through = render_text(tokenizer, msgs[: i + 1], add_generation_prompt=False)
        if not (before.startswith(done) and through.startswith(before)):
            raise ValueError("the chat template does not render conversations prefix by prefix")
        pieces.append((before[len(done):], None))
        pieces.append((through[len(before):], i))
        done = through
    full = render_text(tokenizer, msgs, add_generation_prompt=add_generation_prompt)
    pieces.append((full[len(done):], None))
    return [p for p in pieces if p[0]]


def render_prompt_ids(tokenizer: Any, messages: Sequence[Message | dict[str, Any]]) -> list[int]:
    """Token ids of the inference prompt: equal to the training prefix of the next reply.

    A trailing assistant message is the beginning of that reply (a prefill, such as the fast
    mind's ``Response[``): its tokens follow the generation prompt, as they begin the reply's
    own segment in training, and generation continues after them.
    """
    msgs = _as_dicts(messages)
    prefill = msgs.pop()["content"] if msgs and msgs[-1]["role"] == "assistant" else ""
    ids: list[int] = []
    for text, _ in _segments(tokenizer, msgs, add_generation_prompt=True):
        ids.extend(_ids(tokenizer, text))
    return ids + _ids(tokenizer, prefill)


def text_after_reply(tokenizer: Any, messages: Sequence[Message | dict[str, Any]], reply: str,
                     next_user: str, eos_text: str) -> str:
    """What follows a generated ``reply`` (which ended with ``eos_text``) when the conversation
    goes on with the user message ``next_user`` and the next reply's generation prompt: the rest
    of the reply's own segment after its end token, then the user turn (e.g. ``\n`` then
    ``<|im_start|>user ... <|im_start|>assistant\n``)."""
    msgs = [*_as_dicts(messages), {"role": "assistant", "content": reply}]
    before = render_text(tokenizer, msgs[:-1], add_generation_prompt=True)
    through = render_text(tokenizer, msgs, add_generation_prompt=False)
    after = render_text(tokenizer, [*msgs, {"role": "user", "content": next_user}], add_generation_prompt=True)
    end_of_reply = through[len(before):]
    end_of_reply = end_of_reply[end_of_reply.rfind(reply) + len(reply):] if reply else end_of_reply
    rest = end_of_reply[len(eos_text):] if eos_text and end_of_reply.startswith(eos_text) else end_of_reply
    return rest + after[len(through):]


@dataclass
class RenderedSample:
    input_ids: list[int]
    labels: list[int]
    truncated: bool = False

    @property
    def trainable_tokens(self) -> int:
        return sum(1 for x in self.labels if x != IGNORE_INDEX)


def render_training(tokenizer: Any, messages: Sequence[Message | dict[str, Any]],
                    max_length: int | None = None, last_turn_only: bool = False) -> RenderedSample:
    """Token ids and labels: loss on every assistant turn (or only the last one), its EOS
    included; system and user turns are masked with -100. ``max_length`` truncates."""
    msgs = _as_dicts(messages)
    assistant = [i for i, m in enumerate(msgs) if m["role"] == "assistant"]
    trained = set(assistant[-1:] if last_turn_only else assistant)
    input_ids: list[int] = []
    labels: list[int] = []
    for text, owner in _segments(tokenizer, msgs, add_generation_prompt=False):
        ids = _ids(tokenizer, text)
        input_ids.extend(ids)
        labels.extend(ids if owner in trained else [IGNORE_INDEX] * len(ids))
    truncated = max_length is not None and len(input_ids) > max_length
    if truncated:
        input_ids, labels = input_ids[:max_length], labels[:max_length]
    return RenderedSample(input_ids=input_ids, labels=labels, truncated=truncated)
