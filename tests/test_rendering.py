"""The one conversation rendering: labels on assistant turns only, and inference prompts that
are exactly the training prefix, with the chat template and with BELLE's fallback."""

from __future__ import annotations

import pytest

from duma.rendering import IGNORE_INDEX, render_prompt_ids, render_training

CONVERSATION = [
    {"role": "system", "content": "Be nice."},
    {"role": "user", "content": "Hello"},
    {"role": "assistant", "content": "Hi there!"},
    {"role": "user", "content": "Capital of France?"},
    {"role": "assistant", "content": "Paris."},
]


@pytest.fixture(params=["chat-template", "belle"])
def tokenizer(request, tiny_model):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(tiny_model))
    if request.param == "belle":
        tok.chat_template = None
    return tok


def trained_text(tok, sample) -> str:
    return tok.decode([t for t, label in zip(sample.input_ids, sample.labels) if label != IGNORE_INDEX])


def test_labels_cover_every_assistant_turn_and_nothing_else(tokenizer):
    sample = render_training(tokenizer, CONVERSATION)
    text = trained_text(tokenizer, sample)
    assert "Hi there!" in text and "Paris." in text
    assert "Hello" not in text and "Be nice" not in text and "Capital" not in text
    assert text.count(tokenizer.eos_token) == 2  # EOS after each assistant turn


def test_last_turn_only_trains_the_last_reply(tokenizer):
    text = trained_text(tokenizer, render_training(tokenizer, CONVERSATION, last_turn_only=True))
    assert "Paris." in text and "Hi there!" not in text


@pytest.mark.parametrize("upto", [2, 4])
def test_inference_prompt_is_exactly_the_training_prefix(tokenizer, upto):
    full = render_training(tokenizer, CONVERSATION).input_ids
    prompt = render_prompt_ids(tokenizer, CONVERSATION[:upto])
    assert full[: len(prompt)] == prompt


def test_truncation_is_reported(tokenizer):
    sample = render_training(tokenizer, CONVERSATION, max_length=5)
    assert sample.truncated and len(sample.input_ids) == 5 == len(sample.labels)


def test_a_conversation_may_start_with_an_assistant_message(tokenizer):
    # The agent counts the tokens of a lone reply; the empty prefix before it renders to "".
    sample = render_training(tokenizer, [{"role": "assistant", "content": "Paris."}])
    assert "Paris." in trained_text(tokenizer, sample)
    assert render_prompt_ids(tokenizer, [{"role": "assistant", "content": "Paris."}])


def test_a_trailing_assistant_message_is_a_prefill_of_the_reply():
    """The fast mind writes ``Response[`` for the model: the prompt with that prefill is the
    training prefix of the whole reply, and generation continues after it."""
    from duma.models import load_tokenizer

    tok = load_tokenizer("embedded")
    context = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "User[hello!]"}]
    reply = {"role": "assistant", "content": "Response[Hi! How can I help?]\nInvoke[False]"}
    prefilled = render_prompt_ids(tok, [*context, {"role": "assistant", "content": "Response["}])
    plain = render_prompt_ids(tok, context)
    assert len(prefilled) == len(plain) + 2 and prefilled[:len(plain)] == plain
    assert render_training(tok, [*context, reply]).input_ids[:len(prefilled)] == prefilled
